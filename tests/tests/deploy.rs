//! The deployment files: the systemd unit passes `systemd-analyze verify` and the keeper speaks
//! sd_notify (READY, WATCHDOG, STOPPING) to a socket standing in for systemd; the Kubernetes
//! manifests pass a schema check offline; the Proxmox hookscript calls the keeper and never
//! blocks a VM.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use integration_test::{rig::*, *};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            !ci(),
            "CI=true: systemd-analyze is needed to verify the unit"
        );
        eprintln!("\n!!! SKIPPED the_systemd_unit_verifies: no systemd-analyze !!!\n");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(root().join("deploy/systemd/keeper.service")).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "StateDirectory=keeper",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = std::env::temp_dir().join(format!("keeper-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keeper.service");
    std::fs::write(&path, unit.replace("/usr/bin/keeper", KEEPER)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_keeper_tells_systemd_ready_watchdog_and_stopping() {
    if !privileged("the_keeper_tells_systemd_ready_watchdog_and_stopping") {
        return;
    }
    let rig = Rig::new("notify");
    let sock_path = rig.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sock_str = sock_path.to_str().unwrap().to_string();
    let daemon = rig.keeper_with_env(
        &["--for", "2s"],
        &[("NOTIFY_SOCKET", &sock_str), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m| m.contains("STOPPING=1")) {
        let n = sock
            .recv(&mut buf)
            .expect("no sd_notify message within 30 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    daemon.finish();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    // 2 s with a 400 ms watchdog, kicked every 200 ms.
    let kicks = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(kicks >= 5, "{kicks} watchdog kicks: {seen:?}");
}

#[test]
fn the_kubernetes_manifests_pass_a_schema_check() {
    let text = std::fs::read_to_string(root().join("deploy/k8s/keeper.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    let ds = find("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[k], v,
            "selector {k} does not match the pod template"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.iter().any(|a| a.starts_with("--metrics=")), "{args:?}");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(
        args.iter().any(|a| a.ends_with(&format!(":{port}"))),
        "metrics port {port} not served"
    );
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    for (name, path) in &mounts {
        assert!(volumes.contains(name), "mount {name} has no volume");
        let _ = path;
    }
    for path in [
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/etc/keeper",
    ] {
        assert!(mounts.iter().any(|m| m.1 == path), "{path} not mounted");
    }
    // The policy in the ConfigMap is one the keeper accepts.
    let cm = find("ConfigMap");
    let policy = cm["data"]["policy.yaml"].as_str().unwrap();
    let dir = std::env::temp_dir().join(format!("keeper-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let out = Command::new(KEEPER)
        .arg("check")
        .arg(dir.join("policy.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_proxmox_hook_calls_the_keeper_and_never_blocks_a_vm() {
    let dir = std::env::temp_dir().join(format!("keeper-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls");
    let fake = dir.join("keeper");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", log.display()),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let hook = root().join("deploy/proxmox/keeper-hook.sh");
    for (args, code) in [
        (["100", "post-start"], 0),
        (["100", "pre-stop"], 0),
        (["x", "post-stop"], 0),
    ] {
        let out = Command::new("sh")
            .arg(&hook)
            .args(args)
            .env("KEEPER", &fake)
            .env("KEEPER_SOCKET", "/nonexistent.sock")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        calls.trim(),
        "reload --socket /nonexistent.sock",
        "only post-start of a valid vmid calls the keeper"
    );
}

/// promtool (Debian's prometheus package), or `None` outside CI when it is missing.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        found || !ci(),
        "CI=true: promtool must be installed (cargo xtask test does)"
    );
    found.then_some("promtool")
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED: no promtool (apt-get install prometheus)");
        return;
    };
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "keeper-rules.yaml"],
        ["test", "rules", "keeper-rules.test.yaml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
        assert!(said.contains("SUCCESS"), "promtool {args:?}:\n{said}");
    }
    // Every alert has a test that fires it.
    let rules = std::fs::read_to_string(dir.join("keeper-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("keeper-rules.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fired = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(alert) && t.contains("exp_labels"));
        assert!(fired, "no test fires {alert}");
    }
}

/// The dashboard with several keepers behind one Prometheus (a cluster's hosts) and hosts of
/// several trading cores: every aggregation keeps `instance` (before, `sum by (kind)` merged
/// the keepers), and a panel in percent divides by a total (before, "Trading cores' time by
/// kind" summed the cores' seconds per second: two busy cores read 200 %). The interrupt
/// noise the keeper serves is charted.
#[test]
fn the_dashboard_keeps_keepers_apart_and_shares_below_one() {
    let file = root().join("deploy/grafana/keeper.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut noise = false;
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        let unit = p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            noise |= expr.contains("keeper_noise_seconds");
            let mut rest = expr;
            while let Some(at) = rest.find("sum") {
                rest = &rest[at + 3..];
                let by = rest.trim_start();
                assert!(
                    by.starts_with("by (")
                        && by[4..].split(')').next().unwrap().contains("instance"),
                    "panel `{title}`: `{expr}` sums without `by (instance, …)`: several keepers would be added up"
                );
            }
            // A ratio already (`_ratio`, Prometheus's name for 0–1), or one source's share of
            // one core.
            let a_share = expr.contains("_ratio{") || expr.contains("keeper_noise_seconds");
            if unit == "percentunit" && !a_share {
                assert!(
                    expr.contains(" / "),
                    "panel `{title}` shows `{expr}` in percent without dividing by a total"
                );
            }
        }
    }
    assert!(noise, "no panel charts keeper_noise_seconds");
}

#[test]
fn shell_completions_and_man_pages_come_from_the_command_line() {
    let keeper = integration_test::KEEPER;
    let run = |args: &[&str]| {
        let out = Command::new(keeper).args(args).output().unwrap();
        assert!(out.status.success(), "keeper {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    for word in [
        "run",
        "status",
        "interaction",
        "simulate",
        "--policy",
        "--trading-cores",
    ] {
        assert!(bash.contains(word), "no {word} in the bash completions");
    }
    let script =
        std::env::temp_dir().join(format!("keeper-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(syntax.status.success(), "bash -n: {syntax:?}");
    assert!(run(&["completions", "zsh"]).starts_with("#compdef keeper"));
    assert!(run(&["completions", "fish"]).contains("complete -c keeper"));

    let page = run(&["man"]);
    assert!(page.contains(".TH keeper 1"), "{page}");
    assert!(page.contains("eBPF resource enforcer"), "{page}");
    let dir = std::env::temp_dir().join(format!("keeper-man-{}", std::process::id()));
    run(&["man", "--out", dir.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let run_page = std::fs::read_to_string(dir.join("keeper-run.1")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    for want in [
        "keeper.1",
        "keeper-run.1",
        "keeper-status.1",
        "keeper-completions.1",
    ] {
        assert!(
            pages.iter().any(|p| p == want),
            "{want} missing from {pages:?}"
        );
    }
    assert!(run_page.contains("trading\\-cores"), "{run_page}");
}

//! `keeper check` end to end: the real binary on good and bad policy files; messages snapshotted.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `keeper check ARGS` in the workspace root: (exit code, stdout).
fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(integration_test::KEEPER)
        .arg("check")
        .args(args)
        .current_dir(root())
        .env("KEEPER_LOG", "off")
        .output()
        .expect("run keeper");
    assert!(out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("panicked"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_policies_pass() {
    let files = yaml_files("policies");
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, out) = check(&args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("workloads)")).count(),
        files.len(),
        "{out}"
    );
}

#[test]
fn bad_policies_fail_with_located_messages() {
    let mut report = String::new();
    for file in yaml_files("tests/policies/bad") {
        let (code, out) = check(&[&file]);
        assert_eq!(code, 1, "{file} passed:\n{out}");
        for line in out.lines() {
            let mut parts = line.splitn(4, ':');
            let (f, l, c) = (parts.next(), parts.next(), parts.next());
            assert_eq!(f, Some(file.as_str()), "{line}");
            assert!(
                l.is_some_and(|l| l.parse::<u32>().is_ok_and(|n| n >= 1)),
                "no line: {line}"
            );
            assert!(
                c.is_some_and(|c| c.parse::<u32>().is_ok_and(|n| n >= 1)),
                "no column: {line}"
            );
        }
        report += &format!("$ keeper check {file}  # exit {code}\n{out}\n");
    }
    insta::with_settings!({ snapshot_path => "../policies/snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("check_bad_policies", report);
    });
}

#[test]
fn a_huge_file_is_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("keeper-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.yaml");
    std::fs::write(&path, "# padding\n".repeat(300_000)).unwrap();
    let (code, out) = check(&[path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 1);
    assert!(
        out.contains(":1:1: error: file is 1048577 bytes; a policy is at most 1048576 bytes"),
        "{out}"
    );
}

#[test]
fn cores_missing_here_are_warnings_or_errors_with_host() {
    let dir = std::env::temp_dir().join(format!("keeper-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big-host.yaml");
    let text = std::fs::read_to_string(root().join("policies/one-host.yaml")).unwrap();
    std::fs::write(
        &path,
        text.replace("trading_cores: \"1\"", "trading_cores: \"200-201\""),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, out) = check(&[p]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            ":11:18: warning: `host.trading_cores`: cores 200-201 do not exist on this host"
        ),
        "{out}"
    );
    let (code, out) = check(&["--host", p]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(":11:18: error: `host.trading_cores`: cores 200-201 do not exist"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--host` reads this kernel's command line and topology: on this VM (booted without any
/// isolation parameter, no SMT) each boot parameter comes as advice with its exact value, and
/// the trading core shares its physical core with no one.
#[test]
fn host_check_gives_the_boot_parameters_a_reboot_would_add() {
    let policy = root().join("policies/hive.yaml");
    let (code, out) = check(&["--host", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    let params: Vec<&str> = cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .collect();
    for (param, advice) in [
        (
            "nohz_full=",
            "host: advice: add `nohz_full=1` to the kernel command line",
        ),
        (
            "rcu_nocbs=",
            "host: advice: add `rcu_nocbs=1` to the kernel command line",
        ),
        ("isolcpus=", "host: advice: add `isolcpus=managed_irq,1`"),
        ("irqaffinity=", "host: advice: add `irqaffinity=0`"),
    ] {
        if !params.iter().any(|p| p.starts_with(param)) {
            assert!(out.contains(advice), "no `{advice}` in\n{out}");
        }
    }
    let siblings =
        std::fs::read_to_string("/sys/devices/system/cpu/cpu1/topology/thread_siblings_list");
    if siblings.is_ok_and(|s| s.trim() == "1") {
        assert!(
            out.contains(
                "host: ok: trading core 1 shares its physical core with no housekeeping core"
            ),
            "{out}"
        );
    }
}

#[test]
fn schema_is_json_for_the_policy() {
    let out = Command::new(integration_test::KEEPER)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["title"], "The Keeper policy");
    assert!(v["properties"]["workloads"].is_object());
}

/// The package's policy observes only: it passes, and says so. `keeper run` with no policy
/// file at the path it reads says so plainly, at once, and changes nothing.
#[test]
fn the_shipped_conffile_observes_and_a_missing_policy_is_said() {
    let (code, out) = check(&["policies/observe.yaml"]);
    assert_eq!(code, 0, "{out}");
    let out = Command::new(integration_test::KEEPER)
        .args([
            "run",
            "--for",
            "1s",
            "--policy",
            "/nonexistent/keeper/policy.yaml",
        ])
        .output()
        .expect("run keeper");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no policy at /nonexistent/keeper/policy.yaml"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}

/// `keeper init` on this host, from a fake /etc/pve laid out as Proxmox lays it out: the
/// policy it prints passes `keeper check --host` here, the Banker owns the trading cores, and
/// the CPUs it chose are read from this host (one per physical core, never the core of CPU 0).
#[test]
fn init_writes_a_policy_this_host_accepts() {
    let dir = std::env::temp_dir().join(format!("keeper-init-{}", std::process::id()));
    let pve = dir.join("pve");
    std::fs::create_dir_all(pve.join("nodes/hive/qemu-server")).unwrap();
    std::fs::create_dir_all(pve.join("nodes/hive/lxc")).unwrap();
    // /etc/pve/qemu-server is a link to the local node's folder, as pmxcfs shows it.
    std::os::unix::fs::symlink("nodes/hive/qemu-server", pve.join("qemu-server")).unwrap();
    std::os::unix::fs::symlink("nodes/hive/lxc", pve.join("lxc")).unwrap();
    let conf = |p: &str, text: &str| std::fs::write(pve.join(p), text).unwrap();
    conf(
        "qemu-server/200.conf",
        "cores: 2\nmemory: 8192\nname: banker\nsockets: 1\n\n[snap]\ncores: 8\n",
    );
    conf(
        "qemu-server/100.conf",
        "cores: 8\nhostpci0: 0000:01:00.0,pcie=1\nmemory: 32768\nname: brain\n",
    );
    conf(
        "lxc/101.conf",
        "arch: amd64\ncores: 1\nhostname: lab\nmemory: 1024\n",
    );
    std::fs::write(pve.join("qemu-server/notes.txt"), "not a guest").unwrap();
    let out = Command::new(integration_test::KEEPER)
        .args(["init", "--pve"])
        .arg(&pve)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join("policy.yaml");
    std::fs::write(&file, &text).unwrap();
    let (code, said) = check(&["--host", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{said}\n{text}");
    assert!(
        text.contains("match: { vmid: 200 }\n    owns_trading_cores: true"),
        "{text}"
    );
    assert!(text.contains("match: { ctid: 101 }") && text.contains("match: { vmid: 100 }"));
    // The trading CPUs from this host: one per physical core, none sharing CPU 0's core.
    let trading: String = (text.lines())
        .find_map(|l| l.trim().strip_prefix("trading_cores: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let siblings = |c: &str| {
        std::fs::read_to_string(format!(
            "/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"
        ))
        .unwrap_or_default()
        .trim()
        .to_string()
    };
    let home = siblings("0");
    let cpus: Vec<String> = expand(&trading);
    let cores: std::collections::BTreeSet<String> = cpus.iter().map(|c| siblings(c)).collect();
    assert_eq!(
        cores.len(),
        cpus.len(),
        "two trading CPUs on one core: {text}"
    );
    assert!(!cores.contains(&home), "the core of CPU 0 trades: {text}");
    assert!(
        cpus.len() <= 2,
        "more trading CPUs than the Banker's 2 vCPUs: {text}"
    );
    // --output never overwrites.
    let again = Command::new(integration_test::KEEPER)
        .args(["init", "--pve"])
        .arg(&pve)
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `1,3-4` → ["1", "3", "4"].
fn expand(list: &str) -> Vec<String> {
    let mut out = vec![];
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                out.extend((a..=b).map(|c| c.to_string()));
            }
            None => out.push(part.to_string()),
        }
    }
    out
}

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

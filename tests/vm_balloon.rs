//! `keeper vm list` and `keeper vm balloon` against a real QEMU with a virtio balloon device,
//! found by its QMP socket in a Proxmox-like directory; and the errors an operator meets: an
//! unknown vmid, a dead VM's stale socket, a target above the VM's memory.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::KEEPER;

/// A QEMU started by this test (killed on drop), with its QMP socket at `DIR/<vmid>.qmp`.
struct Qemu {
    child: Child,
    dir: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn qemu(tag: &str, vmid: u32, mem_mib: u32) -> Option<Qemu> {
    let bin = "qemu-system-x86_64";
    if Command::new(bin).arg("--version").output().is_err() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true: {bin} is needed (apt package qemu-system-x86)"
        );
        eprintln!("\n!!! SKIPPED {tag}: no {bin} !!!\n");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("keeper-qmp-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join(format!("{vmid}.qmp"));
    // No guest: the machine stays in prelaunch (-S); QMP and the balloon device are there.
    let child = Command::new(bin)
        .args([
            "-accel",
            "tcg",
            "-m",
            &mem_mib.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .args(["-device", "virtio-balloon-pci"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let q = Qemu { child, dir };
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "QEMU made no QMP socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(q)
}

fn keeper(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(KEEPER)
        .args(args)
        .arg("--qmp-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vm_list_and_balloon_talk_qmp_to_a_real_qemu() {
    let Some(vm) = qemu("list", 100, 512) else {
        return;
    };
    let (code, out, err) = keeper(&["vm", "list", "--format", "json"], &vm.dir);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["vmid"], 100);
    assert_eq!(list[0]["cgroup"], "qemu.slice/100.scope");
    assert_eq!(list[0]["max_memory_bytes"], 512u64 << 20);
    assert_eq!(list[0]["balloon_actual_bytes"], 512u64 << 20);
    let (code, out, err) = keeper(&["vm", "balloon", "100", "256MiB"], &vm.dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("balloon target 256 MiB (was 512 MiB"), "{out}");
    // A share of the VM's maximum.
    let (code, out, _) = keeper(&["vm", "balloon", "100", "75%"], &vm.dir);
    assert_eq!(code, 0);
    assert!(out.contains("target 384 MiB"), "{out}");
}

#[test]
fn bad_vm_requests_are_clear_errors() {
    let Some(vm) = qemu("bad", 100, 256) else {
        return;
    };
    let (code, _, err) = keeper(&["vm", "balloon", "101", "128MiB"], &vm.dir);
    assert_eq!(code, 2);
    assert!(err.contains("101.qmp: no such socket"), "{err}");
    let (code, _, err) = keeper(&["vm", "balloon", "100", "1GiB"], &vm.dir);
    assert_eq!(code, 2);
    assert!(err.contains("above its maximum memory 256 MiB"), "{err}");
    let (code, _, err) = keeper(&["vm", "balloon", "100", "0"], &vm.dir);
    assert_eq!(code, 2);
    assert!(err.contains("refused"), "{err}");
    // A dead VM leaves its socket file behind: listed with the error, exit 1.
    let stale = vm.dir.join("102.qmp");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, out, _) = keeper(&["vm", "list"], &vm.dir);
    assert_eq!(code, 1);
    assert!(
        out.contains("102") && out.contains("cannot connect"),
        "{out}"
    );
    let (code, _, err) = keeper(&["vm", "balloon", "102", "128MiB"], &vm.dir);
    assert_eq!(code, 2);
    assert!(err.contains("102.qmp: cannot connect"), "{err}");
}

//! QEMU machines started by tests: no guest (prelaunch, `-S`), a virtio balloon device and a
//! QMP socket at `DIR/<vmid>.qmp`, as Proxmox lays them out. Killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A QEMU started by this test (killed on drop), with its QMP socket at `DIR/<vmid>.qmp`.
pub struct Qemu {
    pub child: Child,
    /// A directory of its own, removed on drop.
    pub dir: Option<PathBuf>,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One machine of `mem_mib` MiB in its own directory; `None` (said loudly) without QEMU, which
/// CI=true refuses.
pub fn qemu(tag: &str, vmid: u32, mem_mib: u32) -> Option<Qemu> {
    let dir = std::env::temp_dir().join(format!("keeper-qmp-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut q = qemu_in(&dir, tag, vmid, mem_mib)?;
    q.dir = Some(dir);
    Some(q)
}

/// The same, with its socket in `dir` (shared, left in place).
pub fn qemu_in(dir: &std::path::Path, tag: &str, vmid: u32, mem_mib: u32) -> Option<Qemu> {
    let bin = "qemu-system-x86_64";
    if Command::new(bin).arg("--version").output().is_err() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true: {bin} is needed (apt package qemu-system-x86)"
        );
        eprintln!("\n!!! SKIPPED {tag}: no {bin} !!!\n");
        return None;
    }
    let dir = dir.to_path_buf();
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
    let q = Qemu { child, dir: None };
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

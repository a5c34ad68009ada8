//! QEMU machines started by tests: no guest (prelaunch, `-S`), a virtio balloon device and a
//! QMP socket at `DIR/<vmid>.qmp`, as Proxmox lays them out. Killed on drop.

use std::{
    path::{Path, PathBuf},
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

/// The 6.1 cloud kernel `cargo xtask vm-test` keeps in its cache and the balloon guest
/// `cargo xtask test` builds beside it (xtask/src/vm/initramfs.rs), as (vmlinuz, initrd).
/// `None`, said loudly, when they are missing, which CI=true refuses.
pub fn cached_guest(test: &str) -> Option<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cache = PathBuf::from(home).join(".cache/the-keeper/vm-kernel");
    let found = (|| {
        let boot = std::fs::read_dir(cache.join("unpacked/boot")).ok()?;
        let vmlinuz = boot.flatten().find_map(|e| {
            let name = e.file_name();
            name.to_str()?.starts_with("vmlinuz-").then(|| e.path())
        })?;
        let initrd = cache.join("balloon-guest.gz");
        initrd.exists().then_some((vmlinuz, initrd))
    })();
    if found.is_none() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true: the guest kernel and balloon guest must be in the cache (cargo xtask test makes them)"
        );
        eprintln!(
            "\n!!! SKIPPED {test}: no guest kernel or balloon guest (run cargo xtask test once) !!!\n"
        );
    }
    found
}

/// The last line of a guest's console log that starts with `prefix`, without it.
pub fn last_line(console: &Path, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(console).ok()?;
    (text.lines().rev()).find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
}

/// pci-testdev's device id, as the guest's sysfs says it.
pub const TESTDEV: &str = "0x0005";

/// A guest of the balloon kernel and initramfs, its QMP socket at `dir/<vmid>.qmp` (the
/// Proxmox layout), its console in `dir/<vmid>.console`; with the stand-in GPU when `gpu`.
pub fn boot_guest(dir: &Path, guest: &(PathBuf, PathBuf), vmid: u32, gpu: bool) -> Qemu {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&guest.0)
        .arg("-initrd")
        .arg(&guest.1)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-serial")
        .arg(format!(
            "file:{}",
            dir.join(format!("{vmid}.console")).display()
        ))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join(format!("{vmid}.qmp")).display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if gpu {
        // The GPU's stand-in, and a device in slot 5 (a move there must fail).
        cmd.args(["-device", "pci-testdev,id=hostpci0"]);
        cmd.args(["-device", "virtio-balloon-pci,addr=0x5"]);
    }
    Qemu {
        child: cmd.spawn().unwrap(),
        dir: None,
    }
}

/// Whether the guest's last PCI line lists the stand-in GPU (`None`: no line yet).
pub fn has_testdev(dir: &Path, vmid: u32) -> Option<bool> {
    let ids = last_line(&dir.join(format!("{vmid}.console")), "PCI ")?;
    Some(ids.split_whitespace().any(|i| i == TESTDEV))
}

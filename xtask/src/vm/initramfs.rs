//! The guest's initramfs: busybox (static), the keeper and keeper-probe with the shared
//! libraries `ldd` names, the guest script and its policy, and an /init that mounts what the
//! keeper needs and runs the script.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// /init: mounts what the keeper needs, runs the guest script (`SCRIPT`, or the one the
/// kernel command line names: `vmtest_script=…` reaches /init as a variable), powers off.
const INIT: &str = r#"#!/bin/sh
mount -t proc none /proc
mount -t sysfs none /sys
mount -t devtmpfs none /dev
mount -t tmpfs none /tmp
mount -t tracefs none /sys/kernel/tracing
mount -t bpf none /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
/bin/sh /vm/${vmtest_script:-SCRIPT}
poweroff -f
"#;

const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "echo", "sleep", "poweroff", "ls", "grep", "sed", "tr", "head",
    "tail", "wc", "kill", "cut", "test", "printf", "uname", "insmod", "rm", "cp", "true", "false",
    "taskset", "sort", "date",
];

/// Builds `out` (gzip'd newc cpio) from the given binaries and the files of tests/vm/.
pub fn build(root: &Path, binaries: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let stage = keeper_stage(binaries, out)?;
    for f in [
        "checks.sh",
        "guest.sh",
        "policy.yaml",
        "irq.yaml",
        "release.yaml",
        "bench.sh",
        "bench.yaml",
        "bench-fallback.yaml",
        "repeat.yaml",
    ] {
        std::fs::copy(root.join("tests/vm").join(f), stage.join("vm").join(f))?;
    }
    pack(&stage, &INIT.replace("SCRIPT", "guest.sh"), out)
}

/// The second guest: the keeper, tests/vm/current.sh (and smt.sh, the third boot's) and their policies, the watchdog core and
/// i6300esb modules of `modules` (decompressed here: busybox's insmod reads plain objects),
/// policies/brain-vm.yaml, and whatever else is in `binaries` (the fake NVML library).
pub fn build_current(
    root: &Path,
    binaries: &[PathBuf],
    modules: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let stage = keeper_stage(binaries, out)?;
    for f in [
        "checks.sh",
        "current.sh",
        "watchdog.yaml",
        "remote.yaml",
        "faults.yaml",
        "guards.yaml",
        "smt.sh",
        "smt.yaml",
        "smt-shared.yaml",
    ] {
        std::fs::copy(root.join("tests/vm").join(f), stage.join("vm").join(f))?;
    }
    // The keeper inside the GPU VM: its policy as shipped, and the fake NVML library.
    std::fs::copy(
        root.join("policies/brain-vm.yaml"),
        stage.join("vm/brain-vm.yaml"),
    )?;
    std::fs::create_dir_all(stage.join("mod"))?;
    for m in ["watchdog", "i6300esb"] {
        copy_module(modules, "kernel/drivers/watchdog", m, &stage.join("mod"))?;
    }
    pack(&stage, &INIT.replace("SCRIPT", "current.sh"), out)
}

/// Module `name` of `modules/dir` into `to` as a plain object (decompressed here: busybox's
/// insmod reads plain objects).
fn copy_module(modules: &Path, dir: &str, name: &str, to: &Path) -> anyhow::Result<()> {
    let dir = modules.join(dir);
    let plain = dir.join(format!("{name}.ko"));
    let dest = to.join(format!("{name}.ko"));
    if plain.exists() {
        std::fs::copy(&plain, &dest)?;
        return Ok(());
    }
    let xz = dir.join(format!("{name}.ko.xz"));
    let out = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .output()
        .with_context(|| format!("xz -dc {} (apt package xz-utils)", xz.display()))?;
    if !out.status.success() {
        bail!(
            "xz -dc {} failed: {}",
            xz.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&dest, out.stdout)?;
    Ok(())
}

/// The host guest's initramfs (vm-test's `host`): busybox and virtio_blk, whose `init`
/// mounts the root file system's disk and hands over to its systemd.
pub fn build_switch_root(modules: &Path, init: &str, out: &Path) -> anyhow::Result<()> {
    let stage = stage_with_busybox(
        out,
        &["bin", "proc", "sys", "dev", "mod"],
        &[
            "sh",
            "mount",
            "umount",
            "insmod",
            "sleep",
            "mkdir",
            "echo",
            "switch_root",
            "poweroff",
        ],
    )?;
    copy_module(
        modules,
        "kernel/drivers/block",
        "virtio_blk",
        &stage.join("mod"),
    )?;
    pack(&stage, init, out)
}

/// A stage with busybox, the binaries and the libraries they need.
fn keeper_stage(binaries: &[PathBuf], out: &Path) -> anyhow::Result<PathBuf> {
    let stage = stage_with_busybox(
        out,
        &["bin", "proc", "sys", "dev", "tmp", "vm", "usr/bin"],
        APPLETS,
    )?;
    for bin in binaries {
        let name = bin.file_name().context("binary name")?;
        std::fs::copy(bin, stage.join("usr/bin").join(name))
            .with_context(|| format!("copying {}", bin.display()))?;
        for lib in shared_libraries(bin)? {
            let dest = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
            std::fs::create_dir_all(dest.parent().context("lib dir")?)?;
            std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    Ok(stage)
}

/// A fresh staging directory beside `out`, with `dirs` and busybox (and `applets` linked to
/// it) in bin/.
fn stage_with_busybox(out: &Path, dirs: &[&str], applets: &[&str]) -> anyhow::Result<PathBuf> {
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    for d in dirs {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no busybox (apt package busybox-static)")?;
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    for a in applets {
        std::os::unix::fs::symlink("busybox", stage.join("bin").join(a))?;
    }
    Ok(stage)
}

/// Writes `init` (mode 755) into the stage, packs it into `out` (gzip'd newc cpio) and
/// removes the stage.
fn pack(stage: &Path, init: &str, out: &Path) -> anyhow::Result<()> {
    std::fs::write(stage.join("init"), init)?;
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755))?;
    // find . | cpio -o -H newc | gzip -1 > out
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        stage.display(),
        out.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::inherit())
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed ({status}); are cpio and gzip installed?");
    }
    let _ = std::fs::remove_dir_all(stage);
    Ok(())
}

/// The absolute paths of the libraries (and loader) `ldd` lists for `bin`.
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        // A static binary: nothing to copy.
        return Ok(vec![]);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Where `cargo xtask test` leaves the balloon guest for tests/tests/vm_balloon.rs.
pub fn cached_balloon_guest() -> PathBuf {
    super::kernel::cache_dir().join("balloon-guest.gz")
}

/// A guest that only loads virtio_balloon (and what it needs, in `modinfo` order), says
/// `BALLOON READY` on its console, then `MEMTOTAL <kB>` and `PCI <device ids>` every 200 ms:
/// for the balloon benchmark, tests/tests/vm_balloon.rs and tests/tests/gpu_mutex.rs (a device
/// plugged in or out is seen in the PCI line).
pub fn balloon_guest(modules: &Path, out: &Path) -> anyhow::Result<()> {
    let virtio = modules.join("kernel/drivers/virtio");
    let depends = |m: &str| -> anyhow::Result<Vec<String>> {
        let o = Command::new("modinfo")
            .args(["-F", "depends"])
            .arg(virtio.join(format!("{m}.ko")))
            .output()
            .context("modinfo (apt package kmod)")?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .trim()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect())
    };
    let mut order: Vec<String> = Vec::new();
    let mut todo = vec!["virtio_pci".to_string(), "virtio_balloon".to_string()];
    while let Some(m) = todo.pop() {
        if order.contains(&m) {
            continue;
        }
        let deps: Vec<String> = depends(&m)?
            .into_iter()
            .filter(|d| !order.contains(d))
            .collect();
        if deps.is_empty() {
            order.push(m);
        } else {
            todo.push(m);
            todo.extend(deps);
        }
    }
    let stage = stage_with_busybox(
        out,
        &["bin", "proc", "sys", "mod"],
        &[
            "sh", "mount", "insmod", "sleep", "echo", "grep", "cut", "head", "cat",
        ],
    )?;
    let mut init = String::from("#!/bin/sh\nmount -t proc none /proc\nmount -t sysfs none /sys\n");
    for m in &order {
        std::fs::copy(
            virtio.join(format!("{m}.ko")),
            stage.join("mod").join(format!("{m}.ko")),
        )?;
        init.push_str(&format!("insmod /mod/{m}.ko\n"));
    }
    init.push_str("echo BALLOON READY\n");
    init.push_str(
        "while true; do echo \"MEMTOTAL $(grep MemTotal /proc/meminfo | cut -c10- | cut -dk -f1)\"; echo PCI $(cat /sys/bus/pci/devices/*/device); sleep 0.2; done\n",
    );
    pack(&stage, &init, out)
}

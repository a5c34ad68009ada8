//! `cargo xtask vm-test --only host`: a real host (issue 31). A Debian trixie root file system
//! built from Debian's packages with mmdebstrap (systemd as PID 1, journald, LXC, QEMU, busybox)
//! and cached like the guest kernels; trixie's 6.12 kernel boots it on 4 vCPUs as 2 cores × 2
//! threads with cgroup v2 and every controller. Each run boots a copy-on-write overlay of the
//! cached image (the image is never changed), with a second disk carrying the keeper's `.deb`
//! (from `cargo xtask package`), tests/vm/host.sh and its policies; a unit of the image runs the
//! script once the system is up, and the script says each named check on the serial console.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{Guest, PLAIN, kernel::Kernel};

/// The checks tests/vm/host.sh must report as passed.
pub const HOST_CHECKS: &[&str] = &[
    "host-conffile-observes",
    "host-systemd-ready",
    "host-systemd-watchdog",
    "host-systemd-reload",
    "host-systemd-stop-undone",
    "host-systemd-restart-replay",
    "host-journald-priority",
    "host-lxc-frozen",
    "host-lxc-evicted",
    "host-vcpus-one-per-core",
    "host-start-on-unit",
    "host-init-from-pve",
    "host-deb-purged",
];

/// The image's packages (trixie, without recommends) besides mmdebstrap's `apt` variant.
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "dbus",
    "udev",
    "kmod",
    "lxc",
    "busybox-static",
    "qemu-system-x86",
    "procps",
    "psmisc",
    "iproute2",
    "stress-ng",
];

/// Runs tests/vm/host.sh from the second disk once the system is up (`Type=simple`: the boot
/// does not wait for it, so the script can wait for the boot), on the serial console.
const VMTEST_UNIT: &str = "[Unit]
Description=The keeper's host checks (cargo xtask vm-test --only host)
After=basic.target

[Service]
Type=simple
ExecStart=/bin/sh -c 'mkdir -p /vm && mount -o ro /dev/vdb /vm && exec /bin/sh /vm/host.sh'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
";

/// Units masked in the image: timers and services that would run during the checks (apt's,
/// e2scrub's), LXC's bridge (no network here) and the serial login prompt.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "lxc-net.service",
    // Autostarts containers at boot (none here: the script starts its own); 43 s of the boot.
    "lxc.service",
    "serial-getty@ttyS0.service",
];

/// The initramfs's /init: virtio_blk loaded, the image's root mounted, systemd started.
const INIT: &str = r#"#!/bin/sh
mount -t proc none /proc
mount -t sysfs none /sys
mount -t devtmpfs none /dev
insmod /mod/virtio_blk.ko
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "VMTEST FAIL host-root: /dev/vda did not mount"; echo "VMTEST DONE 1"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

/// The cached root file system image for `kernel` (built if the cache lacks it: mmdebstrap,
/// then the unit, the masks and the kernel's modules, then `mke2fs -d`). Its name carries a
/// digest of what went into it, so a change here builds a new one.
pub fn ensure_rootfs(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = super::kernel::cache_dir().with_file_name("vm-host");
    std::fs::create_dir_all(&dir)?;
    let recipe = format!("{PACKAGES:?}{VMTEST_UNIT}{MASKED:?}{}", kernel.release);
    let digest = fnv(recipe.as_bytes());
    let image = dir.join(format!("rootfs-{digest:016x}.img"));
    if image.exists() {
        return Ok(image);
    }
    eprintln!("xtask: vm-test: building the host's root file system (mmdebstrap, trixie)");
    let tree = dir.join("rootfs.d");
    let _ = std::fs::remove_dir_all(&tree);
    let mirror = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main";
    crate::run(
        Command::new("mmdebstrap")
            .args(["--mode=root", "--variant=apt", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("--aptopt=Apt::Install-Recommends \"false\"")
            .arg("trixie")
            .arg(&tree)
            .arg(mirror),
    )
    .context("mmdebstrap (apt package mmdebstrap; is the Debian archive reachable?)")?;
    customize(&tree, kernel)?;
    let partial = image.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    crate::run(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "hive", "-d"])
            .arg(&tree)
            .arg(&partial)
            .arg("3G"),
    )?;
    std::fs::rename(&partial, &image)?;
    let _ = std::fs::remove_dir_all(&tree);
    // Older images of this cache: replaced by this one.
    for e in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("rootfs-") && e.path() != image {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(image)
}

/// The unit that runs the checks, the masks, fstab, the host name, and the kernel's modules.
fn customize(tree: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    let units = tree.join("etc/systemd/system");
    std::fs::write(units.join("vmtest.service"), VMTEST_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/vmtest.service",
        wants.join("vmtest.service"),
    )?;
    for unit in MASKED {
        let link = units.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", link)?;
    }
    std::fs::write(tree.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")?;
    std::fs::write(tree.join("etc/hostname"), "hive\n")?;
    let modules = tree.join("usr/lib/modules");
    std::fs::create_dir_all(&modules)?;
    crate::run(
        Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules)
            .arg(modules.join(&kernel.release)),
    )?;
    crate::run(
        Command::new("depmod")
            .arg("-b")
            .arg(tree)
            .arg(&kernel.release),
    )?;
    Ok(())
}

/// A 64-bit FNV-1a digest (the cache key; no crate for one line).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Boots the host: the cached image under an overlay, the second disk with the `.deb`, the
/// probe, tests/vm/host.sh, checks.sh and the host policies; its checks judged.
pub fn run(root: &Path, kernel: &Kernel, deb: &Path) -> anyhow::Result<()> {
    let image = ensure_rootfs(kernel)?;
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let overlay = work.join("host-root.qcow2");
    let _ = std::fs::remove_file(&overlay);
    crate::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(&overlay),
    )
    .context("qemu-img (apt package qemu-utils)")?;
    let disk = work.join("host-vm.img");
    vm_disk(root, deb, &disk)?;
    let initrd = work.join("host-initramfs.gz");
    super::initramfs::build_switch_root(&kernel.modules, INIT, &initrd)?;
    let drives = [
        format!("file={},if=virtio,format=qcow2", overlay.display()),
        format!("file={},if=virtio,format=raw,readonly=on", disk.display()),
    ];
    let extra = ["-drive", &drives[0], "-drive", &drives[1]];
    let host = Guest {
        smp: "4,sockets=1,cores=2,threads=2",
        script: None,
        vars: "",
        timeout: Duration::from_secs(900),
        ..PLAIN
    };
    let boot = super::boot(kernel, &initrd, &host, &extra, None);
    let _ = std::fs::remove_file(&overlay);
    boot?.verdict(HOST_CHECKS, &format!("{} (host, systemd)", kernel.release))
}

/// The second disk: an ext4 image of the `.deb`, the probe, the script and its policies.
fn vm_disk(root: &Path, deb: &Path, out: &Path) -> anyhow::Result<()> {
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(deb, stage.join("keeper.deb"))?;
    std::fs::copy(
        root.join("target/release/keeper-probe"),
        stage.join("keeper-probe"),
    )?;
    for f in ["checks.sh", "host.sh", "host.yaml"] {
        std::fs::copy(root.join("tests/vm").join(f), stage.join(f))
            .with_context(|| format!("copying tests/vm/{f}"))?;
    }
    let _ = std::fs::remove_file(out);
    crate::run(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "vmtest", "-d"])
            .arg(&stage)
            .arg(out)
            .arg("128M"),
    )?;
    let _ = std::fs::remove_dir_all(&stage);
    if !out.exists() {
        bail!("mke2fs left no {}", out.display());
    }
    Ok(())
}

//! `rules.gpu_mutex`'s move on real QEMU guests: an emulated PCI device (QEMU's `pci-testdev`,
//! device id 0x0005) stands in for the passthrough GPU. The holder boots with it; the keeper's
//! actuator unplugs it (QMP `device_del`, the guest's ACPI hotplug ejects it) and plugs it into
//! the borrower (`device_add`); each guest prints the ids of its PCI devices on its console, so
//! the move is seen from inside. A plug that fails (the target VM is not running) puts the
//! device back where it was; the journal's replay (the exit, or the next keeper) gives it back
//! to its holder.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use integration_test::{
    qemu::{Qemu, cached_guest, last_line},
    rig::eventually,
};
use keeper::{
    act::{Actuators, Effect, journal::Journal, passthrough::Ends},
    device::cgroupfs::CgroupFs,
};

/// pci-testdev's device id, as the guest's sysfs says it.
const TESTDEV: &str = "0x0005";

/// A guest of the balloon kernel and initramfs, its QMP socket at `dir/<vmid>.qmp` (the
/// Proxmox layout), its console in `dir/<vmid>.console`; with the stand-in GPU when `gpu`.
fn boot(
    dir: &Path,
    guest: &(std::path::PathBuf, std::path::PathBuf),
    vmid: u32,
    gpu: bool,
) -> Qemu {
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
        cmd.args(["-device", "pci-testdev,id=hostpci0"]);
    }
    Qemu {
        child: cmd.spawn().unwrap(),
        dir: None,
    }
}

/// Whether the guest's last PCI line lists the stand-in GPU (`None`: no line yet).
fn has_gpu(dir: &Path, vmid: u32) -> Option<bool> {
    let ids = last_line(&dir.join(format!("{vmid}.console")), "PCI ")?;
    Some(ids.split_whitespace().any(|i| i == TESTDEV))
}

fn device() -> BTreeMap<String, String> {
    [("id", "hostpci0"), ("driver", "pci-testdev")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
}

#[test]
fn the_gpu_moves_between_running_guests_and_goes_back_to_its_holder() {
    let Some(guest) = cached_guest("the GPU mutex test") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("keeper-gpu-mutex-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_holder, _borrower) = (
        boot(&dir, &guest, 100, true),
        boot(&dir, &guest, 104, false),
    );
    let booted = || has_gpu(&dir, 100).is_some() && has_gpu(&dir, 104).is_some();
    assert!(
        eventually(Duration::from_secs(90), booted),
        "the guests never printed PCI lines"
    );
    assert_eq!(
        (has_gpu(&dir, 100), has_gpu(&dir, 104)),
        (Some(true), Some(false))
    );

    let journal = Journal::open(&dir.join("state")).unwrap();
    let mut act = Actuators::new(CgroupFs::at(dir.join("no-cgroups")), journal, false, None);
    act.qmp_dir = dir.clone();
    let deadline = Duration::from_secs(30);
    let lend = Ends {
        from_vmid: 100,
        to_vmid: 104,
        back: false,
    };
    let moved = act.move_gpu(&lend, &device(), deadline).unwrap();
    assert_eq!(
        moved,
        Effect::Done("moved the GPU (hostpci0) from vm 100 to vm 104".into())
    );
    let lent = || has_gpu(&dir, 100) == Some(false) && has_gpu(&dir, 104) == Some(true);
    assert!(
        eventually(Duration::from_secs(10), lent),
        "the guests do not see the move"
    );

    // To a VM that is not running: the plug fails, and the device goes back where it was.
    let nowhere = Ends {
        from_vmid: 104,
        to_vmid: 105,
        back: false,
    };
    let err = act
        .move_gpu(&nowhere, &device(), deadline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("105.qmp: no such socket") && err.contains("plugged back into vm 104"),
        "{err}"
    );
    assert!(
        eventually(Duration::from_secs(10), lent),
        "not back with vm 104"
    );

    // The exit's undo: the GPU back with its holder (the failed move's own entry finds it
    // there and has nothing left to do).
    let restored = act.restore_all().unwrap();
    assert_eq!(restored.len(), 1, "{restored:#?}");
    assert!(
        restored[0].starts_with("the GPU (hostpci0) back with"),
        "{restored:?}"
    );
    let home = || has_gpu(&dir, 100) == Some(true) && has_gpu(&dir, 104) == Some(false);
    assert!(
        eventually(Duration::from_secs(10), home),
        "the holder did not get it back"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

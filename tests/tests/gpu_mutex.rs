//! `rules.gpu_mutex`'s move on real QEMU guests: an emulated PCI device (QEMU's `pci-testdev`,
//! device id 0x0005) stands in for the passthrough GPU. The holder boots with it; the keeper's
//! actuator unplugs it (QMP `device_del`, the guest's ACPI hotplug ejects it) and plugs it into
//! the borrower (`device_add`); each guest prints the ids of its PCI devices on its console, so
//! the move is seen from inside. A plug that fails (the target's slot is taken) puts the device
//! back where it was; the journal's replay (the exit, or the next keeper) gives it back to its
//! holder. A borrower that is not running gets the GPU by a planned restart through the
//! Proxmox API (its stub): the holder hibernated, `hostpci0` moved between the two
//! configurations, the borrower started; a step that fails is taken back.

use std::{collections::BTreeMap, path::Path, time::Duration};

use integration_test::{
    pve_stub::{Mode, PveStub, StubVm},
    qemu::{boot_guest as boot, cached_guest, has_testdev as has_gpu},
    rig::eventually,
};
use keeper::{
    act::{Actuators, Effect, journal::Journal, passthrough::Ends, vm_stop::ProxmoxHands},
    device::{cgroupfs::CgroupFs, proxmox::Client},
};

fn device() -> BTreeMap<String, String> {
    [("id", "hostpci0"), ("driver", "pci-testdev")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
}

fn actuators(dir: &Path) -> Actuators {
    let journal = Journal::open(&dir.join("state")).unwrap();
    let mut act = Actuators::new(CgroupFs::at(dir.join("no-cgroups")), journal, false, None);
    act.qmp_dir = dir.to_path_buf();
    act
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keeper-gpu-mutex-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_gpu_moves_between_running_guests_and_goes_back_to_its_holder() {
    let Some(guest) = cached_guest("the GPU mutex test") else {
        return;
    };
    let dir = scratch("qmp");
    let (holder, _borrower) = (
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

    let mut act = actuators(&dir);
    let deadline = Duration::from_secs(30);
    let lend = Ends {
        from_vmid: 100,
        to_vmid: 104,
        back: false,
        config: None,
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

    // A plug that fails (slot 5 of vm 100 is taken): the device goes back where it was.
    let occupied = Ends {
        from_vmid: 104,
        to_vmid: 100,
        back: true,
        config: None,
    };
    let mut at_slot_5 = device();
    at_slot_5.insert("addr".into(), "0x5".into());
    let err = act
        .move_gpu(&occupied, &at_slot_5, deadline)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`device_add` refused") && err.contains("plugged back into vm 104"),
        "{err}"
    );
    assert!(
        eventually(Duration::from_secs(10), lent),
        "not back with vm 104"
    );

    // The exit's undo: the GPU back with its holder.
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

    // Lent again, then the holder goes down: the exit takes the device from the borrower (the
    // holder's next start takes it from its configuration). Before, the lend was dropped and
    // the borrower kept it.
    act.move_gpu(&lend, &device(), deadline).unwrap();
    assert!(eventually(Duration::from_secs(10), lent), "not lent again");
    drop(holder);
    let _ = std::fs::remove_file(dir.join("100.qmp"));
    let restored = act.restore_all().unwrap();
    assert!(
        restored.iter().any(|r| r.contains("its holder")),
        "{restored:#?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || has_gpu(&dir, 104)
            == Some(false)),
        "the borrower kept the GPU of a holder that is down"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const HOSTPCI: &str = "0000:01:00.0,pcie=1";

#[test]
fn a_borrower_that_is_not_running_gets_the_gpu_by_a_planned_restart() {
    let stub = PveStub::start(
        "hive",
        [
            (100, StubVm::running(4 << 30).with_gpu(HOSTPCI)),
            (104, StubVm::stopped(8 << 30)),
        ],
    );
    let dir = scratch("restart");
    let file = stub.write_config(&dir.join("pve"), None);
    let mut act = actuators(&dir);
    act.proxmox = Some(ProxmoxHands {
        client: Client::from_file(&file).unwrap(),
        file,
    });
    let gpu = |vm: u32| stub.vm(vm).hostpci.get("hostpci0").cloned();
    let lend = Ends {
        from_vmid: 100,
        to_vmid: 104,
        back: false,
        config: Some(HOSTPCI.into()),
    };
    let done = act
        .move_gpu(&lend, &device(), Duration::from_secs(5))
        .unwrap();
    let Effect::Done(text) = done else {
        panic!("{done:?}")
    };
    assert!(text.contains("vm 100 hibernated, hostpci0 out of vm 100's configuration, hostpci0 into vm 104's configuration"), "{text}");
    assert_eq!((stub.vm(100).status, gpu(100)), ("stopped", None));
    assert_eq!(
        (stub.vm(104).status, gpu(104)),
        ("running", Some(HOSTPCI.into()))
    );

    // To a VM PVE does not know: hibernated and taken out, then the add fails and both steps
    // are taken back (the holder has its GPU and runs again).
    let back = Ends {
        from_vmid: 104,
        to_vmid: 100,
        back: true,
        config: Some(HOSTPCI.into()),
    };
    act.move_gpu(&back, &device(), Duration::from_secs(5))
        .unwrap();
    let nowhere = Ends {
        from_vmid: 100,
        to_vmid: 105,
        back: false,
        config: Some(HOSTPCI.into()),
    };
    let err = act
        .move_gpu(&nowhere, &device(), Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("105.conf' does not exist") && err.contains("taken back: vm 100 hibernated"),
        "{err}"
    );
    assert_eq!(
        (stub.vm(100).status, gpu(100)),
        ("running", Some(HOSTPCI.into()))
    );

    // Lent again, then the exit: the journal's replay gives it back to the holder.
    act.move_gpu(&lend, &device(), Duration::from_secs(5))
        .unwrap();
    let restored = act.restore_all().unwrap();
    assert!(
        restored
            .iter()
            .any(|r| r.starts_with("vm 104's hostpci0 moved to vm 100")),
        "{restored:#?}"
    );
    assert_eq!(
        (stub.vm(100).status, gpu(100)),
        ("running", Some(HOSTPCI.into()))
    );
    // As it was before the lend: stopped, not hibernated (before: `lock: suspended`, its
    // state saved, where it had been stopped).
    assert_eq!(
        (stub.vm(104).status, gpu(104), stub.vm(104).lock),
        ("stopped", None, None)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A planned restart whose hibernation PVE carries out but never answers (the request times
/// out): the holder is hibernated and the move fails before anything else. Before, nothing
/// journaled that hibernation (the lend's line says the key moved, and the key never did):
/// the exit left the holder hibernated for good. Now the hibernation is journaled before it is
/// asked, and the exit starts the VM again.
#[test]
fn a_hibernation_that_gets_no_answer_is_undone_at_the_exit() {
    let stub = PveStub::start(
        "hive",
        [
            (100, StubVm::running(4 << 30).with_gpu(HOSTPCI)),
            (104, StubVm::stopped(8 << 30)),
        ],
    );
    let dir = scratch("restart-hang");
    let file = stub.write_config(&dir.join("pve"), None);
    let mut act = actuators(&dir);
    act.proxmox = Some(ProxmoxHands {
        client: Client::from_file(&file).unwrap(),
        file,
    });
    let lend = Ends {
        from_vmid: 100,
        to_vmid: 104,
        back: false,
        config: Some(HOSTPCI.into()),
    };
    stub.set_mode(Mode::HangAfterWrite);
    assert!(
        act.move_gpu(&lend, &device(), Duration::from_secs(5))
            .is_err()
    );
    stub.set_mode(Mode::Normal);
    assert_eq!(
        stub.vm(100).status,
        "stopped",
        "the stub never hibernated it"
    );
    let restored = act.restore_all().unwrap();
    assert_eq!(
        stub.vm(100).status,
        "running",
        "the holder stayed hibernated: {restored:#?}"
    );
    assert!(stub.vm(100).hostpci.contains_key("hostpci0"));
    let _ = std::fs::remove_dir_all(&dir);
}

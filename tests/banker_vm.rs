//! The Banker's own threads (root): a real QEMU (TCG, its threads named with
//! `debug-threads=on`) in the trading-core owner's cgroup; the keeper pins its vCPU thread to
//! the trading core and keeps its other threads on the housekeeping core, and puts every
//! thread back at exit.

mod support;

use std::time::Duration;

use support::{rig::*, *};

/// Each thread of `pid`: its name and its CPU affinity.
fn threads(pid: u32) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((comm.trim().to_string(), affinity(tid)))
        })
        .collect()
}

#[test]
fn the_banker_vms_vcpus_are_pinned_and_its_other_threads_kept_off_the_trading_core() {
    if !privileged(
        "the_banker_vms_vcpus_are_pinned_and_its_other_threads_kept_off_the_trading_core",
    ) {
        return;
    }
    let rig = Rig::new("vcpu");
    let banker = TestCgroup {
        rel: rig.rel("banker"),
        dir: rig.cg("banker"),
    };
    let args = [
        "-name",
        "banker,debug-threads=on",
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "64",
        "-display",
        "none",
        "-nodefaults",
        "-S",
    ];
    let mut qemu = spawn_on("qemu-system-x86_64", &args, &[0, 1], Some(&banker));
    std::mem::forget(banker); // the rig's scope removes it
    let pid = qemu.id();
    let vcpu = |t: &[(String, String)]| t.iter().find(|(c, _)| c == "CPU 0/TCG").cloned();
    assert!(
        eventually(Duration::from_secs(10), || vcpu(&threads(pid)).is_some()),
        "no `CPU 0/TCG` thread in QEMU: {:?}",
        threads(pid)
    );
    assert!(
        threads(pid).iter().all(|(_, a)| a == "0-1"),
        "{:?}",
        threads(pid)
    );
    let keeper = rig.keeper(&["--for", "5s"]);
    let placed = |t: &[(String, String)]| {
        t.iter()
            .all(|(c, a)| if c == "CPU 0/TCG" { a == "1" } else { a == "0" })
    };
    assert!(
        eventually(Duration::from_secs(4), || placed(&threads(pid))),
        "vCPU not on 1 or other threads not on 0: {:?}",
        threads(pid)
    );
    let log = keeper.finish();
    assert!(
        log.iter()
            .any(|l| l.contains("pinned 1 vCPU threads one to one on the trading cores 1")),
        "{log:#?}"
    );
    // At exit every thread has its own affinity back.
    let after = threads(pid);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(after.iter().all(|(_, a)| a == "0-1"), "{after:?}");
}

//! The Banker's own threads (root): a real QEMU (TCG, its threads named with
//! `debug-threads=on`) in the trading-core owner's cgroup; the keeper pins its vCPU thread to
//! the trading core, in SCHED_FIFO 1 (`vcpu_priority: fifo:1`; this kernel's RT throttling is
//! on, the guard), keeps its other threads on the housekeeping core, and puts every thread's
//! affinity and policy back at exit.

use std::time::Duration;

use integration_test::{rig::*, *};

/// A thread's scheduling policy and real-time priority (/proc/<pid>/task/<tid>/stat fields 41
/// and 40).
fn scheduler(pid: u32, tid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields from 3 on: rt_priority is field 40, policy 41.
    let at = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (at(41), at(40))
}

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

/// A rig whose Banker has `vcpu_priority: "fifo:1"`, and its VM: QEMU paused (`-S`), its
/// threads named (`debug-threads=on`), `-accel ACCEL -smp SMP`, in the Banker's cgroup.
fn banker_vm(tag: &str, accel: &str, smp: &str) -> (Rig, std::process::Child) {
    let rig = banker_rig(tag);
    let qemu = start_vm(&rig, accel, smp);
    (rig, qemu)
}

/// A rig whose Banker has `vcpu_priority: "fifo:1"`, its cgroup made (the Banker present).
fn banker_rig(tag: &str) -> Rig {
    let rig = Rig::new(tag);
    rig.edit_policy(
        "owns_trading_cores: true }",
        "owns_trading_cores: true, vcpu_priority: \"fifo:1\" }",
    );
    std::mem::forget(rig.workload("banker")); // the rig's scope removes it
    rig
}

/// The Banker's VM started in its cgroup.
fn start_vm(rig: &Rig, accel: &str, smp: &str) -> std::process::Child {
    let banker = rig.workload("banker");
    let args = [
        "-name",
        "banker,debug-threads=on",
        "-accel",
        accel,
        "-smp",
        smp,
        "-m",
        "64",
        "-display",
        "none",
        "-nodefaults",
        "-S",
    ];
    let qemu = spawn_on("qemu-system-x86_64", &args, &[0, 1], Some(&banker));
    std::mem::forget(banker); // the rig's scope removes it
    qemu
}

#[test]
fn the_banker_vms_vcpus_are_pinned_and_its_other_threads_kept_off_the_trading_core() {
    if !privileged(
        "the_banker_vms_vcpus_are_pinned_and_its_other_threads_kept_off_the_trading_core",
    ) {
        return;
    }
    // Where the kernel's RT throttling is off (-1) the keeper sets no SCHED_FIFO and says
    // why: the expectation is read from this host.
    let rt_runtime = std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us").unwrap();
    let rt_guarded = rt_runtime.trim() != "-1";
    let (rig, mut qemu) = banker_vm("vcpu", "tcg", "1");
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
    let vcpu_tid = tid_named(pid, "CPU 0/TCG").unwrap();
    assert_eq!(scheduler(pid, vcpu_tid), (0, 0), "SCHED_OTHER before");
    let keeper = rig.keeper(&["--for", "5s"]);
    let placed = |t: &[(String, String)]| {
        t.iter().all(|(c, a)| {
            if c == "CPU 0/TCG" {
                a == trading()
            } else {
                a == housekeeping()
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(4), || placed(&threads(pid))),
        "vCPU not on {} or other threads not on {}: {:?}",
        trading(),
        housekeeping(),
        threads(pid)
    );
    let (want, said) = if rt_guarded {
        ((1, 1), "1 vCPUs at SCHED_FIFO 1")
    } else {
        ((0, 0), "vcpu_priority not applied")
    };
    assert_eq!(
        scheduler(pid, vcpu_tid),
        want,
        "SCHED_FIFO 1 while protected (SCHED_OTHER without RT throttling)"
    );
    let log = keeper.finish();
    assert!(
        log.iter().any(|l| l.contains(&format!(
            "pinned 1 vCPU threads one to one on the trading cores {}",
            trading()
        ))) && log.iter().any(|l| l.contains(said)),
        "{log:#?}"
    );
    assert_eq!(
        scheduler(pid, vcpu_tid),
        (0, 0),
        "SCHED_OTHER again after the exit"
    );
    // At exit every thread has its own affinity back.
    let after = threads(pid);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(after.iter().all(|(_, a)| a == "0-1"), "{after:?}");
}

/// The shipped policy's Banker has four vCPUs and `vcpu_priority: fifo:1`; on a host with one
/// trading core all four are pinned there. Stacked at SCHED_FIFO, one spinning vCPU would hold
/// the other three off the core for good (FIFO never shares a core between equals) and the
/// guest would livelock: they stay SCHED_OTHER, and the log says why.
#[test]
fn vcpus_sharing_a_trading_core_are_never_stacked_at_sched_fifo() {
    if !privileged("vcpus_sharing_a_trading_core_are_never_stacked_at_sched_fifo") {
        return;
    }
    let (rig, mut qemu) = banker_vm("vcpu4", "tcg,thread=multi", "4");
    let pid = qemu.id();
    let vcpus = || -> Vec<u32> {
        (0..4)
            .filter_map(|n| tid_named(pid, &format!("CPU {n}/TCG")))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || vcpus().len() == 4),
        "not four vCPU threads: {:?}",
        threads(pid)
    );
    let keeper = rig.keeper(&["--for", "4s"]);
    assert!(
        eventually(Duration::from_secs(3), || vcpus()
            .iter()
            .all(|t| affinity(*t) == trading())),
        "the vCPUs were not pinned to CPU {}: {:?}",
        trading(),
        threads(pid)
    );
    let classes: Vec<(u32, u32)> = vcpus().iter().map(|t| scheduler(pid, *t)).collect();
    let log = keeper.finish();
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(
        classes.iter().all(|c| *c == (0, 0)),
        "vCPUs stacked on one core at SCHED_FIFO: {classes:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("4 vCPUs sharing a core left at SCHED_OTHER")),
        "{log:#?}"
    );
    // Before: "pinned 4 vCPU threads one to one on the trading cores {trading}".
    assert!(
        log.iter()
            .any(|l| l
                .contains("4 of the VM's vCPUs sharing a core (more vCPUs than trading cores)")),
        "{log:#?}"
    );
}

/// The Banker's VM started after the keeper protected its (empty) scope, as when Proxmox makes
/// the scope a moment before QEMU's vCPU threads, or a vCPU is hot-plugged: before the fix its
/// vCPU thread was never pinned nor made real-time (the cores were protected again only when
/// the owner, the cores or a newcomer changed), and its other threads ran on the trading core.
#[test]
fn a_vcpu_thread_born_after_the_protection_is_pinned_too() {
    if !privileged("a_vcpu_thread_born_after_the_protection_is_pinned_too") {
        return;
    }
    let rt_guarded = std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us")
        .is_ok_and(|r| r.trim() != "-1");
    let rig = banker_rig("vcpu-late");
    let mut keeper = rig.keeper(&["--for", "8s"]);
    keeper.wait_for("first pass done", Duration::from_secs(10));
    let mut qemu = start_vm(&rig, "tcg", "1");
    let pid = qemu.id();
    let placed = |t: &[(String, String)]| {
        t.iter().any(|(c, _)| c == "CPU 0/TCG")
            && t.iter().all(|(c, a)| {
                if c == "CPU 0/TCG" {
                    a == trading()
                } else {
                    a == housekeeping()
                }
            })
    };
    let ok = eventually(Duration::from_secs(6), || placed(&threads(pid)));
    let seen = threads(pid);
    let class = tid_named(pid, "CPU 0/TCG").map(|t| scheduler(pid, t));
    let log = keeper.finish();
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(ok, "the late vCPU was not placed: {seen:?}\n{log:#?}");
    let want = if rt_guarded { (1, 1) } else { (0, 0) };
    assert_eq!(
        class,
        Some(want),
        "SCHED_FIFO 1 where RT throttling guards it"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("vCPU threads changed (0 → 1)")),
        "{log:#?}"
    );
}

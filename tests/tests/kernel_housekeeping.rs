//! Kernel work off the trading core, on the real kernel.
//!
//! `host.irq_guard`: every interrupt line allowed on the trading core
//! (CPU 1; this VM's disk and network lines fire there) is moved to the housekeeping core while
//! the keeper protects it, moved again when something puts it back (a driver reset,
//! irqbalance), a managed line that refuses (EIO) is named once and left, and at exit each
//! line is allowed where it was before. Block I/O completes on the submitting CPU meanwhile
//! (`queue/rq_affinity` 2), put back at exit. The test puts every line and disk back itself,
//! even failing.
//!
//! `host.workqueue_guard`: the unbound workqueues run on the housekeeping core while the keeper
//! runs; a keeper killed with -9 leaves the mask to the next start, which puts it back.

use std::time::Duration;

use integration_test::{
    irqs::{SavedIrqs, allows_cpu1, irq_affinity as affinity},
    privileged,
    rig::{Rig, eventually},
};

#[test]
fn movable_irqs_leave_the_trading_core_come_back_when_put_back_and_are_restored_at_exit() {
    if !privileged("movable_irqs_leave_the_trading_core") {
        return;
    }
    let saved = SavedIrqs::now();
    let on_cpu1: Vec<u32> = saved
        .0
        .iter()
        .filter(|(_, a)| allows_cpu1(a))
        .map(|(irq, _)| *irq)
        .collect();
    assert!(
        !on_cpu1.is_empty(),
        "no IRQ may fire on CPU 1 here: {:?}",
        saved.0
    );
    let disks = SavedCompletions::now();
    assert!(!disks.0.is_empty(), "no disk here");
    let rig = Rig::new("irq");
    rig.with_host("irq_guard: true");
    let mut keeper = rig.keeper(&["--tick", "200ms"]);
    // Block I/O completes on the submitting CPU: a managed disk line's completion work (the
    // BLOCK softirq) leaves the trading core with it.
    assert!(
        eventually(Duration::from_secs(3), || disks.now_all("2")),
        "rq_affinity: {:?}",
        disks.current()
    );

    // Each line is moved, or named once as managed.
    let managed = |lines: &[String], irq: u32| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("IRQ {irq} (")) && l.contains("managed by the kernel"))
            .count()
    };
    let settled = eventually(Duration::from_secs(5), || {
        keeper.drain();
        on_cpu1
            .iter()
            .all(|irq| affinity(*irq) == "0" || managed(&keeper.lines, *irq) > 0)
    });
    let moved: Vec<u32> = on_cpu1
        .iter()
        .copied()
        .filter(|i| affinity(*i) == "0")
        .collect();
    assert!(
        settled,
        "{:?}: {:#?}",
        on_cpu1
            .iter()
            .map(|i| (i, affinity(*i)))
            .collect::<Vec<_>>(),
        keeper.lines
    );
    assert!(!moved.is_empty(), "no IRQ moved: {:#?}", keeper.lines);

    // Put back on the trading core (a driver reset, irqbalance): moved again.
    let irq = moved[0];
    std::fs::write(format!("/proc/irq/{irq}/smp_affinity_list"), &saved.0[&irq]).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || affinity(irq) == "0"),
        "IRQ {irq} left on CPUs {}",
        affinity(irq)
    );

    let log = keeper.stop();
    for i in &on_cpu1 {
        // Managed lines are named once however many ticks passed.
        assert!(managed(&log, *i) <= 1, "IRQ {i} reported again: {log:#?}");
        assert_eq!(affinity(*i), saved.0[i], "IRQ {i} not put back at exit");
    }
    assert_eq!(disks.current(), disks.0, "rq_affinity not put back at exit");
    eprintln!(
        "moved {moved:?}, managed {:?}",
        on_cpu1
            .iter()
            .filter(|i| managed(&log, **i) == 1)
            .collect::<Vec<_>>()
    );
}

/// Each disk's `queue/rq_affinity` at the start, written back on drop.
struct SavedCompletions(Vec<(std::path::PathBuf, String)>);

impl SavedCompletions {
    fn now() -> Self {
        let mut paths: Vec<_> = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .map(|d| d.path().join("queue/rq_affinity"))
            .filter(|p| p.exists())
            .collect();
        paths.sort();
        SavedCompletions(
            paths
                .into_iter()
                .map(|p| {
                    let v = std::fs::read_to_string(&p).unwrap().trim().to_string();
                    (p, v)
                })
                .collect(),
        )
    }

    fn current(&self) -> Vec<(std::path::PathBuf, String)> {
        (self.0.iter())
            .map(|(p, _)| {
                (
                    p.clone(),
                    std::fs::read_to_string(p).unwrap().trim().to_string(),
                )
            })
            .collect()
    }

    fn now_all(&self, v: &str) -> bool {
        self.current().iter().all(|(_, c)| c == v)
    }
}

impl Drop for SavedCompletions {
    fn drop(&mut self) {
        for (p, v) in &self.0 {
            let _ = std::fs::write(p, v);
        }
    }
}

const CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";

fn cpumask() -> String {
    std::fs::read_to_string(CPUMASK).unwrap().trim().to_string()
}

/// The workqueue mask at the start, written back on drop.
struct SavedMask(String);

impl Drop for SavedMask {
    fn drop(&mut self) {
        if cpumask() != self.0 {
            let _ = std::fs::write(CPUMASK, &self.0);
        }
    }
}

#[test]
fn unbound_workqueues_leave_the_trading_core_and_come_back_after_a_kill_and_a_restart() {
    if !privileged("unbound_workqueues_leave_the_trading_core") {
        return;
    }
    let saved = SavedMask(cpumask());
    assert_eq!(saved.0, "3", "this 2-CPU VM runs unbound work on both CPUs");
    let rig = Rig::new("wq");
    rig.with_host("workqueue_guard: true");
    let keeper = rig.keeper(&["--tick", "200ms"]);
    assert!(
        eventually(Duration::from_secs(3), || cpumask() == "1"),
        "workqueues still on {}",
        cpumask()
    );
    // Killed: the mask stays as it was set, its record in the journal.
    keeper.kill9();
    assert_eq!(cpumask(), "1");
    // The next keeper (whatever its policy says) puts it back at its start.
    let policy = rig.dir.join("policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace(", workqueue_guard: true", "")).unwrap();
    let keeper = rig.keeper(&["--tick", "200ms"]);
    assert_eq!(cpumask(), saved.0);
    keeper.stop();
    assert_eq!(cpumask(), saved.0);
}

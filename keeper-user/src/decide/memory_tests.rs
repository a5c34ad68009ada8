//! Engine tests of the memory ladder: memory.high → freeze → balloon → stop a VM, and its undo
//! in reverse (start the VM, then deflate, thaw, restore memory.high); never the trading VM.

use jiff::Timestamp;

use super::*;
use crate::policy::{HostFacts, Policy, load};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_773_100_000 + s).unwrap()
}

/// The memory ladder's actions (the Banker's trading-core protection left out).
fn names(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter(|a| !matches!(a.kind, ActionKind::ProtectTradingCores { .. }))
        .map(|a| a.kind.to_string())
        .collect()
}

const LADDER: &str = "version: 1
host: { time_zone: Europe/Paris, trading_cores: \"1\", housekeeping_cores: \"0\" }
workloads:
  - { name: banker, rank: 2, match: { vmid: 100 }, owns_trading_cores: true }
  - { name: eva, rank: 3, match: { vmid: 101 } }
  - { name: batch, rank: 4, match: { cgroup: batch.slice } }
  - { name: lab, rank: 5, match: { vmid: 102 } }
rules:
  memory: { high_above: 10, freeze_above: 20, balloon_above: 30, STOP release_after: 10s }
";

fn policy(stop: &str) -> Policy {
    let text = LADDER.replace("STOP", stop);
    load(text.as_bytes(), &HostFacts::default()).unwrap().policy
}

fn obs(some: f64, full: f64, present: &[&str]) -> Observations {
    let mut o = Observations {
        loadavg: 0.2,
        memory_pressure: Psi {
            some_avg10: some,
            full_avg10: full,
        },
        ..Default::default()
    };
    for n in present {
        o.workloads.insert(
            (*n).into(),
            WorkloadObs {
                running: true,
                ..Default::default()
            },
        );
    }
    o
}

const ALL: [&str; 4] = ["banker", "eva", "batch", "lab"];
const STOP: &str = "stop_vm_above: 40, stop_vm_after: 30s,";

#[test]
fn the_ladder_stops_the_lowest_ranked_vm_last_and_starts_it_first() {
    let p = policy(STOP);
    let mut s = EngineState::default();
    let hot = obs(35.0, 45.0, &ALL);
    let first = decide(&p, &mut s, &hot, t(0));
    assert_eq!(
        names(&first),
        [
            "freeze lab",
            "throttle lab: memory.high 50%",
            "balloon eva (vm 101) to 50%"
        ],
        "{first:#?}"
    );
    // Ballooning gets its 30 s before any VM is stopped.
    assert!(decide(&p, &mut s, &hot, t(29)).is_empty());
    let stop = decide(&p, &mut s, &hot, t(31));
    assert_eq!(
        names(&stop),
        ["thaw lab", "stop lab (vm 102): hibernate it"],
        "a VM being hibernated must run: thawed first"
    );
    assert_eq!(stop[1].rule.0, "rules.memory");
    assert!(
        stop[1].reason.contains("full avg10) 45.0% > 40%")
            && stop[1].reason.contains("ballooning for 30s was not enough"),
        "{}",
        stop[1].reason
    );
    // Hibernated, the VM is absent: that does not end its stop; the pressure goes on, so the
    // first steps move to the next lowest-ranked workload.
    let without_lab = ["banker", "eva", "batch"];
    let next = decide(&p, &mut s, &obs(35.0, 45.0, &without_lab), t(40));
    assert_eq!(
        names(&next),
        ["freeze batch", "throttle batch: memory.high 50%"]
    );
    assert!(s.applied.stopped_vms.contains_key("lab"));
    // Pressure gone: undone in reverse, one step per release time: the VM is started first,
    // then the balloon given back, then the thaw, then memory.high.
    let calm = obs(0.0, 0.0, &without_lab);
    assert!(decide(&p, &mut s, &calm, t(50)).is_empty());
    let start = decide(&p, &mut s, &calm, t(60));
    assert_eq!(names(&start), ["start lab (vm 102) again"], "{start:#?}");
    assert!(
        start[0].reason.contains("is started again"),
        "{}",
        start[0].reason
    );
    let calm = obs(0.0, 0.0, &ALL);
    // Back, lab is kept off the trading cores again (its new cgroup has no cpuset yet);
    // nothing of the ladder.
    let back = decide(&p, &mut s, &calm, t(61));
    assert!(names(&back).is_empty(), "{back:#?}");
    assert!(
        back.iter().all(|a| a
            .reason
            .starts_with("lab appeared while the trading cores are protected")),
        "{back:#?}"
    );
    let deflate = decide(&p, &mut s, &calm, t(71));
    assert_eq!(names(&deflate), ["balloon eva (vm 101) to 100%"]);
    assert!(decide(&p, &mut s, &calm, t(72)).is_empty());
    let thaw = decide(&p, &mut s, &calm, t(82));
    assert_eq!(names(&thaw), ["thaw batch"]);
    assert!(decide(&p, &mut s, &calm, t(83)).is_empty());
    let restore = decide(&p, &mut s, &calm, t(93));
    assert_eq!(names(&restore).len(), 1, "{restore:#?}");
    assert!(names(&restore)[0].contains("batch"), "{restore:#?}");
    assert!(s.applied.stopped_vms.is_empty() && s.memory.is_empty());
}

#[test]
fn without_stop_vm_above_no_vm_is_ever_stopped() {
    let p = policy("");
    let mut s = EngineState::default();
    for i in 0..600 {
        let a = decide(&p, &mut s, &obs(95.0, 95.0, &ALL), t(i));
        assert!(
            !a.iter()
                .any(|a| matches!(a.kind, ActionKind::StopVm { .. })),
            "{a:#?}"
        );
    }
}

#[test]
fn the_trading_vm_is_never_stopped_nor_ballooned() {
    let p = policy(STOP);
    let mut s = EngineState::default();
    // Only the Banker is a VM here: the ladder ends at the freeze.
    let only_banker = ["banker", "batch"];
    for i in 0..300 {
        let a = decide(&p, &mut s, &obs(95.0, 95.0, &only_banker), t(i));
        for text in names(&a) {
            assert!(!text.contains("banker"), "{text}");
        }
    }
    assert!(s.applied.stopped_vms.is_empty());
}

#[test]
fn a_stop_needs_the_balloon_step_held_for_stop_vm_after() {
    let p = policy(STOP);
    let mut s = EngineState::default();
    decide(&p, &mut s, &obs(35.0, 45.0, &ALL), t(0));
    // The balloon step eases (some below 30) long enough to be undone, then comes back: its
    // clock starts again.
    decide(&p, &mut s, &obs(25.0, 45.0, &ALL), t(5));
    let eased = decide(&p, &mut s, &obs(25.0, 45.0, &ALL), t(16));
    assert_eq!(names(&eased), ["balloon eva (vm 101) to 100%"]);
    decide(&p, &mut s, &obs(35.0, 45.0, &ALL), t(20));
    let a = decide(&p, &mut s, &obs(35.0, 45.0, &ALL), t(31));
    assert!(
        !a.iter()
            .any(|a| matches!(a.kind, ActionKind::StopVm { .. })),
        "stopped with 11 s of ballooning: {a:#?}"
    );
    let a = decide(&p, &mut s, &obs(35.0, 45.0, &ALL), t(51));
    assert!(
        a.iter()
            .any(|a| matches!(a.kind, ActionKind::StopVm { vmid: 102, .. })),
        "{a:#?}"
    );
    // `full` below stop_vm_above: no stop however long the balloons hold.
    let mut s = EngineState::default();
    for i in 0..200 {
        let a = decide(&p, &mut s, &obs(35.0, 39.0, &ALL), t(i));
        assert!(
            !a.iter()
                .any(|a| matches!(a.kind, ActionKind::StopVm { .. }))
        );
    }
}

#[test]
fn stop_vm_above_without_balloon_above_is_refused() {
    let text = LADDER
        .replace("balloon_above: 30, ", "")
        .replace("STOP", STOP);
    let e = load(text.as_bytes(), &HostFacts::default()).unwrap_err();
    let msg = e.0.iter().map(|d| d.render("p.yaml")).collect::<Vec<_>>();
    assert!(
        msg.iter()
            .any(|m| m.contains("`rules.memory.stop_vm_above`: needs `balloon_above`")),
        "{msg:?}"
    );
}

#[test]
fn a_protected_workloads_stall_drives_the_ladder_and_a_hogs_own_does_not() {
    let p = policy("");
    let mut s = EngineState::default();
    // The host is calm; lab (the lowest rank) stalls on its own limits: not the ladder's
    // business.
    let mut o = obs(0.0, 0.0, &ALL);
    o.workloads.get_mut("lab").unwrap().memory_pressure = Psi {
        some_avg10: 90.0,
        full_avg10: 90.0,
    };
    assert!(names(&decide(&p, &mut s, &o, t(0))).is_empty());
    // The Banker (owner of the trading cores) stalls: the ladder acts, and says why.
    o.workloads.get_mut("banker").unwrap().memory_pressure = Psi {
        some_avg10: 15.0,
        full_avg10: 0.0,
    };
    let a = decide(&p, &mut s, &o, t(1));
    assert_eq!(names(&a), ["throttle lab: memory.high 50%"], "{a:#?}");
    let reason = &a
        .iter()
        .find(|a| a.rule.0 == "rules.memory")
        .unwrap()
        .reason;
    assert!(
        reason.starts_with("memory pressure felt by banker (some avg10) 15.0% > 10%"),
        "{reason}"
    );
}

//! Engine tests of what follows an outcome: each failure the actuators can report, and what
//! the engine decides next (no root: the outcomes are given, not provoked).

use jiff::Timestamp;

use super::*;
use crate::policy::{HostFacts, Policy, load};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_773_100_000 + s).unwrap()
}

const POLICY: &str = "version: 1
host: { time_zone: Europe/Paris, trading_cores: \"1\", housekeeping_cores: \"0\" }
workloads:
  - { name: banker, rank: 2, match: { vmid: 100 }, owns_trading_cores: true }
  - { name: eva, rank: 3, match: { vmid: 101 } }
  - { name: batch, rank: 4, match: { cgroup: batch.slice } }
  - { name: lab, rank: 5, match: { vmid: 102 } }
rules:
  memory: { high_above: 10, freeze_above: 20, balloon_above: 30, stop_vm_above: 40,
            stop_vm_after: 30s, release_after: 10s }
";

fn policy() -> Policy {
    load(POLICY.as_bytes(), &HostFacts::default())
        .unwrap()
        .policy
}

fn obs(some: f64, full: f64) -> Observations {
    let mut o = Observations {
        loadavg: 0.2,
        memory_pressure: Psi {
            some_avg10: some,
            full_avg10: full,
        },
        ..Default::default()
    };
    for n in ["banker", "eva", "batch", "lab"] {
        let running = WorkloadObs {
            running: true,
            ..Default::default()
        };
        o.workloads.insert(n.into(), running);
    }
    o
}

fn intruder(pid: u32, cgroup: &str, arrived: bool) -> Intruder {
    Intruder {
        pid,
        comm: "hog".into(),
        cgroup: cgroup.into(),
        cpu: 1,
        ran_ns: 50_000,
        arrived,
        seen_ns: None,
        start: None,
        evicted: false,
    }
}

fn find(actions: &[Action], f: impl Fn(&ActionKind) -> bool) -> Option<&Action> {
    actions.iter().find(|a| f(&a.kind))
}

fn failed(retryable: bool) -> Outcome {
    Outcome::Failed { retryable }
}

#[test]
fn a_failed_freeze_is_asked_again_next_tick() {
    let p = policy();
    let mut s = EngineState::default();
    let hot = obs(35.0, 45.0);
    let first = decide(&p, &mut s, &hot, t(0));
    let freeze = find(&first, |k| matches!(k, ActionKind::Freeze { .. })).unwrap();
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        freeze,
        failed(true)
    ));
    assert!(!s.applied.frozen.contains_key("lab"), "{s:#?}");
    let again = decide(&p, &mut s, &hot, t(1));
    assert!(
        find(&again, |k| *k
            == ActionKind::Freeze {
                workload: "lab".into()
            })
        .is_some(),
        "{again:#?}"
    );
    // A freeze that failed for good (not retryable) is not asked again every tick.
    let freeze = find(&again, |k| matches!(k, ActionKind::Freeze { .. })).unwrap();
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        freeze,
        failed(false)
    ));
    assert!(decide(&p, &mut s, &hot, t(2)).is_empty());
}

#[test]
fn a_failed_thaw_keeps_the_workload_frozen_and_thaws_it_again() {
    let p = policy();
    let mut s = EngineState::default();
    decide(&p, &mut s, &obs(35.0, 45.0), t(0));
    assert!(s.applied.frozen.contains_key("lab"));
    let calm = obs(0.0, 0.0);
    let (at, undo) = (5..200)
        .map(|i| (i, decide(&p, &mut s, &calm, t(i))))
        .find(|(_, a)| find(a, |k| matches!(k, ActionKind::Thaw { .. })).is_some())
        .expect("the ladder thaws");
    let thaw = find(&undo, |k| matches!(k, ActionKind::Thaw { .. })).unwrap();
    let mut batch = Batch::default();
    assert!(!acknowledge(&mut s, &mut batch, thaw, failed(true)));
    assert!(s.applied.frozen.contains_key("lab"), "still frozen");
    assert!(batch.still_frozen.contains("lab"));
    let again = decide(&p, &mut s, &calm, t(at + 1));
    assert!(
        find(&again, |k| *k
            == ActionKind::Thaw {
                workload: "lab".into()
            })
        .is_some(),
        "{again:#?}"
    );
}

#[test]
fn the_eviction_of_a_vanished_pid_is_not_retried_and_a_flaky_one_is() {
    let p = policy();
    let mut s = EngineState::default();
    let mut o = obs(0.0, 0.0);
    o.intruders = vec![intruder(4242, "user.slice/x", true)];
    let first = decide(&p, &mut s, &o, t(0));
    let evict = find(&first, |k| matches!(k, ActionKind::EvictIntruder { .. })).unwrap();
    // Vanished: a fact, not retried; its slices still in flight are no news.
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        evict,
        failed(false)
    ));
    o.intruders = vec![intruder(4242, "user.slice/x", false)];
    assert!(
        find(&decide(&p, &mut s, &o, t(1)), |k| matches!(
            k,
            ActionKind::EvictIntruder { .. }
        ))
        .is_none()
    );
    // A transient failure (EPERM on one thread, an I/O error): evicted again at its next report.
    o.intruders = vec![intruder(4343, "user.slice/y", true)];
    let second = decide(&p, &mut s, &o, t(2));
    let evict = find(&second, |k| matches!(k, ActionKind::EvictIntruder { .. })).unwrap();
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        evict,
        failed(true)
    ));
    o.intruders = vec![intruder(4343, "user.slice/y", false)];
    assert!(
        find(&decide(&p, &mut s, &o, t(3)), |k| matches!(
            k,
            ActionKind::EvictIntruder { .. }
        ))
        .is_some()
    );
}

#[test]
fn an_intruder_outside_the_scope_is_observed_once_until_it_moves() {
    let p = policy();
    let mut s = EngineState::default();
    let mut o = obs(0.0, 0.0);
    o.intruders = vec![intruder(77, "elsewhere", true)];
    let first = decide(&p, &mut s, &o, t(0));
    let evict = find(&first, |k| matches!(k, ActionKind::EvictIntruder { .. })).unwrap();
    acknowledge(&mut s, &mut Batch::default(), evict, Outcome::ObservedOnly);
    // Its arrivals and slices in that cgroup are no news, for longer than the cooldown (the
    // sensor names a cgroup with a leading slash, /proc without).
    o.intruders = vec![intruder(77, "/elsewhere", false)];
    for at in [1, 30, 300] {
        assert!(decide(&p, &mut s, &o, t(at)).is_empty(), "at {at}s");
    }
    // In another cgroup it is an intruder like any other.
    o.intruders = vec![intruder(77, "user.slice/moved", true)];
    let moved = decide(&p, &mut s, &o, t(301));
    assert!(
        find(&moved, |k| matches!(
            k,
            ActionKind::EvictIntruder { pid: 77, .. }
        ))
        .is_some()
    );
}

#[test]
fn a_timed_out_vm_stop_is_asked_again_while_it_is_wanted() {
    let p = policy();
    let mut s = EngineState::default();
    let hot = obs(35.0, 45.0);
    decide(&p, &mut s, &hot, t(0));
    let stop_at = (1..120)
        .map(|i| (i, decide(&p, &mut s, &hot, t(i))))
        .find(|(_, a)| find(a, |k| matches!(k, ActionKind::StopVm { .. })).is_some())
        .expect("the ladder reaches its stop");
    let stop = find(&stop_at.1, |k| matches!(k, ActionKind::StopVm { .. })).unwrap();
    assert!(s.applied.stopped_vms.contains_key("lab"));
    // A timed-out Proxmox call is retryable: the engine forgets the stop and asks again.
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        stop,
        failed(true)
    ));
    assert!(!s.applied.stopped_vms.contains_key("lab"));
    let again = decide(&p, &mut s, &hot, t(stop_at.0 + 1));
    assert!(
        find(&again, |k| matches!(
            k,
            ActionKind::StopVm { vmid: 102, .. }
        ))
        .is_some(),
        "{again:#?}"
    );
}

#[test]
fn outcomes_read_from_steps() {
    let done = |d: &str| Step::Done { detail: d.into() };
    let out = |d: &str| Step::ObservedOnly { detail: d.into() };
    let skip = |d: &str| Step::Skipped { detail: d.into() };
    let fail = Step::Failed {
        error: "EIO".into(),
        retryable: true,
    };
    assert_eq!(Outcome::of(&[]), Outcome::Done);
    assert_eq!(Outcome::of(&[done("a"), out("b")]), Outcome::Done);
    assert_eq!(Outcome::of(&[out("b")]), Outcome::ObservedOnly);
    assert_eq!(Outcome::of(&[skip("c")]), Outcome::Skipped);
    assert_eq!(Outcome::of(&[done("a"), fail.clone()]), failed(true));
    assert_eq!(fail.to_string(), "error: EIO");
}

#[test]
fn action_names_are_their_serialised_tags() {
    let kinds = [
        ActionKind::Freeze {
            workload: "w".into(),
        },
        ActionKind::StopVm {
            workload: "w".into(),
            vmid: 1,
        },
        ActionKind::EvictIntruder {
            pid: 1,
            comm: "c".into(),
            cgroup: "g".into(),
            cpu: 1,
            to: "0".parse().unwrap(),
            seen_ns: None,
            start: None,
        },
        ActionKind::SloMet {
            p99_us: 1.0,
            target_us: 2.0,
        },
    ];
    for k in kinds {
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json["action"], k.name());
    }
}

#[test]
fn a_failed_vm_start_waits_its_backoff_however_often_the_engine_is_asked() {
    let p = policy();
    let mut s = EngineState::default();
    let hot = obs(35.0, 45.0);
    decide(&p, &mut s, &hot, t(0));
    let stop_at = (1..120)
        .find(|i| {
            let a = decide(&p, &mut s, &hot, t(*i));
            find(&a, |k| matches!(k, ActionKind::StopVm { .. })).is_some()
        })
        .expect("the ladder reaches its stop");
    // The pressure is gone: the VM is to be started, and the API answers 500 (retryable).
    let calm = obs(0.0, 0.0);
    let start_of = |a: &[Action]| find(a, |k| matches!(k, ActionKind::StartVm { .. })).cloned();
    let (mut from, start) = (stop_at + 1..stop_at + 60)
        .find_map(|i| start_of(&decide(&p, &mut s, &calm, t(i))).map(|a| (t(i), a)))
        .expect("the start is asked for");
    let mut waits = vec![];
    for _ in 0..3 {
        assert!(!acknowledge(
            &mut s,
            &mut Batch::default(),
            &start,
            failed(true)
        ));
        // Asked every 5 ms (events, not ticks): when does the start come again?
        let again = (1..=2000)
            .map(|i| from + jiff::SignedDuration::from_millis(i * 5))
            .find(|at| start_of(&decide(&p, &mut s, &calm, *at)).is_some())
            .expect("asked again");
        waits.push(again.duration_since(from).as_millis());
        from = again;
    }
    // 1 s, then 2 s, then 4 s: never at the rate of events.
    assert_eq!(waits, [1000, 2000, 4000]);
    // It goes through: no further wait is remembered.
    assert!(!acknowledge(
        &mut s,
        &mut Batch::default(),
        &start,
        Outcome::Done
    ));
    assert!(s.retries.is_empty());
}

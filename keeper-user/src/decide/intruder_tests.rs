//! Engine tests of intruders that come back: returns counted after the move, repeat
//! offenders stopped or their workloads held, the default rule, and workloads that appear
//! while the trading cores are protected.

use super::tests::{ALL, all_present, at};
use super::*;
use crate::policy::{Policy, one_host};

/// A task that pins itself to trading core 1, seen on it (`arrived`: at a switch-in).
fn pinner(pid: u32, cgroup: &str, arrived: bool) -> Intruder {
    Intruder {
        pid,
        comm: "pinner".into(),
        cgroup: cgroup.into(),
        cpu: 1,
        ran_ns: 0,
        arrived,
        seen_ns: None,
        start: None,
        evicted: false,
    }
}

/// The one-host policy with `rules.intruders: {repeat, within: 10s, then}`.
fn repeat_policy(repeat: u32, then: crate::policy::RepeatAction) -> Policy {
    let mut p = one_host().unwrap();
    p.rules.intruders = crate::policy::IntruderRule {
        repeat,
        within: std::time::Duration::from_secs(10),
        then,
        ..Default::default()
    };
    p
}

/// The intruder actions (evict, stop) decided for `i` on a trading day, `secs` in.
fn intruder_kinds(
    p: &Policy,
    state: &mut EngineState,
    i: Intruder,
    secs: i64,
) -> Vec<&'static str> {
    let mut obs = all_present(&ALL);
    obs.intruders.push(i);
    let now = at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(secs);
    decide(p, state, &obs, now)
        .into_iter()
        .filter_map(|a| match a.kind {
            ActionKind::EvictIntruder { .. } => Some("evict"),
            ActionKind::StopIntruder { .. } => Some("stop"),
            _ => None,
        })
        .collect()
}

#[test]
fn a_workload_whose_task_keeps_coming_back_is_frozen_while_the_cores_are_held() {
    let p = repeat_policy(2, crate::policy::RepeatAction::Freeze);
    let mut state = EngineState::default();
    let run = |state: &mut EngineState, cgroup: &str, secs: i64| {
        let mut obs = all_present(&ALL);
        obs.intruders.push(pinner(9, cgroup, true));
        let now = at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(secs);
        decide(&p, state, &obs, now)
            .into_iter()
            .filter_map(|a| match a.kind {
                ActionKind::EvictIntruder { .. } => Some("evict".to_string()),
                ActionKind::StopIntruder { .. } => Some("stop".to_string()),
                // Freezes by this rule (the Banker's window pauses muse and research too).
                ActionKind::Freeze { workload } if a.rule.0 == "rules.intruders" => {
                    Some(format!("freeze {workload}"))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // A task of sentinel re-pins itself: evicted, evicted, then sentinel is frozen (and the
    // task evicted once more); the hold stays while the Banker holds the cores.
    let task = "system.slice/sentinel.service/pinner";
    assert_eq!(run(&mut state, task, 0), ["evict"]);
    assert_eq!(run(&mut state, task, 1), ["evict"]);
    assert_eq!(run(&mut state, task, 2), ["freeze sentinel", "evict"]);
    assert!(state.repeat_frozen.contains("sentinel"));
    assert_eq!(
        run(&mut state, task, 3),
        ["evict"],
        "held, not frozen again"
    );
    // Market closed: the Banker lets its cores go, and sentinel is thawed (after the
    // hysteresis).
    let thawed = (0..3).any(|k| {
        let now = at("2026-03-09T23:00") + jiff::SignedDuration::from_secs(k * 20);
        decide(&p, &mut state, &all_present(&ALL), now)
            .iter()
            .any(|a| matches!(&a.kind, ActionKind::Thaw { workload } if workload == "sentinel"))
    });
    assert!(thawed && state.repeat_frozen.is_empty());
    // A task outside every workload has nothing to freeze: it is stopped at its repeat
    // (evicting it again at each return would let it keep its share), nothing frozen.
    let mut state = EngineState::default();
    let alone = "system.slice/pinner.service";
    assert_eq!(run(&mut state, alone, 0), ["evict"]);
    assert_eq!(run(&mut state, alone, 1), ["evict"]);
    assert_eq!(run(&mut state, alone, 2), ["stop"]);
    assert!(state.repeat_frozen.is_empty() && state.stopped.contains(&9));
}

#[test]
fn a_workload_whose_task_keeps_coming_back_is_throttled_while_the_cores_are_held() {
    let p = repeat_policy(2, crate::policy::RepeatAction::Throttle);
    let mut state = EngineState::default();
    let run = |state: &mut EngineState, cgroup: &str, at: jiff::Timestamp, with: bool| {
        let mut obs = all_present(&ALL);
        if with {
            obs.intruders.push(pinner(9, cgroup, true));
        }
        decide(&p, state, &obs, at)
            .into_iter()
            .filter_map(|a| match a.kind {
                ActionKind::EvictIntruder { .. } => Some("evict".to_string()),
                ActionKind::StopIntruder { .. } => Some("stop".to_string()),
                ActionKind::SetCpuMax { workload, percent } if a.rule.0 == "rules.intruders" => {
                    Some(format!("cpu.max {workload} {percent}"))
                }
                ActionKind::RestoreLimits { workload, .. } if a.rule.0 == "rules.intruders" => {
                    Some(format!("restore {workload}"))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let day = |secs| at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(secs);
    // A task of sentinel re-pins itself: evicted, evicted, then sentinel's cpu.max is set to
    // rules.intruders.cpu_max (10 % by default), and held while the Banker holds the cores.
    let task = "system.slice/sentinel.service/pinner";
    assert_eq!(run(&mut state, task, day(0), true), ["evict"]);
    assert_eq!(run(&mut state, task, day(1), true), ["evict"]);
    assert_eq!(
        run(&mut state, task, day(2), true),
        ["cpu.max sentinel 10%", "evict"]
    );
    assert!(state.repeat_throttled.contains("sentinel"));
    assert_eq!(
        run(&mut state, task, day(3), false),
        Vec::<String>::new(),
        "held"
    );
    // Market closed: the Banker lets its cores go, and sentinel's limits are put back.
    let closed = at("2026-03-09T23:00");
    assert_eq!(run(&mut state, task, closed, false), ["restore sentinel"]);
    assert!(state.repeat_throttled.is_empty());
    // A task outside every workload has no cpu.max to set: it is stopped at its repeat,
    // nothing throttled.
    let mut state = EngineState::default();
    let alone = "system.slice/pinner.service";
    assert_eq!(run(&mut state, alone, day(0), true), ["evict"]);
    assert_eq!(run(&mut state, alone, day(1), true), ["evict"]);
    assert_eq!(run(&mut state, alone, day(2), true), ["stop"]);
    assert!(state.repeat_throttled.is_empty() && state.stopped.contains(&9));
}

/// A newborn reported twice before its eviction took effect (its fork, then its first
/// switch-in there) has not come back: only an arrival after the move is a return. Before, the
/// second report counted as a return, and one re-pin after it made a repeat offender.
#[test]
fn arrivals_reported_before_the_move_are_no_return() {
    let p = repeat_policy(1, crate::policy::RepeatAction::Stop);
    let mut state = EngineState::default();
    let seen = |ns| Intruder {
        seen_ns: Some(ns),
        ..pinner(9, "system.slice/pinner.service", true)
    };
    let day = |secs| at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(secs);
    let mut obs = all_present(&ALL);
    obs.intruders.push(seen(100));
    let evict = (decide(&p, &mut state, &obs, day(0)).into_iter())
        .find(|a| matches!(a.kind, ActionKind::EvictIntruder { .. }))
        .expect("evicted");
    crate::decide::moved(&mut state, &evict, Some(200));
    assert_eq!(
        intruder_kinds(&p, &mut state, seen(150), 1),
        Vec::<&str>::new()
    );
    assert!(state.returns.is_empty(), "{:?}", state.returns);
    // Back on the core after the move: a return, and with `repeat: 1` a repeat offender, also
    // when its own eviction (on arrival, by the eviction thread) was acknowledged first.
    crate::decide::moved(&mut state, &evict, Some(320));
    assert_eq!(intruder_kinds(&p, &mut state, seen(300), 2), ["stop"]);
}

#[test]
fn an_intruder_that_comes_back_is_evicted_at_once_then_stopped() {
    let p = repeat_policy(3, crate::policy::RepeatAction::Stop);
    let mut state = EngineState::default();
    let kinds = |state: &mut EngineState, arrived: bool, secs: i64| {
        let i = pinner(7, "system.slice/pinner.service", arrived);
        intruder_kinds(&p, state, i, secs)
    };
    assert_eq!(kinds(&mut state, true, 0), ["evict"]);
    // A late slice of the evicted task is no news; its return is, at once.
    assert_eq!(kinds(&mut state, false, 1), Vec::<&str>::new());
    assert_eq!(kinds(&mut state, true, 1), ["evict"]);
    assert_eq!(kinds(&mut state, true, 2), ["evict"]);
    assert_eq!(kinds(&mut state, true, 3), ["stop"]);
    // Stopped: its slices are no news; an arrival is a new task that took its pid, evicted
    // afresh (its returns do not carry over).
    assert_eq!(kinds(&mut state, false, 4), Vec::<&str>::new());
    assert_eq!(kinds(&mut state, true, 4), ["evict"]);
    assert_eq!(kinds(&mut state, true, 5), ["evict"]);
    // With `then: evict` every return is evicted, none stopped.
    let p2 = repeat_policy(3, crate::policy::RepeatAction::Evict);
    let mut state = EngineState::default();
    for s in 0..5 {
        let mut obs = all_present(&ALL);
        obs.intruders
            .push(pinner(8, "system.slice/pinner.service", true));
        let now = at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(s);
        let acts = decide(&p2, &mut state, &obs, now);
        assert!(
            acts.iter()
                .any(|a| matches!(a.kind, ActionKind::EvictIntruder { .. }))
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a.kind, ActionKind::StopIntruder { .. }))
        );
    }
}

#[test]
fn an_intruder_evicted_on_arrival_is_counted_and_not_evicted_again() {
    let p = repeat_policy(3, crate::policy::RepeatAction::Stop);
    let mut state = EngineState::default();
    let kinds = |state: &mut EngineState, secs: i64| {
        let mut i = pinner(7, "system.slice/pinner.service", true);
        i.evicted = true; // moved by the eviction thread
        intruder_kinds(&p, state, i, secs)
    };
    // Its eviction is done: the engine asks for none, but counts it, so that its returns
    // escalate exactly as if the engine had evicted it.
    assert_eq!(kinds(&mut state, 0), Vec::<&str>::new());
    assert!(state.evicted.contains_key(&7));
    assert_eq!(kinds(&mut state, 1), Vec::<&str>::new());
    assert_eq!(kinds(&mut state, 2), Vec::<&str>::new());
    assert_eq!(kinds(&mut state, 3), ["stop"]);
}

/// The default rule holds the share against a task that pins itself back without end: its
/// third return within 10 s stops it (evicting it at each return let a re-pinner keep most of
/// the core), and it goes on once the trading cores are let go.
#[test]
fn by_default_a_task_that_keeps_pinning_itself_back_is_stopped_then_continued() {
    let mut p = one_host().unwrap();
    p.rules.intruders = Default::default();
    let mut state = EngineState::default();
    let i = || pinner(8, "system.slice/pinner.service", true);
    assert_eq!(intruder_kinds(&p, &mut state, i(), 0), ["evict"]);
    assert_eq!(intruder_kinds(&p, &mut state, i(), 1), ["evict"]);
    assert_eq!(intruder_kinds(&p, &mut state, i(), 2), ["evict"]);
    assert_eq!(intruder_kinds(&p, &mut state, i(), 3), ["stop"]);
    let closed = at("2026-03-09T23:00");
    let continued = decide(&p, &mut state, &all_present(&ALL), closed)
        .into_iter()
        .any(|a| matches!(a.kind, ActionKind::ContinueIntruder { pid: 8 }));
    assert!(continued && state.stopped.is_empty());
}

/// Before the fix only the workloads present at the first protection got the housekeeping
/// cpuset: a VM started later (muse here) ran on the trading cores until evicted task by task.
#[test]
fn a_workload_that_appears_while_the_cores_are_protected_is_kept_off_them_too() {
    let p = one_host().unwrap();
    let mut state = EngineState::default();
    let protects = |state: &mut EngineState, obs: &Observations, secs: i64| {
        let now = at("2026-03-09T10:00") + jiff::SignedDuration::from_secs(secs);
        decide(&p, state, obs, now)
            .into_iter()
            .filter(|a| matches!(a.kind, ActionKind::ProtectTradingCores { .. }))
            .map(|a| a.reason)
            .collect::<Vec<_>>()
    };
    let mut without_muse = all_present(&ALL);
    without_muse.workloads.remove("muse");
    assert_eq!(protects(&mut state, &without_muse, 0).len(), 1);
    assert!(protects(&mut state, &without_muse, 1).is_empty());
    let again = protects(&mut state, &all_present(&ALL), 2);
    assert_eq!(again.len(), 1, "muse appeared: protected again");
    assert!(
        again[0].starts_with("muse appeared while the trading cores are protected"),
        "{again:?}"
    );
    assert!(protects(&mut state, &all_present(&ALL), 3).is_empty());
}

/// The trading cores moved by a reload: the cpusets' change widened the masks of the tasks the
/// keeper had moved, and the kernel put them back on a trading core; not the task's doing.
/// Before, each such return counted, and the host's own shells (a unit's script) were stopped
/// as repeat offenders after the reload on a systemd host (vm-test host-systemd-reload).
#[test]
fn returns_after_the_trading_cores_moved_start_over() {
    let p = repeat_policy(2, crate::policy::RepeatAction::Stop);
    let mut state = EngineState::default();
    let alone = || pinner(9, "system.slice/vmtest.service", true);
    assert_eq!(intruder_kinds(&p, &mut state, alone(), 0), ["evict"]);
    assert_eq!(intruder_kinds(&p, &mut state, alone(), 1), ["evict"]);
    let mut moved = p.clone();
    moved.host.trading_cores = "1-2".parse().unwrap();
    moved.host.housekeeping_cores = "0".parse().unwrap();
    assert_eq!(intruder_kinds(&moved, &mut state, alone(), 2), ["evict"]);
    assert!(state.stopped.is_empty(), "{:?}", state.stopped);
    // Coming back under the new cores counts again, as ever.
    assert_eq!(intruder_kinds(&moved, &mut state, alone(), 3), ["evict"]);
    assert_eq!(intruder_kinds(&moved, &mut state, alone(), 4), ["stop"]);
}

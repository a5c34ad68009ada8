//! `start_on`: EVA's service starts after its preemption's freezes, stops before their thaws,
//! and a failed start or stop is asked again after its backoff (the thaw does not wait for a
//! stop that failed).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::policy::{Policy, Service, StartOn, one_host};

const ALL: [&str; 5] = ["banker", "eva-core", "sentinel", "muse", "research"];

fn t(ms: i64) -> Timestamp {
    // A Tuesday night: Muse and research are in their windows, nothing else holds them.
    let base: Timestamp = "2026-03-10T00:00:00Z".parse().unwrap();
    base + SignedDuration::from_millis(ms)
}

fn policy() -> Policy {
    let mut p = one_host().unwrap();
    let eva = p
        .workloads
        .iter_mut()
        .find(|w| w.name == "eva-core")
        .unwrap();
    eva.start_on = Some(StartOn {
        service: Service::Unit("llama3.service".into()),
        deadline: Duration::from_secs(30),
    });
    p
}

fn obs(interaction: bool) -> Observations {
    let mut o = Observations {
        loadavg: 0.2,
        interaction,
        ..Default::default()
    };
    for n in ALL {
        o.workloads.insert(n.to_string(), WorkloadObs::default());
    }
    o
}

/// The freezes, thaws and services of a decision, in order.
fn names(actions: &[Action]) -> Vec<String> {
    (actions.iter())
        .filter(|a| {
            matches!(
                a.kind,
                ActionKind::Freeze { .. }
                    | ActionKind::Thaw { .. }
                    | ActionKind::StartService { .. }
                    | ActionKind::StopService { .. }
            )
        })
        .map(|a| a.kind.to_string())
        .collect()
}

fn service_action(actions: &[Action]) -> Option<&Action> {
    actions.iter().find(|a| {
        matches!(
            a.kind,
            ActionKind::StartService { .. } | ActionKind::StopService { .. }
        )
    })
}

#[test]
fn the_service_starts_after_the_freezes_and_stops_before_the_thaws() {
    let p = policy();
    let mut s = EngineState::default();
    let start = decide(&p, &mut s, &obs(true), t(0));
    assert_eq!(
        names(&start),
        [
            "freeze research",
            "freeze muse",
            "start unit llama3.service for eva-core"
        ],
        "{start:#?}"
    );
    assert_eq!(service_action(&start).unwrap().rule.0, "eva-core.start_on");
    // Held while the interaction lasts and through the preemption's hysteresis (20 s).
    assert!(decide(&p, &mut s, &obs(true), t(5_000)).is_empty());
    assert!(decide(&p, &mut s, &obs(false), t(6_000)).is_empty());
    assert!(decide(&p, &mut s, &obs(false), t(25_000)).is_empty());
    let end = decide(&p, &mut s, &obs(false), t(26_000));
    assert_eq!(
        names(&end),
        [
            "stop unit llama3.service of eva-core",
            "thaw muse",
            "thaw research"
        ],
        "{end:#?}"
    );
    assert!(s.applied.services.is_empty());
}

#[test]
fn a_failed_start_is_asked_again_after_its_backoff() {
    let p = policy();
    let mut s = EngineState::default();
    let first = decide(&p, &mut s, &obs(true), t(0));
    let start = service_action(&first).unwrap().clone();
    let retry = Outcome::Failed { retryable: true };
    assert!(!acknowledge(&mut s, &mut Batch::default(), &start, retry));
    // Not at the rate of ticks: 1 s later, not before.
    assert!(service_action(&decide(&p, &mut s, &obs(true), t(500))).is_none());
    let again = decide(&p, &mut s, &obs(true), t(1_000));
    assert_eq!(service_action(&again).map(|a| &a.kind), Some(&start.kind));
    // The freezes stay as they were.
    assert_eq!(names(&again), ["start unit llama3.service for eva-core"]);
}

#[test]
fn a_failed_stop_lets_the_thaw_go_on_and_is_asked_again() {
    let p = policy();
    let mut s = EngineState::default();
    decide(&p, &mut s, &obs(true), t(0));
    decide(&p, &mut s, &obs(false), t(1_000));
    let end = decide(&p, &mut s, &obs(false), t(21_000));
    let stop = service_action(&end).unwrap().clone();
    let mut batch = Batch::default();
    let retry = Outcome::Failed { retryable: true };
    assert!(!acknowledge(&mut s, &mut batch, &stop, retry));
    // The thaws of that batch are still wanted (nothing stays frozen for a service).
    for thaw in end
        .iter()
        .filter(|a| matches!(a.kind, ActionKind::Thaw { .. }))
    {
        assert_eq!(still_wanted(&mut s, &batch, thaw), None);
    }
    assert!(s.applied.frozen.is_empty());
    // The service still runs: stopped again after the backoff, with what started it.
    assert!(service_action(&decide(&p, &mut s, &obs(false), t(21_500))).is_none());
    let again = decide(&p, &mut s, &obs(false), t(22_000));
    assert_eq!(names(&again), ["stop unit llama3.service of eva-core"]);
    assert_eq!(service_action(&again).unwrap().rule.0, "eva-core.start_on");
}

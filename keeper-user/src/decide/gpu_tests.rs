//! Engine tests of the GPU rules: the handoff's order and rollback, eco mode's clock offset.

use jiff::Timestamp;

use super::*;
use crate::policy::{HostFacts, Policy, load, one_host};

fn at(s: &str) -> Timestamp {
    format!("{s}[Europe/Paris]")
        .parse::<jiff::Zoned>()
        .unwrap()
        .timestamp()
}

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(|a| a.kind.to_string()).collect()
}

/// Everyone present at night, Muse rendering on the GPU.
fn night(interaction: bool) -> Observations {
    let mut o = Observations {
        loadavg: 0.2,
        interaction,
        gpu: Some(GpuObs {
            temperature_c: 65.0,
            utilization_pct: 97.0,
            users: [("muse".to_string(), 1)].into(),
        }),
        ..Default::default()
    };
    for n in ["banker", "eva-core", "sentinel", "muse", "research"] {
        o.workloads.insert(n.into(), WorkloadObs::default());
    }
    o
}

/// A GPU-only policy: EVA's handoff from Muse, no preemption, so the handoff acts alone.
fn handoff_only() -> Policy {
    let text = "version: 1
host: { time_zone: Europe/Paris, trading_cores: \"1\", housekeeping_cores: \"0\" }
workloads:
  - { name: eva-core, rank: 1, match: { systemd_unit: eva-core.service },
      gpu_handoff: { on: interaction, from: [muse], release_after: 10s } }
  - { name: muse, rank: 2, match: { systemd_unit: muse.service } }
";
    load(text.as_bytes(), &HostFacts::default()).unwrap().policy
}

fn only(obs: &Observations, keep: &[&str]) -> Observations {
    let mut o = obs.clone();
    o.workloads.retain(|n, _| keep.contains(&n.as_str()));
    o
}

#[test]
fn handoff_checkpoints_before_the_freeze_and_restores_after_the_thaw() {
    let p = one_host().unwrap();
    let mut state = EngineState::default();
    decide(&p, &mut state, &night(false), at("2026-03-10T01:00"));
    let start = decide(&p, &mut state, &night(true), at("2026-03-10T01:10"));
    assert_eq!(
        names(&start),
        [
            "checkpoint GPU state of muse (release its VRAM)",
            "freeze research",
            "freeze muse"
        ]
    );
    assert_eq!(start[0].rule.0, "eva-core.gpu_handoff");
    assert!(
        start[0].reason.contains("eva-core (rank 2) needs the GPU"),
        "{}",
        start[0].reason
    );
    // Checkpointed, Muse leaves the GPU; the interaction goes on, then ends.
    let mut gone = night(true);
    gone.gpu.as_mut().unwrap().users.clear();
    assert!(decide(&p, &mut state, &gone, at("2026-03-10T01:10:05")).is_empty());
    gone.interaction = false;
    assert!(decide(&p, &mut state, &gone, at("2026-03-10T01:10:10")).is_empty());
    let end = decide(&p, &mut state, &gone, at("2026-03-10T01:10:30"));
    assert_eq!(
        names(&end),
        ["thaw muse", "thaw research", "restore GPU state of muse"]
    );
    assert_eq!(end[2].rule.0, "eva-core.gpu_handoff");
    assert!(
        end[2].reason.starts_with("handoff over"),
        "{}",
        end[2].reason
    );
    assert!(state.handoff.is_empty());
    assert!(decide(&p, &mut state, &gone, at("2026-03-10T01:10:31")).is_empty());
}

#[test]
fn no_handoff_when_the_holder_is_not_on_the_gpu_or_already_frozen() {
    let p = handoff_only();
    let mut state = EngineState::default();
    let mut obs = only(&night(true), &["eva-core", "muse"]);
    obs.gpu.as_mut().unwrap().users.clear();
    assert!(decide(&p, &mut state, &obs, at("2026-03-10T01:00")).is_empty());
    assert!(state.handoff.is_empty());
}

#[test]
fn a_failed_checkpoint_rolls_back_to_muse_running() {
    let p = handoff_only();
    let mut state = EngineState::default();
    let obs = only(&night(true), &["eva-core", "muse"]);
    let t = at("2026-03-10T01:00");
    let steps = decide(&p, &mut state, &obs, t);
    assert_eq!(
        names(&steps),
        [
            "checkpoint GPU state of muse (release its VRAM)",
            "freeze muse"
        ]
    );
    // The daemon: the checkpoint failed, so the handoff's freeze is skipped (and forgotten).
    assert!(step_failed(&mut state, &steps[0]));
    state.applied.frozen.remove("muse");
    assert!(decide(&p, &mut state, &obs, t).is_empty());
    assert!(state.handoff["muse"].rolled_back);
    // No retry while EVA still needs the GPU; a new need after the release starts over.
    assert!(decide(&p, &mut state, &obs, at("2026-03-10T01:00:05")).is_empty());
    let calm = Observations {
        interaction: false,
        ..obs.clone()
    };
    decide(&p, &mut state, &calm, at("2026-03-10T01:00:06"));
    assert!(decide(&p, &mut state, &calm, at("2026-03-10T01:00:20")).is_empty());
    assert!(state.handoff.is_empty());
    assert_eq!(
        decide(&p, &mut state, &obs, at("2026-03-10T01:01")).len(),
        2
    );
}

#[test]
fn a_failed_freeze_rolls_back_thaw_then_restore() {
    let p = handoff_only();
    let mut state = EngineState::default();
    let obs = only(&night(true), &["eva-core", "muse"]);
    let t = at("2026-03-10T01:00");
    let steps = decide(&p, &mut state, &obs, t);
    assert!(step_failed(&mut state, &steps[1]));
    let back = decide(&p, &mut state, &obs, t);
    assert_eq!(names(&back), ["thaw muse", "restore GPU state of muse"]);
    assert!(decide(&p, &mut state, &obs, t).is_empty());
}

#[test]
fn a_failed_thaw_thaws_again_first_and_a_failed_restore_is_retried() {
    let p = handoff_only();
    let mut state = EngineState::default();
    let obs = only(&night(true), &["eva-core", "muse"]);
    decide(&p, &mut state, &obs, at("2026-03-10T01:00"));
    let calm = Observations {
        interaction: false,
        ..obs.clone()
    };
    decide(&p, &mut state, &calm, at("2026-03-10T01:00:01"));
    let end = decide(&p, &mut state, &calm, at("2026-03-10T01:00:11"));
    assert_eq!(names(&end), ["thaw muse", "restore GPU state of muse"]);
    // The daemon: the thaw failed, so the restore was skipped.
    assert!(!step_failed(&mut state, &end[0]));
    assert!(!step_failed(&mut state, &end[1]));
    let retry = decide(&p, &mut state, &calm, at("2026-03-10T01:00:12"));
    assert_eq!(names(&retry), ["thaw muse", "restore GPU state of muse"]);
    // Thawed this time, but the restore failed: only the restore again.
    assert!(!step_failed(&mut state, &retry[1]));
    let again = decide(&p, &mut state, &calm, at("2026-03-10T01:00:13"));
    assert_eq!(names(&again), ["restore GPU state of muse"]);
    assert!(decide(&p, &mut state, &calm, at("2026-03-10T01:00:14")).is_empty());
}

#[test]
fn the_restore_waits_while_another_rule_keeps_the_holder_frozen() {
    let p = one_host().unwrap();
    let mut state = EngineState::default();
    // 06:59: EVA takes the GPU; the Muse window ends at 07:00 while she talks.
    decide(&p, &mut state, &night(true), at("2026-03-10T06:59"));
    let mut gone = night(false);
    gone.gpu.as_mut().unwrap().users.clear();
    decide(&p, &mut state, &gone, at("2026-03-10T06:59:50"));
    let end = decide(&p, &mut state, &gone, at("2026-03-10T07:00:30"));
    assert_eq!(names(&end), ["thaw research"], "{end:#?}");
    assert!(state.applied.gpu_checkpointed.contains_key("muse"));
    // 23:00, the window opens (load is low): thaw, then the GPU state comes back.
    let open = decide(&p, &mut state, &gone, at("2026-03-10T23:00"));
    assert_eq!(names(&open), ["thaw muse", "restore GPU state of muse"]);
}

#[test]
fn eco_mode_undervolts_with_the_idle_limit_and_resets_for_work() {
    let p = one_host().unwrap();
    let mut state = EngineState::default();
    let mut obs = night(false);
    let g = obs.gpu.as_mut().unwrap();
    g.utilization_pct = 2.0;
    g.users.clear();
    let t0 = at("2026-03-10T01:00");
    let first = names(&decide(&p, &mut state, &obs, t0));
    assert!(
        first.contains(&"set GPU power limit 100%".to_string()),
        "{first:?}"
    );
    assert!(
        !first.iter().any(|a| a.contains("clock offset")),
        "{first:?}"
    );
    let idle = names(&decide(&p, &mut state, &obs, at("2026-03-10T01:05")));
    assert_eq!(
        idle,
        ["set GPU power limit 60%", "set GPU clock offset -200 MHz"]
    );
    let busy = night(false);
    let work = names(&decide(&p, &mut state, &busy, at("2026-03-10T01:06")));
    assert_eq!(
        work,
        ["set GPU power limit 100%", "set GPU clock offset 0 MHz"]
    );
}

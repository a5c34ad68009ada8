//! The GPU handoff (seed 001 "Freeze" logic): the one GPU is a mutex. When a workload with a
//! `gpu_handoff` needs the GPU while a lower-ranked one holds it, the holder's GPU state is
//! checkpointed (its VRAM goes to host memory, where `cuda-checkpoint` is present) and it is
//! frozen; once the need has been gone for `release_after`, it is thawed and its GPU state is
//! restored. Checkpoint *before* the freeze and restore *after* the thaw: cuda-checkpoint
//! talks to the process's CUDA restore thread, which a frozen cgroup cannot run
//! (docs/decisions/0008-gpu-nvml.md). A failed step rolls the handoff back ([`step_failed`]).

use super::action::{Action, ActionKind, RuleId};
use super::state::{EngineState, Handoff, elapsed};
use super::tick::{Claim, Tick};
use crate::policy::Trigger;
use crate::policy::amount::format_duration;

/// The end of a handoff step's rule id (`<workload>.gpu_handoff`).
pub const RULE_SUFFIX: &str = ".gpu_handoff";

/// Starts, holds and ends handoffs; claims the freeze and the checkpoint of each holder.
pub fn run(t: &mut Tick<'_>, state: &mut EngineState) {
    let policy = t.policy;
    let obs = t.obs;
    let now = t.now;
    // A handoff ends with its holder gone, or with its rule gone (policy reloaded).
    state.handoff.retain(|w, h| {
        obs.present(w)
            && policy
                .workload(&h.to)
                .and_then(|x| x.gpu_handoff.as_ref())
                .is_some_and(|g| g.from.contains(w))
    });
    for w in &policy.workloads {
        let Some(h) = &w.gpu_handoff else { continue };
        let rule = RuleId::new(format!("{}{RULE_SUFFIX}", w.name));
        let fired = t.is_active(&w.name)
            && match h.on {
                Trigger::Interaction => obs.interaction,
            };
        for target in &h.from {
            match state.handoff.get_mut(target) {
                // Another workload's handoff holds this one.
                Some(e) if e.rule != rule => continue,
                Some(e) if fired => e.released_at = None,
                Some(e) => {
                    let since = *e.released_at.get_or_insert(now);
                    if elapsed(since, now) >= h.release_after {
                        let note = if e.rolled_back {
                            format!("`{rule}` ended after its rollback; {target} kept running")
                        } else {
                            format!(
                                "handoff over: {} has not needed the GPU for {} (hysteresis {})",
                                w.name,
                                format_duration(elapsed(since, now)),
                                format_duration(h.release_after)
                            )
                        };
                        state.handoff.remove(target);
                        t.released
                            .insert(target.clone(), (rule.clone(), note.clone()));
                        t.handback.insert(target.clone(), (rule.clone(), note));
                        continue;
                    }
                }
                None => {
                    // Only a running holder: a frozen process cannot be checkpointed.
                    if !fired
                        || !obs.present(target)
                        || !obs.gpu_user(target)
                        || state.applied.frozen.contains_key(target)
                    {
                        continue;
                    }
                    state.handoff.insert(
                        target.clone(),
                        Handoff {
                            to: w.name.clone(),
                            rule: rule.clone(),
                            since: now,
                            released_at: None,
                            rolled_back: false,
                        },
                    );
                }
            }
            if state.handoff.get(target).is_none_or(|e| e.rolled_back) {
                continue;
            }
            let why = if fired {
                "interaction in progress"
            } else {
                "until the hysteresis ends"
            };
            let reason = format!(
                "GPU handoff: {} (rank {}) needs the GPU ({why}) while {target} holds it",
                w.name, w.rank
            );
            t.claim_first(target, &rule, reason.clone());
            t.checkpoint.insert(
                target.clone(),
                Claim {
                    workload: target.clone(),
                    rule: rule.clone(),
                    reason: format!("{reason}; its VRAM goes to host memory before its freeze"),
                },
            );
        }
    }
}

/// Tells the engine that the daemon's `action` failed. Returns true when that rolls a handoff
/// back: call `decide` again at once, it emits the steps that get the workload running
/// (thaw, then restore of its GPU state).
pub fn step_failed(state: &mut EngineState, action: &Action) -> bool {
    let roll_back = |state: &mut EngineState, w: &str| match state.handoff.get_mut(w) {
        Some(h) if !h.rolled_back => {
            h.rolled_back = true;
            true
        }
        _ => false,
    };
    match &action.kind {
        ActionKind::GpuCheckpoint { workload } => {
            // The actuator undid its partial work: nothing stays checkpointed.
            state.applied.gpu_checkpointed.remove(workload);
            roll_back(state, workload)
        }
        // The freeze may have half happened: `applied` keeps it, so the rollback thaws it.
        ActionKind::Freeze { workload } => roll_back(state, workload),
        ActionKind::Thaw { workload } => {
            // Still frozen (and its GPU state cannot come back yet): thaw again next tick.
            state
                .applied
                .frozen
                .insert(workload.clone(), action.rule.clone());
            false
        }
        ActionKind::GpuRestore { workload } => {
            // Retried next tick: the workload runs but its CUDA calls wait for the restore.
            state
                .applied
                .gpu_checkpointed
                .insert(workload.clone(), action.rule.clone());
            false
        }
        _ => false,
    }
}

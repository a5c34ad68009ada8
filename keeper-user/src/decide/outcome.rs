//! What follows an action's outcome: the engine's side of carrying actions out. The daemon
//! asks [`still_wanted`] before each action of a batch and tells [`acknowledge`] what each came
//! to; the engine alone decides what that changes (retry next tick, roll a handoff back, skip
//! the rest of a handoff, leave an intruder outside `--scope` alone, wait before asking again
//! after a failure: [`super::retry`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::state::Batch;
use super::{Action, ActionKind, EngineState, RuleId};
use crate::policy::{Amount, Percent};

/// One line of what carrying an action out did, per cgroup or process touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Step {
    Done {
        detail: String,
    },
    /// Nothing to do (already so).
    Unchanged {
        detail: String,
    },
    /// `--dry-run`: what would have been done.
    WouldDo {
        detail: String,
    },
    /// Outside `--scope`: observed and reported, never touched.
    ObservedOnly {
        detail: String,
    },
    /// Not carried out: a controller this host lacks, or the engine's word before it ran.
    Skipped {
        detail: String,
    },
    /// Failed; `retryable` when the next tick may succeed (an I/O error, a timeout).
    Failed {
        error: String,
        retryable: bool,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Done { detail } => write!(f, "done: {detail}"),
            Step::Unchanged { detail } => write!(f, "unchanged: {detail}"),
            Step::WouldDo { detail } => write!(f, "dry run, would: {detail}"),
            Step::ObservedOnly { detail } => write!(f, "observed only: {detail}"),
            Step::Skipped { detail } => write!(f, "skipped: {detail}"),
            Step::Failed { error, .. } => write!(f, "error: {error}"),
        }
    }
}

/// What a whole action came to, as the engine reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Carried out (or nothing was left to do).
    Done,
    /// Everything it would touch is outside `--scope`: nothing was.
    ObservedOnly,
    /// Not carried out, and not a failure (the engine's word, a missing controller).
    Skipped,
    /// At least one step failed; `retryable` as the first failure says.
    Failed { retryable: bool },
}

impl Outcome {
    /// The action's outcome from its steps.
    pub fn of(steps: &[Step]) -> Outcome {
        if let Some(retryable) = steps.iter().find_map(|s| match s {
            Step::Failed { retryable, .. } => Some(*retryable),
            _ => None,
        }) {
            return Outcome::Failed { retryable };
        }
        let touched = steps.iter().any(|s| {
            matches!(
                s,
                Step::Done { .. } | Step::Unchanged { .. } | Step::WouldDo { .. }
            )
        });
        let only = |f: fn(&Step) -> bool| !touched && steps.iter().any(f);
        if only(|s| matches!(s, Step::ObservedOnly { .. })) {
            Outcome::ObservedOnly
        } else if only(|s| matches!(s, Step::Skipped { .. })) {
            Outcome::Skipped
        } else {
            Outcome::Done
        }
    }

    pub fn is_ok(self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// Before carrying `action` out: `Some(why)` when what happened earlier in its batch (the
/// actions of one `decide`, carried out in order) means it must not run; the engine's state is
/// updated as if it had failed.
pub fn still_wanted(state: &mut EngineState, batch: &Batch, action: &Action) -> Option<String> {
    match &action.kind {
        ActionKind::GpuRestore { workload } if batch.still_frozen.contains(workload) => {
            super::step_failed(state, action);
            Some(format!(
                "{workload} is still frozen (its thaw failed); retried after its thaw"
            ))
        }
        ActionKind::Freeze { workload }
            if batch.rolled_back.contains(workload) && is_handoff(&action.rule) =>
        {
            forget(state, action);
            Some(format!(
                "the handoff of {workload} rolled back, it keeps running"
            ))
        }
        _ => None,
    }
}

/// After an eviction moved its task at `moved_ns` (CLOCK_MONOTONIC): arrivals of that task
/// reported from before its first move are no return ([`EngineState::moved_at`]). The first
/// is kept: a return's own eviction, acknowledged before the engine hears of the return,
/// moves it later than the return's report.
pub fn moved(state: &mut EngineState, action: &Action, moved_ns: Option<u64>) {
    if let (ActionKind::EvictIntruder { pid, .. }, Some(at)) = (&action.kind, moved_ns) {
        state.moved_at.entry(*pid).or_insert(at);
    }
}

/// After carrying `action` out: what its outcome changes. Returns true when the engine must be
/// asked again at once (a GPU handoff rolls back: thaw, then restore its GPU state).
pub fn acknowledge(
    state: &mut EngineState,
    batch: &mut Batch,
    action: &Action,
    outcome: Outcome,
) -> bool {
    match outcome {
        Outcome::Failed { retryable } => {
            let rollback = super::step_failed(state, action);
            if rollback {
                if let ActionKind::GpuCheckpoint { workload } | ActionKind::Freeze { workload } =
                    &action.kind
                {
                    batch.rolled_back.insert(workload.clone());
                }
            } else if retryable {
                forget(state, action);
                state.retries.failed(&action.kind);
            }
            if let ActionKind::Thaw { workload } = &action.kind {
                batch.still_frozen.insert(workload.clone());
            }
            rollback
        }
        Outcome::ObservedOnly => {
            // Outside --scope: not handed to the engine again while it stays in that cgroup.
            if let ActionKind::EvictIntruder { pid, cgroup, .. } = &action.kind {
                state.evicted.remove(pid);
                let cgroup = cgroup.trim_matches('/').to_string();
                state.observed_only.insert(*pid, cgroup);
            }
            false
        }
        Outcome::Skipped => {
            // A managed IRQ: the kernel keeps it where it is; said once.
            if let ActionKind::MoveIrq { irq, .. } = &action.kind {
                state.unmovable_irqs.insert(*irq);
            }
            false
        }
        Outcome::Done => {
            if !state.retries.is_empty() {
                state.retries.succeeded(&action.kind);
            }
            false
        }
    }
}

/// A step of a GPU handoff (its rule id is `<workload>.gpu_handoff`, made in `handoff`).
fn is_handoff(rule: &RuleId) -> bool {
    rule.0.ends_with(super::handoff::RULE_SUFFIX)
}

/// After a failed action, forget that the engine applied it, so the next tick retries.
pub(super) fn forget(state: &mut EngineState, action: &Action) {
    let a = &mut state.applied;
    match &action.kind {
        ActionKind::Freeze { workload } => {
            a.frozen.remove(workload);
        }
        ActionKind::ApplyClassLimits { workload, .. } => {
            a.classed.remove(workload);
        }
        ActionKind::SetCpuWeight { workload, .. }
        | ActionKind::SetCpuMax { workload, .. }
        | ActionKind::SetMemoryHigh { workload, .. } => {
            a.knobs.remove(workload);
        }
        ActionKind::ProtectTradingCores { .. } => a.trading = None,
        ActionKind::SetWorkqueueCpus { .. } => a.workqueues = None,
        ActionKind::CompleteIoOnSubmitter => a.io_on_submitter = false,
        ActionKind::KeepIrqbalanceOff { .. } => a.irqbalance_off = None,
        ActionKind::EvictIntruder { pid, .. } => {
            state.evicted.remove(pid);
        }
        ActionKind::StopIntruder { pid, .. } => {
            state.stopped.remove(pid);
        }
        // A stop is asked again while it is wanted; a refused start (PVE still saving the
        // VM) is asked again until it goes through.
        ActionKind::StopVm { workload, .. } => {
            a.stopped_vms.remove(workload);
        }
        ActionKind::StartVm { workload, .. } => {
            a.stopped_vms.insert(workload.clone(), action.rule.clone());
        }
        // A service that did not start is started again while it is wanted; one that did not
        // stop still runs, and is stopped again (the thaw behind it goes on: nothing stays
        // frozen for it).
        ActionKind::StartService { workload, .. } => {
            a.services.remove(workload);
        }
        ActionKind::StopService {
            workload,
            service,
            deadline_ms,
        } => {
            let started = super::StartedService {
                rule: action.rule.clone(),
                service: service.clone(),
                deadline_ms: *deadline_ms,
            };
            a.services.insert(workload.clone(), started);
        }
        // A lend that failed left the GPU with its holder (the actuator put it back); a return
        // that failed left it with the borrower. Asked again after the backoff.
        ActionKind::MoveGpu { from, back, .. } => a.gpu_lent = back.then(|| from.clone()),
        // A failed inflate is retried; a failed deflate is left to the journal's restore.
        ActionKind::Balloon {
            workload, target, ..
        } if *target != Amount::Percent(Percent::new(100.0)) => {
            a.balloons.remove(workload);
        }
        _ => {}
    }
}

//! Backoff for actions that failed and may succeed later. The engine is asked on every event
//! (an intruder, a PSI trigger, a control request), not only each tick: without a backoff a
//! VM start refused by a Proxmox API answering 500 was asked again every few milliseconds.
//! A retryable failure holds the same action back 1 s, doubling up to 60 s; success ends it.
//! The fast path (evicting, stopping intruders) has its own rules and is never held back.

use std::time::Duration;

use jiff::Timestamp;

use super::{Action, ActionKind, EngineState, elapsed, outcome::forget};
use crate::policy::{Amount, Percent};

/// The first wait after a failure; each further failure doubles it, up to [`LAST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const LAST_RETRY: Duration = Duration::from_secs(60);

/// Actions that failed, with how often and since when: the time of the decision that asked
/// for them (the engine reads no clock; the failure came after it, within one decision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retries {
    failed: Vec<Retry>,
    last_decision: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
struct Retry {
    kind: ActionKind,
    attempts: u32,
    failed_at: Option<Timestamp>,
}

impl Retries {
    /// `kind` failed and will be asked again: it waits its backoff first.
    pub fn failed(&mut self, kind: &ActionKind) {
        if !backs_off(kind) {
            return;
        }
        let at = self.last_decision;
        match self.failed.iter_mut().find(|r| r.kind == *kind) {
            Some(r) => {
                r.attempts += 1;
                r.failed_at = at;
            }
            None => self.failed.push(Retry {
                kind: kind.clone(),
                attempts: 1,
                failed_at: at,
            }),
        }
    }

    /// `kind` went through: no more waiting for it.
    pub fn succeeded(&mut self, kind: &ActionKind) {
        self.failed.retain(|r| r.kind != *kind);
    }

    /// How long `kind` still waits at `now` (`None`: it may run).
    pub fn wait(&self, kind: &ActionKind, now: Timestamp) -> Option<Duration> {
        let r = self.failed.iter().find(|r| r.kind == *kind)?;
        let backoff = FIRST_RETRY
            .saturating_mul(1 << r.attempts.saturating_sub(1).min(6))
            .min(LAST_RETRY);
        let since = elapsed(r.failed_at?, now);
        (since < backoff).then(|| backoff - since)
    }

    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }
}

/// The actions of one decision, less those still waiting after a failure; the engine forgets
/// it asked for those (as after the failure itself), so a later decision asks again.
pub fn hold_back(state: &mut EngineState, actions: Vec<Action>, now: Timestamp) -> Vec<Action> {
    let retries = &mut state.retries;
    retries.last_decision = Some(now);
    for r in &mut retries.failed {
        r.failed_at.get_or_insert(now);
    }
    // Failures no decision asked for again in a long while (their cause went away).
    retries.failed.retain(|r| {
        r.failed_at
            .is_some_and(|at| elapsed(at, now) < 2 * LAST_RETRY)
    });
    let (held, go): (Vec<Action>, Vec<Action>) = actions
        .into_iter()
        .partition(|a| state.retries.wait(&a.kind, now).is_some());
    for a in &held {
        forget(state, a);
    }
    go
}

/// Kinds a held-back request can be asked again for: the engine un-applies them on failure.
/// A deflate (balloon to 100 %) is left to the journal's restore instead.
fn backs_off(kind: &ActionKind) -> bool {
    match kind {
        ActionKind::Balloon { target, .. } => *target != Amount::Percent(Percent::new(100.0)),
        ActionKind::Freeze { .. }
        | ActionKind::ApplyClassLimits { .. }
        | ActionKind::SetCpuWeight { .. }
        | ActionKind::SetCpuMax { .. }
        | ActionKind::SetMemoryHigh { .. }
        | ActionKind::ProtectTradingCores { .. }
        | ActionKind::StopVm { .. }
        | ActionKind::StartVm { .. }
        | ActionKind::StartService { .. }
        | ActionKind::StopService { .. }
        | ActionKind::MoveGpu { .. }
        | ActionKind::MoveIrq { .. }
        | ActionKind::SetWorkqueueCpus { .. }
        | ActionKind::CompleteIoOnSubmitter
        | ActionKind::KeepIrqbalanceOff { .. } => true,
        _ => false,
    }
}

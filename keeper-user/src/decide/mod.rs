//! The pure decision engine: (policy, state, observations, time) → actions with reasons.
//!
//! No I/O, no clock reads, no globals: the caller passes `now`, and the memory between ticks
//! (dwell times, hysteresis, what was already done) lives in [`EngineState`], plain data.
//! Each tick rebuilds the *wanted* state from the rules (freeze claims, throttles, balloons,
//! power limit, GPU handoffs, trading cores) and emits the difference with what was already
//! applied, so the same input twice gives no new actions. Freezes go lowest rank first, thaws
//! in reverse. Rank 1 and the keeper itself are never frozen. The memory ladder stops (hibernates)
//! a VM only after ballooning has not been enough, and starts it first when the pressure clears. A handoff checkpoints a
//! workload's GPU state before its freeze and restores it after its thaw.

mod action;
mod activity;
mod escalation;
pub mod fast;
mod gpu;
mod gpu_mutex;
mod handoff;
mod kernel;
mod memory;
mod observe;
mod outcome;
mod partition;
mod reconcile;
mod retry;
mod service;
mod state;
mod tick;
mod trading;

#[cfg(test)]
mod gpu_mutex_tests;
#[cfg(test)]
mod gpu_tests;
#[cfg(test)]
mod intruder_tests;
#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod outcome_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

use jiff::Timestamp;

pub use action::{Action, ActionKind, RuleId, limits_text};
use handoff::step_failed;
pub use observe::{GpuObs, Intruder, IrqObs, Observations, PartitionObs, Psi, WorkloadObs};
pub use outcome::{Outcome, Step, acknowledge, moved, still_wanted};
pub use partition::{PartitionKind, PartitionState};
pub use retry::{FIRST_RETRY, LAST_RETRY, Retries};
pub use state::{
    Applied, Batch, EVICT_COOLDOWN, EngineState, EscalationState, Handoff, Hold, Knobs,
    MAX_OBSERVED_ONLY, StartedService, Sticky, ThermalState, elapsed,
};

use crate::policy::Policy;

pub use crate::policy::MIN_REACTION;

/// One tick of the engine. Mutates `state`; returns the actions to carry out, in order.
pub fn decide(
    policy: &Policy,
    state: &mut EngineState,
    obs: &Observations,
    now: Timestamp,
) -> Vec<Action> {
    let mut tick = tick::Tick::new(policy, obs, now);
    activity::run(&mut tick, state);
    handoff::run(&mut tick, state);
    trading::run(&mut tick, state);
    gpu::thermal_guard(&mut tick, state);
    escalation::run(&mut tick, state);
    memory::run(&mut tick, state);
    gpu::eco_mode(&mut tick, state);
    let borrower = gpu_mutex::borrower(&tick);
    let mut actions = reconcile::run(tick, state);
    actions.extend(gpu_mutex::moves(policy, state, borrower));
    actions.extend(kernel::workqueues(policy, state));
    actions.extend(kernel::irqs(policy, obs, state, now));
    actions.extend(kernel::irq_guard_once(policy, state));
    retry::hold_back(state, actions, now)
}

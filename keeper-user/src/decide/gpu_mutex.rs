//! `rules.gpu_mutex`: the passthrough GPU is one mutex between VMs. It stays with its holder
//! and is lent to the first VM of `lend_to` that needs it: one that runs and is active (in its
//! windows, its start conditions met), or, with `config` (the planned-restart path), one that
//! is not running and is in its windows (the move starts it); when that one no longer needs it
//! the GPU goes back. A move between two borrowers goes back through the holder (two moves in
//! one decision). Each move is one slow action: unplug from one VM, plug into the other,
//! rolled back by the actuator when the plug fails.

use super::action::{Action, ActionKind, RuleId};
use super::state::EngineState;
use super::tick::Tick;
use crate::policy::{GpuMutex, Policy};

/// The borrower the rule wants now (`None`: the holder keeps the GPU).
pub fn borrower(t: &Tick<'_>) -> Option<String> {
    let m = t.policy.rules.gpu_mutex.as_ref()?;
    m.lend_to.iter().find(|w| needs(t, m, w)).cloned()
}

/// A running VM needs the GPU while it is active; one that is not running, while it is in its
/// windows, where the planned-restart path can start it (a VM without windows needs it only
/// while it runs: nothing says when to start it).
fn needs(t: &Tick<'_>, m: &GpuMutex, name: &str) -> bool {
    if t.obs.present(name) {
        return t.is_active(name);
    }
    let Some(w) = t.policy.workload(name) else {
        return false;
    };
    m.config.is_some() && w.windows.iter().any(|win| win.contains(t.now))
}

/// The moves from where the GPU was last sent to where it is wanted now.
pub fn moves(policy: &Policy, state: &mut EngineState, wanted: Option<String>) -> Vec<Action> {
    let Some(m) = &policy.rules.gpu_mutex else {
        return vec![];
    };
    let lent = &mut state.applied.gpu_lent;
    if *lent == wanted {
        return vec![];
    }
    let mut out = Vec::new();
    if let Some(b) = lent.take() {
        let why = format!("{b} no longer needs the GPU: back to {}", m.holder);
        out.extend(move_gpu(policy, m, (&b, &m.holder), true, why));
    }
    if let Some(w) = wanted {
        let why = format!("{w} needs the GPU: lent by {}", m.holder);
        out.extend(move_gpu(policy, m, (&m.holder, &w), false, why));
        *lent = Some(w);
    }
    out
}

fn move_gpu(
    policy: &Policy,
    m: &GpuMutex,
    (from, to): (&str, &str),
    back: bool,
    reason: String,
) -> Option<Action> {
    let vmid = |w: &str| policy.workload(w).and_then(|w| w.matcher.vmid);
    Some(Action {
        kind: ActionKind::MoveGpu {
            from: from.to_string(),
            from_vmid: vmid(from)?,
            to: to.to_string(),
            to_vmid: vmid(to)?,
            device: m.device.clone(),
            config: m.config.clone(),
            deadline_ms: m.deadline.as_millis() as u64,
            back,
        },
        rule: RuleId::new("rules.gpu_mutex"),
        reason,
    })
}

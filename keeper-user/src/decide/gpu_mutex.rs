//! `rules.gpu_mutex`: the passthrough GPU is one mutex between VMs. It stays with its holder
//! and is lent to the first VM of `lend_to` that is active (present, in its windows, its start
//! conditions met); when that one is no longer active the GPU goes back. A move between two
//! borrowers goes back through the holder (two moves in one decision). Each move is one slow
//! action: unplug from one VM, plug into the other, rolled back by the actuator when the plug
//! fails.

use super::action::{Action, ActionKind, RuleId};
use super::state::EngineState;
use super::tick::Tick;
use crate::policy::{GpuMutex, Policy};

/// The borrower the rule wants now (`None`: the holder keeps the GPU).
pub fn borrower(t: &Tick<'_>) -> Option<String> {
    let m = t.policy.rules.gpu_mutex.as_ref()?;
    m.lend_to.iter().find(|w| t.is_active(w)).cloned()
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
        let why = format!("{w} is active and needs the GPU: lent by {}", m.holder);
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
            deadline_ms: m.deadline.as_millis() as u64,
            back,
        },
        rule: RuleId::new("rules.gpu_mutex"),
        reason,
    })
}

//! `start_on`: the service a workload needs while its preemption holds (EVA's Llama 3). Its
//! start comes after the tick's freezes, its stop before the thaws, so what it needs never
//! runs beside the frozen work and the frozen work never thaws beside it.

use std::collections::BTreeMap;

use super::action::{Action, ActionKind};
use super::state::{Applied, StartedService};
use super::tick::Claim;
use crate::policy::Policy;

/// Services wanted and not started yet (placed after the freezes).
pub fn starts(
    policy: &Policy,
    wanted: &BTreeMap<String, Claim>,
    applied: &mut Applied,
) -> Vec<Action> {
    let mut out = Vec::new();
    for w in &policy.workloads {
        let (Some(c), Some(s)) = (wanted.get(&w.name), &w.start_on) else {
            continue;
        };
        if applied.services.contains_key(&w.name) {
            continue;
        }
        let started = StartedService {
            rule: c.rule.clone(),
            service: s.service.clone(),
            deadline_ms: s.deadline.as_millis() as u64,
        };
        out.push(Action {
            kind: ActionKind::StartService {
                workload: w.name.clone(),
                service: started.service.clone(),
                deadline_ms: started.deadline_ms,
            },
            rule: c.rule.clone(),
            reason: c.reason.clone(),
        });
        applied.services.insert(w.name.clone(), started);
    }
    out
}

/// Services started and no longer wanted (placed before the thaws), stopped as they were
/// started (a reload may have changed the policy since).
pub fn stops(wanted: &BTreeMap<String, Claim>, applied: &mut Applied) -> Vec<Action> {
    let gone: Vec<String> = (applied.services.keys())
        .filter(|w| !wanted.contains_key(*w))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for workload in gone {
        let Some(s) = applied.services.remove(&workload) else {
            continue;
        };
        out.push(Action {
            reason: format!(
                "{workload}'s preemption ended: what it needed stops before what it froze thaws"
            ),
            kind: ActionKind::StopService {
                workload,
                service: s.service,
                deadline_ms: s.deadline_ms,
            },
            rule: s.rule,
        });
    }
    out
}

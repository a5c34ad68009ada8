//! Escalation: cpu.weight → cpu.max → freeze, with dwell and rollback.

use super::action::RuleId;
use super::state::{EngineState, elapsed};
use super::tick::{Tick, Want};
use super::trading::slo_breached;
use crate::policy::Step;

/// While the host's CPU pressure is above the threshold (or the trading SLO is breached),
/// take the last escalated workload one step up the ladder every `dwell`; once it is at the
/// top, start on the next lowest-ranked running workload. After `rollback_after` of calm, step
/// back down one step per `dwell`, the last escalated first.
pub fn run(t: &mut Tick<'_>, state: &mut EngineState) {
    let Some(esc) = &t.policy.rules.escalation else {
        return;
    };
    let rule = RuleId::new("rules.escalation");
    let obs = t.obs;
    let now = t.now;
    let ladder = &mut state.escalation;
    ladder.entries.retain(|(w, _)| obs.present(w));
    let pressure = obs.cpu_pressure.some_avg10;
    let slo = slo_breached(t);
    let cause = if pressure > esc.cpu_pressure_above {
        Some(format!(
            "host CPU pressure {pressure:.1}% > {}%",
            esc.cpu_pressure_above
        ))
    } else {
        slo.map(|(p99, target)| format!("trading p99 wakeup {p99}us > SLO {target}us"))
    };
    let dwell_done = ladder
        .last_change
        .is_none_or(|at| elapsed(at, now) >= esc.dwell);
    let top = esc.steps.len().saturating_sub(1);
    if cause.is_some() {
        ladder.calm_since = None;
        if dwell_done {
            let stepped = match ladder.entries.last_mut() {
                Some((_, step)) if *step < top => {
                    *step += 1;
                    true
                }
                _ => {
                    let entries = &ladder.entries;
                    let next = t
                        .victims(|w| {
                            obs.running(&w.name) && !entries.iter().any(|(e, _)| *e == w.name)
                        })
                        .first()
                        .map(|w| w.name.clone());
                    next.map(|n| ladder.entries.push((n, 0))).is_some()
                }
            };
            if stepped {
                ladder.last_change = Some(now);
            }
        }
    } else if !ladder.entries.is_empty() {
        let calm = *ladder.calm_since.get_or_insert(now);
        if elapsed(calm, now) >= esc.rollback_after && dwell_done {
            if let Some((name, step)) = ladder.entries.last_mut() {
                if *step == 0 {
                    let name = name.clone();
                    ladder.entries.pop();
                    let note =
                        "`rules.escalation` rolled back: calm for the rollback time".to_string();
                    t.released.insert(name, (rule.clone(), note));
                } else {
                    *step -= 1;
                }
            }
            ladder.last_change = Some(now);
        }
    } else {
        ladder.calm_since = None;
    }
    let why = cause.unwrap_or_else(|| "pressure easing; rolling back one step per dwell".into());
    for (name, step) in state.escalation.entries.clone() {
        let reason = |what: &str| {
            format!(
                "{why}: step {}/{} ({what}) on {name}, the lowest-ranked running workload",
                step + 1,
                top + 1
            )
        };
        let knobs = t.knobs.entry(name.clone()).or_default();
        for s in &esc.steps[..=step.min(top)] {
            match s {
                Step::CpuWeight(v) => {
                    knobs.cpu_weight = Some(Want {
                        value: *v,
                        rule: rule.clone(),
                        reason: reason(&format!("cpu.weight {v}")),
                    })
                }
                Step::CpuMax(p) => {
                    knobs.cpu_max = Some(Want {
                        value: *p,
                        rule: rule.clone(),
                        reason: reason(&format!("cpu.max {p}")),
                    })
                }
                Step::Freeze => {}
            }
        }
        if esc.steps.get(step) == Some(&Step::Freeze) {
            t.claim(&name, &rule, reason("freeze"));
        }
    }
}

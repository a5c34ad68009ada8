//! Workload activity (windows, start conditions), pauses, preemption and what a preemption
//! starts (`start_on`). The trading cores and their intruders are in [`super::trading`].

use super::action::RuleId;
use super::state::EngineState;
use super::tick::{Claim, Tick};
use crate::policy::{Trigger, WhenInactive, Workload};

/// Why the start conditions do not hold, or `None` when they do.
fn unmet_condition(t: &Tick<'_>, w: &Workload) -> Option<String> {
    let c = &w.conditions;
    if let Some(max) = c.loadavg_below
        && t.obs.loadavg >= max
    {
        return Some(format!(
            "load average {:.2} is not below {max}",
            t.obs.loadavg
        ));
    }
    if let Some(max) = c.memory_pressure_below {
        let p = t.obs.memory_pressure.some_avg10;
        if p >= max {
            return Some(format!("memory pressure {p:.1}% is not below {max}%"));
        }
    }
    if c.gpu_idle {
        let idle_below = t
            .policy
            .rules
            .eco_mode
            .as_ref()
            .map_or(10.0, |e| e.idle_below);
        match &t.obs.gpu {
            Some(g) if g.utilization_pct < idle_below => {}
            Some(g) => {
                return Some(format!(
                    "GPU is busy ({:.0}% >= {idle_below}%)",
                    g.utilization_pct
                ));
            }
            None => return Some("GPU state unknown".into()),
        }
    }
    None
}

pub(super) fn window_text(w: &Workload) -> String {
    if w.windows.is_empty() {
        return "always".into();
    }
    w.windows
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Activity of every workload, `when_inactive: freeze`, `pauses` and `preempt`.
pub fn run(t: &mut Tick<'_>, state: &mut EngineState) {
    let policy = t.policy;
    for w in &policy.workloads {
        let present = t.obs.present(&w.name);
        let in_window = w.windows.is_empty() || w.windows.iter().any(|win| win.contains(t.now));
        let unmet = unmet_condition(t, w);
        if !present || !in_window {
            state.gates.remove(&w.name);
        } else if unmet.is_none() {
            state.gates.insert(w.name.clone());
        }
        let active = present && in_window && state.gates.contains(&w.name);
        t.active.insert(w.name.clone(), active);
        if active && w.when_inactive == WhenInactive::Freeze {
            let rule = match state.applied.frozen.get(&w.name) {
                Some(r) if r.0.starts_with(&format!("{}.", w.name)) => r.clone(),
                _ => RuleId::new(format!("{}.windows", w.name)),
            };
            let why = if w.conditions.is_empty() {
                "inside its windows"
            } else {
                "inside its windows and its start conditions hold"
            };
            t.released
                .insert(w.name.clone(), (rule, format!("{} may run: {why}", w.name)));
        }
        if present && !active && w.when_inactive == WhenInactive::Freeze {
            if !in_window {
                let rule = RuleId::new(format!("{}.windows", w.name));
                t.claim(
                    &w.name,
                    &rule,
                    format!("{} is outside its windows ({})", w.name, window_text(w)),
                );
            } else {
                let rule = RuleId::new(format!("{}.conditions", w.name));
                let why = unmet.unwrap_or_default();
                t.claim(&w.name, &rule, format!("{} may not start: {why}", w.name));
            }
        }
    }
    for w in &policy.workloads {
        let active = t.is_active(&w.name);
        let rule = RuleId::new(format!("{}.pauses", w.name));
        for target in &w.pauses {
            let cause = active.then(|| {
                let when = if w.windows.is_empty() {
                    "active".to_string()
                } else {
                    format!("active ({})", window_text(w))
                };
                format!("{} (rank {}) is {when} and pauses {target}", w.name, w.rank)
            });
            t.hold(state, &rule, target, cause, policy.rules.thaw_hysteresis);
        }
        if let Some(p) = &w.preempt {
            let rule = RuleId::new(format!("{}.preempt", w.name));
            let fired = active
                && match p.on {
                    Trigger::Interaction => t.obs.interaction,
                };
            let mut holds = false;
            for target in &p.targets {
                let cause = fired.then(|| {
                    format!(
                        "interaction in progress: {} (rank {}) preempts {target} (deadline {})",
                        w.name,
                        w.rank,
                        crate::policy::amount::format_duration(p.deadline)
                    )
                });
                holds |= t.hold(state, &rule, target, cause, p.release_after);
            }
            // What the workload needs runs while its preemption holds: started after the
            // freezes, stopped before the thaws (reconcile orders them).
            if holds && w.start_on.is_some() {
                let reason = format!(
                    "{} preempts {}: what it needs runs meanwhile",
                    w.name,
                    p.targets.join(", ")
                );
                t.services.insert(
                    w.name.clone(),
                    Claim {
                        workload: w.name.clone(),
                        rule: RuleId::new(format!("{}.start_on", w.name)),
                        reason,
                    },
                );
            }
        }
    }
}

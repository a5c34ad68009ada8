//! Memory rules on host pressure: `memory.high`, then freeze, and balloons for VMs.

use super::action::RuleId;
use super::state::{EngineState, Sticky, elapsed};
use super::tick::{Tick, Want};
use crate::policy::amount::format_duration;
use crate::policy::{Amount, Percent};

#[derive(Clone, Copy, PartialEq)]
enum Level {
    High,
    Freeze,
    Balloon,
}

impl Level {
    fn key(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Freeze => "freeze",
            Level::Balloon => "balloon",
        }
    }
}

/// Each level picks the lowest-ranked fitting workload when its threshold is crossed and keeps
/// it until the pressure has stayed below for `release_after`.
pub fn run(t: &mut Tick<'_>, state: &mut EngineState) {
    let Some(m) = &t.policy.rules.memory else {
        return;
    };
    let rule = RuleId::new("rules.memory");
    let psi = t.obs.memory_pressure;
    let levels = [
        (Level::High, m.high_above, psi.some_avg10, "some"),
        (Level::Freeze, m.freeze_above, psi.full_avg10, "full"),
        (Level::Balloon, m.balloon_above, psi.some_avg10, "some"),
    ];
    for (level, threshold, value, kind) in levels {
        let Some(threshold) = threshold else { continue };
        let key = level.key();
        let obs = t.obs;
        if state
            .memory
            .get(key)
            .is_some_and(|s| !obs.present(&s.workload))
        {
            state.memory.remove(key);
        }
        if value > threshold {
            match state.memory.get_mut(key) {
                Some(s) => s.released_at = None,
                None => {
                    let victim = t
                        .victims(|w| match level {
                            Level::Balloon => w.matcher.vmid.is_some(),
                            _ => obs.running(&w.name),
                        })
                        .first()
                        .map(|w| w.name.clone());
                    if let Some(workload) = victim {
                        state.memory.insert(
                            key.into(),
                            Sticky {
                                workload,
                                released_at: None,
                            },
                        );
                    }
                }
            }
        } else if let Some(s) = state.memory.get_mut(key) {
            let since = *s.released_at.get_or_insert(t.now);
            if elapsed(since, t.now) >= m.release_after {
                let workload = s.workload.clone();
                state.memory.remove(key);
                let note = format!(
                    "memory pressure below {threshold}% for {}",
                    format_duration(elapsed(since, t.now))
                );
                t.released.insert(workload, (rule.clone(), note));
                continue;
            }
        }
        let Some(s) = state.memory.get(key) else {
            continue;
        };
        let name = s.workload.clone();
        let reason = format!(
            "host memory pressure ({kind} avg10) {value:.1}% > {threshold}%; {name} is the lowest-ranked candidate"
        );
        let reason = if s.released_at.is_some() {
            format!(
                "memory pressure eased to {value:.1}%, holding for {}",
                format_duration(m.release_after)
            )
        } else {
            reason
        };
        match level {
            Level::High => {
                let class_high = t
                    .policy
                    .workload(&name)
                    .and_then(|w| t.policy.limits_of(w).memory_high);
                let value = m
                    .memory_high
                    .or(class_high)
                    .unwrap_or(Amount::Percent(Percent::new(50.0)));
                t.knobs.entry(name).or_default().memory_high = Some(Want {
                    value,
                    rule: rule.clone(),
                    reason,
                });
            }
            Level::Freeze => t.claim(&name, &rule, reason),
            Level::Balloon => {
                t.balloons.insert(
                    name,
                    Want {
                        value: m.balloon_target,
                        rule: rule.clone(),
                        reason,
                    },
                );
            }
        }
    }
}

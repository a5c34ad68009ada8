//! Memory rules on host pressure, a ladder: `memory.high`, then freeze, then balloons for
//! VMs, and last (if the policy allows it) stopping the lowest-ranked VM. Undone in reverse:
//! a stopped VM is started before the balloons deflate.

use super::action::RuleId;
use super::state::{EngineState, Sticky, elapsed};
use super::tick::{Claim, Tick, Want};
use std::time::Duration;

use crate::policy::amount::format_duration;
use crate::policy::{Amount, Percent};

#[derive(Clone, Copy, PartialEq)]
enum Level {
    High,
    Freeze,
    Balloon,
    StopVm,
}

impl Level {
    fn key(self) -> &'static str {
        match self {
            Level::High => "high",
            Level::Freeze => "freeze",
            Level::Balloon => "balloon",
            Level::StopVm => "stop_vm",
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
    let (some, some_from) = felt(t, |p| p.some_avg10);
    let (full, full_from) = felt(t, |p| p.full_avg10);
    let levels = [
        (Level::High, m.high_above, some, "some", &some_from),
        (Level::Freeze, m.freeze_above, full, "full", &full_from),
        (Level::Balloon, m.balloon_above, some, "some", &some_from),
        (Level::StopVm, m.stop_vm_above, full, "full", &full_from),
    ];
    for (i, &(level, threshold, value, kind, from)) in levels.iter().enumerate() {
        let Some(threshold) = threshold else { continue };
        let key = level.key();
        let obs = t.obs;
        // A stopped VM is absent by design: its level holds it until it is started again.
        if level != Level::StopVm
            && state
                .memory
                .get(key)
                .is_some_and(|s| !obs.present(&s.workload))
        {
            state.memory.remove(key);
        }
        // Undo in reverse: a step is not undone while a later one holds (no balloon given
        // back while a VM is stopped, no thaw while balloons are out, ...).
        let hold_on = levels[i + 1..]
            .iter()
            .any(|l| state.memory.contains_key(l.0.key()));
        if value > threshold || hold_on {
            match state.memory.get_mut(key) {
                Some(s) => s.released_at = None,
                None if value <= threshold => {}
                None => {
                    let victim = match level {
                        Level::StopVm => stop_candidate(t, state, m.stop_vm_after),
                        // Never the workload that owns the trading cores.
                        Level::Balloon => t
                            .victims(|w| w.matcher.vmid.is_some() && !w.owns_trading_cores)
                            .first()
                            .map(|w| w.name.clone()),
                        _ => t
                            .victims(|w| obs.running(&w.name) && !w.owns_trading_cores)
                            .first()
                            .map(|w| w.name.clone()),
                    };
                    if let Some(workload) = victim {
                        state.memory.insert(
                            key.into(),
                            Sticky {
                                workload,
                                released_at: None,
                                since: Some(t.now),
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
            "{from} ({kind} avg10) {value:.1}% > {threshold}%; {name} is the lowest-ranked candidate"
        );
        let reason = if s.released_at.is_some() {
            format!(
                "memory pressure eased to {value:.1}%, holding for {}",
                format_duration(m.release_after)
            )
        } else if value <= threshold {
            format!(
                "memory pressure eased to {value:.1}%; held until the ladder's later steps are undone"
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
            Level::StopVm => {
                // A VM being hibernated must run: no rule freezes it meanwhile.
                t.claims.retain(|c| c.workload != name);
                let reason = format!(
                    "{reason}; ballooning for {} was not enough",
                    format_duration(m.stop_vm_after)
                );
                t.stop_vms.insert(
                    name.clone(),
                    Claim {
                        workload: name,
                        rule: rule.clone(),
                        reason,
                    },
                );
            }
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

/// The lowest-ranked VM to stop, once VMs have been ballooned for `after` (never rank 1, the
/// keeper, or the owner of the trading cores; a frozen VM counts: it is thawed first).
fn stop_candidate(t: &Tick<'_>, state: &EngineState, after: Duration) -> Option<String> {
    let ballooned = state.memory.get(Level::Balloon.key())?;
    let since = ballooned.since?;
    if ballooned.released_at.is_some() || elapsed(since, t.now) < after {
        return None;
    }
    t.policy
        .workloads
        .iter()
        .rev()
        .find(|w| {
            w.matcher.vmid.is_some()
                && !w.owns_trading_cores
                && t.freezable(w)
                && t.obs.present(&w.name)
        })
        .map(|w| w.name.clone())
}

/// The memory pressure the rules act on, and whose it is: the host's (`--memory-psi`), or
/// that felt by a protected workload (rank 1, the owner of the trading cores), whichever is
/// higher. A protected workload stalling on memory is what the ladder exists to prevent; the
/// others' own stalls (a hog under its class's memory.high) are theirs.
fn felt(t: &Tick<'_>, pick: impl Fn(&super::observe::Psi) -> f64) -> (f64, String) {
    let mut best = (
        pick(&t.obs.memory_pressure),
        "host memory pressure".to_string(),
    );
    for w in &t.policy.workloads {
        if !(w.rank == 1 || w.owns_trading_cores) {
            continue;
        }
        if let Some(o) = t.obs.workloads.get(&w.name) {
            let v = pick(&o.memory_pressure);
            if v > best.0 {
                best = (v, format!("memory pressure felt by {}", w.name));
            }
        }
    }
    best
}

//! GPU rules: the thermal guard (freeze the lowest-ranked GPU user when hot) and eco mode
//! (the handoff has its own file, `handoff.rs`).

use super::action::RuleId;
use super::state::{EngineState, elapsed};
use super::tick::{Tick, Want};
use crate::policy::amount::format_duration;

/// Above `gpu_temp_above`: freeze the lowest-ranked GPU user, one more per dwell while hot.
/// Below `resume_below`: thaw them in reverse, one per dwell. In between: hold.
pub fn thermal_guard(t: &mut Tick<'_>, state: &mut EngineState) {
    let Some(rule_cfg) = &t.policy.rules.thermal_guard else {
        return;
    };
    let rule = RuleId::new("rules.thermal_guard");
    let obs = t.obs;
    state.thermal.frozen.retain(|w| obs.present(w));
    let dwell_done = state
        .thermal
        .last_change
        .is_none_or(|at| elapsed(at, t.now) >= rule_cfg.dwell);
    if let Some(gpu) = &obs.gpu {
        let temp = gpu.temperature_c;
        if temp > rule_cfg.gpu_temp_above && (dwell_done || state.thermal.frozen.is_empty()) {
            let frozen = &state.thermal.frozen;
            let next = t
                .victims(|w| obs.gpu_user(&w.name) && !frozen.contains(&w.name))
                .first()
                .map(|w| w.name.clone());
            if let Some(name) = next {
                state.thermal.frozen.push(name);
                state.thermal.last_change = Some(t.now);
            }
        } else if temp < rule_cfg.resume_below && dwell_done && !state.thermal.frozen.is_empty() {
            if let Some(name) = state.thermal.frozen.pop() {
                let note = format!(
                    "GPU cooled to {temp:.0}°C < {}°C (hysteresis: resume below, {} between steps)",
                    rule_cfg.resume_below,
                    format_duration(rule_cfg.dwell)
                );
                t.released.insert(name, (rule.clone(), note));
            }
            state.thermal.last_change = Some(t.now);
        }
    }
    let temp = obs.gpu.as_ref().map_or(0.0, |g| g.temperature_c);
    for name in state.thermal.frozen.clone() {
        let reason = format!(
            "GPU at {temp:.0}°C > {}°C: {name} is the lowest-ranked GPU user left running",
            rule_cfg.gpu_temp_above
        );
        t.claim(&name, &rule, reason);
    }
}

/// Idle GPU for `idle_after` → idle power limit (and the clock offset, if any); any work →
/// busy power limit (and clock offset 0).
pub fn eco_mode(t: &mut Tick<'_>, state: &mut EngineState) {
    let Some(eco) = &t.policy.rules.eco_mode else {
        return;
    };
    let Some(gpu) = &t.obs.gpu else { return };
    let rule = RuleId::new("rules.eco_mode");
    let running_users: Vec<&str> = gpu
        .users
        .iter()
        .filter(|(w, n)| **n > 0 && !t.claimed(w))
        .map(|(w, _)| w.as_str())
        .collect();
    let idle = gpu.utilization_pct < eco.idle_below && running_users.is_empty();
    let want = if idle {
        let since = *state.gpu_idle_since.get_or_insert(t.now);
        (elapsed(since, t.now) >= eco.idle_after).then(|| {
            let reason = format!(
                "GPU idle ({:.0}% < {}%) for {}",
                gpu.utilization_pct,
                eco.idle_below,
                format_duration(elapsed(since, t.now))
            );
            (eco.idle_power_limit, reason)
        })
    } else {
        state.gpu_idle_since = None;
        let who = if running_users.is_empty() {
            "work".to_string()
        } else {
            running_users.join(", ")
        };
        Some((
            eco.busy_power_limit,
            format!("GPU busy ({:.0}%, {who})", gpu.utilization_pct),
        ))
    };
    // The undervolt goes with the idle limit, and back to 0 for work once it was set.
    t.clock_offset = eco.clock_offset_mhz.and_then(|mhz| {
        let (value, reason) = match &want {
            Some((_, r)) if idle => (mhz, format!("{r}: eco mode undervolt")),
            Some((_, r)) => {
                state.applied.gpu_clock_offset?;
                (0, r.clone())
            }
            None => return None,
        };
        Some(Want {
            value,
            rule: rule.clone(),
            reason,
        })
    });
    // While idle but not yet for long enough, keep whatever limit is in force.
    let (value, reason) = match want {
        Some(w) => w,
        None => match state.applied.gpu_power_limit {
            Some(p) => (p, String::new()),
            None => (eco.busy_power_limit, "GPU limit at start".into()),
        },
    };
    t.power_limit = Some(Want {
        value,
        rule,
        reason,
    });
}

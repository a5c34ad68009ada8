//! `keeper simulate`: replays a scenario (a YAML timeline of observations) through the pure
//! engine, and prints the timeline of actions as text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

pub mod scenario;

use crate::decide::{Action, EngineState, Observations, decide, elapsed};
use crate::policy::Policy;
use crate::policy::amount::parse_duration;
use scenario::{Scenario, ScenarioError, resolve_time};

/// Most engine ticks one simulation runs (a tiny `tick` over a long scenario is refused).
pub const MAX_TICKS: usize = 100_000;

/// One moment of the timeline: a scenario step, or an in-between tick that acted.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// RFC 3339 with the policy time zone's offset.
    pub at: String,
    /// Local time with zone abbreviation and weekday, for reading.
    pub local: String,
    /// Index of the scenario step (`None` for an in-between tick).
    pub step: Option<usize>,
    pub note: Option<String>,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub description: String,
    pub entries: Vec<Entry>,
}

fn stamp(policy: &Policy, at: Timestamp) -> (String, String) {
    let z = at.to_zoned(policy.host.time_zone.clone());
    (
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        z.strftime("%a %Y-%m-%d %H:%M:%S %Z").to_string(),
    )
}

/// Runs `scenario` against `policy` from a fresh [`EngineState`].
pub fn run(policy: &Policy, scenario: &Scenario) -> Result<Timeline, ScenarioError> {
    let tz = &policy.host.time_zone;
    let serr = |step: usize, message: String| ScenarioError::Step { step, message };
    let tick = match &scenario.tick {
        Some(t) => {
            let d = parse_duration(t).map_err(|m| serr(0, format!("tick: {m}")))?;
            if d < Duration::from_millis(1) {
                return Err(serr(0, "tick: at least 1ms".into()));
            }
            Some(d)
        }
        None => None,
    };
    let mut times = Vec::new();
    let mut prev = None;
    for (i, step) in scenario.steps.iter().enumerate() {
        let at = resolve_time(&step.at, prev, tz).map_err(|m| serr(i, format!("at: {m}")))?;
        if prev.is_some_and(|p| at < p) {
            return Err(serr(
                i,
                format!("at: `{}` is before the previous step", step.at),
            ));
        }
        for name in step.workloads.keys().chain(step.absent.iter()) {
            if policy.workload(name).is_none() {
                return Err(serr(i, format!("unknown workload `{name}`")));
            }
        }
        times.push(at);
        prev = Some(at);
    }
    let last = *times.last().ok_or_else(|| serr(0, "no steps".into()))?;
    let end = match &scenario.end {
        Some(e) => resolve_time(e, Some(last), tz)
            .map_err(|m| serr(scenario.steps.len(), format!("end: {m}")))?,
        None => last,
    };
    if let Some(t) = tick {
        let span = elapsed(times[0], end.max(last));
        if span.as_nanos() / t.as_nanos().max(1) > MAX_TICKS as u128 {
            return Err(serr(
                0,
                format!("tick: more than {MAX_TICKS} ticks; use a longer tick"),
            ));
        }
    }
    let mut state = EngineState::default();
    let mut obs = Observations::default();
    let mut entries = Vec::new();
    let run_ticks = |from: Timestamp,
                     until: Timestamp,
                     obs: &mut Observations,
                     state: &mut EngineState,
                     entries: &mut Vec<Entry>| {
        let Some(t) = tick else { return };
        let Ok(step) = SignedDuration::try_from(t) else {
            return;
        };
        let mut at = from;
        // Intruders are events of their step only.
        obs.intruders.clear();
        while let Ok(next) = at.checked_add(step) {
            if next >= until {
                break;
            }
            at = next;
            let actions = decide(policy, state, obs, at);
            if !actions.is_empty() {
                let (rfc, local) = stamp(policy, at);
                entries.push(Entry {
                    at: rfc,
                    local,
                    step: None,
                    note: None,
                    actions,
                });
            }
        }
    };
    for (i, step) in scenario.steps.iter().enumerate() {
        step.apply(&mut obs).map_err(|m| serr(i, m))?;
        let at = times[i];
        let actions = decide(policy, &mut state, &obs, at);
        let (rfc, local) = stamp(policy, at);
        entries.push(Entry {
            at: rfc,
            local,
            step: Some(i + 1),
            note: step.note.clone(),
            actions,
        });
        let until = times.get(i + 1).copied().unwrap_or(end);
        run_ticks(at, until, &mut obs, &mut state, &mut entries);
    }
    if end > last {
        let actions = decide(policy, &mut state, &obs, end);
        if !actions.is_empty() {
            let (rfc, local) = stamp(policy, end);
            entries.push(Entry {
                at: rfc,
                local,
                step: None,
                note: Some("end".into()),
                actions,
            });
        }
    }
    Ok(Timeline {
        description: scenario.description.clone(),
        entries,
    })
}

impl Timeline {
    /// The text report: one header per moment, one line per action with its rule and reason.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if !self.description.trim().is_empty() {
            for line in self.description.trim().lines() {
                let _ = writeln!(out, "# {line}");
            }
        }
        for e in &self.entries {
            let label = match (e.step, &e.note) {
                (Some(n), Some(note)) => format!("step {n}: {}", note.trim()),
                (Some(n), None) => format!("step {n}"),
                (None, Some(note)) => note.clone(),
                (None, None) => "tick".into(),
            };
            let _ = writeln!(out, "{}  {label}", e.local);
            if e.actions.is_empty() && e.step.is_some() {
                let _ = writeln!(out, "    (no action)");
            }
            for a in &e.actions {
                let _ = writeln!(out, "    {}  [{}]  {}", a.kind, a.rule, a.reason);
            }
        }
        out
    }
}

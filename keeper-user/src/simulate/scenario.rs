//! Scenarios for `keeper simulate`: a YAML timeline of observation changes (docs/simulate.md).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{Timestamp, Zoned, civil::DateTime, tz::TimeZone};
use serde::Deserialize;

use crate::decide::{GpuObs, Intruder, Observations, Psi, WorkloadObs};
use crate::policy::Diagnostic;
use crate::policy::amount::parse_duration;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Also tick the engine at this period between steps, so dwell times and hysteresis play
    /// out (`5s`). Without it the engine ticks only at the steps.
    pub tick: Option<String>,
    /// Keep ticking until this time after the last step (`+2m` or a time).
    pub end: Option<String>,
    pub steps: Vec<Step>,
}

/// One step: a time and the observations that change then; the rest carries over.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `2026-03-09T07:55:00+01:00`, `2026-03-09T07:55` (the policy's time zone) or `+30s`.
    pub at: String,
    pub note: Option<String>,
    pub loadavg: Option<f64>,
    pub cpu_pressure: Option<Psi>,
    pub memory_pressure: Option<Psi>,
    /// Replaces the GPU observation.
    pub gpu: Option<GpuObs>,
    /// `true` when an interaction starts, `false` when it stops.
    pub interaction: Option<bool>,
    /// Workloads that appear or change.
    #[serde(default)]
    pub workloads: BTreeMap<String, WorkloadObs>,
    /// Workloads that disappear.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Intruder events seen at this step only.
    #[serde(default)]
    pub intruders: Vec<Intruder>,
    /// p99 wakeup latency on the trading cores (`80us`).
    pub trading_p99_wakeup: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Parse(Diagnostic),
    #[error("steps[{step}]: {message}")]
    Step { step: usize, message: String },
}

/// Parses a scenario (same size and budget limits as a policy).
pub fn parse(bytes: &[u8]) -> Result<Scenario, ScenarioError> {
    let text = crate::policy::load::check_text(bytes).map_err(ScenarioError::Parse)?;
    let s: Scenario = crate::policy::load::parse_yaml(text).map_err(ScenarioError::Parse)?;
    if s.steps.is_empty() {
        return Err(ScenarioError::Step {
            step: 0,
            message: "a scenario has at least one step".into(),
        });
    }
    Ok(s)
}

/// Resolves a step time: absolute with offset, civil in `tz`, or `+duration` after `prev`.
pub fn resolve_time(s: &str, prev: Option<Timestamp>, tz: &TimeZone) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        let prev = prev.ok_or("a relative time (`+30s`) needs an earlier step")?;
        let d = parse_duration(rel)?;
        let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
        return prev.checked_add(d).map_err(|e| e.to_string());
    }
    if let Ok(z) = s.parse::<Zoned>() {
        return Ok(z.timestamp());
    }
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts);
    }
    let dt: DateTime = s.parse().map_err(|_| {
        format!("`{s}` is not a time (2026-03-09T07:55:00+01:00, 2026-03-09T07:55 or +30s)")
    })?;
    tz.to_zoned(dt)
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}

impl Step {
    /// Applies this step's changes to `obs`. Intruders are replaced (events, not state).
    pub fn apply(&self, obs: &mut Observations) -> Result<(), String> {
        if let Some(v) = self.loadavg {
            obs.loadavg = v;
        }
        if let Some(v) = self.cpu_pressure {
            obs.cpu_pressure = v;
        }
        if let Some(v) = self.memory_pressure {
            obs.memory_pressure = v;
        }
        if let Some(v) = &self.gpu {
            obs.gpu = Some(v.clone());
        }
        if let Some(v) = self.interaction {
            obs.interaction = v;
        }
        for (name, w) in &self.workloads {
            obs.workloads.insert(name.clone(), w.clone());
        }
        for name in &self.absent {
            obs.workloads.remove(name);
        }
        obs.intruders = self.intruders.clone();
        if let Some(v) = &self.trading_p99_wakeup {
            let d: Duration = parse_duration(v)?;
            obs.trading_p99_wakeup_ns = Some(d.as_nanos().min(u64::MAX as u128) as u64);
        }
        Ok(())
    }
}

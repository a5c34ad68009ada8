//! The run record — what `keeper run --report FILE` writes and `keeper report` renders — and its
//! renderings: text for a terminal, JSON as written, and one self-contained HTML page with
//! inline SVG charts.
//!
//! The record is an interface of its own (versioned, Serialize + Deserialize), apart from the
//! engine's and the daemon's types, so that an old record stays readable.

pub mod exposition;
pub mod first_look;
pub mod host_advice;
pub mod html;
pub mod metrics;
pub mod oom_history;
pub mod record;
pub mod scrape;
pub mod sizing;
mod svg;
pub mod text;
pub mod view;
pub mod vm_advice;

use std::path::Path;

use serde::{Deserialize, Serialize};

use view::{CpuView, IntruderView, NoiseView};

/// The record format's version, bumped on an incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// What a run leaves behind (`--report`), or what it has seen so far (`keeper report --live`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(default)]
    pub version: u32,
    pub started: String,
    pub ended: String,
    #[serde(default)]
    pub duration_s: f64,
    pub policy: String,
    pub mode: String,
    pub trading_cores: String,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub live: bool,
    pub restored_at_start: Vec<String>,
    pub restored_at_exit: Vec<String>,
    /// Per trading core: wakeup latency of protected and other tasks, time split.
    pub cpus: Vec<CpuView>,
    /// Tasks that ran on the trading cores outside the protected set, most time stolen first.
    #[serde(default)]
    pub intruders: Vec<IntruderView>,
    /// IRQ and softirq time on the trading cores, by source, most first (empty where it
    /// was not measured: no irq tracepoints).
    #[serde(default)]
    pub noise: Vec<NoiseView>,
    pub evictions: u64,
    pub eviction_latency: EvictionLatency,
    pub errors: u64,
    /// One verdict per workload with a latency objective.
    #[serde(default)]
    pub slo: Vec<SloVerdict>,
    /// One sample per tick: latency, pressure, GPU, frozen/throttled counts over time.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// OOM kills seen during the run (oom:mark_victim).
    #[serde(default)]
    pub oom_kills: Vec<OomKillRecord>,
    /// Direct-reclaim stalls per cgroup (vmscan), most stalled time first.
    #[serde(default)]
    pub reclaim: Vec<ReclaimRecord>,
    /// The sizing advisor: a class that is OOM-killed more than once a week is too small.
    #[serde(default)]
    pub sizing: Vec<SizingAdvice>,
    /// Actions in order (the most recent `MAX_ACTIONS` when there were more).
    pub actions: Vec<ActionRecord>,
    #[serde(default)]
    pub actions_dropped: u64,
}

/// At most this many actions are kept in a record; older ones are counted, not kept.
pub const MAX_ACTIONS: usize = 20_000;
/// At most this many samples; beyond it every other sample is dropped (the series thins out).
pub const MAX_SAMPLES: usize = 20_000;

/// From an intruder's first run on a trading core to its eviction done, in µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvictionLatency {
    pub count: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub samples_us: Vec<f64>,
}

impl EvictionLatency {
    pub fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Self {
            count: s.len(),
            p50_us: quantile(&s, 0.5),
            p99_us: quantile(&s, 0.99),
            max_us: s.last().copied(),
            samples_us: s,
        }
    }
}

/// Nearest-rank quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// One tick's readings. Fields the host could not read are absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// p99 wakeup latency of protected tasks on the trading cores, last 5 s (µs).
    pub trading_p99_us: Option<f64>,
    pub loadavg: Option<f64>,
    pub cpu_pressure_some_avg10: Option<f64>,
    pub memory_pressure_some_avg10: Option<f64>,
    pub memory_pressure_full_avg10: Option<f64>,
    pub gpu_temperature_c: Option<f64>,
    pub gpu_power_w: Option<f64>,
    pub frozen: u32,
    pub throttled: u32,
    /// Intruders' time on the trading cores since the sensor attached, summed over the cores
    /// (ns): the intruder share of any window is the difference of two samples.
    #[serde(default)]
    pub trading_intruder_ns: Option<u64>,
}

/// One action as carried out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActionRecord {
    pub at: String,
    /// Seconds since the run started.
    pub t_s: f64,
    /// The action's kind, as in the engine (`freeze`, `evict_intruder`, ...).
    pub kind: String,
    /// The action in words (`freeze muse`).
    pub action: String,
    pub rule: String,
    pub reason: String,
    pub outcome: Vec<String>,
    pub ok: bool,
    pub elapsed_ms: f64,
    /// The action's own fields as the engine gave them (`{"action":"evict_intruder","pid":…}`).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// One OOM kill.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OomKillRecord {
    pub t_s: f64,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub workload: Option<String>,
}

/// A cgroup's direct-reclaim stalls.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReclaimRecord {
    pub cgroup: String,
    pub workload: Option<String>,
    pub stalls: u64,
    pub total_ms: f64,
    /// Interpolated in its log-linear bucket (before: its log2 bucket's upper bound).
    pub p99_us: Option<f64>,
}

/// "This workload's class is too small."
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SizingAdvice {
    pub workload: String,
    pub class: String,
    pub oom_kills: u32,
    pub per_week: f64,
    pub advice: String,
}

/// Did a workload get the latency its policy promises?
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SloVerdict {
    pub workload: String,
    /// `trading_p99_wakeup` (rules.slo, for the owner of the trading cores) or
    /// `preemption_deadline` (the workload's `preempt.deadline`).
    pub objective: String,
    pub target: String,
    pub measured: Option<String>,
    /// None when nothing was measured (no wakeups, no interaction).
    pub met: Option<bool>,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not a keeper run record: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: run record version {found}, this keeper reads version {RECORD_VERSION}")]
    Version { path: String, found: u32 },
}

/// Reads a run record written by `keeper run --report`.
pub fn read(path: &Path) -> Result<RunRecord, ReportError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &bytes)
}

/// Parses a run record; `name` is used in errors.
pub fn parse(name: &str, bytes: &[u8]) -> Result<RunRecord, ReportError> {
    let record: RunRecord = serde_json::from_slice(bytes).map_err(|e| ReportError::Parse {
        path: name.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    if record.version > RECORD_VERSION {
        return Err(ReportError::Version {
            path: name.to_string(),
            found: record.version,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests;

//! `{"command":"watch"}`: the frame `keeper run` streams once a second to `keeper top` (and to
//! any client that wants a live feed). Counters are cumulative since the run began, the way
//! Prometheus counters are: a client takes windows (the last 5 s) as differences of frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Summary;
use crate::{
    act::execute::Done,
    decide::{Applied, Outcome},
    device::{gpu::GpuReadout, placement::Placement},
    policy::Policy,
    report::view::{CpuView, IntruderView, NoiseView},
};

/// One frame of the live feed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frame {
    pub ok: bool,
    /// When the frame was taken (Unix time, milliseconds).
    pub at_unix_ms: i64,
    /// How long the keeper has been running, in seconds.
    pub run_s: f64,
    #[serde(flatten)]
    pub summary: Summary,
    /// Per trading core since the run began: wakeup-latency histograms, time by kind.
    pub cpus: Vec<CpuView>,
    /// Tasks that ran on the trading cores without being protected, most time first
    /// (at most [`TOP_INTRUDERS`]).
    pub intruders: Vec<IntruderView>,
    /// Interrupt time on the trading cores by source since the run began (empty where it is
    /// not measured).
    #[serde(default)]
    pub noise: Vec<NoiseView>,
    pub workloads: Vec<WorkloadLine>,
    pub pressure: PressureLine,
    /// `None`: no GPU, or unreadable.
    pub gpu: Option<GpuLine>,
    pub undo_pending: usize,
    /// The last actions carried out or tried, newest first (at most [`LAST_ACTIONS`]);
    /// those observed only (outside `--scope`) are left to the intruders table.
    pub last_actions: Vec<ActionLine>,
}

/// Intruders a frame carries.
pub const TOP_INTRUDERS: usize = 10;
/// Actions a frame carries.
pub const LAST_ACTIONS: usize = 10;

/// What the keeper holds a workload in, the strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    /// Stopped (hibernated) by the memory ladder.
    Stopped,
    Frozen,
    /// Its balloon holds memory back.
    Ballooned,
    /// cpu.weight, cpu.max or memory.high lowered.
    Throttled,
    /// Found, and left alone.
    Active,
    /// Not found on this host.
    Absent,
}

impl WorkloadState {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadState::Stopped => "stopped",
            WorkloadState::Frozen => "frozen",
            WorkloadState::Ballooned => "ballooned",
            WorkloadState::Throttled => "throttled",
            WorkloadState::Active => "active",
            WorkloadState::Absent => "absent",
        }
    }
}

/// One workload of the policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadLine {
    pub name: String,
    pub rank: u32,
    pub state: WorkloadState,
    /// Where it was found at the last observation: its first cgroup, else its processes.
    pub found_at: Option<String>,
}

/// Host pressure at the last observation (PSI avg10, in percent) and the load average.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PressureLine {
    pub cpu_some_percent: f64,
    pub memory_some_percent: f64,
    pub memory_full_percent: f64,
    pub loadavg: f64,
}

/// The GPU at its last readout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GpuLine {
    pub name: String,
    pub temperature_c: u32,
    pub utilization_percent: u32,
    pub power_draw_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
}

impl From<&GpuReadout> for GpuLine {
    fn from(g: &GpuReadout) -> Self {
        GpuLine {
            name: g.name.clone(),
            temperature_c: g.temperature_c,
            utilization_percent: g.utilization_pct,
            power_draw_w: g.power_draw_mw.map(|mw| f64::from(mw) / 1000.0),
            power_limit_w: g.power.as_ref().map(|p| f64::from(p.enforced_mw) / 1000.0),
            memory_used_bytes: g.memory_used_bytes,
            memory_total_bytes: g.memory_total_bytes,
        }
    }
}

/// One action as carried out, in words.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionLine {
    pub at: String,
    /// The action's name (`evict_intruder`, `freeze`...).
    pub action: String,
    /// What it did, in a few words.
    pub what: String,
    pub rule: String,
    pub reason: String,
    pub outcome: Outcome,
}

impl From<&Done> for ActionLine {
    fn from(d: &Done) -> Self {
        ActionLine {
            at: d.at.clone(),
            action: d.action.kind.name().to_string(),
            what: d.action.kind.to_string(),
            rule: d.action.rule.to_string(),
            reason: d.action.reason.clone(),
            outcome: d.outcome,
        }
    }
}

/// Each workload of the policy and what the keeper holds it in.
pub fn workload_lines(
    policy: &Policy,
    a: &Applied,
    placements: &BTreeMap<String, Placement>,
) -> Vec<WorkloadLine> {
    (policy.workloads.iter())
        .map(|w| {
            let found = placements.get(&w.name);
            let name = &w.name;
            let state = if a.stopped_vms.contains_key(name) {
                WorkloadState::Stopped
            } else if found.is_none() {
                WorkloadState::Absent
            } else if a.frozen.contains_key(name) {
                WorkloadState::Frozen
            } else if a.balloons.contains_key(name) {
                WorkloadState::Ballooned
            } else if a.throttled(name) {
                WorkloadState::Throttled
            } else {
                WorkloadState::Active
            };
            WorkloadLine {
                name: name.clone(),
                rank: w.rank,
                state,
                found_at: found.and_then(where_found),
            }
        })
        .collect()
}

/// Where a workload was found: its first cgroup, else its processes.
fn where_found(p: &Placement) -> Option<String> {
    match (p.cgroups.first(), p.pids.as_slice()) {
        (Some(c), _) => Some(format!("/{c}")),
        (None, []) => None,
        (None, pids) => Some(format!(
            "pid {}",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}

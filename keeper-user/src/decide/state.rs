//! The engine's memory between ticks: plain data (serde), so it can be logged, saved, compared.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::action::RuleId;
use crate::policy::{Amount, Percent, Service};

/// Everything `decide` remembers. Start from `EngineState::default()`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// Workloads whose start conditions held once in the current window (the gate is open).
    pub gates: BTreeSet<String>,
    /// Freeze claims that outlive their cause by a hysteresis.
    pub holds: Vec<Hold>,
    #[serde(alias = "ladder")]
    pub escalation: EscalationState,
    pub thermal: ThermalState,
    /// Memory rule levels (`high`, `freeze`, `balloon`, `stop_vm`) → the workload each acts on.
    pub memory: BTreeMap<String, Sticky>,
    /// Since when the GPU has been idle (eco mode).
    pub gpu_idle_since: Option<Timestamp>,
    /// GPU handoffs in progress, by the workload that gives the GPU up.
    #[serde(default)]
    pub handoff: BTreeMap<String, Handoff>,
    /// What the engine has already asked the actuators for.
    pub applied: Applied,
    /// Intruders evicted recently, pid → when (not evicted again within [`EVICT_COOLDOWN`]).
    pub evicted: BTreeMap<u32, Timestamp>,
    /// Evicted tasks that came back to a trading core: pid → when, within
    /// `rules.intruders.within`.
    #[serde(default)]
    pub returns: BTreeMap<u32, Vec<Timestamp>>,
    /// When each evicted task was first moved (CLOCK_MONOTONIC ns, as the move returned): an
    /// arrival reported before it (a newborn's fork, then its first switch-in, both before the
    /// move took effect) belongs to the stay that was evicted and is no return.
    #[serde(default)]
    pub moved_at: BTreeMap<u32, u64>,
    /// Repeat offenders stopped (`rules.intruders.then: stop`), by pid.
    #[serde(default)]
    pub stopped: BTreeSet<u32>,
    /// The owner's partition went invalid (what the kernel said), and is not valid again yet.
    #[serde(default)]
    pub partition_broken: Option<String>,
    /// When the trading cores were last protected again for it (one repair each
    /// `REPAIR_EVERY`, not one a tick).
    #[serde(default)]
    pub partition_repaired_at: Option<Timestamp>,
    /// Workloads frozen because a task of theirs kept coming back to a trading core
    /// (`rules.intruders.then: freeze`): held while the trading cores are protected.
    #[serde(default)]
    pub repeat_frozen: BTreeSet<String>,
    /// Workloads throttled because a task of theirs kept coming back to a trading core
    /// (`rules.intruders.then: throttle`): held while the trading cores are protected.
    #[serde(default)]
    pub repeat_throttled: BTreeSet<String>,
    /// Intruders outside `--scope`, pid → the cgroup they were seen in: observed once, not
    /// again until they move (at most [`MAX_OBSERVED_ONLY`], then forgotten all at once).
    #[serde(default)]
    pub observed_only: BTreeMap<u32, String>,
    /// IRQs the kernel refused to move (managed): reported once, not asked for again.
    #[serde(default)]
    pub unmovable_irqs: BTreeSet<u32>,
    /// IRQs asked to move, and when (not asked again within `IRQ_RECHECK`).
    #[serde(default)]
    pub irqs_asked: BTreeMap<u32, Timestamp>,
    /// Actions that failed and wait before they are asked again (not kept across restarts).
    #[serde(skip)]
    pub retries: super::Retries,
}

/// Most intruders outside `--scope` remembered (a pid may be reused by a task in scope).
pub const MAX_OBSERVED_ONLY: usize = 4096;

/// Outcomes of the actions of one `decide` call so far, for the ones after them (kept by
/// whoever carries the batch out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Workloads whose thaw failed: their GPU state cannot come back yet.
    pub still_frozen: BTreeSet<String>,
    /// Workloads whose handoff rolled back: its later steps are skipped.
    pub rolled_back: BTreeSet<String>,
}

/// How long an evicted pid is not evicted again (identical events are not new facts).
pub const EVICT_COOLDOWN: Duration = Duration::from_secs(10);

/// A rule's claim on a workload; `released_at` starts the hysteresis once the cause is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub rule: RuleId,
    pub workload: String,
    pub reason: String,
    pub released_at: Option<Timestamp>,
}

/// A rule's chosen target, kept until its cause has been gone for the release time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sticky {
    pub workload: String,
    pub released_at: Option<Timestamp>,
    /// When the level took the workload.
    #[serde(default)]
    pub since: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EscalationState {
    /// Escalated workloads in escalation order, with the index of their current step.
    pub entries: Vec<(String, usize)>,
    pub last_change: Option<Timestamp>,
    pub calm_since: Option<Timestamp>,
}

/// One GPU handoff: `from` (the map key) gives the GPU up to `to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub to: String,
    pub rule: RuleId,
    pub since: Timestamp,
    /// When `to` stopped needing the GPU (the hysteresis runs from here).
    pub released_at: Option<Timestamp>,
    /// A step failed: `from` runs again, and this handoff does not retry until its cause ends.
    pub rolled_back: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThermalState {
    /// Workloads frozen by the thermal guard, in freezing order.
    pub frozen: Vec<String>,
    pub last_change: Option<Timestamp>,
}

/// Throttles on one workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub cpu_weight: Option<u32>,
    pub cpu_max: Option<Percent>,
    pub memory_high: Option<Amount>,
}

impl Knobs {
    pub fn is_empty(&self) -> bool {
        self.cpu_weight.is_none() && self.cpu_max.is_none() && self.memory_high.is_none()
    }
}

/// The actuated state as the engine commanded it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Frozen workloads and the rule that holds each.
    pub frozen: BTreeMap<String, RuleId>,
    pub knobs: BTreeMap<String, Knobs>,
    pub balloons: BTreeMap<String, Amount>,
    /// Workloads whose class limits were applied since they appeared.
    pub classed: BTreeSet<String>,
    /// The workload the trading cores are protected for.
    pub trading: Option<String>,
    /// The other workloads present when the cores were last protected (their cpusets kept
    /// to the housekeeping cores): one that appears later is kept off them too.
    #[serde(default)]
    pub kept_off: BTreeSet<String>,
    /// The cores protected for it (kernel list notation): a reload that changes
    /// `host.trading_cores` protects the new ones.
    #[serde(default)]
    pub trading_cores: Option<String>,
    /// The owner's vCPU threads when its cores were last protected: one born since (a VM
    /// started moments later, a hot-plugged vCPU) is placed by protecting them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trading_vcpus: Vec<u32>,
    pub gpu_power_limit: Option<Percent>,
    #[serde(default)]
    pub gpu_clock_offset: Option<i32>,
    /// Workloads whose GPU state is checkpointed (handoff), and the rule that did it.
    #[serde(default)]
    pub gpu_checkpointed: BTreeMap<String, RuleId>,
    /// VMs the memory ladder stopped (hibernated), and the rule that did it. Kept while the VM
    /// is absent: that is what stopped means.
    #[serde(default)]
    pub stopped_vms: BTreeMap<String, RuleId>,
    pub slo_breached: bool,
    /// Where the unbound workqueues were asked to run (`host.workqueue_guard`).
    #[serde(default)]
    pub workqueues: Option<String>,
    /// Block I/O asked to complete on its submitting CPU (`host.irq_guard`).
    #[serde(default)]
    pub io_on_submitter: bool,
    /// The trading cores irqbalance was asked to leave alone (`host.irq_guard`): asked again
    /// when a reload moves them.
    #[serde(default)]
    pub irqbalance_off: Option<String>,
    /// The VM the passthrough GPU was lent to (`rules.gpu_mutex`); `None`: its holder has it.
    #[serde(default)]
    pub gpu_lent: Option<String>,
    /// Services started by a workload's preemption (`start_on`), by workload.
    #[serde(default)]
    pub services: BTreeMap<String, StartedService>,
}

/// A service the engine started: what stops it, whatever the policy says by then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedService {
    pub rule: RuleId,
    pub service: Service,
    pub deadline_ms: u64,
}

impl Applied {
    /// Whether the workload has a throttle on (cpu.weight, cpu.max or memory.high lowered).
    pub fn throttled(&self, workload: &str) -> bool {
        self.knobs.get(workload).is_some_and(|k| !k.is_empty())
    }
}

/// `now - since`, never negative (a clock going back counts as no time).
pub fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

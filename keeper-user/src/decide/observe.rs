//! Observations: the facts the sensors report at one instant, without the time itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Pressure stall information (`/proc/pressure/*`, `<cgroup>/*.pressure`), avg10 in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Psi {
    pub some_avg10: f64,
    pub full_avg10: f64,
}

/// The GPU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuObs {
    pub temperature_c: f64,
    pub utilization_pct: f64,
    /// Workloads with processes on the GPU: workload → process count.
    pub users: BTreeMap<String, u32>,
}

/// A workload the sensors found (its cgroup exists / its processes live).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadObs {
    /// It has runnable work (uses CPU); an idle or frozen workload is not running.
    pub running: bool,
    pub memory_pressure: Psi,
    /// What its cgroups' `cpuset.cpus.partition` say, the most telling: one gone invalid (a
    /// CPU went offline, someone changed a parent), else a partition, else a member; `None`
    /// without cpuset files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionObs>,
    /// Its vCPU threads (thread ids, sorted), read for the owner of the trading cores only:
    /// one born after the protection (a VM started moments later, a vCPU hot-plugged) is
    /// placed too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpus: Vec<u32>,
}

impl Default for WorkloadObs {
    fn default() -> Self {
        Self {
            running: true,
            memory_pressure: Psi::default(),
            partition: None,
            vcpus: Vec::new(),
        }
    }
}

/// One of a workload's cgroups and what its `cpuset.cpus.partition` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionObs {
    /// Relative to the cgroup v2 mount.
    pub cgroup: String,
    pub state: super::PartitionState,
}

impl std::fmt::Display for PartitionObs {
    /// `/qemu.slice/200.scope: isolated invalid (…)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}: {}", self.cgroup, self.state)
    }
}

/// A task that ran on a trading core without belonging to the trading workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Intruder {
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 path relative to the root.
    pub cgroup: String,
    pub cpu: u32,
    pub ran_ns: u64,
    /// Reported at its arrival on a trading core (its first switch-in there, or a fork placed
    /// there), before it ran: always news, also for a task evicted moments ago (it came back).
    pub arrived: bool,
    /// Its event's instant (CLOCK_MONOTONIC ns): the eviction acts only on a task that
    /// started before it (a pid reused since is left alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_ns: Option<u64>,
    /// Its start time (clock ticks since boot, as /proc says it) where the programs read it
    /// from the task at its arrival: the eviction needs no read of /proc first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Already moved off the trading cores by the eviction thread, on the filter the engine
    /// compiled ([`super::fast`]): the engine keeps count (returns, repeat offenders) and asks
    /// for no eviction of its own.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
}

/// An interrupt line allowed on a trading core (read each tick with `host.irq_guard`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IrqObs {
    pub irq: u32,
    pub name: String,
}

/// Everything the engine reads about the host at one tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Observations {
    /// 1-minute load average.
    pub loadavg: f64,
    /// Host CPU pressure.
    pub cpu_pressure: Psi,
    /// Host memory pressure.
    pub memory_pressure: Psi,
    /// `None`: no GPU, or its sensor is down (GPU rules stay still).
    pub gpu: Option<GpuObs>,
    /// A user interaction is in progress (EVA: "user is speaking").
    pub interaction: bool,
    /// Present workloads by name; absent ones are missing.
    pub workloads: BTreeMap<String, WorkloadObs>,
    /// Intruder events since the last tick.
    pub intruders: Vec<Intruder>,
    /// p99 wakeup latency on the trading cores over the last interval, nanoseconds.
    pub trading_p99_wakeup_ns: Option<u64>,
    /// IRQs allowed on a trading core, read at this tick (`host.irq_guard`; none between
    /// ticks, when only intruders are news).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub irqs_on_trading_cores: Vec<IrqObs>,
}

impl Observations {
    pub fn present(&self, workload: &str) -> bool {
        self.workloads.contains_key(workload)
    }
    pub fn running(&self, workload: &str) -> bool {
        self.workloads.get(workload).is_some_and(|w| w.running)
    }
    pub fn gpu_user(&self, workload: &str) -> bool {
        self.gpu
            .as_ref()
            .is_some_and(|g| g.users.get(workload).is_some_and(|n| *n > 0))
    }
}

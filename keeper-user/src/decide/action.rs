//! Actions: what the engine asks the actuators to do, each with its rule and reason.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cpulist::CpuList;
use crate::policy::{Amount, Class, Limits, Percent, Service};

/// The policy rule that fired, named by its key path: `banker.pauses`, `eva-core.preempt`,
/// `muse.windows`, `rules.thermal_guard`...
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub String);

impl RuleId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One action, with the rule that fired and a sentence saying why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(flatten)]
    pub kind: ActionKind,
    pub rule: RuleId,
    pub reason: String,
}

fn cpu_list_text<S: Serializer>(c: &CpuList, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

fn cpu_list_from_text<'de, D: Deserializer<'de>>(d: D) -> Result<CpuList, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// What to do. Names follow the policy's words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionKind {
    /// Freeze the workload's cgroup (`cgroup.freeze` = 1).
    Freeze { workload: String },
    /// Thaw it (`cgroup.freeze` = 0).
    Thaw { workload: String },
    /// Apply the class's limits to a workload that just appeared.
    ApplyClassLimits {
        workload: String,
        class: Class,
        limits: Limits,
    },
    /// Throttle: lower `cpu.weight`.
    SetCpuWeight { workload: String, weight: u32 },
    /// Throttle: cap `cpu.max` at a share of all host CPUs.
    SetCpuMax { workload: String, percent: Percent },
    /// Set `memory.high`.
    SetMemoryHigh { workload: String, amount: Amount },
    /// Undo throttles: back to the class limits (or the kernel defaults without a class).
    RestoreLimits { workload: String, limits: Limits },
    /// Inflate the VM's balloon to leave it `target` memory (`100%`: give all back).
    Balloon {
        workload: String,
        vmid: u32,
        target: Amount,
    },
    /// The memory ladder's last step: stop the VM by hibernating it (Proxmox API), so that its
    /// memory goes back to the host and its state to disk.
    StopVm { workload: String, vmid: u32 },
    /// Start a VM the keeper stopped (it resumes from its saved state).
    StartVm { workload: String, vmid: u32 },
    /// `start_on`: start what the workload needs while its preemption holds (after the
    /// freezes); a start taking longer than `deadline_ms` fails.
    StartService {
        workload: String,
        service: Service,
        deadline_ms: u64,
    },
    /// `rules.gpu_mutex`: the passthrough GPU unplugged from one VM and plugged into the other
    /// (QMP), put back where it was when the plug fails; `back`: a return to its holder.
    MoveGpu {
        from: String,
        from_vmid: u32,
        to: String,
        to_vmid: u32,
        device: std::collections::BTreeMap<String, String>,
        /// The device's value in the Proxmox configurations, for a move to a VM that is not
        /// running (the planned restart).
        config: Option<String>,
        deadline_ms: u64,
        back: bool,
    },
    /// Stop that service again (before the thaws).
    StopService {
        workload: String,
        service: Service,
        deadline_ms: u64,
    },
    /// Set the GPU power limit, as a share of its default limit.
    SetGpuPowerLimit { percent: Percent },
    /// Set the GPU clock offset (eco mode's undervolt), in MHz.
    SetGpuClockOffset { mhz: i32 },
    /// Handoff: move the workload's GPU state (VRAM) to host memory (`cuda-checkpoint`), before
    /// it is frozen.
    GpuCheckpoint { workload: String },
    /// Handoff over: give the workload its GPU state back, after it is thawed.
    GpuRestore { workload: String },
    /// Pin the trading workload to the trading cores and everything else off them.
    ProtectTradingCores {
        workload: String,
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        cpus: CpuList,
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        housekeeping: CpuList,
        /// A VM owner's vCPU threads at this SCHED_FIFO priority (`vcpu_priority`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vcpu_fifo: Option<u8>,
    },
    /// Stop reserving the trading cores.
    ReleaseTradingCores { workload: String },
    /// Let an interrupt line fire only on `to` (the housekeeping cores): `host.irq_guard`.
    MoveIrq {
        irq: u32,
        name: String,
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        to: CpuList,
    },
    /// Complete block I/O on the CPU that submitted it (every disk's `queue/rq_affinity` =
    /// 2), not where the disk's interrupt fired: a managed IRQ left on a trading core keeps
    /// its hard IRQ there, and its completion work (the BLOCK softirq) goes to the
    /// submitter. `host.irq_guard`.
    CompleteIoOnSubmitter,
    /// Tell a running irqbalance to leave `cpus` (the trading cores) out of its balancing
    /// (its control socket; lifted at exit). `host.irq_guard`.
    KeepIrqbalanceOff {
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        cpus: CpuList,
    },
    /// Let the kernel's unbound workqueues run only on `to` (the housekeeping cores):
    /// `host.workqueue_guard`.
    SetWorkqueueCpus {
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        to: CpuList,
    },
    /// Move an intruder off a trading core.
    EvictIntruder {
        pid: u32,
        comm: String,
        cgroup: String,
        cpu: u32,
        #[serde(
            serialize_with = "cpu_list_text",
            deserialize_with = "cpu_list_from_text"
        )]
        to: CpuList,
        /// Its event's instant ([`super::Intruder::seen_ns`]).
        #[serde(skip)]
        seen_ns: Option<u64>,
        /// Its start time, read by the programs ([`super::Intruder::start`]).
        #[serde(skip)]
        start: Option<u64>,
    },
    /// Stop a repeat offender's process (that process, not its children) with SIGSTOP while
    /// the trading cores stay protected (`rules.intruders.then`).
    StopIntruder {
        pid: u32,
        comm: String,
        cgroup: String,
        returns: u32,
    },
    /// Continue (SIGCONT) a repeat offender stopped while the trading cores were protected.
    ContinueIntruder { pid: u32 },
    /// The trading-core latency SLO is breached (report; the escalation acts).
    SloBreach { p99_us: f64, target_us: f64 },
    /// The SLO is met again.
    SloMet { p99_us: f64, target_us: f64 },
}

impl ActionKind {
    /// The action's name, as serialised (`action` in JSON, a label in the metrics).
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Freeze { .. } => "freeze",
            ActionKind::Thaw { .. } => "thaw",
            ActionKind::ApplyClassLimits { .. } => "apply_class_limits",
            ActionKind::SetCpuWeight { .. } => "set_cpu_weight",
            ActionKind::SetCpuMax { .. } => "set_cpu_max",
            ActionKind::SetMemoryHigh { .. } => "set_memory_high",
            ActionKind::RestoreLimits { .. } => "restore_limits",
            ActionKind::Balloon { .. } => "balloon",
            ActionKind::StopVm { .. } => "stop_vm",
            ActionKind::StartVm { .. } => "start_vm",
            ActionKind::StartService { .. } => "start_service",
            ActionKind::MoveGpu { .. } => "move_gpu",
            ActionKind::StopService { .. } => "stop_service",
            ActionKind::SetGpuPowerLimit { .. } => "set_gpu_power_limit",
            ActionKind::SetGpuClockOffset { .. } => "set_gpu_clock_offset",
            ActionKind::GpuCheckpoint { .. } => "gpu_checkpoint",
            ActionKind::GpuRestore { .. } => "gpu_restore",
            ActionKind::ProtectTradingCores { .. } => "protect_trading_cores",
            ActionKind::ReleaseTradingCores { .. } => "release_trading_cores",
            ActionKind::MoveIrq { .. } => "move_irq",
            ActionKind::SetWorkqueueCpus { .. } => "set_workqueue_cpus",
            ActionKind::CompleteIoOnSubmitter => "complete_io_on_submitter",
            ActionKind::KeepIrqbalanceOff { .. } => "keep_irqbalance_off",
            ActionKind::EvictIntruder { .. } => "evict_intruder",
            ActionKind::StopIntruder { .. } => "stop_intruder",
            ActionKind::ContinueIntruder { .. } => "continue_intruder",
            ActionKind::SloBreach { .. } => "slo_breach",
            ActionKind::SloMet { .. } => "slo_met",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ActionKind::*;
        match self {
            Freeze { workload } => write!(f, "freeze {workload}"),
            Thaw { workload } => write!(f, "thaw {workload}"),
            ApplyClassLimits {
                workload,
                class,
                limits,
            } => {
                write!(
                    f,
                    "apply class {} to {workload} ({})",
                    class.name(),
                    limits_text(limits)
                )
            }
            SetCpuWeight { workload, weight } => {
                write!(f, "throttle {workload}: cpu.weight {weight}")
            }
            SetCpuMax { workload, percent } => write!(f, "throttle {workload}: cpu.max {percent}"),
            SetMemoryHigh { workload, amount } => {
                write!(f, "throttle {workload}: memory.high {amount}")
            }
            RestoreLimits { workload, limits } => {
                write!(f, "restore limits of {workload} ({})", limits_text(limits))
            }
            Balloon {
                workload,
                vmid,
                target,
            } => write!(f, "balloon {workload} (vm {vmid}) to {target}"),
            StopVm { workload, vmid } => write!(f, "stop {workload} (vm {vmid}): hibernate it"),
            StartVm { workload, vmid } => write!(f, "start {workload} (vm {vmid}) again"),
            StartService {
                workload, service, ..
            } => write!(f, "start {service} for {workload}"),
            StopService {
                workload, service, ..
            } => write!(f, "stop {service} of {workload}"),
            MoveGpu {
                from,
                from_vmid,
                to,
                to_vmid,
                device,
                ..
            } => write!(
                f,
                "move the GPU ({}) from {from} (vm {from_vmid}) to {to} (vm {to_vmid})",
                device.get("id").map_or("?", String::as_str)
            ),
            SetGpuPowerLimit { percent } => write!(f, "set GPU power limit {percent}"),
            SetGpuClockOffset { mhz } => write!(f, "set GPU clock offset {mhz} MHz"),
            GpuCheckpoint { workload } => {
                write!(f, "checkpoint GPU state of {workload} (release its VRAM)")
            }
            GpuRestore { workload } => write!(f, "restore GPU state of {workload}"),
            ProtectTradingCores {
                workload,
                cpus,
                housekeeping,
                vcpu_fifo,
            } => {
                write!(
                    f,
                    "protect trading cores {cpus} for {workload} (others on {housekeeping})"
                )?;
                match vcpu_fifo {
                    Some(n) => write!(f, ", its vCPUs at SCHED_FIFO {n}"),
                    None => Ok(()),
                }
            }
            ReleaseTradingCores { workload } => write!(f, "release trading cores of {workload}"),
            MoveIrq { irq, name, to } => write!(f, "move IRQ {irq} ({name}) to CPUs {to}"),
            SetWorkqueueCpus { to } => write!(f, "run unbound workqueues on CPUs {to}"),
            CompleteIoOnSubmitter => write!(f, "complete block I/O on the submitting CPU"),
            KeepIrqbalanceOff { cpus } => write!(f, "keep irqbalance off CPUs {cpus}"),
            EvictIntruder {
                pid, comm, cpu, to, ..
            } => write!(f, "evict intruder {comm}[{pid}] from CPU {cpu} to {to}"),
            StopIntruder {
                pid, comm, returns, ..
            } => write!(
                f,
                "stop intruder {comm}[{pid}] (back on the trading cores {returns} times)"
            ),
            ContinueIntruder { pid } => write!(f, "continue intruder {pid} stopped meanwhile"),
            SloBreach { p99_us, target_us } => write!(
                f,
                "SLO breach: trading p99 wakeup {p99_us}us > {target_us}us"
            ),
            SloMet { p99_us, target_us } => {
                write!(f, "SLO met: trading p99 wakeup {p99_us}us <= {target_us}us")
            }
        }
    }
}

/// `cpu.weight 50, cpu.max 90%, memory.max 80%` or `kernel defaults`.
pub fn limits_text(l: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(w) = l.cpu_weight {
        parts.push(format!("cpu.weight {w}"));
    }
    if let Some(p) = l.cpu_max {
        parts.push(format!("cpu.max {p}"));
    }
    if let Some(a) = l.memory_high {
        parts.push(format!("memory.high {a}"));
    }
    if let Some(a) = l.memory_max {
        parts.push(format!("memory.max {a}"));
    }
    if parts.is_empty() {
        "kernel defaults".into()
    } else {
        parts.join(", ")
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.kind, self.rule, self.reason)
    }
}

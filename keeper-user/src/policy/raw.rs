//! The policy file as written: serde shapes with positions, also the source of the JSON Schema.
//!
//! Every struct denies unknown keys. Values that need parsing (durations, times, CPU lists,
//! amounts) stay text here; `validate` turns them into [`super::types`] with located errors.

use schemars::JsonSchema;
use serde::Deserialize;

use super::at::At;
use super::intruders::{RealTimeIntruders, RepeatAction};
use super::types::{Class, Trigger, WhenInactive};

/// A keeper policy: the host, the workloads on it (ranked, 1 = highest) and the rules.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "The Keeper policy")]
pub struct RawPolicy {
    /// Format version of this file; only 1 exists.
    pub version: Option<At<u32>>,
    pub host: At<RawHost>,
    /// Overrides of the class defaults (`keeper schema` and docs/policy.md list them).
    pub classes: Option<At<RawClasses>>,
    /// The workloads the keeper knows, each with a unique name and a unique rank.
    pub workloads: At<Vec<At<RawWorkload>>>,
    pub rules: Option<At<RawRules>>,
}

/// The machine this policy is for.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    /// A name for logs and reports.
    pub name: Option<At<String>>,
    /// IANA time zone of the windows, e.g. `Europe/Paris` (the default).
    pub time_zone: Option<At<String>>,
    /// CPUs owned by the trading workload, kernel list notation (`1`, `2-5`).
    pub trading_cores: At<String>,
    /// CPUs for everything else, and where intruders are moved to.
    pub housekeeping_cores: At<String>,
    /// The keeper's own systemd unit; never frozen. Default `keeper.service`.
    pub keeper_unit: Option<At<String>>,
    /// Keep every movable interrupt off the trading cores while they are protected (host-wide:
    /// also under `--scope`, since the policy asks for it). Default false.
    pub irq_guard: Option<At<bool>>,
    /// Keep the kernel's unbound workqueues off the trading cores while they are protected
    /// (`/sys/devices/virtual/workqueue/cpumask`; host-wide). Default false.
    pub workqueue_guard: Option<At<bool>>,
    /// `reserve_siblings`: the trading cores' SMT siblings are kept free of intruders too (they
    /// join the trading cores on this host); `as_listed` (the default): as the lists say.
    pub smt: Option<At<super::Smt>>,
    /// The hardware watchdog: the keeper feeds it while its loop runs, so that a hung keeper
    /// or a frozen kernel resets the machine (`{device: /dev/watchdog, timeout: 180s}`).
    pub watchdog: Option<At<RawWatchdog>>,
}

/// `host.watchdog`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWatchdog {
    /// The watchdog device (default `/dev/watchdog`).
    pub device: Option<At<String>>,
    /// How long without a keepalive before the hardware resets the machine (whole seconds,
    /// 2s to 1h; the design: under 3 minutes).
    pub timeout: At<String>,
}

/// Per-class overrides of the default cgroup limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClasses {
    pub micro: Option<At<RawLimits>>,
    #[serde(rename = "light-browser")]
    pub light_browser: Option<At<RawLimits>>,
    #[serde(rename = "heavy-browser")]
    pub heavy_browser: Option<At<RawLimits>>,
    pub batch: Option<At<RawLimits>>,
    pub experimental: Option<At<RawLimits>>,
}

/// cgroup v2 limits. Sizes are `512M`, `8G`, or a percentage of the host (`80%`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `cpu.weight`, 1..=10000 (100 is the kernel default).
    pub cpu_weight: Option<At<u32>>,
    /// `cpu.max` as a percentage of all host CPUs (`90%` = systemd's CPUQuota on the whole host).
    pub cpu_max: Option<At<String>>,
    /// `memory.high`: a size or a percentage of host memory.
    pub memory_high: Option<At<String>>,
    /// `memory.max`: a size or a percentage of host memory (`80%` = systemd's MemoryMax=80%).
    pub memory_max: Option<At<String>>,
}

/// A workload: a set of processes the keeper can freeze, throttle and thaw as one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    /// Unique name, used in rules, logs and actions (`banker`, `eva-core`).
    pub name: At<String>,
    /// Unique rank, 1 = highest. Rank 1 is never frozen.
    pub rank: At<u32>,
    /// How processes are recognised; a process belongs if any key matches.
    #[serde(rename = "match")]
    pub matcher: At<RawMatch>,
    /// Sizing class; gives default cgroup limits.
    pub class: Option<At<Class>>,
    /// When the workload is active. None: always.
    pub windows: Option<At<Vec<At<RawWindow>>>>,
    /// Start conditions, checked when the workload would become active.
    pub conditions: Option<At<RawConditions>>,
    /// What the keeper does while the workload is not active (`run`, the default, or `freeze`).
    pub when_inactive: Option<At<WhenInactive>>,
    /// Workloads frozen while this one is active (the seed: Banker pauses Muse and research).
    pub pauses: Option<At<Vec<At<String>>>>,
    /// Preemption: free the machine for this workload when its trigger fires.
    pub preempt: Option<At<RawPreempt>>,
    /// This workload owns the host's trading cores while active; intruders there are evicted.
    pub owns_trading_cores: Option<At<bool>>,
    /// `fifo:N` (1-98): the owner of the trading cores, a VM, gets its vCPU threads in
    /// SCHED_FIFO at priority N (the kernel's RT throttling must be on: the keeper checks).
    pub vcpu_priority: Option<At<String>>,
    /// Never frozen, stopped or paused by any rule (a security VM); it may still be throttled.
    /// Rank 1 is never frozen without it.
    pub never_frozen: Option<At<bool>>,
    /// GPU handoff: when this workload needs the GPU, lower-ranked GPU users give it up
    /// (their VRAM released with cuda-checkpoint where present, then frozen) until it is done.
    pub gpu_handoff: Option<At<RawGpuHandoff>>,
    /// What this workload needs while its preemption holds (the Llama 3 service EVA talks
    /// to): started once the targets are frozen, stopped again before they thaw.
    pub start_on: Option<At<RawStartOn>>,
    /// Free text for operators.
    pub description: Option<String>,
}

/// One guest id, or an inclusive range written `FIRST-LAST`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawIds {
    One(u32),
    Range(String),
}

/// Match keys. `vmid: 100` means the cgroup `qemu.slice/100.scope`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// cgroup v2 path relative to the cgroup root (`machine.slice/x.scope`).
    pub cgroup: Option<At<String>>,
    /// systemd unit (`sentinel.service`), i.e. `system.slice/<unit>`.
    pub systemd_unit: Option<At<String>>,
    /// Proxmox VM id (`200`), or a range of them (`300-399`).
    pub vmid: Option<At<RawIds>>,
    /// Proxmox LXC container id (`301`), or a range (`300-399`): cgroups `lxc/<ctid>`.
    pub ctid: Option<At<RawIds>>,
    /// Process name (`comm`, at most 15 bytes).
    pub process: Option<At<String>>,
    /// File holding the pid of the workload's main process.
    pub pid_file: Option<At<String>>,
    /// Docker containers, by name or label (the Docker Engine API on its unix socket).
    pub docker: Option<At<RawDocker>>,
}

/// Docker containers of a workload; a running container matches when it has every key given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    /// The container's name (`eva-core`, as `docker ps` shows it).
    pub name: Option<At<String>>,
    /// A label: `KEY` (any value) or `KEY=VALUE` (`keeper.workload=muse`).
    pub label: Option<At<String>>,
}

/// An activity window: days and hours in a time zone. `23:00-07:00` runs overnight and
/// belongs to the day it starts on.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `mon-fri`, `sat,sun`, `all`, `weekdays`, `weekends`.
    pub days: At<String>,
    /// `HH:MM-HH:MM`; the end may be `24:00`; an end before the start runs overnight.
    pub hours: At<String>,
    /// IANA time zone; default the host's.
    pub time_zone: Option<At<String>>,
}

/// Start conditions; all given ones must hold.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConditions {
    /// 1-minute load average below this.
    pub loadavg_below: Option<At<f64>>,
    /// GPU utilization below the eco mode's idle threshold (10 % without eco mode).
    pub gpu_idle: Option<At<bool>>,
    /// Host memory pressure (PSI some avg10, percent) below this.
    pub memory_pressure_below: Option<At<f64>>,
}

/// Preemption of lower-ranked work.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPreempt {
    /// What starts it.
    pub on: At<Trigger>,
    /// Time allowed from trigger to freeze (`200ms`); at least the engine's reaction time.
    pub deadline: At<String>,
    /// Workloads to freeze; default every lower-ranked workload.
    pub targets: Option<At<Vec<At<String>>>>,
    /// How long after the trigger stops before thawing (default: `rules.thaw_hysteresis`).
    pub release_after: Option<At<String>>,
}

/// A service started by a workload's preemption: a systemd unit or a command, one of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStartOn {
    /// A systemd unit (`llama3.service`): `systemctl start` and `systemctl stop`.
    pub unit: Option<At<String>>,
    /// A command the keeper runs (`["/usr/bin/llama-server", "--port", "8080"]`), in a
    /// process group of its own; stopped with SIGTERM, then SIGKILL past the deadline.
    pub command: Option<At<Vec<At<String>>>>,
    /// How long a start or a stop may take (default `30s`).
    pub deadline: Option<At<String>>,
}

/// The GPU handoff (seed 001 "Freeze" logic): the GPU is one mutex between workloads.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGpuHandoff {
    /// When this workload needs the GPU.
    pub on: At<Trigger>,
    /// Lower-ranked workloads that give the GPU up while they hold it.
    pub from: At<Vec<At<String>>>,
    /// How long after the trigger stops before they get it back (default:
    /// `rules.thaw_hysteresis`).
    pub release_after: Option<At<String>>,
}

/// Host-wide rules.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Time a cause must be gone before its freeze is undone (default `30s`).
    pub thaw_hysteresis: Option<At<String>>,
    pub escalation: Option<At<RawEscalation>>,
    pub thermal_guard: Option<At<RawThermalGuard>>,
    pub eco_mode: Option<At<RawEcoMode>>,
    pub memory: Option<At<RawMemory>>,
    pub slo: Option<At<RawSlo>>,
    pub intruders: Option<At<RawIntruders>>,
    pub gpu_mutex: Option<At<RawGpuMutex>>,
}

/// The passthrough GPU as one mutex between VMs: it stays with `holder`, and is lent to the
/// first VM of `lend_to` that is active (its windows, its conditions), by hot-unplug: QMP
/// `device_del` on the holder, `device_add` on the borrower; given back when it is not.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGpuMutex {
    /// The VM workload (one `vmid`) that holds the GPU by default.
    pub holder: At<String>,
    /// VM workloads (one `vmid` each) that take it while they are active, first first.
    pub lend_to: At<Vec<At<String>>>,
    /// The QMP device: `device_add`'s properties, `id` and `driver` among them (on Proxmox:
    /// `{id: hostpci0, driver: vfio-pci, host: "0000:01:00.0"}`).
    pub device: At<std::collections::BTreeMap<String, At<String>>>,
    /// The device's value in the Proxmox VM configurations (`hostpci0: 0000:01:00.0,pcie=1`,
    /// the key being the device's `id`): with it and `keeper run --proxmox`, a borrower that
    /// is not running gets the GPU by a planned restart (the holder hibernated, the device
    /// moved between the configurations, the borrower started).
    pub config: Option<At<String>>,
    /// How long each unplug and plug may take (default `30s`).
    pub deadline: Option<At<String>>,
}

/// Tasks that come back to a trading core after their eviction (they pin themselves there
/// again): each return is evicted at once; a repeat offender gets `then`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIntruders {
    /// Returns of one task within `within` that make it a repeat offender (default 3).
    pub repeat: Option<At<u32>>,
    /// The window the returns are counted in (default `10s`).
    pub within: Option<At<String>>,
    /// `stop` (its process, not its children, stopped with SIGSTOP while the trading cores
    /// stay protected, continued when they are let go or at the exit: the default),
    /// `throttle` (its workload's `cpu.max` set to `cpu_max` while the trading cores stay
    /// protected), `freeze` (its workload frozen while they stay protected) or `evict`
    /// (evicted again at each return). A task of no workload that cannot be throttled or
    /// frozen is stopped; a task of rank 1 or of a `never_frozen` workload is never stopped,
    /// only evicted again.
    pub then: Option<At<RepeatAction>>,
    /// The `cpu.max` of a repeat offender's workload with `then: throttle` (default `10%`).
    pub cpu_max: Option<At<String>>,
    /// A real-time intruder (SCHED_FIFO, SCHED_RR) moved off the trading cores: `demote`d to
    /// SCHED_OTHER until the exit gives it its CPUs back (the default), or moved as it is
    /// (`keep`). A SCHED_DEADLINE task is always demoted: the kernel refuses to move it
    /// otherwise.
    pub real_time: Option<At<RealTimeIntruders>>,
}

/// Escalation: under CPU pressure (or an SLO breach), throttle the lowest-ranked
/// running workload step by step, then the next one; roll back once calm.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEscalation {
    /// Host CPU pressure (PSI some avg10, percent) that starts the ladder.
    pub cpu_pressure_above: At<f64>,
    /// The steps in order, e.g. `[{cpu_weight: 10}, {cpu_max: 25%}, freeze]`.
    pub steps: At<Vec<At<RawStep>>>,
    /// Minimum time on one step before the next.
    pub dwell: At<String>,
    /// Calm time before rolling one step back.
    pub rollback_after: At<String>,
}

/// One step of the escalation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawStep {
    /// Lower `cpu.weight` to this.
    CpuWeight(u32),
    /// Cap `cpu.max` at this percentage of the host.
    CpuMax(String),
    /// Freeze the cgroup.
    Freeze,
}

/// Thermal guard: GPU too hot → freeze the lowest-ranked GPU user, with hysteresis.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawThermalGuard {
    /// Freeze above this GPU temperature (°C).
    pub gpu_temp_above: At<f64>,
    /// Thaw once below this temperature (°C); must be lower than `gpu_temp_above`.
    pub resume_below: At<f64>,
    /// Minimum time between two thermal freezes or thaws (default `30s`).
    pub dwell: Option<At<String>>,
}

/// Eco mode: lower the GPU power limit while it idles.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEcoMode {
    /// GPU utilization (percent) under which the GPU counts as idle.
    pub idle_below: At<f64>,
    /// How long it must idle before the limit drops.
    pub idle_after: At<String>,
    /// Power limit while idle (`60%`).
    pub idle_power_limit: At<String>,
    /// Power limit for heavy work (`100%`).
    pub busy_power_limit: At<String>,
    /// GPU clock offset (MHz) applied with the idle power limit, e.g. `-200` (the seed's
    /// undervolt); back to 0 for heavy work. Only where the GPU exposes a clock offset.
    pub clock_offset_mhz: Option<At<i32>>,
}

/// Memory rules, on host memory pressure (PSI avg10, percent).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// `some` above this: set `memory.high` on the lowest-ranked running workload.
    pub high_above: Option<At<f64>>,
    /// `full` above this: freeze the lowest-ranked running workload.
    pub freeze_above: Option<At<f64>>,
    /// `some` above this: balloon the lowest-ranked VM down.
    pub balloon_above: Option<At<f64>>,
    /// Balloon target: a size or a percentage of the VM's memory (default `50%`).
    pub balloon_target: Option<At<String>>,
    /// Never balloon a VM below this: a size or a percentage of its memory (default `1G`).
    pub balloon_floor: Option<At<String>>,
    /// `memory.high` to set (default: the class's, else `50%`).
    pub memory_high: Option<At<String>>,
    /// `full` above this while VMs have been ballooned for `stop_vm_after`: stop the
    /// lowest-ranked VM (hibernated through the Proxmox API, started again when the pressure
    /// clears; never the workload that owns the trading cores). Left out: no VM is stopped.
    pub stop_vm_above: Option<At<f64>>,
    /// How long ballooning is tried before a VM is stopped (default `30s`).
    pub stop_vm_after: Option<At<String>>,
    /// Calm time before limits are restored (default `rules.thaw_hysteresis`).
    pub release_after: Option<At<String>>,
}

/// Service level objectives (at least one).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// p99 wakeup latency on the trading cores (`100us`); a breach escalates like CPU pressure.
    pub trading_p99_wakeup: Option<At<String>>,
    /// The most of the trading cores' time intruders may take (`1%`), over the run and over
    /// any 5 s window: the report's verdict.
    pub trading_intruder_share: Option<At<String>>,
}

//! The checked policy: plain data the engine reads. Built from the file by `validate`.

use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::amount::{Amount, Percent};
use super::window::Window;
use crate::cpulist::CpuList;

/// A checked policy. Workloads are sorted by rank (1 first).
#[derive(Clone, Debug)]
pub struct Policy {
    pub host: Host,
    /// Effective limits of every class (defaults merged with the policy's overrides).
    pub classes: BTreeMap<Class, Limits>,
    pub workloads: Vec<Workload>,
    pub rules: Rules,
}

impl Policy {
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }
    /// The cgroup limits a workload gets when nothing is pressing: its class's, or none.
    pub fn limits_of(&self, workload: &Workload) -> Limits {
        workload
            .class
            .and_then(|c| self.classes.get(&c).cloned())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub time_zone_name: String,
    pub time_zone: jiff::tz::TimeZone,
    pub trading_cores: CpuList,
    pub housekeeping_cores: CpuList,
    pub keeper_unit: String,
    /// `host.irq_guard`: movable IRQs kept off the trading cores while they are protected.
    pub irq_guard: bool,
    /// `host.workqueue_guard`: unbound workqueues kept off the trading cores while protected.
    pub workqueue_guard: bool,
    /// `host.smt`: what the trading cores' SMT siblings are.
    pub smt: Smt,
    /// `host.watchdog`: the hardware watchdog the loop feeds.
    pub watchdog: Option<WatchdogSpec>,
}

/// `host.watchdog`: the device and how long it waits for a keepalive before a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogSpec {
    pub device: std::path::PathBuf,
    pub timeout: Duration,
}

/// `host.smt`: a trading core's SMT sibling shares its execution units, so whatever runs
/// there slows the trading workload.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Smt {
    /// The cores are as the lists say (default); `keeper check --host` says when a trading
    /// core's sibling is a housekeeping core.
    #[default]
    AsListed,
    /// The trading cores' siblings are kept free of intruders too: on this host they join the
    /// trading cores and leave the housekeeping cores.
    ReserveSiblings,
}

/// Sizing classes from the heavy-agent sizing grid.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// ≤ 500 MB.
    Micro,
    /// 1–2 GB.
    LightBrowser,
    /// 4–8 GB.
    HeavyBrowser,
    /// > 8 GB (the systemd template: MemoryMax=80 %, CPUQuota=90 %).
    Batch,
    /// Unknown needs, kept on a short leash.
    Experimental,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Micro,
        Class::LightBrowser,
        Class::HeavyBrowser,
        Class::Batch,
        Class::Experimental,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Class::Micro => "micro",
            Class::LightBrowser => "light-browser",
            Class::HeavyBrowser => "heavy-browser",
            Class::Batch => "batch",
            Class::Experimental => "experimental",
        }
    }
    /// Default cgroup limits of the class.
    pub fn default_limits(self) -> Limits {
        const MB: u64 = 1 << 20;
        const GB: u64 = 1 << 30;
        let bytes = |b| Some(Amount::Bytes(b));
        let pct = |p| Some(Amount::Percent(Percent::new(p)));
        match self {
            Class::Micro => Limits {
                cpu_weight: Some(50),
                cpu_max: None,
                memory_high: bytes(400 * MB),
                memory_max: bytes(500 * MB),
            },
            Class::LightBrowser => Limits {
                cpu_weight: Some(100),
                cpu_max: None,
                memory_high: bytes(GB + GB / 2),
                memory_max: bytes(2 * GB),
            },
            Class::HeavyBrowser => Limits {
                cpu_weight: Some(100),
                cpu_max: None,
                memory_high: bytes(6 * GB),
                memory_max: bytes(8 * GB),
            },
            Class::Batch => Limits {
                cpu_weight: Some(50),
                cpu_max: Some(Percent::new(90.0)),
                memory_high: pct(70.0),
                memory_max: pct(80.0),
            },
            Class::Experimental => Limits {
                cpu_weight: Some(20),
                cpu_max: Some(Percent::new(50.0)),
                memory_high: bytes(GB),
                memory_max: bytes(2 * GB),
            },
        }
    }
}

/// cgroup v2 limits; `None` leaves the kernel's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_weight: Option<u32>,
    /// `cpu.max` as a share of all host CPUs.
    pub cpu_max: Option<Percent>,
    pub memory_high: Option<Amount>,
    pub memory_max: Option<Amount>,
}

/// What starts a preemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The user is interacting (EVA: "user is speaking").
    Interaction,
}

/// What the keeper does with a workload outside its windows or start conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenInactive {
    /// Leave it alone.
    #[default]
    Run,
    /// Keep it frozen.
    Freeze,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub rank: u32,
    pub matcher: Match,
    pub class: Option<Class>,
    /// Empty: always in window.
    pub windows: Vec<Window>,
    pub conditions: Conditions,
    pub when_inactive: WhenInactive,
    pub pauses: Vec<String>,
    pub preempt: Option<Preempt>,
    pub owns_trading_cores: bool,
    /// Never frozen, stopped or paused (a security VM); rank 1 is never frozen without it.
    pub never_frozen: bool,
    /// `vcpu_priority: fifo:N`: the trading-core owner's vCPU threads in SCHED_FIFO at N.
    pub vcpu_fifo: Option<u8>,
    pub gpu_handoff: Option<GpuHandoff>,
    /// What the workload's preemption starts (after its freezes) and stops (before its thaws).
    pub start_on: Option<StartOn>,
}

/// `start_on`: a service a workload's preemption starts, and how long a start or stop may
/// take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOn {
    pub service: Service,
    pub deadline: Duration,
}

/// A service the keeper starts and stops: a systemd unit, or a command it runs itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Unit(String),
    Command(Vec<String>),
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Service::Unit(u) => write!(f, "unit {u}"),
            Service::Command(c) => write!(f, "command `{}`", c.join(" ")),
        }
    }
}

/// An inclusive range of Proxmox guest ids (`300-399`; one id is `301-301`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    pub fn contains(self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Guests whose cgroups are found by their id in a parent cgroup: Proxmox VMs
/// (`qemu.slice/<vmid>.scope`) or LXC containers (`lxc/<ctid>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIds {
    /// The parent cgroup.
    pub parent: &'static str,
    /// What follows the id in a child's name.
    pub suffix: &'static str,
    pub ids: IdRange,
}

impl GuestIds {
    /// The guest id a child cgroup's name gives, when it is one of these.
    pub fn id_of(&self, child: &str) -> Option<u32> {
        let id: u32 = child.strip_suffix(self.suffix)?.parse().ok()?;
        self.ids.contains(id).then_some(id)
    }

    /// Whether a cgroup path (relative to the root) lies in one of these guests' cgroups.
    pub fn owns(&self, path: &str) -> bool {
        let Some(rest) = path
            .strip_prefix(self.parent)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        self.id_of(rest.split('/').next().unwrap_or_default())
            .is_some()
    }
}

/// How processes are recognised; any key may match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub cgroup: Option<String>,
    pub systemd_unit: Option<String>,
    /// One VM: its balloon and the memory ladder's stop act on it.
    pub vmid: Option<u32>,
    /// A range of VMs (`vmid: 300-399`): frozen and throttled together, never ballooned or
    /// stopped one by one.
    pub vmids: Option<IdRange>,
    /// Proxmox LXC containers (`ctid: 301` or `ctid: 300-399`), cgroups `lxc/<ctid>`.
    pub ctids: Option<IdRange>,
    pub process: Option<String>,
    pub pid_file: Option<String>,
    /// Docker containers by name or label; their cgroups come from the engine at run time
    /// (device/docker), so they are placements, not paths of this match.
    pub docker: Option<DockerMatch>,
    /// Further cgroups given by `keeper run --protect` (not a policy key).
    pub protect: Vec<String>,
}

/// `match.docker`: the running containers with every key given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerMatch {
    /// The container's name, without the engine's leading `/`.
    pub name: Option<String>,
    /// A label key, and the value it must have (`None`: any value).
    pub label: Option<(String, Option<String>)>,
}

impl DockerMatch {
    /// Whether a container with this name and these labels is one of this match's.
    pub fn matches(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        let name_ok = self
            .name
            .as_ref()
            .is_none_or(|n| n == name.trim_start_matches('/'));
        let label_ok = self.label.as_ref().is_none_or(|(k, v)| {
            labels
                .get(k)
                .is_some_and(|have| v.as_ref().is_none_or(|want| want == have))
        });
        name_ok && label_ok
    }
}

impl std::fmt::Display for DockerMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys = Vec::new();
        if let Some(n) = &self.name {
            keys.push(format!("name {n}"));
        }
        match &self.label {
            Some((k, Some(v))) => keys.push(format!("label {k}={v}")),
            Some((k, None)) => keys.push(format!("label {k}")),
            None => {}
        }
        write!(f, "{}", keys.join(" and "))
    }
}

impl Match {
    /// The cgroup paths (relative to the cgroup root) this match names.
    pub fn cgroups(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.cgroup {
            out.push(c.trim_matches('/').to_string());
        }
        if let Some(u) = &self.systemd_unit {
            out.push(format!("system.slice/{u}"));
        }
        if let Some(v) = self.vmid {
            out.push(format!("qemu.slice/{v}.scope"));
        }
        out.extend(self.protect.iter().map(|c| c.trim_matches('/').to_string()));
        out
    }

    /// The guests this match names by id range, found among their parent cgroup's children.
    pub fn guests(&self) -> Vec<GuestIds> {
        let vms = self.vmids.map(|ids| GuestIds {
            parent: "qemu.slice",
            suffix: ".scope",
            ids,
        });
        let cts = self.ctids.map(|ids| GuestIds {
            parent: "lxc",
            suffix: "",
            ids,
        });
        vms.into_iter().chain(cts).collect()
    }

    /// How deep the cgroup this match owns `path` through is (the length of its path): the
    /// deepest owner is the workload a cgroup belongs to. `None`: not this match's.
    pub fn depth_of(&self, path: &str) -> Option<usize> {
        let path = path.trim_matches('/');
        let fixed = self.cgroups().into_iter().filter(|c| {
            path == c
                || path
                    .strip_prefix(c.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        let guests = self.guests().into_iter().filter(|g| g.owns(path)).map(|g| {
            let child = path[g.parent.len() + 1..]
                .split('/')
                .next()
                .unwrap_or_default();
            format!("{}/{child}", g.parent)
        });
        fixed.chain(guests).map(|c| c.len()).max()
    }

    /// Whether a cgroup path (as the sensors report it) lies inside this match's cgroups.
    pub fn owns_cgroup(&self, path: &str) -> bool {
        self.depth_of(path).is_some()
    }
}

/// Start conditions; all present ones must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    pub loadavg_below: Option<f64>,
    pub gpu_idle: bool,
    pub memory_pressure_below: Option<f64>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.loadavg_below.is_none() && !self.gpu_idle && self.memory_pressure_below.is_none()
    }
}

#[derive(Clone, Debug)]
pub struct Preempt {
    pub on: Trigger,
    pub deadline: Duration,
    /// Resolved: explicit targets, or every lower-ranked workload.
    pub targets: Vec<String>,
    pub release_after: Duration,
}

/// The GPU handoff: `from` give the GPU up while this workload needs it.
#[derive(Clone, Debug)]
pub struct GpuHandoff {
    pub on: Trigger,
    pub from: Vec<String>,
    pub release_after: Duration,
}

#[derive(Clone, Debug)]
pub struct Rules {
    pub thaw_hysteresis: Duration,
    pub escalation: Option<Escalation>,
    pub thermal_guard: Option<ThermalGuard>,
    pub eco_mode: Option<EcoMode>,
    pub memory: Option<MemoryRule>,
    pub slo: Option<Slo>,
    pub intruders: super::intruders::IntruderRule,
    pub gpu_mutex: Option<GpuMutex>,
}

/// `rules.gpu_mutex`: the passthrough GPU, held by one VM and lent to another while it is
/// active (QMP hot-unplug and hot-plug of `device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMutex {
    pub holder: String,
    pub lend_to: Vec<String>,
    /// `device_add`'s properties (`id` and `driver` at least).
    pub device: std::collections::BTreeMap<String, String>,
    /// Its value in the Proxmox VM configurations (the planned-restart path).
    pub config: Option<String>,
    pub deadline: Duration,
}

#[derive(Clone, Debug)]
pub struct Escalation {
    pub cpu_pressure_above: f64,
    pub steps: Vec<Step>,
    pub dwell: Duration,
    pub rollback_after: Duration,
}

/// One escalation step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    CpuWeight(u32),
    CpuMax(Percent),
    Freeze,
}

#[derive(Clone, Debug)]
pub struct ThermalGuard {
    pub gpu_temp_above: f64,
    pub resume_below: f64,
    pub dwell: Duration,
}

#[derive(Clone, Debug)]
pub struct EcoMode {
    pub idle_below: f64,
    pub idle_after: Duration,
    pub idle_power_limit: Percent,
    pub busy_power_limit: Percent,
    /// GPU clock offset (MHz) while idle; `None`: clocks are left alone.
    pub clock_offset_mhz: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct MemoryRule {
    pub high_above: Option<f64>,
    pub freeze_above: Option<f64>,
    pub balloon_above: Option<f64>,
    pub balloon_target: Amount,
    pub balloon_floor: Amount,
    pub memory_high: Option<Amount>,
    /// The ladder's last step: stop (hibernate) the lowest-ranked VM; `None`: never.
    pub stop_vm_above: Option<f64>,
    pub stop_vm_after: Duration,
    pub release_after: Duration,
}

#[derive(Clone, Debug)]
pub struct Slo {
    pub trading_p99_wakeup: Option<Duration>,
    /// Share of the trading cores' time intruders may take.
    pub trading_intruder_share: Option<Percent>,
}

#[cfg(test)]
mod docker_tests {
    use super::DockerMatch;

    #[test]
    fn a_container_matches_when_it_has_every_key_given() {
        let labels = [("keeper.workload".to_string(), "muse".to_string())].into();
        let m = |name: Option<&str>, label: Option<(&str, Option<&str>)>| DockerMatch {
            name: name.map(Into::into),
            label: label.map(|(k, v)| (k.into(), v.map(Into::into))),
        };
        assert!(m(Some("eva-core"), None).matches("/eva-core", &labels));
        assert!(!m(Some("eva"), None).matches("/eva-core", &labels));
        assert!(m(None, Some(("keeper.workload", None))).matches("x", &labels));
        assert!(m(None, Some(("keeper.workload", Some("muse")))).matches("x", &labels));
        assert!(!m(None, Some(("keeper.workload", Some("eva")))).matches("x", &labels));
        assert!(!m(None, Some(("role", None))).matches("x", &labels));
        let both = m(Some("eva-core"), Some(("keeper.workload", Some("muse"))));
        assert!(both.matches("eva-core", &labels) && !both.matches("other", &labels));
        assert_eq!(
            both.to_string(),
            "name eva-core and label keeper.workload=muse"
        );
    }
}

//! The scheduler sensor: loads the eBPF programs, hands them their tracepoint offsets, the
//! trading cores and the protected cgroups, and reads back latency histograms, run time per
//! cgroup and intruders. Dropping the sensor detaches and unloads everything.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, ProgramError, RawTracePoint, TracePoint,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
};
use keeper_common::{
    CLASS_OTHER, CLASS_PROTECTED, COMM_LEN, CpuStats, IntruderEvent, IntruderTotal, globals, maps,
    programs,
};

use super::{
    btf::TaskOffsets,
    ebpf,
    latency::Histogram,
    noise::{self, Noise, NoiseOffsets},
    tracefs::{Tracefs, TracefsError},
};
use crate::cpulist::CpuList;

#[derive(Debug, thiserror::Error)]
pub enum SenseError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    NoObject(#[from] ebpf::NoObject),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("CPU {0} is not online on this host")]
    CpuOffline(u32),
}

/// Tracepoint field offsets, read from tracefs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedOffsets {
    pub wakeup_pid: u32,
    pub wakeup_cpu: u32,
    pub wakeup_new_pid: u32,
    pub wakeup_new_cpu: u32,
    pub prev_comm: u32,
    pub prev_pid: u32,
    pub prev_state: u32,
    pub next_pid: u32,
    pub next_comm: u32,
    /// The noise programs' offsets (irq events); `None` where tracefs lacks them.
    pub noise: Option<NoiseOffsets>,
}

impl SchedOffsets {
    /// Reads the offsets from the `format` files of sched_wakeup, sched_wakeup_new and
    /// sched_switch. A missing field or a field of another size is an error naming the file.
    pub fn from_tracefs(tracefs: &Tracefs) -> Result<Self, TracefsError> {
        let wakeup = tracefs.format("sched", "sched_wakeup")?;
        let wakeup_new = tracefs.format("sched", "sched_wakeup_new")?;
        let switch = tracefs.format("sched", "sched_switch")?;
        Ok(Self {
            wakeup_pid: wakeup.offset("pid", 4)?,
            wakeup_cpu: wakeup.offset("target_cpu", 4)?,
            wakeup_new_pid: wakeup_new.offset("pid", 4)?,
            wakeup_new_cpu: wakeup_new.offset("target_cpu", 4)?,
            prev_comm: switch.offset("prev_comm", COMM_LEN)?,
            prev_pid: switch.offset("prev_pid", 4)?,
            prev_state: switch.offset("prev_state", 8)?,
            next_pid: switch.offset("next_pid", 4)?,
            next_comm: switch.offset("next_comm", COMM_LEN)?,
            noise: NoiseOffsets::from_tracefs(tracefs)
                .inspect_err(|e| tracing::info!(error = %e, "no irq tracepoints: IRQ and softirq time on the trading cores is not measured"))
                .ok(),
        })
    }
}

/// What the sensor watches.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    pub trading_cpus: CpuList,
    /// cgroup v2 ids whose tasks are protected (a protected subtree lists every id in it).
    pub protected_cgroups: Vec<u64>,
    /// Minimum time between two intruder events for one pid.
    pub intruder_event_interval: std::time::Duration,
}

/// Counters of one trading core, summed since the sensor attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuReadout {
    pub cpu: u32,
    pub protected: Histogram,
    pub other: Histogram,
    pub idle_ns: u64,
    pub kernel_ns: u64,
    pub protected_ns: u64,
    pub intruder_ns: u64,
    /// The keeper's own time there (its eviction thread, woken by arrivals).
    pub keeper_ns: u64,
    pub switches: u64,
    pub events_sent: u64,
    pub events_lost: u64,
}

/// One intruder's time on the trading cores, as the kernel side counted it (the engine's
/// [`crate::decide::Intruder`] is one report of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntruderTime {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub ran_ns: u64,
    pub last_cpu: u32,
    /// A kernel thread by its flags (`PF_KTHREAD` in /proc), when it still runs.
    pub kernel_thread: bool,
}

/// How often the sampler looks at what runs on each trading core: an intruder that never
/// switches out is reported within this period.
pub const SAMPLE_PERIOD_NS: u64 = 2_000_000;

/// A program of the loaded object, as its kind (`TracePoint`, `PerfEvent`).
pub(super) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, SenseError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SenseError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| SenseError::Program { name, source })
}

/// Loads program `name` of `ebpf` and attaches it to raw tracepoint `event`.
fn attach_raw(ebpf: &mut Ebpf, name: &'static str, event: &str) -> Result<(), SenseError> {
    let err = |source| SenseError::Program { name, source };
    let prog: &mut RawTracePoint = program_mut(ebpf, name)?;
    prog.load().map_err(err)?;
    prog.attach(event).map_err(err)?;
    Ok(())
}

/// The loaded and attached scheduler sensor.
pub struct SchedSensor {
    ebpf: Ebpf,
    trading_cpus: CpuList,
    sampler_links: BTreeMap<u32, PerfEventLinkId>,
    /// Where the programs read tasks' fields (what they can tell by themselves).
    task: TaskOffsets,
    /// Whether the noise programs (IRQ and softirq time) run.
    noise: bool,
}

impl SchedSensor {
    /// Loads the programs with offsets from tracefs, configures them and attaches them.
    pub fn attach(tracefs: &Tracefs, config: &SchedConfig) -> Result<Self, SenseError> {
        let offsets = SchedOffsets::from_tracefs(tracefs)?;
        Self::attach_with(offsets, config)
    }

    pub fn attach_with(offsets: SchedOffsets, config: &SchedConfig) -> Result<Self, SenseError> {
        let online = CpuList::online().unwrap_or_default();
        if let Some(cpu) = config.trading_cpus.iter().find(|c| !online.contains(*c)) {
            return Err(SenseError::CpuOffline(cpu));
        }
        ebpf::raise_memlock_rlimit();
        let task = TaskOffsets::kernel();
        // Reading the kernel's BTF for the offsets leaves ~11 MB of freed heap in the RSS.
        ebpf::release_load_memory();
        match Self::load(&offsets, config, task) {
            Err(SenseError::Program { name, source }) if name == programs::ARRIVE => {
                tracing::warn!(error = %source, "keeper_arrive could not be attached: arrivals come from the classic tracepoint (a newcomer's cgroup is read from /proc)");
                let task = TaskOffsets {
                    flags: task.flags,
                    ..TaskOffsets::default()
                };
                Self::load(&offsets, config, task)
            }
            r => r,
        }
    }

    fn load(
        offsets: &SchedOffsets,
        config: &SchedConfig,
        task: TaskOffsets,
    ) -> Result<Self, SenseError> {
        let interval_ns = config.intruder_event_interval.as_nanos() as u64;
        let by_task = u32::from(task.arrivals());
        let keeper = std::process::id();
        // The noise programs' offsets (0: unknown, and they stay detached).
        let (irq, vec) = offsets.noise.map_or((0, 0), |o| (o.irq, o.vec));
        let object = ebpf::object()?;
        let ebpf = ebpf::with_loader(|loader| {
            loader
                .override_global(
                    globals::WAKEUP_PID_OFF,
                    ebpf::global(offsets.wakeup_pid),
                    true,
                )
                .override_global(
                    globals::WAKEUP_CPU_OFF,
                    ebpf::global(offsets.wakeup_cpu),
                    true,
                )
                .override_global(
                    globals::WAKEUP_NEW_PID_OFF,
                    ebpf::global(offsets.wakeup_new_pid),
                    true,
                )
                .override_global(
                    globals::WAKEUP_NEW_CPU_OFF,
                    ebpf::global(offsets.wakeup_new_cpu),
                    true,
                )
                .override_global(
                    globals::SWITCH_PREV_COMM_OFF,
                    ebpf::global(offsets.prev_comm),
                    true,
                )
                .override_global(
                    globals::SWITCH_PREV_PID_OFF,
                    ebpf::global(offsets.prev_pid),
                    true,
                )
                .override_global(
                    globals::SWITCH_PREV_STATE_OFF,
                    ebpf::global(offsets.prev_state),
                    true,
                )
                .override_global(
                    globals::SWITCH_NEXT_PID_OFF,
                    ebpf::global(offsets.next_pid),
                    true,
                )
                .override_global(
                    globals::SWITCH_NEXT_COMM_OFF,
                    ebpf::global(offsets.next_comm),
                    true,
                )
                .override_global(globals::TASK_FLAGS_OFF, ebpf::global(task.flags), true)
                .override_global(globals::TASK_PID_OFF, ebpf::global(task.pid), true)
                .override_global(globals::TASK_TGID_OFF, ebpf::global(task.tgid), true)
                .override_global(globals::KEEPER_TGID, ebpf::global(keeper), true)
                .override_global(globals::TASK_COMM_OFF, ebpf::global(task.comm), true)
                .override_global(globals::TASK_CGROUPS_OFF, ebpf::global(task.cgroups), true)
                .override_global(
                    globals::TASK_START_BOOTTIME_OFF,
                    ebpf::global(task.start_boottime),
                    true,
                )
                .override_global(
                    globals::TASK_CPUS_MASK_OFF,
                    ebpf::global(task.cpus_mask),
                    true,
                )
                .override_global(
                    globals::CSS_SET_DFL_CGRP_OFF,
                    ebpf::global(task.dfl_cgrp),
                    true,
                )
                .override_global(globals::CGROUP_KN_OFF, ebpf::global(task.kn), true)
                .override_global(globals::KERNFS_NODE_ID_OFF, ebpf::global(task.kn_id), true)
                .override_global(globals::ARRIVALS_BY_TASK, ebpf::global(by_task), true)
                .override_global(
                    globals::INTRUDER_EVENT_INTERVAL_NS,
                    ebpf::global(interval_ns),
                    true,
                )
                .override_global(globals::IRQ_EXIT_IRQ_OFF, ebpf::global(irq), true)
                .override_global(globals::SOFTIRQ_VEC_OFF, ebpf::global(vec), true);
            loader.load(object)
        })?;
        // Configure the maps before attaching so the first events already see the right sets.
        let mut sensor = Self {
            ebpf,
            trading_cpus: CpuList::default(),
            sampler_links: BTreeMap::new(),
            task,
            noise: false,
        };
        sensor.set_protected(&config.protected_cgroups)?;
        let name = programs::SAMPLE;
        let sampler: &mut PerfEvent = program_mut(&mut sensor.ebpf, name)?;
        sampler
            .load()
            .map_err(|source| SenseError::Program { name, source })?;
        sensor.set_trading_cpus(&config.trading_cpus)?;
        for (name, event) in [
            (programs::WAKEUP, "sched_wakeup"),
            (programs::WAKEUP_NEW, "sched_wakeup_new"),
            (programs::SWITCH, "sched_switch"),
        ] {
            let err = |source| SenseError::Program { name, source };
            let prog: &mut TracePoint = program_mut(&mut sensor.ebpf, name)?;
            prog.load().map_err(err)?;
            prog.attach("sched", event).map_err(err)?;
        }
        if task.arrivals() {
            attach_raw(&mut sensor.ebpf, programs::ARRIVE, "sched_switch")?;
            // Without it a task that joins the scope while it runs on a trading core is news
            // at its next switch-in or the sampler's look, not at once: said, not fatal.
            if let Err(e) = attach_raw(&mut sensor.ebpf, programs::JOINED, "cgroup_attach_task") {
                tracing::warn!(error = %e, "keeper_joined could not be attached: a task that moves itself into the scope while on a trading core is reported at its next switch-in or by the sampler");
            }
        }
        sensor.noise = noise::attach(&mut sensor.ebpf, offsets.noise.as_ref());
        let arrivals = match task.arrivals() {
            true => "read from the task (keeper_arrive)",
            false => "from the classic tracepoint",
        };
        tracing::info!(trading_cpus = %config.trading_cpus, protected = config.protected_cgroups.len(), arrivals, noise = sensor.noise, "scheduler sensor attached");
        Ok(sensor)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, SenseError> {
        self.ebpf.map_mut(name).ok_or(SenseError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, SenseError> {
        self.ebpf.map(name).ok_or(SenseError::MissingMap(name))
    }

    /// IRQ and softirq time on the trading cores since attach (`None`: not measured here).
    pub fn noise(&self) -> Option<Noise> {
        if !self.noise {
            return None;
        }
        noise::read(&self.ebpf)
            .inspect_err(|e| tracing::debug!(error = %e, "noise maps unreadable"))
            .ok()
    }

    /// Whether the programs leave kernel threads out by themselves (their flags' offset
    /// was found in the kernel's BTF).
    pub fn tells_kernel_threads(&self) -> bool {
        self.task.flags != 0
    }

    /// Replaces the set of trading cores.
    pub fn set_trading_cpus(&mut self, cpus: &CpuList) -> Result<(), SenseError> {
        let name = maps::TRADING_CPUS;
        let err = |source| SenseError::Map { name, source };
        let previous = self.trading_cpus.clone();
        let mut array: Array<&mut MapData, u8> = self.map_mut(name)?.try_into().map_err(err)?;
        for cpu in cpus.iter().chain(previous.iter()) {
            array
                .set(cpu, u8::from(cpus.contains(cpu)), 0)
                .map_err(err)?;
        }
        self.trading_cpus = cpus.clone();
        self.attach_samplers()
    }

    /// One CPU-clock perf event per trading core runs the sampler; others have none.
    fn attach_samplers(&mut self) -> Result<(), SenseError> {
        let name = programs::SAMPLE;
        let err = |source| SenseError::Program { name, source };
        let sampler: &mut PerfEvent = program_mut(&mut self.ebpf, name)?;
        let stale: Vec<u32> = self
            .sampler_links
            .keys()
            .copied()
            .filter(|c| !self.trading_cpus.contains(*c))
            .collect();
        for cpu in stale {
            if let Some(link) = self.sampler_links.remove(&cpu) {
                sampler.detach(link).map_err(err)?;
            }
        }
        for cpu in self.trading_cpus.iter() {
            if self.sampler_links.contains_key(&cpu) {
                continue;
            }
            let link = sampler
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(SAMPLE_PERIOD_NS),
                    false,
                )
                .map_err(err)?;
            self.sampler_links.insert(cpu, link);
        }
        Ok(())
    }

    pub fn trading_cpus(&self) -> &CpuList {
        &self.trading_cpus
    }

    /// Replaces the set of protected cgroup ids.
    pub fn set_protected(&mut self, ids: &[u64]) -> Result<(), SenseError> {
        let name = maps::PROTECTED_CGROUPS;
        let err = |source| SenseError::Map { name, source };
        let mut map: BpfHashMap<&mut MapData, u64, u8> =
            self.map_mut(name)?.try_into().map_err(err)?;
        let old: Vec<u64> = map.keys().filter_map(Result::ok).collect();
        for id in old.iter().filter(|id| !ids.contains(id)) {
            let _ = map.remove(id);
        }
        for id in ids {
            map.insert(id, 1, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Counters of each trading core since attach.
    pub fn cpu_readouts(&self) -> Result<Vec<CpuReadout>, SenseError> {
        let name = maps::CPU_STATS;
        let err = |source| SenseError::Map { name, source };
        let array: PerCpuArray<&MapData, CpuStats> = self.map(name)?.try_into().map_err(err)?;
        let per_cpu = array.get(&0, 0).map_err(err)?;
        Ok(self
            .trading_cpus
            .iter()
            .filter_map(|cpu| per_cpu.get(cpu as usize).map(|s| readout(cpu, s)))
            .collect())
    }

    /// Events every CPU could not send (ring buffer full, or the programs' rate limit); a
    /// fork is counted on the CPU its parent ran on, which may be a housekeeping core.
    pub fn events_lost_total(&self) -> Result<u64, SenseError> {
        let name = maps::CPU_STATS;
        let err = |source| SenseError::Map { name, source };
        let array: PerCpuArray<&MapData, CpuStats> = self.map(name)?.try_into().map_err(err)?;
        Ok(array
            .get(&0, 0)
            .map_err(err)?
            .iter()
            .map(|s| s.events_lost)
            .sum())
    }

    /// Intruders by pid, with their total run time on the trading cores since attach.
    pub fn intruders(&self) -> Result<Vec<IntruderTime>, SenseError> {
        let name = maps::INTRUDER_TOTALS;
        let err = |source| SenseError::Map { name, source };
        let map: BpfHashMap<&MapData, u32, IntruderTotal> =
            self.map(name)?.try_into().map_err(err)?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, t)| IntruderTime {
                pid,
                tgid: t.tgid,
                comm: comm_str(&t.comm),
                cgroup_id: t.cgroup_id,
                ran_ns: t.ran_ns,
                last_cpu: t.last_cpu,
                kernel_thread: crate::device::procfs::task_stat(pid)
                    .is_some_and(|s| s.is_kernel_thread()),
            })
            .collect())
    }

    /// The sensor's upkeep, every few seconds, by `keeper run` and `keeper watch` alike: stale
    /// wakeup entries pruned, and the protected cgroups as they are now (a new child cgroup of
    /// a protected one is protected too).
    pub fn upkeep(&mut self, protected: &[u64]) -> Result<(), SenseError> {
        self.prune_runnable(std::time::Duration::from_secs(60))?;
        self.set_protected(protected)
    }

    /// Removes the wakeup entries of pids that no longer exist, and timestamps older than
    /// `age` (tasks woken for a trading core that then ran elsewhere). Returns how many.
    pub fn prune_runnable(&mut self, age: std::time::Duration) -> Result<usize, SenseError> {
        let name = maps::RUNNABLE_SINCE;
        let err = |source| SenseError::Map { name, source };
        let cutoff = monotonic_ns().saturating_sub(age.as_nanos() as u64);
        let mut map: BpfHashMap<&mut MapData, u32, u64> =
            self.map_mut(name)?.try_into().map_err(err)?;
        let stale: Vec<u32> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|&(pid, since)| {
                (since != 0 && since < cutoff)
                    || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
            .map(|(pid, _)| pid)
            .collect();
        for pid in &stale {
            let _ = map.remove(pid);
        }
        Ok(stale.len())
    }

    /// Forgets that `pid` was seen on a trading core (after its eviction): if it comes back,
    /// its next switch-in there is reported at once.
    pub fn forget_seen(&mut self, pid: u32) -> Result<(), SenseError> {
        let name = maps::SEEN_PIDS;
        let err = |source| SenseError::Map { name, source };
        let mut map: BpfHashMap<&mut MapData, u32, u64> =
            self.map_mut(name)?.try_into().map_err(err)?;
        match map.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // Not there (aya says so as the syscall's ENOENT): never reported by its
            // switch-in (a fork's event, a slice), or forgotten already.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(err(source)),
        }
    }

    /// Takes the intruder event ring buffer out of the sensor (for an async reader).
    pub fn take_events(&mut self) -> Result<IntruderEvents, SenseError> {
        let name = maps::INTRUDER_EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SenseError::MissingMap(name))?;
        let ring = RingBuf::try_from(map).map_err(|source| SenseError::Map { name, source })?;
        Ok(IntruderEvents { ring })
    }
}

fn readout(cpu: u32, s: &CpuStats) -> CpuReadout {
    CpuReadout {
        cpu,
        protected: Histogram::from_buckets(&s.hist[CLASS_PROTECTED], s.max_ns[CLASS_PROTECTED]),
        other: Histogram::from_buckets(&s.hist[CLASS_OTHER], s.max_ns[CLASS_OTHER]),
        idle_ns: s.idle_ns,
        kernel_ns: s.kernel_ns,
        protected_ns: s.protected_ns,
        intruder_ns: s.intruder_ns,
        keeper_ns: s.keeper_ns,
        switches: s.switches,
        events_sent: s.events_sent,
        events_lost: s.events_lost,
    }
}

pub use crate::device::clock::monotonic_ns;

/// The kernel's comm bytes as text (up to the first NUL).
pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Intruder events the programs could not send: said once, and each time more were lost the
/// trading cores' run queues are read from /proc instead, so that nothing is lost silently.
#[derive(Default)]
pub struct LostEvents {
    seen: u64,
}

impl LostEvents {
    /// Arrivals for what runs on the trading cores now, if events were lost since last asked.
    pub fn rescan(&mut self, sensor: &SchedSensor) -> Vec<IntruderEvent> {
        let lost = sensor.events_lost_total().unwrap_or(self.seen);
        if lost <= self.seen {
            return vec![];
        }
        if self.seen == 0 {
            tracing::warn!(
                lost,
                "intruder events were lost (a burst filled the ring buffer or passed the rate limit): the trading cores' run queues are read from /proc each time this happens"
            );
        } else {
            tracing::debug!(lost = lost - self.seen, "intruder events lost: rescanning");
        }
        self.seen = lost;
        let now = monotonic_ns();
        crate::device::procfs::runnable_on(&sensor.trading_cpus)
            .into_iter()
            .map(|(pid, comm, cpu)| {
                let mut bytes = [0u8; COMM_LEN];
                let n = comm.len().min(COMM_LEN - 1);
                bytes[..n].copy_from_slice(&comm.as_bytes()[..n]);
                IntruderEvent {
                    timestamp_ns: now,
                    cgroup_id: 0,
                    ran_ns: 0,
                    start_boottime_ns: 0,
                    cpus_mask: [0; keeper_common::CPU_MASK_WORDS],
                    pid,
                    tgid: 0,
                    cpu,
                    kind: keeper_common::event::ARRIVAL,
                    comm: bytes,
                }
            })
            .collect()
    }
}

/// The intruder event ring buffer. Poll its fd (it implements `AsRawFd`) and drain with
/// [`IntruderEvents::drain`].
pub struct IntruderEvents {
    ring: RingBuf<aya::maps::MapData>,
}

impl IntruderEvents {
    /// Reads every event waiting in the ring.
    pub fn drain(&mut self) -> Vec<IntruderEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<IntruderEvent>() {
                // SAFETY: the kernel wrote an IntruderEvent; read_unaligned copes with alignment.
                out.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<IntruderEvent>())
                });
            }
        }
        out
    }
}

impl std::os::fd::AsRawFd for IntruderEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl std::os::fd::AsFd for IntruderEvents {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

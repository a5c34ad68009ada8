//! The memory sensor: direct-reclaim stalls per cgroup (global and memcg reclaim) and OOM
//! kills, from the same eBPF object as the scheduler sensor (keeper-ebpf/src/memory.rs).

use aya::{
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::TracePoint,
};
use keeper_common::{COMM_LEN, OomEvent, ReclaimStats, globals, maps, programs};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    ebpf,
    latency::Histogram,
    sched::{SenseError, comm_str, program_mut},
    tracefs::Tracefs,
};

/// The loaded and attached memory programs.
pub struct MemorySensor {
    ebpf: aya::Ebpf,
}

/// One cgroup's direct-reclaim stalls.
#[derive(Clone, Debug)]
pub struct ReclaimReadout {
    pub cgroup_id: u64,
    pub stalls: Histogram,
    pub count: u64,
    pub total_ns: u64,
}

/// An OOM kill as the sensor saw it.
#[derive(Clone, Debug)]
pub struct OomKill {
    pub timestamp_ns: u64,
    pub victim_pid: u32,
    /// The victim's name, read from /proc while it dies (None when it was already gone).
    pub victim_comm: Option<String>,
    /// The cgroup of the task that ran the OOM killer (the victim's, for a cgroup OOM).
    pub cgroup_id: u64,
    pub killer_comm: String,
}

impl MemorySensor {
    /// Loads the memory programs (mark_victim's `pid` offset from tracefs) and attaches them.
    pub fn attach(tracefs: &Tracefs) -> Result<Self, SenseError> {
        let pid_off = tracefs.format("oom", "mark_victim")?.offset("pid", 4)?;
        ebpf::raise_memlock_rlimit();
        let object = ebpf::object()?;
        let mut ebpf = ebpf::with_loader(|loader| {
            loader
                .override_global(globals::OOM_VICTIM_PID_OFF, ebpf::global(pid_off), true)
                .load(object)
        })?;
        // Direct reclaim: global (a task short of memory on the host) and a cgroup's own
        // (a task at its memory.high/max); the same programs serve both.
        let begin: &[&str] = &[
            "mm_vmscan_direct_reclaim_begin",
            "mm_vmscan_memcg_reclaim_begin",
        ];
        let end: &[&str] = &[
            "mm_vmscan_direct_reclaim_end",
            "mm_vmscan_memcg_reclaim_end",
        ];
        for (name, category, events) in [
            (programs::RECLAIM_BEGIN, "vmscan", begin),
            (programs::RECLAIM_END, "vmscan", end),
            (programs::OOM_VICTIM, "oom", &["mark_victim"][..]),
        ] {
            let err = |source| SenseError::Program { name, source };
            let prog: &mut TracePoint = program_mut(&mut ebpf, name)?;
            prog.load().map_err(err)?;
            for event in events {
                prog.attach(category, event).map_err(err)?;
            }
        }
        tracing::info!("memory sensor attached (direct reclaim, OOM kills)");
        Ok(Self { ebpf })
    }

    /// The OOM kills ring buffer, for polling.
    pub fn take_oom_events(&mut self) -> Result<OomEvents, SenseError> {
        let name = maps::OOM_EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SenseError::MissingMap(name))?;
        let ring = RingBuf::try_from(map).map_err(|source| SenseError::Map { name, source })?;
        Ok(OomEvents { ring })
    }

    /// Direct-reclaim stalls per cgroup so far.
    pub fn reclaim(&self) -> Result<Vec<ReclaimReadout>, SenseError> {
        let name = maps::RECLAIM_STATS;
        let map: BpfHashMap<&MapData, u64, ReclaimStats> = self
            .ebpf
            .map(name)
            .ok_or(SenseError::MissingMap(name))?
            .try_into()
            .map_err(|source| SenseError::Map { name, source })?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(cgroup_id, s)| {
                // No exact maximum is kept: the top bucket's upper bound stands for it.
                let top = s.hist.iter().rposition(|&n| n > 0).unwrap_or(0);
                let max_ns = Histogram::bucket_bounds_ns(top).1.saturating_sub(1);
                ReclaimReadout {
                    cgroup_id,
                    stalls: Histogram::from_buckets(&s.hist, max_ns),
                    count: s.count,
                    total_ns: s.total_ns,
                }
            })
            .collect())
    }
}

pub struct OomEvents {
    ring: RingBuf<MapData>,
}

impl OomEvents {
    /// Reads every waiting event; the victims' names come from /proc while they still exist.
    pub fn drain(&mut self) -> Vec<OomKill> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<OomEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote an OomEvent; read_unaligned copes with alignment.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OomEvent>()) };
            let comm: [u8; COMM_LEN] = ev.comm;
            out.push(OomKill {
                timestamp_ns: ev.timestamp_ns,
                victim_pid: ev.victim_pid,
                victim_comm: std::fs::read_to_string(format!("/proc/{}/comm", ev.victim_pid))
                    .ok()
                    .map(|s| s.trim().to_string()),
                cgroup_id: ev.cgroup_id,
                killer_comm: comm_str(&comm),
            });
        }
        out
    }
}

impl std::os::fd::AsRawFd for OomEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Attaches the memory sensor and registers its OOM ring buffer for polling.
pub fn attach_polled(tracefs: &Tracefs) -> (Option<MemorySensor>, Option<AsyncFd<OomEvents>>) {
    let mut sensor = match MemorySensor::attach(tracefs) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no memory sensor: OOM kills and reclaim stalls are not watched");
            return (None, None);
        }
    };
    let events = sensor.take_oom_events().ok().and_then(|e| {
        // SAFETY: OomEvents owns the ring buffer's fd and keeps it open while the AsyncFd lives.
        unsafe { AsyncFd::register_with_interest(e, Interest::READABLE) }.ok()
    });
    (Some(sensor), events)
}

//! Intruders' stays on the trading cores, from the scheduler sensor's events: each event turned
//! into the engine's [`Intruder`], when each stay began (CLOCK_MONOTONIC ns, for the eviction
//! latency), and the cgroup index the events' ids are read with (read again when an id is new
//! to it; `generation` counts the reads).

use std::collections::{HashMap, HashSet};

use keeper_common::{IntruderEvent, event};

use super::sched::{SchedSensor, comm_str, monotonic_ns};
use crate::{
    decide::Intruder,
    device::{cgroupfs::CgroupFs, procfs},
};

pub struct Stays {
    cg: CgroupFs,
    /// Cgroup id → path.
    index: HashMap<u64, String>,
    generation: u64,
    /// When each intruder's stay on a trading core began.
    began: HashMap<u32, u64>,
}

impl Stays {
    pub fn new(cg: &CgroupFs) -> Stays {
        Stays {
            index: cg.id_index(),
            cg: cg.clone(),
            generation: 0,
            began: HashMap::new(),
        }
    }

    /// The engine's intruders from kernel events, each stay's start noted; those in `moved`
    /// were evicted on arrival already, `evicted` says whether a task was evicted before.
    /// Nothing is read from /proc where the programs could tell (a newcomer's cgroup and
    /// flags come from its task in `keeper_arrive`); else an arrival's cgroup, and kernel
    /// threads' flags, are.
    pub fn intruders(
        &mut self,
        events: Vec<IntruderEvent>,
        moved: &HashSet<u32>,
        evicted: impl Fn(u32) -> bool,
        sensor: &SchedSensor,
    ) -> Vec<Intruder> {
        let mut out = Vec::new();
        for ev in events {
            tracing::trace!(
                pid = ev.pid,
                comm = %comm_str(&ev.comm),
                cpu = ev.cpu,
                ran_ns = ev.ran_ns,
                age_us = monotonic_ns().saturating_sub(ev.timestamp_ns) / 1000,
                "intruder event"
            );
            let Some(cgroup) = self.cgroup_of(&ev) else {
                continue;
            };
            // The programs leave kernel threads out by their flags; without BTF they cannot,
            // and /proc tells (the eviction itself reads the task once, and checks again).
            if !sensor.tells_kernel_threads()
                && procfs::task_stat(ev.pid).is_some_and(|s| s.is_kernel_thread())
            {
                continue;
            }
            self.note_start(&ev, evicted(ev.pid));
            out.push(Intruder {
                pid: ev.pid,
                comm: comm_str(&ev.comm),
                cgroup,
                cpu: ev.cpu,
                ran_ns: ev.ran_ns,
                arrived: ev.kind != event::SLICE,
                seen_ns: Some(ev.timestamp_ns),
                start: (ev.start_boottime_ns != 0)
                    .then(|| procfs::boottime_to_ticks(ev.start_boottime_ns)),
                evicted: ev.kind != event::SLICE && moved.contains(&ev.pid),
            });
        }
        out
    }

    /// An arrival starts a new stay (a return after an eviction too); a slice dates its own
    /// start, unless it is the last slice of a task evicted already (reported at its
    /// switch-out after the move): that stay is over, and its start would be taken for the
    /// next one's.
    fn note_start(&mut self, ev: &IntruderEvent, evicted_before: bool) {
        if ev.kind != event::SLICE {
            self.began.insert(ev.pid, ev.timestamp_ns);
        } else if !evicted_before {
            let began = ev.timestamp_ns.saturating_sub(ev.ran_ns);
            self.began.entry(ev.pid).or_insert(began);
        }
    }

    /// Ends `pid`'s stay: when it began, if it was noted.
    pub fn end(&mut self, pid: u32) -> Option<u64> {
        self.began.remove(&pid)
    }

    /// Forgets the stays of tasks that are gone.
    pub fn prune(&mut self) {
        let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        self.began.retain(|pid, _| alive(pid));
    }

    /// The event's cgroup path; `None` for an arrival already gone, or one of the keeper's
    /// own threads (an arrival from the classic tracepoint, which cannot tell them apart).
    fn cgroup_of(&mut self, ev: &IntruderEvent) -> Option<String> {
        if ev.kind == event::ARRIVAL && ev.cgroup_id == 0 {
            if procfs::is_own_thread(ev.pid) {
                return None;
            }
            return procfs::task_cgroup(ev.pid);
        }
        self.know(ev.cgroup_id);
        Some(self.index.get(&ev.cgroup_id).cloned().unwrap_or_default())
    }

    /// Reads the index again when it lacks `id`.
    pub fn know(&mut self, id: u64) {
        if !self.index.contains_key(&id) {
            self.index = self.cg.id_index();
            self.generation += 1;
        }
    }

    /// Cgroup id → path, as last read.
    pub fn index(&self) -> &HashMap<u64, String> {
        &self.index
    }

    /// How many times the index was read again.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

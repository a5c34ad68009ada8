//! The eviction thread: it waits on the scheduler sensor's ring buffer itself and moves an
//! intruder off the trading cores the moment its arrival comes out of the kernel, on the
//! filter the engine compiled ([`decide::fast`]), before the loop hears of it. Then every
//! event goes to the loop, with what was done, for the engine to count and decide the rest
//! (repeat offenders, tasks the filter does not know, the record, the metrics).
//!
//! Nothing on this thread waits on anything but the kernel: no policy, no /proc read before
//! the move, no device. While a workload owns the trading cores the thread waits **on the
//! trading cores** at the lowest real-time priority (docs/decisions/0029): an arrival wakes it
//! on the core the intruder just took, where it preempts the intruder (a normal task) at once,
//! and moves a task that is queued, not running (no stop of the core, no round trip to
//! another CPU); it never preempts a real-time Banker. Its own time there is counted apart
//! (`keeper_ns`), never as an intruder's. Otherwise it waits on the housekeeping cores one
//! real-time priority above the loop, so that a tick in progress does not hold an eviction
//! up.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use keeper_common::{IntruderEvent, event};
use tokio::sync::mpsc::UnboundedSender;

use super::seat::{Rescuer, Seat, above_the_loop, readable};
use crate::{
    act::{
        Actuators,
        execute::{Done, execute, steps},
        process::Proc,
    },
    cpulist::CpuList,
    decide::{
        ActionKind,
        fast::{Arrival, FastEvictions},
    },
    device::procfs::{self, HostTotals},
    sense::sched::{IntruderEvents, comm_str},
};

/// What one wake-up of the thread read and did.
pub struct Batch {
    pub events: Vec<IntruderEvent>,
    /// The evictions carried out on arrival, one per task at most.
    pub evicted: Vec<Done>,
}

/// The filter as the engine last compiled it (`None`: evict nothing on arrival).
pub type Filter = Arc<Mutex<Option<Arc<FastEvictions>>>>;

/// The eviction thread, its rescuer, and the way to stop them.
pub struct FastHands {
    filter: Filter,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Where the thread waits (and its rescue: [`super::seat`]).
    seat: Arc<Seat>,
    rescuer: Option<Rescuer>,
}

/// How long the thread waits on the ring before it looks at the stop flag.
const POLL_MS: i32 = 100;

impl FastHands {
    /// Starts the thread on `ring` with `act` (from [`Actuators::split_fast`]); each wake-up
    /// is sent to `to_loop`.
    pub fn start(
        mut ring: IntruderEvents,
        mut act: Actuators,
        totals: HostTotals,
        to_loop: UnboundedSender<Batch>,
    ) -> std::io::Result<FastHands> {
        let filter: Filter = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ring_fd = ring.as_fd().try_clone_to_owned()?;
        let (f, s) = (Arc::clone(&filter), Arc::clone(&stop));
        let (seat_tx, seat_rx) = std::sync::mpsc::channel::<Arc<Seat>>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keeper-evict".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() } as u32);
                above_the_loop(0);
                let Ok(seat) = seat_rx.recv() else { return };
                // Where a newcomer's CPUs read by the programs are taken (bits beyond the
                // host's CPUs are the next field's, where the kernel's masks are shorter).
                let possible = CpuList::possible().ok();
                let mut moved = Moved::default();
                while !s.load(Ordering::Relaxed) {
                    // Events, or the poll interval passed.
                    let woke = readable(ring.as_fd(), POLL_MS);
                    seat.progressed();
                    moved.look(&mut act);
                    if !woke {
                        continue;
                    }
                    let events = ring.drain();
                    if events.is_empty() {
                        continue;
                    }
                    let now = f.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let evicted = match &now {
                        Some(filter) => evict(&mut act, totals, filter, &events, &possible, &seat),
                        None => vec![],
                    };
                    moved.add(&evicted);
                    if to_loop.send(Batch { events, evicted }).is_err() {
                        break;
                    }
                }
            })?;
        let tid = tid_rx.recv().map_err(std::io::Error::other)?;
        let home = Proc::open_thread(tid, None)
            .and_then(|t| t.affinity())
            .map_err(std::io::Error::other)?;
        let seat = Arc::new(Seat::new(tid, home));
        seat_tx
            .send(Arc::clone(&seat))
            .map_err(std::io::Error::other)?;
        let rescuer = Some(Rescuer::start(Arc::clone(&seat), ring_fd)?);
        Ok(FastHands {
            filter,
            stop,
            thread: Some(thread),
            seat,
            rescuer,
        })
    }

    /// Hands the thread the engine's new filter, and has it wait where that filter's
    /// arrivals will be: on the trading cores while a workload owns them, else at home.
    pub fn set(&mut self, filter: Option<FastEvictions>) {
        let want = filter.as_ref().map(|f| f.trading.clone());
        *self.filter.lock().unwrap_or_else(|e| e.into_inner()) = filter.map(Arc::new);
        self.seat.want(want);
    }

    /// How many times the rescuer sent the thread home.
    pub fn rescues(&self) -> u64 {
        self.seat.rescues()
    }
}

/// Dropping the hands ends the thread (within one poll interval), also after a start that
/// failed half-way. The thread is sent home first: on a trading core a real-time task could
/// hold it off for good, and the exit with it.
impl Drop for FastHands {
    fn drop(&mut self) {
        drop(self.rescuer.take());
        self.seat.go_home("exit");
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tasks this thread moved off the trading cores in the last [`Moved::WATCH`] (by pid,
/// at most [`Moved::MAX`]), asked every [`Moved::EVERY`] for their class (one system call
/// each): one that turned real-time since (a `chrt` after its move) is demoted. It runs on the
/// housekeeping cores now, where at SCHED_FIFO 99 it would starve the loop and the rescuer;
/// this thread, on the trading cores, is the one it cannot starve. Its main thread is asked
/// (a process whose other threads alone turn real-time is not seen).
#[derive(Default)]
struct Moved {
    tasks: std::collections::HashMap<u32, (u64, Instant)>,
    looked: Option<Instant>,
}

impl Moved {
    const WATCH: std::time::Duration = std::time::Duration::from_secs(10);
    const EVERY: std::time::Duration = std::time::Duration::from_millis(50);
    const MAX: usize = 256;

    fn add(&mut self, evicted: &[Done]) {
        let now = Instant::now();
        for d in evicted {
            if let ActionKind::EvictIntruder {
                pid,
                start: Some(start),
                ..
            } = d.action.kind
                && d.moved_ns.is_some()
            {
                if self.tasks.len() >= Self::MAX && !self.tasks.contains_key(&pid) {
                    let oldest = (self.tasks.iter())
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(p, _)| *p);
                    oldest.map(|p| self.tasks.remove(&p));
                }
                self.tasks.insert(pid, (start, now));
            }
        }
    }

    fn look(&mut self, act: &mut Actuators) {
        if self.tasks.is_empty() || self.looked.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        self.looked = Some(Instant::now());
        self.tasks.retain(|_, (_, at)| at.elapsed() < Self::WATCH);
        for (&pid, &(start, _)) in &self.tasks {
            if !crate::act::sched_class::runs_real_time(pid) {
                continue;
            }
            match act.demote_if_turned_real_time(pid, start) {
                Ok(Some(what)) => tracing::warn!(pid, "{what}"),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(pid, error = %e, "a moved task's class could not be changed")
                }
            }
        }
    }
}

/// The evictions the filter asks for among `events`, carried out now (one per task).
fn evict(
    act: &mut Actuators,
    totals: HostTotals,
    filter: &FastEvictions,
    events: &[IntruderEvent],
    possible: &Option<CpuList>,
    seat: &Seat,
) -> Vec<Done> {
    let mut done = Vec::new();
    let mut seen = HashSet::new();
    act.demote_real_time = filter.demote;
    let placements = BTreeMap::new();
    for ev in events {
        let Some(start) = arrival_start(ev) else {
            continue;
        };
        if !filter.evicts(ev.cpu, ev.cgroup_id) || !seen.insert(ev.pid) {
            continue;
        }
        // The move first; the action, its report and the task's other threads after.
        let started = Instant::now();
        let cpus = possible.as_ref().and_then(|p| arrival_cpus(ev, p));
        if let Err(e) = act.evict_arrival(ev.pid, start, ev.timestamp_ns, cpus, &filter.to) {
            tracing::debug!(pid = ev.pid, error = %e, "first move on arrival failed: the eviction tries again");
        }
        let Some(action) = arrival(ev).and_then(|a| filter.eviction(&a)) else {
            continue;
        };
        let report = execute(act, &placements, totals, &action);
        let steps = steps(act, report);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        seat.progressed();
        let mut d = Done::new(action, steps, ms);
        d.moved_ns = act.first_move_ns.take();
        done.push(d);
    }
    done
}

/// The start time (clock ticks since boot) of an arrival read from the task by the programs,
/// else `None`.
fn arrival_start(ev: &IntruderEvent) -> Option<u64> {
    let read = ev.kind == event::ARRIVAL && ev.cgroup_id != 0 && ev.start_boottime_ns != 0;
    read.then(|| procfs::boottime_to_ticks(ev.start_boottime_ns))
}

/// The CPUs of an arrival as the programs read them from the task, among the host's
/// `possible` CPUs (what `sched_getaffinity` gives but for CPUs offline now), else `None`.
fn arrival_cpus(ev: &IntruderEvent, possible: &CpuList) -> Option<CpuList> {
    let cpus = CpuList::from_bits(&ev.cpus_mask).intersection(possible);
    (!cpus.is_empty()).then_some(cpus)
}

/// An arrival read from the task by the programs (its start time known), else `None`.
fn arrival(ev: &IntruderEvent) -> Option<Arrival> {
    Some(Arrival {
        pid: ev.pid,
        comm: comm_str(&ev.comm),
        cpu: ev.cpu,
        cgroup_id: ev.cgroup_id,
        seen_ns: ev.timestamp_ns,
        start: Some(arrival_start(ev)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival_with(cpus_mask: [u64; keeper_common::CPU_MASK_WORDS]) -> IntruderEvent {
        IntruderEvent {
            timestamp_ns: 1,
            cgroup_id: 7,
            ran_ns: 0,
            start_boottime_ns: 1,
            cpus_mask,
            pid: 42,
            tgid: 0,
            cpu: 1,
            kind: event::ARRIVAL,
            comm: [0; keeper_common::COMM_LEN],
        }
    }

    /// A newcomer's CPUs as the programs read them, kept within the host's CPUs: the bits past
    /// them (the next field's, where the kernel's masks are shorter) are not CPUs; none read
    /// means the eviction asks the kernel.
    #[test]
    fn an_arrivals_cpus_are_its_mask_within_the_hosts_cpus() {
        let possible: CpuList = "0-3".parse().unwrap();
        let ev = arrival_with([0b1010 | 1 << 40, u64::MAX, 0, 0]);
        assert_eq!(arrival_cpus(&ev, &possible), Some("1,3".parse().unwrap()));
        assert_eq!(arrival_cpus(&arrival_with([0; 4]), &possible), None);
        assert_eq!(
            arrival_cpus(&arrival_with([1 << 9, 0, 0, 0]), &possible),
            None
        );
    }
}

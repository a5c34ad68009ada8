//! Where the eviction thread waits, and its rescue (docs/decisions/0034).
//!
//! While a workload owns the trading cores the eviction thread waits on them at SCHED_FIFO 1
//! (decision 0029): an arrival wakes it where the intruder is, and it moves a task that is
//! queued, not running. A real-time intruder (SCHED_FIFO or SCHED_RR above 1, SCHED_DEADLINE)
//! starves it there: the thread is woken and never runs. The **rescuer**, a second thread on
//! the housekeeping cores at the highest real-time priority, waits on the same ring: when
//! events stay unread for [`GRACE`] while the eviction thread, runnable, did not run at all
//! (its run time in /proc's schedstat did not grow), it moves the
//! eviction thread home (the housekeeping cores, one priority above the loop), where it runs
//! at once, reads the ring and evicts the intruder (demoted to SCHED_OTHER first: see
//! `act::affinity`). The rescuer puts it back on the trading cores once [`HOLD`] has passed
//! since the rescue, and otherwise sleeps while the thread is home (nothing to rescue).
//!
//! Only threads on the housekeeping cores (the loop, the rescuer) move the eviction thread,
//! never the thread itself: a thread that moves itself onto a trading core behind a real-time
//! task stops there, mid-call, with whatever it holds (before, the seat's lock: the exit then
//! waited until the intruder ended). At the exit the seat sends the thread home first, so that
//! joining it never waits on a trading core.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{JoinHandle, Thread},
    time::{Duration, Instant},
};

use crate::{
    act::{ActError, process::Proc},
    cpulist::CpuList,
    device::procfs,
};

/// How long events may wait unread, with no progress of the eviction thread, before the
/// rescuer moves it home. Its local wake-up on the trading core takes tens of microseconds;
/// the rescuer's own wake-up on another core takes longer than that already.
pub const GRACE: Duration = Duration::from_micros(200);
/// How long the rescuer waits after a look that found the eviction thread keeping up.
const SETTLE: Duration = Duration::from_millis(1);
/// How long the thread stays home after a rescue before it waits on the trading cores again.
pub const HOLD: Duration = Duration::from_secs(2);

/// The eviction thread's place: wanted by the loop, held by the thread, changed by the
/// rescuer.
pub struct Seat {
    tid: u32,
    home: CpuList,
    place: Mutex<Place>,
    /// Bumped by the eviction thread at each wake-up and each eviction.
    progress: AtomicU64,
    /// Set while the thread waits on the trading cores (read by the rescuer without a lock).
    on_trading: AtomicBool,
    /// How many times the rescuer moved it home.
    rescues: AtomicU64,
}

#[derive(Default)]
struct Place {
    /// Where the loop wants it (`None`: home).
    want: Option<CpuList>,
    /// Where it is (`None`: home).
    placed: Option<CpuList>,
    rescued_at: Option<Instant>,
    rescuer: Option<Thread>,
    /// The CPUs a move was last refused to (a cpuset partition holds them): said once, not
    /// at each tick's try.
    refused: Option<CpuList>,
}

impl Seat {
    pub fn new(tid: u32, home: CpuList) -> Seat {
        Seat {
            tid,
            home,
            place: Mutex::default(),
            progress: AtomicU64::new(0),
            on_trading: AtomicBool::new(false),
            rescues: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eviction thread woke or evicted (called on that thread).
    pub fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// How many rescues so far.
    pub fn rescues(&self) -> u64 {
        self.rescues.load(Ordering::Relaxed)
    }

    /// The loop wants the thread on `want` (the trading cores) or home (`None`): moved now,
    /// unless a rescue sent it home less than [`HOLD`] ago (it goes back by itself).
    pub fn want(&self, want: Option<CpuList>) {
        let mut p = self.lock();
        p.want = want;
        self.settle_locked(&mut p);
    }

    /// Called by the rescuer (never by the eviction thread: see the module's note): back
    /// where the loop wants it once a rescue's hold has passed.
    fn settle(&self) {
        let mut p = self.lock();
        if p.placed != p.want {
            self.settle_locked(&mut p);
        }
    }

    fn settle_locked(&self, p: &mut Place) {
        let held = p.rescued_at.is_some_and(|t| t.elapsed() < HOLD);
        let to = if held { None } else { p.want.clone() };
        if to != p.placed {
            self.put(p, to);
        }
    }

    /// Sends the thread home now (the rescue, and the exit).
    pub fn go_home(&self, why: &'static str) {
        let mut p = self.lock();
        if why == "rescue" {
            p.rescued_at = Some(Instant::now());
            self.rescues.fetch_add(1, Ordering::Relaxed);
        }
        self.put(&mut p, None);
    }

    /// The thread's priority at home: above every real-time task a user may run there (below
    /// the rescuer) while a rescue holds it home, so that the task it is to evict or demote,
    /// which may spin there at its class, cannot starve it for the hold (a task turned
    /// SCHED_FIFO 50 on CPU 0 kept it from its 50 ms watch 1.9 s); else one above the loop.
    fn home_priority(&self, p: &Place) {
        if p.rescued_at.is_some_and(|t| t.elapsed() < HOLD) {
            // SAFETY: sched_get_priority_max has no preconditions.
            set_fifo(
                self.tid,
                unsafe { libc::sched_get_priority_max(libc::SCHED_FIFO) } - 1,
            );
        } else {
            above_the_loop(self.tid);
        }
    }

    /// Moves the thread to `on` (the trading cores) at SCHED_FIFO 1, or home (`None`) one
    /// priority above the loop. Only a real-time thread goes to the trading cores (a normal
    /// one would queue behind the intruder it is to evict): without SCHED_FIFO it stays
    /// home. A refusal to move leaves it where it was.
    fn put(&self, p: &mut Place, on: Option<CpuList>) {
        let on = on.filter(|_| set_fifo(self.tid, 1));
        let cpus = on.as_ref().unwrap_or(&self.home);
        let moved = Proc::open_thread(self.tid, None).and_then(|t| t.set_affinity(cpus));
        match moved {
            Ok(()) => {
                if on.is_none() {
                    self.home_priority(p);
                }
                p.refused = None;
                tracing::info!(cpus = %cpus, on_trading_cores = on.is_some(), "the eviction thread waits on CPUs {cpus}");
                self.on_trading.store(on.is_some(), Ordering::Relaxed);
                p.placed = on;
                if let Some(r) = &p.rescuer {
                    r.unpark();
                }
            }
            // A cpuset partition holds the trading cores: no task outside it can run there,
            // this thread included, and none is to be evicted there.
            // Tried again at each tick (the partition may go), said once: before, each tick
            // logged it (a journal of nothing else), and left the thread at the trading
            // cores' SCHED_FIFO 1 at home.
            Err(ActError::Process { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                self.home_priority(p);
                if p.refused.as_ref() != Some(cpus) {
                    tracing::info!(cpus = %cpus, "the trading cores are outside the keeper's cpuset (a partition holds them) or offline: the eviction thread waits where it was");
                    p.refused = Some(cpus.clone());
                }
            }
            Err(ActError::Vanished { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, cpus = %cpus, "the eviction thread could not be moved; it waits where it was")
            }
        }
    }
}

/// The rescuer and the way to stop it.
pub struct Rescuer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rescuer {
    /// Starts the rescuer of `seat`'s thread, which reads the ring `ring` (a copy of its fd).
    pub fn start(seat: Arc<Seat>, ring: OwnedFd) -> std::io::Result<Rescuer> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let seat2 = Arc::clone(&seat);
        let thread = std::thread::Builder::new()
            .name("keeper-rescue".into())
            .spawn(move || {
                // The highest real-time priority: nothing on the housekeeping cores may hold
                // the rescue up. It runs for microseconds at a time.
                // SAFETY: sched_get_priority_max has no preconditions.
                set_fifo(0, unsafe { libc::sched_get_priority_max(libc::SCHED_FIFO) });
                watch(&seat2, &ring, &s);
            })?;
        seat.lock().rescuer = Some(thread.thread().clone());
        Ok(Rescuer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Rescuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The rescuer's loop: asleep while the eviction thread is home; else wakes with the ring,
/// and moves the thread home when the events stay unread and the thread did not progress.
fn watch(seat: &Seat, ring: &OwnedFd, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !seat.on_trading.load(Ordering::Relaxed) {
            std::thread::park_timeout(Duration::from_millis(100));
            seat.settle();
            continue;
        }
        if !readable(ring.as_fd(), 100) {
            continue;
        }
        let before = seat.progress.load(Ordering::Relaxed);
        let ran = procfs::run_time_ns(seat.tid);
        std::thread::sleep(GRACE);
        // Starved: woken (runnable) with events to read, yet it did not run at all. A thread
        // asleep (an event that woke nobody) or busy evicting is not.
        let starved = seat.progress.load(Ordering::Relaxed) == before
            && seat.on_trading.load(Ordering::Relaxed)
            && readable(ring.as_fd(), 0)
            && procfs::task_stat(seat.tid).is_some_and(|s| s.state == 'R')
            && ran.is_some()
            && procfs::run_time_ns(seat.tid) == ran;
        if !starved {
            // Events keep coming and the thread keeps up: looked at again in a moment, not at
            // every event (a storm woke the rescuer 5 000 times a second, 1-6 % of a core).
            std::thread::sleep(SETTLE);
            continue;
        }
        seat.go_home("rescue");
        tracing::warn!(
            tid = seat.tid,
            rescues = seat.rescues(),
            "the eviction thread was held off the trading cores (a real-time task runs there): it evicts from the housekeeping cores for {}s",
            HOLD.as_secs()
        );
    }
}

/// Whether `fd` is readable within `ms` milliseconds (the ring's wait, for the eviction
/// thread and the rescuer alike).
pub(super) fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by this frame, for an fd borrowed for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// The loop runs at SCHED_FIFO 1 on the housekeeping cores; at the same priority the thread
/// would wait for the loop's tick to end (FIFO does not preempt its equal), so it takes
/// priority 2 where the loop got real-time priority (it inherits the loop's otherwise).
/// `tid` 0: the calling thread.
pub fn above_the_loop(tid: u32) {
    // SAFETY: sched_getscheduler on the calling thread (0), whose policy the keeper's
    // threads share (pin_self).
    if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_FIFO {
        set_fifo(tid, 2);
    }
}

/// SCHED_FIFO at `priority` for thread `tid` (0: the calling one); whether the kernel
/// agreed (a refusal, without CAP_SYS_NICE, leaves it as it was).
fn set_fifo(tid: u32, priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler on one of our own threads with a valid param.
    unsafe { libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_FIFO, &param) == 0 }
}

//! CPU affinity, journaled: an intruder moved off the trading cores (eviction), and, where no
//! cpuset partition can hold the trading cores (hybrid hosts, a VM scope under a non-partition
//! parent before 6.7), every task of the scope kept off them so that its children are born on
//! the housekeeping cores (what `tuna --isolate` does).

use super::{
    ActError, Actuators, Effect,
    process::{self, Proc},
    task_cgroup, under,
};
use crate::{cpulist::CpuList, device::procfs};

/// Who an eviction is about, as its event said.
#[derive(Clone, Copy, Debug, Default)]
pub struct Who {
    /// Its event's instant (CLOCK_MONOTONIC ns).
    pub seen_ns: Option<u64>,
    /// Its start time (clock ticks since boot), when the programs read it from the task.
    pub start: Option<u64>,
}

impl Actuators {
    /// Moves every thread of `pid` to `to` (intruder eviction), journaling the original affinity.
    /// `cgroup` is the task's cgroup as its event found it (read from /proc when unknown),
    /// checked against the scope. Who the task is:
    /// - `start` (its start time, read from the task by the programs at its arrival, a kernel
    ///   thread left out there) and a recent event ([`Proc::vouched`]): the number still
    ///   names that task, which is moved with no read of /proc and no pidfd first (reading
    ///   /proc/PID/stat of a newcomer in the middle of its exec can wait milliseconds);
    /// - `start` and an older event: it must still have that start time;
    /// - else: a task started after `seen_ns` (its event's instant) is another one and left
    ///   alone, and so is a kernel thread.
    ///
    /// The thread of the event (the one on a trading core) is moved first, its other threads
    /// after; [`Actuators::first_move_ns`] says when the first moved.
    pub fn evict(
        &mut self,
        pid: u32,
        who: Who,
        cgroup: &str,
        to: &CpuList,
    ) -> Result<Effect, ActError> {
        // This thread moved already at its arrival (evict_arrival): the rest is to move.
        let first_moved = self.moved_on_arrival.take() == who.start.map(|s| (pid, s));
        if !first_moved {
            self.demoted = None;
        }
        let gone = || {
            Ok(Effect::Unchanged(format!(
                "pid {pid} exited before its eviction"
            )))
        };
        match self.check_scope_task(pid, cgroup) {
            // Gone before it could be moved: nothing left on the trading core to evict.
            Err(ActError::Vanished { .. }) => return gone(),
            r => r?,
        }
        // The programs leave the keeper's threads out where they read the task (`start`);
        // the classic tracepoint cannot.
        if who.start.is_none() && procfs::is_own_thread(pid) {
            let why = format!("pid {pid} is one of the keeper's own threads: never evicted");
            return Ok(Effect::Unchanged(why));
        }
        let what = format!("pid {pid} to CPUs {to}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("evict {what}")));
        }
        let vouched = (who.start.zip(who.seen_ns)).and_then(|(s, t)| Proc::vouched(pid, s, t));
        let opened = match vouched {
            Some(task) => Ok(task),
            None => Proc::open_thread(pid, who.start),
        };
        let task = match opened {
            Ok(t) => t,
            Err(ActError::Vanished { .. }) => return gone(),
            Err(e) => return Err(e),
        };
        if who
            .seen_ns
            .is_some_and(|t| procfs::started_after(task.start, t))
        {
            return Ok(Effect::Unchanged(format!(
                "pid {pid} exited before its eviction (its number now names another task)"
            )));
        }
        if task.kernel_thread {
            let why = format!("pid {pid} is a kernel thread: never evicted");
            return Ok(Effect::Unchanged(why));
        }
        // A real-time task is demoted as it leaves (`rules.intruders.real_time`): it would
        // take the housekeeping cores.
        let demote = self.demote_real_time;
        let target = |original: &CpuList| (original != to).then(|| (to.clone(), demote));
        let mut moved = 1;
        if !first_moved {
            let at = self.move_task(&task, None, target)?;
            moved = u32::from(at.is_some());
            self.first_move_ns = at.or(self.first_move_ns);
        }
        for tid in process::threads(pid).into_iter().filter(|&t| t != pid) {
            moved += u32::from(self.move_thread(tid, target)?);
        }
        let demoted = (self.demoted.take())
            .map(|c| format!("; demoted from {c} to SCHED_OTHER until its CPUs are given back"))
            .unwrap_or_default();
        if moved == 0 && !task.still_same() {
            return gone();
        }
        Ok(if moved == 0 {
            Effect::Unchanged(what)
        } else {
            Effect::Done(format!("evicted {what} ({moved} threads{demoted})"))
        })
    }

    /// The first move of an arrival, made by the eviction thread before anything else: the
    /// arriving thread `pid`, read from the task by the programs (`start`, and its CPUs
    /// `cpus` where they read them) at `seen_ns`, journaled and moved to `to` by number (no
    /// /proc, no pidfd, no string built, no `sched_getaffinity` where `cpus` is known). Its
    /// filter ([`crate::decide::fast::FastEvictions::evicts`]) knows it for an intruder in
    /// the scope; its other threads and its account follow in [`Actuators::evict`], which
    /// knows this one moved. Whether it moved (an event too old to vouch for the number, a
    /// task gone, a dry run: no, and `evict` does it all).
    pub fn evict_arrival(
        &mut self,
        pid: u32,
        start: u64,
        seen_ns: u64,
        cpus: Option<CpuList>,
        to: &CpuList,
    ) -> Result<bool, ActError> {
        self.demoted = None;
        let Some(task) = Proc::vouched(pid, start, seen_ns).filter(|_| !self.dry_run) else {
            return Ok(false);
        };
        let demote = self.demote_real_time;
        let at = self.move_task(&task, cpus, |original| {
            (original != to).then(|| (to.clone(), demote))
        })?;
        if at.is_some() {
            self.first_move_ns = at;
            self.moved_on_arrival = Some((pid, start));
        }
        Ok(at.is_some())
    }

    /// Keeps every task of the scope (the host without one) off `trading`: its affinity
    /// loses the trading cores (all of them: it gets `housekeeping`). Kernel threads, the
    /// keeper, and tasks in `protected` cgroups or pids are left alone. Journaled per thread.
    pub fn keep_tasks_off(
        &mut self,
        trading: &CpuList,
        housekeeping: &CpuList,
        protected: (&[String], &[u32]),
    ) -> Result<Effect, ActError> {
        let what = format!("every task of the scope off the trading cores {trading}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("keep {what}")));
        }
        let scope = self.scope.clone();
        self.demoted = None;
        let mut moved = 0;
        for tid in user_threads(|pid, cg| {
            !protected.1.contains(&pid)
                && scope.as_ref().is_none_or(|s| under(cg, s))
                && !protected.0.iter().any(|c| under(cg, c))
        }) {
            moved += u32::from(self.keep_thread_off(tid, trading, housekeeping)?);
        }
        let demoted = (self.demoted.take())
            .map(|c| format!("; demoted from {c} to SCHED_OTHER until its CPUs are given back"))
            .unwrap_or_default();
        Ok(if moved == 0 {
            Effect::Unchanged(what)
        } else {
            Effect::Done(format!(
                "kept {moved} threads off the trading cores {trading}: their children are born on {housekeeping}{demoted}"
            ))
        })
    }

    /// One thread off `trading`; whether it was moved. A thread whose affinity cannot change
    /// (a per-CPU worker: EINVAL) is left as it is.
    fn keep_thread_off(
        &mut self,
        tid: u32,
        trading: &CpuList,
        housekeeping: &CpuList,
    ) -> Result<bool, ActError> {
        let demote = self.demote_real_time;
        let target = |original: &CpuList| {
            if original.intersection(trading).is_empty() {
                return None;
            }
            let to = original.difference(trading);
            // Pinned to the trading cores alone, a real-time task would now take the
            // housekeeping cores: demoted. One that could run there already keeps its class.
            Some(if to.is_empty() {
                (housekeeping.clone(), demote)
            } else {
                (to, false)
            })
        };
        match self.move_thread(tid, target) {
            Err(ActError::Process { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(false)
            }
            other => other,
        }
    }

    /// Gives thread `tid` the affinity `target` asks for its current one (`None`: left as it
    /// is; `true` beside it: a real-time thread is demoted first, [`Actuators::demote`]),
    /// journaling the original around the move; whether it moved. A thread gone meanwhile is
    /// not.
    pub(super) fn move_thread(
        &mut self,
        tid: u32,
        target: impl FnOnce(&CpuList) -> Option<(CpuList, bool)>,
    ) -> Result<bool, ActError> {
        match Proc::open_thread(tid, None) {
            Ok(task) => (self.move_task(&task, None, target)).map(|at| at.is_some()),
            Err(ActError::Vanished { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::move_thread`] for a thread already open, whose CPUs are `known` (read by the
    /// programs a moment ago) or asked of the kernel: when it moved (CLOCK_MONOTONIC ns, as
    /// the kernel returned from the move, before the journal's line is written), or `None`.
    fn move_task(
        &mut self,
        task: &Proc,
        known: Option<CpuList>,
        target: impl FnOnce(&CpuList) -> Option<(CpuList, bool)>,
    ) -> Result<Option<u64>, ActError> {
        let fast = known.is_some();
        let original = match known.map_or_else(|| task.affinity(), Ok) {
            Ok(a) => a,
            Err(ActError::Vanished { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((to, demote)) = target(&original) else {
            return Ok(None);
        };
        // Off the eviction path (two small reads): a thread that only follows its cpuset is
        // given back to it at undo, not pinned to what the cpuset was then.
        let original = if fast {
            original
        } else {
            self.follows_its_cpuset(task.pid, original)
        };
        // A deadline task cannot be moved at all (EBUSY): demoted first, whatever `target` says.
        let deadline = || (task.scheduler()).is_ok_and(|(p, _)| super::sched_class::is_deadline(p));
        if (demote || deadline())
            && let Some(class) = self.demote(task)?
        {
            self.demoted.get_or_insert(class);
        }
        let set = (self.journal()).record_around(task.pid, task.start, &original, || {
            (task.set_affinity(&to)).map(|()| crate::device::clock::monotonic_ns())
        })?;
        match set {
            // Known by number only (no pidfd): the number still named it once moved.
            Ok(at) => Ok(task.still_same().then_some(at)),
            Err(ActError::Vanished { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The threads of every task that is neither a kernel thread nor this keeper and whose pid and
/// cgroup (relative to the v2 mount) `wanted` accepts: what the keeper may re-pin host-wide.
pub(super) fn user_threads(wanted: impl Fn(u32, &str) -> bool) -> Vec<u32> {
    let me = std::process::id();
    (process::all_pids().into_iter())
        .filter(|&pid| pid != me && task_cgroup(pid).is_some_and(|cg| wanted(pid, &cg)))
        .filter(|&pid| procfs::task_stat(pid).is_some_and(|s| !s.is_kernel_thread()))
        .flat_map(process::threads)
        .collect()
}

impl Actuators {
    /// `mask`, or all possible CPUs where `mask` is just its cpuset's effective CPUs (the task has
    /// no mask of its own). Written back at undo, the mask as read would pin the task for good to
    /// what a partition or the keeper's own cpuset writes had left it (from 6.2 the kernel keeps a
    /// mask set by sched_setaffinity across later cpuset changes: a VM's threads stayed on the old
    /// trading cores after `systemctl stop keeper`); all possible CPUs is narrowed by the kernel to
    /// the cpuset's, then and later.
    fn follows_its_cpuset(&self, pid: u32, mask: CpuList) -> CpuList {
        let effective = crate::device::procfs::task_cgroup(pid)
            .and_then(|cg| self.read_file(&cg, "cpuset.cpus.effective").ok())
            .and_then(|t| t.parse::<CpuList>().ok())
            .or_else(|| CpuList::online().ok());
        match (effective, CpuList::possible()) {
            (Some(e), Ok(all)) if e == mask => all,
            _ => mask,
        }
    }
}

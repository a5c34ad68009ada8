//! Real-time intruders demoted (docs/decisions/0034): a SCHED_FIFO, SCHED_RR or
//! SCHED_DEADLINE task that the keeper moves to the housekeeping cores would take them from the
//! keeper's own loop, its control socket, sshd and the QEMU I/O threads. It goes to
//! SCHED_OTHER first (the move of a deadline task is refused by the kernel anyway), its class
//! journaled, and gets it back when its affinity is put back (at exit, or when the trading
//! cores are let go: the undo of both comes from the journal).

use super::{ActError, Actuators, Effect, journal::Entry, normalize, process::Proc, under};
use crate::cpulist::CpuList;

/// A deadline task's parameters (`struct sched_attr`, nanoseconds), journaled to give them
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deadline {
    pub runtime_ns: u64,
    pub deadline_ns: u64,
    pub period_ns: u64,
}

/// `struct sched_attr` as of Linux 3.14 (`SCHED_ATTR_SIZE_VER0`, 48 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `SCHED_DEADLINE` (include/uapi/linux/sched.h); libc names it on some targets only.
pub const SCHED_DEADLINE: i32 = 6;

/// A policy without its `SCHED_RESET_ON_FORK` flag.
fn class(policy: i32) -> i32 {
    policy & !libc::SCHED_RESET_ON_FORK
}

/// Whether `policy` is SCHED_DEADLINE: the kernel refuses to narrow such a task's CPUs below
/// its root domain, so it is demoted before any move.
pub fn is_deadline(policy: i32) -> bool {
    class(policy) == SCHED_DEADLINE
}

/// Whether task `pid` runs in a real-time or deadline class now: one system call, no /proc
/// (the eviction thread asks it of every task it moved lately, every 50 ms). A task gone is
/// not.
pub fn runs_real_time(pid: u32) -> bool {
    // SAFETY: sched_getscheduler takes a pid and touches no memory of ours.
    let policy = unsafe { libc::sched_getscheduler(pid as libc::pid_t) };
    policy >= 0 && is_real_time(policy)
}

/// Whether `policy` (as `sched_getscheduler` gives it) is a real-time or deadline class.
pub fn is_real_time(policy: i32) -> bool {
    matches!(
        class(policy),
        libc::SCHED_FIFO | libc::SCHED_RR | SCHED_DEADLINE
    )
}

impl Proc {
    /// A deadline task's parameters.
    pub fn deadline(&self) -> Result<Deadline, ActError> {
        let mut attr = SchedAttr::default();
        // SAFETY: sched_getattr(tid, attr, size, 0) fills at most `size` bytes of `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                self.pid as libc::pid_t,
                &mut attr as *mut SchedAttr,
                size_of::<SchedAttr>() as u32,
                0u32,
            )
        };
        if rc != 0 {
            return Err(self.os_err("sched_getattr"));
        }
        Ok(Deadline {
            runtime_ns: attr.runtime,
            deadline_ns: attr.deadline,
            period_ns: attr.period,
        })
    }

    /// Makes the task a deadline task with `d` (subject to the kernel's admission control).
    pub fn set_deadline(&self, d: &Deadline) -> Result<(), ActError> {
        let attr = SchedAttr {
            size: size_of::<SchedAttr>() as u32,
            policy: SCHED_DEADLINE as u32,
            runtime: d.runtime_ns,
            deadline: d.deadline_ns,
            period: d.period_ns,
            ..SchedAttr::default()
        };
        // SAFETY: sched_setattr(tid, attr, 0) reads `attr.size` bytes of a valid sched_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                self.pid as libc::pid_t,
                &attr as *const SchedAttr,
                0u32,
            )
        };
        if rc != 0 {
            return Err(self.os_err("sched_setattr"));
        }
        Ok(())
    }
}

impl Actuators {
    /// Demotes `task` to SCHED_OTHER if it is a real-time or deadline task, its class
    /// journaled first; the class it had, in words, if it was demoted.
    pub(super) fn demote(&mut self, task: &Proc) -> Result<Option<String>, ActError> {
        let (policy, priority) = match task.scheduler() {
            Ok(p) => p,
            Err(ActError::Vanished { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !is_real_time(policy) {
            return Ok(None);
        }
        let deadline = if class(policy) == SCHED_DEADLINE {
            Some(task.deadline()?)
        } else {
            None
        };
        self.journal().record(&Entry::Scheduler {
            pid: task.pid,
            start: task.start,
            policy,
            priority,
            deadline,
        })?;
        let set = task.set_scheduler(libc::SCHED_OTHER, 0);
        super::fault::at_kind("scheduler", super::fault::Step::Applied);
        match set {
            Ok(()) => Ok(Some(name(policy, priority))),
            Err(ActError::Vanished { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Actuators {
    /// Real-time threads of cgroup `rel` (and below) pinned to the `trading` cores alone,
    /// demoted before the cgroup's cpuset is narrowed to the housekeeping cores: the kernel
    /// would move them there at their class, where they would starve the keeper's loop, sshd
    /// and the VMs' I/O threads (the cpuset, not an eviction, moves them: nothing else
    /// demotes them). Nothing with `rules.intruders.real_time: keep`.
    pub(super) fn demote_pinned_in(
        &mut self,
        rel: &str,
        trading: &CpuList,
    ) -> Result<Effect, ActError> {
        let what = format!(
            "real-time threads of /{} pinned to the trading cores",
            normalize(rel)
        );
        if self.dry_run || !self.demote_real_time {
            return Ok(Effect::Unchanged(format!("{what}: kept as they are")));
        }
        let cgroup = normalize(rel);
        let (mut demoted, mut was) = (0, None);
        for tid in super::affinity::user_threads(|_, cg| under(cg, &cgroup)) {
            let Ok(task) = Proc::open_thread(tid, None) else {
                continue;
            };
            let pinned = task
                .affinity()
                .is_ok_and(|a| !a.is_empty() && a.difference(trading).is_empty());
            if pinned && let Some(class) = self.demote(&task)? {
                demoted += 1;
                was.get_or_insert(class);
            }
        }
        Ok(match was {
            None => Effect::Unchanged(format!("{what}: none")),
            Some(class) => Effect::Done(format!(
                "demoted {demoted} {what} (from {class}) to SCHED_OTHER before its cpuset moves them to the housekeeping cores, until the exit"
            )),
        })
    }
}

impl Actuators {
    /// Process `pid` (started at `start`), moved off the trading cores a moment ago: those of
    /// its threads that turned real-time since (a `chrt` after the move) demoted, journaled
    /// (the exit gives the class back). On the housekeeping cores at SCHED_FIFO 99 such a
    /// task starved the keeper's loop and its rescuer there (the bench's first all-at-once
    /// row: the keeper stalled 12 s). What it said, if any was demoted.
    pub fn demote_if_turned_real_time(
        &mut self,
        pid: u32,
        start: u64,
    ) -> Result<Option<String>, ActError> {
        if self.dry_run || !self.demote_real_time {
            return Ok(None);
        }
        // The number still names the process that was moved (its start time), then its
        // threads (each with a start time of its own).
        if Proc::open(pid, Some(start)).is_err() {
            return Ok(None);
        }
        let mut was = None;
        for tid in super::process::threads(pid) {
            let Ok(task) = Proc::open_thread(tid, None) else {
                continue;
            };
            if let Some(class) = self.demote(&task)? {
                was.get_or_insert(class);
            }
        }
        Ok(was.map(|class| {
            format!("pid {pid} turned {class} on the housekeeping cores after its eviction: demoted to SCHED_OTHER until its CPUs are given back")
        }))
    }
}

/// Puts a task's journaled class back.
pub(super) fn restore(
    pid: u32,
    start: u64,
    policy: i32,
    priority: i32,
    deadline: Option<&Deadline>,
) -> Result<Option<String>, ActError> {
    let task = match Proc::open_thread(pid, Some(start)) {
        Ok(t) => t,
        Err(ActError::Vanished { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let set = match deadline {
        Some(d) => task.set_deadline(d),
        None => task.set_scheduler(policy, priority),
    };
    match set {
        Ok(()) => Ok(Some(format!(
            "pid {pid} back to its scheduling class {}",
            name(policy, priority)
        ))),
        Err(ActError::Vanished { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A class in words: `SCHED_FIFO 10`, `SCHED_DEADLINE`, `SCHED_OTHER`.
pub fn name(policy: i32, priority: i32) -> String {
    match class(policy) {
        libc::SCHED_FIFO => format!("SCHED_FIFO {priority}"),
        libc::SCHED_RR => format!("SCHED_RR {priority}"),
        SCHED_DEADLINE => "SCHED_DEADLINE".into(),
        libc::SCHED_BATCH => "SCHED_BATCH".into(),
        libc::SCHED_IDLE => "SCHED_IDLE".into(),
        _ => "SCHED_OTHER".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_classes_are_fifo_rr_and_deadline_with_or_without_reset_on_fork() {
        assert!(is_real_time(libc::SCHED_FIFO));
        assert!(is_real_time(libc::SCHED_RR | libc::SCHED_RESET_ON_FORK));
        assert!(is_real_time(SCHED_DEADLINE));
        for p in [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE] {
            assert!(!is_real_time(p));
        }
        assert_eq!(
            name(libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, 99),
            "SCHED_RR 99"
        );
        assert_eq!(size_of::<SchedAttr>(), 48);
    }
}

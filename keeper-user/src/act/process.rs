//! Processes as the keeper touches them: through a pidfd (so a reused pid is never hit), with
//! their start time to recognise them later; SIGSTOP/SIGCONT of process trees; CPU affinity.

use std::{
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::ActError;
use crate::{cpulist::CpuList, device::procfs};

/// A live process or thread, pinned by a pidfd where the kernel gives one.
pub struct Proc {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/<pid>/stat field 22).
    pub start: u64,
    /// A kernel thread (`PF_KTHREAD`), as read with its start time.
    pub kernel_thread: bool,
    /// `None`: a thread (not its process's leader) on a kernel before 6.9, which has no
    /// pidfds for threads, or a task vouched for by a recent event (`seen_ns`); it is known
    /// by its number and start time only.
    fd: Option<OwnedFd>,
    /// The instant (CLOCK_MONOTONIC ns) of the event that vouches for the number, when the
    /// task was opened as one ([`Proc::vouched`]).
    seen_ns: Option<u64>,
}

/// `pidfd_open` flag for a thread's own pidfd (Linux 6.9+; `O_EXCL`).
const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;

/// `pidfd_open(pid, flags)`: the descriptor, or the errno.
fn pidfd_open(pid: u32, flags: libc::c_long) -> Result<OwnedFd, io::Error> {
    // SAFETY: pidfd_open(pid, flags) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Thread `tid`'s own pidfd (6.9+); on older kernels its process's when it is the leader, else
/// none (known by number and start time).
fn thread_pidfd(tid: u32) -> Result<Option<OwnedFd>, ActError> {
    match pidfd_open(tid, PIDFD_THREAD) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(ActError::Vanished { pid: tid }),
        // EINVAL: a kernel without PIDFD_THREAD.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(pidfd_open(tid, 0).ok()),
        Err(e) => Err(ActError::Process {
            pid: tid,
            op: "pidfd_open",
            source: e,
        }),
    }
}

impl Proc {
    /// Opens a pidfd on process `pid`, then reads its start time. `expected_start` (from a
    /// journal) refuses a pid that now names another process.
    pub fn open(pid: u32, expected_start: Option<u64>) -> Result<Proc, ActError> {
        let fd = pidfd_open(pid, 0).map_err(|e| match e.raw_os_error() {
            // ENOENT (6.9+): not a process's leader any more, or its leader exited.
            Some(libc::ESRCH | libc::ENOENT) => ActError::Vanished { pid },
            _ => ActError::Process {
                pid,
                op: "pidfd_open",
                source: e,
            },
        })?;
        Proc::started(pid, Some(fd), expected_start)
    }

    /// Opens thread `tid` of any process (for its affinity): its own pidfd on 6.9+; on older
    /// kernels a thread that is not its process's leader has none and is known by number and
    /// start time (read before and after each change, see [`Proc::still_same`]).
    pub fn open_thread(tid: u32, expected_start: Option<u64>) -> Result<Proc, ActError> {
        let fd = thread_pidfd(tid)?;
        Proc::started(tid, fd, expected_start)
    }

    /// Thread `tid`, known to have started at `start` and not to be a kernel thread (the
    /// programs read both from the task at its event, at `seen_ns`), while
    /// [`names_same_task_since`] vouches for its number: no read of /proc and no pidfd (the
    /// number cannot name another task within that window; [`Proc::still_same`] asks the
    /// window again after a change). `None` once the window has passed.
    pub fn vouched(tid: u32, start: u64, seen_ns: u64) -> Option<Proc> {
        names_same_task_since(seen_ns).then_some(Proc {
            pid: tid,
            start,
            kernel_thread: false,
            fd: None,
            seen_ns: Some(seen_ns),
        })
    }

    fn started(pid: u32, fd: Option<OwnedFd>, expected: Option<u64>) -> Result<Proc, ActError> {
        let stat = procfs::task_stat(pid).ok_or(ActError::Vanished { pid })?;
        if expected.is_some_and(|s| s != stat.start) {
            return Err(ActError::Vanished { pid });
        }
        Ok(Proc {
            pid,
            start: stat.start,
            kernel_thread: stat.is_kernel_thread(),
            fd,
            seen_ns: None,
        })
    }

    /// Whether the number still names the task opened: it has not exited (its pidfd does not
    /// poll readable: a live task's number cannot be given to another), or its event still
    /// vouches for the number, else the same start time (a task known by number only, or one
    /// that exited: its number may be reused).
    pub fn still_same(&self) -> bool {
        if self.seen_ns.is_some_and(names_same_task_since) {
            return true;
        }
        if let Some(fd) = &self.fd {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own, without waiting.
            if unsafe { libc::poll(&mut p, 1, 0) } == 0 {
                return true;
            }
        }
        start_time(self.pid) == Some(self.start)
    }

    /// Sends a signal through the pidfd.
    pub fn signal(&self, sig: i32) -> Result<(), ActError> {
        let Some(fd) = &self.fd else {
            return Err(ActError::Process {
                pid: self.pid,
                op: "pidfd_send_signal",
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        };
        // SAFETY: pidfd_send_signal on our own pidfd with a null siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ESRCH) {
                ActError::Vanished { pid: self.pid }
            } else {
                ActError::Process {
                    pid: self.pid,
                    op: "pidfd_send_signal",
                    source: e,
                }
            });
        }
        Ok(())
    }

    /// The CPUs the task may run on.
    pub fn affinity(&self) -> Result<CpuList, ActError> {
        // SAFETY: zeroed cpu_set_t, filled by the kernel.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::sched_getaffinity(self.pid as i32, size_of::<libc::cpu_set_t>(), &mut set)
        };
        if rc != 0 {
            return Err(self.os_err("sched_getaffinity"));
        }
        let max = keeper_common::MAX_CPUS.min(libc::CPU_SETSIZE as u32);
        // SAFETY: CPU_ISSET reads the set we own.
        Ok(CpuList::new(
            (0..max).filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) }),
        ))
    }

    /// Restricts the task (this thread id) to `cpus`.
    pub fn set_affinity(&self, cpus: &CpuList) -> Result<(), ActError> {
        // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in cpus.iter() {
            unsafe { libc::CPU_SET(c as usize, &mut set) };
        }
        let rc =
            unsafe { libc::sched_setaffinity(self.pid as i32, size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            return Err(self.os_err("sched_setaffinity"));
        }
        Ok(())
    }

    /// The task's scheduling policy and real-time priority (`SCHED_OTHER` is 0, priority 0).
    pub fn scheduler(&self) -> Result<(i32, i32), ActError> {
        // SAFETY: plain syscalls on a thread id, `param` filled by the kernel.
        let policy = unsafe { libc::sched_getscheduler(self.pid as i32) };
        if policy < 0 {
            return Err(self.os_err("sched_getscheduler"));
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        if unsafe { libc::sched_getparam(self.pid as i32, &mut param) } != 0 {
            return Err(self.os_err("sched_getparam"));
        }
        Ok((policy, param.sched_priority))
    }

    /// Sets the task's scheduling policy and real-time priority.
    pub fn set_scheduler(&self, policy: i32, priority: i32) -> Result<(), ActError> {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: sched_setscheduler on a thread id with a valid param.
        if unsafe { libc::sched_setscheduler(self.pid as i32, policy, &param) } != 0 {
            return Err(self.os_err("sched_setscheduler"));
        }
        Ok(())
    }

    pub(super) fn os_err(&self, op: &'static str) -> ActError {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            ActError::Vanished { pid: self.pid }
        } else {
            ActError::Process {
                pid: self.pid,
                op,
                source: e,
            }
        }
    }
}

/// Start time of a process in clock ticks since boot; `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    procfs::task_stat(pid).map(|s| s.start)
}

/// How long after a task's event its number surely still names it: a number comes back
/// only once the allocator has gone round every free number (`alloc_pid` allocates
/// cyclically), and with ≥ 32768 of them no host forks that often in 10 ms (3.2 million
/// forks a second; a fork takes tens of microseconds). Kept to that where `pid_max` allows.
const SAME_TASK_WINDOW_NS: u64 = 10_000_000;

/// Whether a task seen at `seen_ns` (CLOCK_MONOTONIC) is surely still the one its number
/// names (see [`SAME_TASK_WINDOW_NS`]); false where `pid_max` is under 32768.
pub fn names_same_task_since(seen_ns: u64) -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let wide = *WIDE.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .is_some_and(|max| max >= 32768)
    });
    let age = crate::device::clock::monotonic_ns().saturating_sub(seen_ns);
    wide && age < SAME_TASK_WINDOW_NS
}

/// Every process on the host (the numeric entries of /proc).
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub use crate::device::vcpus::threads;

/// `root` and all its descendants, parents before children (from /proc/*/stat ppid).
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(s) = procfs::task_stat(pid) {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_a_start_time_and_a_pidfd() {
        let me = std::process::id();
        let p = Proc::open(me, None).unwrap();
        assert_eq!(Some(p.start), start_time(me));
        assert!(matches!(
            Proc::open(me, Some(p.start + 1)),
            Err(ActError::Vanished { .. })
        ));
        assert!(!p.affinity().unwrap().is_empty());
        assert!(tree(me).contains(&me));
    }

    #[test]
    fn a_thread_that_does_not_lead_its_process_is_opened_for_its_affinity() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = end_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let t = Proc::open_thread(tid, None).unwrap();
        assert!(t.still_same());
        let cpus = t.affinity().unwrap();
        t.set_affinity(&cpus).unwrap();
        assert!(matches!(
            Proc::open_thread(tid, Some(t.start + 1)),
            Err(ActError::Vanished { .. })
        ));
        drop(end_tx);
        thread.join().unwrap();
    }

    #[test]
    fn a_recent_event_vouches_for_a_number_without_a_pidfd_and_an_old_one_does_not() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let now = crate::device::clock::monotonic_ns();
        let t = Proc::vouched(me, start, now).unwrap();
        assert!(t.fd.is_none() && !t.kernel_thread);
        assert!(t.still_same());
        t.set_affinity(&t.affinity().unwrap()).unwrap();
        assert!(Proc::vouched(me, start, now.saturating_sub(SAME_TASK_WINDOW_NS + 1)).is_none());
    }

    #[test]
    fn a_vanished_pid_is_an_error_not_a_panic() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(Proc::open(pid, None), Err(ActError::Vanished { pid: p }) if p == pid));
    }
}

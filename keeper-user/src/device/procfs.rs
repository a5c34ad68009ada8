//! What /proc says about a task (the one parser of `/proc/<pid>/stat`: comm, state, parent,
//! kernel-thread flag, run time, start time, last CPU) and the host's totals.

use std::fs;

use crate::cpulist::CpuList;

/// `PF_KTHREAD` in /proc/<pid>/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Fields of /proc/<pid>/stat that the keeper uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStat {
    pub comm: String,
    /// `R`, `S`, `D`, `T`, ...
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub start: u64,
    /// The CPU it last ran on (`processor`, field 39).
    pub processor: Option<u32>,
}

impl TaskStat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses the text of /proc/<pid>/stat (comm may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<TaskStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the comm, starting at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(TaskStat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: u32::try_from(field(4)?).ok()?,
        flags: field(9)?,
        cpu_ticks: field(14)? + field(15)?,
        start: field(22)?,
        processor: field(39).and_then(|c| u32::try_from(c).ok()),
    })
}

/// Tasks runnable on one of `cpus` now (state `R`, /proc's `processor` field), not kernel
/// threads: what a trading core's run queue holds, read when events were lost.
pub fn runnable_on(cpus: &CpuList) -> Vec<(u32, String, u32)> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
                continue;
            };
            if let Some(s) = parse_stat(&text)
                && let Some(cpu) = s.processor
                && s.state == 'R'
                && !s.is_kernel_thread()
                && cpus.contains(cpu)
            {
                out.push((tid, s.comm, cpu));
            }
        }
    }
    out
}

/// Reads /proc/<pid>/stat; `None` when the task is gone.
pub fn task_stat(pid: u32) -> Option<TaskStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Now, in clock ticks since boot: the unit and clock of a task's start time.
pub fn now_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    super::clock::ns(libc::CLOCK_BOOTTIME) / (1_000_000_000 / hz)
}

/// Whether a task that started at `start` (clock ticks since boot, `/proc/<pid>/stat`) began
/// after `event_ns` (CLOCK_MONOTONIC, the eBPF events' clock): then its pid was reused since
/// the event, and the event was about another task. The start is rounded down to its tick, so
/// "after" is never a guess; a reuse within the same tick (10 ms) is not told apart.
pub fn started_after(start: u64, event_ns: u64) -> bool {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let (boot, mono) = (
        super::clock::ns(libc::CLOCK_BOOTTIME),
        super::clock::monotonic_ns(),
    );
    // Boot time runs ahead of the monotonic clock by the time spent suspended.
    let suspended = boot.saturating_sub(mono);
    let start_ns = (start * (1_000_000_000 / hz)).saturating_sub(suspended);
    // 1 ms for the two clock reads above not being one instant.
    start_ns > event_ns + 1_000_000
}

/// A task's `start_boottime` (ns, as the kernel keeps it) in /proc's start-time unit (clock
/// ticks since boot), the way /proc/PID/stat converts it (`nsec_to_clock_t`).
pub fn boottime_to_ticks(ns: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ns / (1_000_000_000 / hz)
}

/// Whether `tid` is one of this process's own threads (the keeper never evicts itself).
pub fn is_own_thread(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Total run time of a task, in nanoseconds, from /proc/<pid>/schedstat.
pub fn run_time_ns(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The cgroup v2 path of a task ("0::/a/b" in /proc/<pid>/cgroup), without the leading slash.
pub fn task_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| super::cgroupfs::normalize(p.trim()))
}

/// Host totals that percentages in actions refer to.
#[derive(Clone, Copy, Debug)]
pub struct HostTotals {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostTotals {
    pub fn read() -> Self {
        let cpus = CpuList::online()
            .map(|c| c.len() as u32)
            .unwrap_or(1)
            .max(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        Self { cpus, memory_bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_started_after_an_event_is_told_apart() {
        let me = task_stat(std::process::id()).unwrap();
        let now = crate::device::clock::monotonic_ns();
        // This process existed at `now`; it did not at the boot's first millisecond.
        assert!(!started_after(me.start, now));
        assert!(started_after(me.start, 0));
        // A child started now, against an event a moment ago (its pid could be a reused one).
        let mut child = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        let start = task_stat(child.id()).unwrap().start;
        assert!(started_after(start, now.saturating_sub(2_000_000_000)));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let text = "42 (a b) c) R 1 42 42 0 -1 2097216 0 0 0 0 7 3 0 0 20 0 1 0 100 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.comm, "a b) c");
        assert_eq!(s.state, 'R');
        assert_eq!(s.flags, 2097216);
        assert!(s.is_kernel_thread());
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!((s.ppid, s.start, s.processor), (1, 100, None));
    }

    #[test]
    fn our_running_thread_is_on_a_run_queue() {
        let me = unsafe { libc::gettid() } as u32;
        let online = crate::cpulist::CpuList::online().unwrap();
        // Spin a little so that this thread is running (`R`) when /proc is read.
        let found = (0..50).any(|_| runnable_on(&online).iter().any(|(tid, _, _)| *tid == me));
        assert!(found, "thread {me} not found runnable on {online}");
    }
}

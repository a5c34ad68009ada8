//! Types shared by the kernel side (`keeper-ebpf`) and userspace (`keeper-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the eBPF programs write it into maps and the ring
//! buffer, userspace reads it back byte for byte. Change a layout here and both sides change with it.
#![cfg_attr(not(test), no_std)]

/// Highest CPU number + 1 that the trading-core mask can name.
pub const MAX_CPUS: u32 = 256;
/// 64-bit words of a mask of [`MAX_CPUS`] CPUs.
pub const CPU_MASK_WORDS: usize = MAX_CPUS as usize / 64;
/// The latency histograms are log-linear (as HdrHistogram's): in units of
/// 2^[`HIST_UNIT_SHIFT`] ns (128 ns), the first [`HIST_SUB`] buckets one unit wide (0–2 µs),
/// then each power of two cut into [`HIST_SUB`] equal sub-buckets, so that a bucket is at most
/// 1/16 (6.25 %) of its lower bound wide; the last one (from 1.04 s) also holds everything
/// above. See [`latency_bucket`] and [`bucket_low_ns`].
pub const HIST_UNIT_SHIFT: u32 = 7;
/// log2 of [`HIST_SUB`].
pub const HIST_SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
pub const HIST_SUB: usize = 1 << HIST_SUB_BITS;
/// Powers of two above the first [`HIST_SUB`] units: up to 2^(4 + 19) units = 2^30 ns.
pub const HIST_OCTAVES: usize = 19;
/// Buckets of a latency histogram.
pub const HIST_BUCKETS: usize = HIST_SUB * (HIST_OCTAVES + 1);
/// Latency classes: tasks in a protected cgroup, and everybody else.
pub const CLASS_PROTECTED: usize = 0;
pub const CLASS_OTHER: usize = 1;
pub const CLASSES: usize = 2;
/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Tracepoint field offsets, read by userspace from tracefs `events/sched/*/format` and handed
/// to the programs as read-only globals, so one object loads on every kernel without CO-RE.
pub mod globals {
    /// `sched_wakeup`: offset of `pid` and `target_cpu`.
    pub const WAKEUP_PID_OFF: &str = "WAKEUP_PID_OFF";
    pub const WAKEUP_CPU_OFF: &str = "WAKEUP_CPU_OFF";
    /// `sched_wakeup_new`: offset of `pid` and `target_cpu`.
    pub const WAKEUP_NEW_PID_OFF: &str = "WAKEUP_NEW_PID_OFF";
    pub const WAKEUP_NEW_CPU_OFF: &str = "WAKEUP_NEW_CPU_OFF";
    /// `sched_switch`: offsets of `prev_comm`, `prev_pid`, `prev_state`, `next_pid`.
    pub const SWITCH_PREV_COMM_OFF: &str = "SWITCH_PREV_COMM_OFF";
    pub const SWITCH_PREV_PID_OFF: &str = "SWITCH_PREV_PID_OFF";
    pub const SWITCH_PREV_STATE_OFF: &str = "SWITCH_PREV_STATE_OFF";
    pub const SWITCH_NEXT_PID_OFF: &str = "SWITCH_NEXT_PID_OFF";
    /// `sched_switch`: offset of `next_comm`.
    pub const SWITCH_NEXT_COMM_OFF: &str = "SWITCH_NEXT_COMM_OFF";
    /// Offset of `flags` in `struct task_struct`, from the kernel's BTF (0: unknown, and then
    /// no task is taken for a kernel thread in the kernel; userspace checks /proc).
    pub const TASK_FLAGS_OFF: &str = "TASK_FLAGS_OFF";
    /// The incoming task's fields for `keeper_arrive` (raw `sched_switch`, which hands over
    /// the `next` task pointer), from the kernel's BTF: `task_struct.pid`, `.comm`,
    /// `.cgroups`, then `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id` (its cgroup v2 id).
    pub const TASK_PID_OFF: &str = "TASK_PID_OFF";
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    pub const TASK_COMM_OFF: &str = "TASK_COMM_OFF";
    pub const TASK_CGROUPS_OFF: &str = "TASK_CGROUPS_OFF";
    /// `task_struct.start_boottime`: who the newcomer is, without a read of /proc.
    pub const TASK_START_BOOTTIME_OFF: &str = "TASK_START_BOOTTIME_OFF";
    /// `task_struct.cpus_mask`: the newcomer's CPUs, so that its eviction journals them
    /// without asking the kernel first (0: unknown, and userspace asks).
    pub const TASK_CPUS_MASK_OFF: &str = "TASK_CPUS_MASK_OFF";
    pub const CSS_SET_DFL_CGRP_OFF: &str = "CSS_SET_DFL_CGRP_OFF";
    pub const CGROUP_KN_OFF: &str = "CGROUP_KN_OFF";
    pub const KERNFS_NODE_ID_OFF: &str = "KERNFS_NODE_ID_OFF";
    /// 1: `keeper_arrive` reports arrivals (with the newcomer's cgroup id, kernel threads
    /// and protected tasks left out); 0: `keeper_switch` does (cgroup unknown there).
    pub const ARRIVALS_BY_TASK: &str = "ARRIVALS_BY_TASK";
    /// The keeper's own process id: its eviction thread runs on the trading cores (it is
    /// woken there by an intruder's arrival), and is no intruder; its time is `keeper_ns`.
    pub const KEEPER_TGID: &str = "KEEPER_TGID";
    /// Minimum time between two intruder events for the same pid, in nanoseconds.
    pub const INTRUDER_EVENT_INTERVAL_NS: &str = "INTRUDER_EVENT_INTERVAL_NS";
    /// Offset of `pid` in oom:mark_victim.
    pub const OOM_VICTIM_PID_OFF: &str = "OOM_VICTIM_PID_OFF";
    /// `irq:irq_handler_exit`: offset of `irq`; `irq:softirq_exit`: offset of `vec` (0:
    /// unknown, and the noise programs stay detached).
    pub const IRQ_EXIT_IRQ_OFF: &str = "IRQ_EXIT_IRQ_OFF";
    pub const SOFTIRQ_VEC_OFF: &str = "SOFTIRQ_VEC_OFF";
}

/// Names of the maps in the object, as userspace looks them up.
pub mod maps {
    /// `Array<u8>` indexed by CPU: 1 = trading core.
    pub const TRADING_CPUS: &str = "TRADING_CPUS";
    /// `HashMap<u64, u8>`: cgroup v2 ids whose tasks are protected.
    pub const PROTECTED_CGROUPS: &str = "PROTECTED_CGROUPS";
    /// `PerCpuArray<CpuStats>` with one entry: each CPU's counters.
    pub const CPU_STATS: &str = "CPU_STATS";
    /// `LruHashMap<u32, IntruderTotal>`: run time on trading cores per intruding pid.
    pub const INTRUDER_TOTALS: &str = "INTRUDER_TOTALS";
    /// `LruHashMap<u32, u64>`: when a task became runnable for a trading core, by pid.
    pub const RUNNABLE_SINCE: &str = "RUNNABLE_SINCE";
    /// `RingBuf` of `IntruderEvent`.
    pub const INTRUDER_EVENTS: &str = "INTRUDER_EVENTS";
    /// `LruHashMap<u32, u64>`: pids already switched in on a trading core (their arrival was
    /// reported), with the cgroup id they had then (`keeper_arrive`: a task that has moved to
    /// another cgroup since is news again, as a launcher's child moved after its fork is).
    /// Userspace removes an evicted pid, so that its return is news at once.
    pub const SEEN_PIDS: &str = "SEEN_PIDS";
    /// `HashMap<u32, u64>`: when a task entered direct reclaim, by pid.
    pub const RECLAIM_START: &str = "RECLAIM_START";
    /// `LruHashMap<u64, ReclaimStats>`: direct-reclaim stalls per cgroup v2 id.
    pub const RECLAIM_STATS: &str = "RECLAIM_STATS";
    /// `RingBuf` of `OomEvent`.
    pub const OOM_EVENTS: &str = "OOM_EVENTS";
    /// `PerCpuHashMap<u32, NoiseTotal>`: hard IRQ time on the trading cores, by IRQ number.
    pub const NOISE_IRQ: &str = "NOISE_IRQ";
    /// `PerCpuArray<NoiseTotal>` indexed by softirq vector: net softirq time on the trading
    /// cores (hard IRQs that interrupted it subtracted, as the osnoise tracer counts).
    pub const NOISE_SOFTIRQ: &str = "NOISE_SOFTIRQ";
}

/// Names of the programs in the object (at most 15 characters: the kernel's limit).
pub mod programs {
    pub const WAKEUP: &str = "keeper_wakeup";
    pub const WAKEUP_NEW: &str = "keeper_wake_new";
    pub const SWITCH: &str = "keeper_switch";
    /// perf_event (CPU clock) on each trading core: reports a running intruder.
    pub const SAMPLE: &str = "keeper_sample";
    /// raw_tracepoint sched_switch: a newcomer on a trading core, read from its task.
    pub const ARRIVE: &str = "keeper_arrive";
    /// raw_tracepoint cgroup_attach_task: a task that moved itself while on a trading core.
    pub const JOINED: &str = "keeper_joined";
    pub const ALL: [&str; 6] = [WAKEUP, WAKEUP_NEW, SWITCH, SAMPLE, ARRIVE, JOINED];
    /// vmscan:mm_vmscan_direct_reclaim_begin / _end, oom:mark_victim.
    pub const RECLAIM_BEGIN: &str = "keeper_rcl_begin";
    pub const RECLAIM_END: &str = "keeper_rcl_end";
    pub const OOM_VICTIM: &str = "keeper_oom";
    pub const MEMORY: [&str; 3] = [RECLAIM_BEGIN, RECLAIM_END, OOM_VICTIM];
    /// irq:irq_handler_entry / _exit, irq:softirq_entry / _exit: kernel noise on the
    /// trading cores, by name.
    pub const IRQ_ENTRY: &str = "keeper_irq_in";
    pub const IRQ_EXIT: &str = "keeper_irq_out";
    pub const SOFTIRQ_ENTRY: &str = "keeper_sirq_in";
    pub const SOFTIRQ_EXIT: &str = "keeper_sirq_out";
    /// Each with its tracepoint (category `irq`).
    pub const NOISE: [(&str, &str); 4] = [
        (IRQ_ENTRY, "irq_handler_entry"),
        (IRQ_EXIT, "irq_handler_exit"),
        (SOFTIRQ_ENTRY, "softirq_entry"),
        (SOFTIRQ_EXIT, "softirq_exit"),
    ];
}

/// Softirq vectors (`NR_SOFTIRQS`, include/linux/interrupt.h; the same since 4.x), named as
/// /proc/softirqs names them.
pub const SOFTIRQ_NAMES: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

/// Interrupt time on the trading cores of one IRQ line or softirq vector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoiseTotal {
    /// Net time in the handler (ns).
    pub ns: u64,
    /// Handler runs.
    pub count: u64,
    /// The longest run (ns).
    pub max_ns: u64,
}

/// Direct-reclaim stalls of one cgroup: a log2 histogram of their durations (µs buckets, as
/// the latency histograms), their count and total time.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReclaimStats {
    pub hist: [u64; HIST_BUCKETS],
    pub count: u64,
    pub total_ns: u64,
}

/// The OOM killer chose a victim (oom:mark_victim). `cgroup_id` and `comm` are those of the
/// task that ran the OOM killer (the one whose allocation failed, in the victim's memory cgroup
/// for a cgroup OOM); the victim's own name is read from /proc by userspace while it dies.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub victim_pid: u32,
    pub killer_pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Per-CPU counters kept by the scheduler programs. Only trading cores fill them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuStats {
    /// Run-queue latency histograms, `[class][bucket]`, see [`HIST_BUCKETS`].
    pub hist: [[u64; HIST_BUCKETS]; CLASSES],
    /// Largest latency seen per class, in nanoseconds.
    pub max_ns: [u64; CLASSES],
    /// Time the idle task ran.
    pub idle_ns: u64,
    /// Time kernel threads ran (`PF_KTHREAD`: kworker/N, ksoftirqd/N, migration/N, ...).
    pub kernel_ns: u64,
    /// Time tasks in protected cgroups ran.
    pub protected_ns: u64,
    /// Time every other task ran: the intruders.
    pub intruder_ns: u64,
    /// Time the keeper's own threads ran (its eviction thread, woken on the trading core by
    /// an arrival).
    pub keeper_ns: u64,
    /// Context switches seen on this CPU.
    pub switches: u64,
    /// Intruder events written to the ring buffer.
    pub events_sent: u64,
    /// Intruder events dropped because the ring buffer was full.
    pub events_lost: u64,
}

impl CpuStats {
    pub const fn zeroed() -> Self {
        Self {
            hist: [[0; HIST_BUCKETS]; CLASSES],
            max_ns: [0; CLASSES],
            idle_ns: 0,
            kernel_ns: 0,
            protected_ns: 0,
            intruder_ns: 0,
            keeper_ns: 0,
            switches: 0,
            events_sent: 0,
            events_lost: 0,
        }
    }
}

/// Run time of one intruding pid on the trading cores.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IntruderTotal {
    pub ran_ns: u64,
    pub cgroup_id: u64,
    /// When the last ring-buffer event for this pid was sent (the rate limit).
    pub last_event_ns: u64,
    pub tgid: u32,
    pub last_cpu: u32,
    pub comm: [u8; COMM_LEN],
}

/// What an [`IntruderEvent`] reports.
pub mod event {
    /// A slice of an intruder's run (its switch-out, or the sampler), rate-limited per pid.
    pub const SLICE: u32 = 0;
    /// A task's first switch-in on a trading core (its cgroup is not known in the kernel
    /// then: `cgroup_id` is 0 and userspace reads /proc). Once per pid until userspace
    /// forgets it (after an eviction).
    pub const ARRIVAL: u32 = 1;
    /// A fork whose child was placed on a trading core (`sched_wakeup_new`): `pid` is the
    /// child, `cgroup_id` its parent's, which the child inherits.
    pub const FORK: u32 = 2;
}

/// A task seen on a trading core, sent on the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IntruderEvent {
    /// `bpf_ktime_get_ns()` when the programs saw it (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// cgroup v2 id; 0 for an [`event::ARRIVAL`] from the classic tracepoint.
    pub cgroup_id: u64,
    /// How long this slice has run: to its switch-out, or so far when the sampler saw it.
    pub ran_ns: u64,
    /// The task's `start_boottime` (ns; what /proc's start time is made of), read from the
    /// task at an arrival by `keeper_arrive`; 0: not read.
    pub start_boottime_ns: u64,
    /// The task's CPUs (`task_struct.cpus_mask`, its first [`MAX_CPUS`] bits, as
    /// `sched_getaffinity` would give them before it drops offline CPUs), read from the task
    /// at an arrival by `keeper_arrive`; all 0: not read.
    pub cpus_mask: [u64; CPU_MASK_WORDS],
    pub pid: u32,
    pub tgid: u32,
    pub cpu: u32,
    /// One of [`event`].
    pub kind: u32,
    pub comm: [u8; COMM_LEN],
}

/// `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h; the same since 2.6).
pub const PF_KTHREAD: u32 = 0x0020_0000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data, every bit pattern valid, no padding holes read as refs.
    unsafe impl aya::Pod for super::CpuStats {}
    unsafe impl aya::Pod for super::IntruderTotal {}
    unsafe impl aya::Pod for super::IntruderEvent {}
    unsafe impl aya::Pod for super::ReclaimStats {}
    unsafe impl aya::Pod for super::OomEvent {}
    unsafe impl aya::Pod for super::NoiseTotal {}
}

/// Index of the log-linear bucket for a latency in nanoseconds (shared so both sides agree):
/// a shift, a count of leading zeros and a mask.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let v = ns >> HIST_UNIT_SHIFT;
    if v < HIST_SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = ((v >> (msb - HIST_SUB_BITS)) as usize) & (HIST_SUB - 1);
    let b = (msb - HIST_SUB_BITS + 1) as usize * HIST_SUB + sub;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// The lowest latency (ns) bucket `b` holds; it holds up to the next bucket's lower bound
/// (the last one: without bound).
pub const fn bucket_low_ns(b: usize) -> u64 {
    if b < HIST_SUB {
        return (b as u64) << HIST_UNIT_SHIFT;
    }
    let msb = (b / HIST_SUB) as u32 + HIST_SUB_BITS - 1;
    let sub = (b % HIST_SUB) as u64;
    ((HIST_SUB as u64 + sub) << (msb - HIST_SUB_BITS)) << HIST_UNIT_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every latency lands in the bucket whose bounds hold it, and every bucket from 2 µs on is
    /// at most 1/16 of its lower bound wide.
    #[test]
    fn log_linear_buckets_hold_their_latencies_within_one_sixteenth() {
        for b in 0..HIST_BUCKETS {
            let (low, high) = (bucket_low_ns(b), bucket_low_ns(b + 1));
            assert!(low < high, "bucket {b}");
            assert_eq!(latency_bucket(low), b, "{low} ns");
            if b + 1 < HIST_BUCKETS {
                assert_eq!(latency_bucket(high - 1), b, "{} ns", high - 1);
            }
            if b >= HIST_SUB {
                assert!((high - low) * 16 <= low, "bucket {b}: {low}..{high}");
            } else {
                assert_eq!(high - low, 1 << HIST_UNIT_SHIFT);
            }
        }
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(
            latency_bucket(65_000),
            latency_bucket(bucket_low_ns(latency_bucket(65_000)))
        );
        assert_eq!(bucket_low_ns(HIST_BUCKETS - 1), 1_040_187_392); // 31 × 2^18 units
        assert_eq!(latency_bucket(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(latency_bucket(60_000_000_000), HIST_BUCKETS - 1);
    }
}

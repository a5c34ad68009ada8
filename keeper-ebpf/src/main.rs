//! The Keeper's scheduler sensor: run-queue latency and intruders on the trading cores.
//!
//! Classic tracepoints only (sched_wakeup, sched_wakeup_new, sched_switch). Field offsets are
//! read-only globals that userspace fills from tracefs before loading, so this one object loads on
//! any kernel that has these tracepoints, without CO-RE.
//!
//! - wakeup → on-CPU latency: a wakeup aimed at a trading core stores its timestamp; when the task
//!   is switched in on a trading core the delay is kept as a pending sample, and filed into the
//!   protected or other histogram when the task switches out (only then is its cgroup known, as
//!   `bpf_get_current_cgroup_id` names the outgoing task). A task preempted on a trading core is
//!   runnable again at once, so its wait restarts at the switch-out (as runqlat does).
//! - intruders: at every switch-out on a trading core the outgoing task's run time goes to its
//!   cgroup id; a task outside the protected set (not idle, not a per-CPU kernel thread) is an
//!   intruder: its pid total is kept and an event goes on the ring buffer, rate-limited per pid.
//! - the sampler: a CPU-clock perf event on each trading core looks at the running task every
//!   few milliseconds, so an intruder that never switches out (a lone busy loop) is reported
//!   while it runs, not after its slice.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, TracePointContext},
};
use keeper_common::{
    CLASS_OTHER, CLASS_PROTECTED, COMM_LEN, CpuStats, IntruderEvent, IntruderTotal, MAX_CPUS,
    is_percpu_kthread_comm, latency_bucket,
};

// ---- configuration written by userspace before load (read-only globals) ----
#[unsafe(no_mangle)]
static WAKEUP_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static WAKEUP_CPU_OFF: u32 = 0;
#[unsafe(no_mangle)]
static WAKEUP_NEW_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static WAKEUP_NEW_CPU_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SWITCH_PREV_COMM_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SWITCH_PREV_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SWITCH_PREV_STATE_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SWITCH_NEXT_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static INTRUDER_EVENT_INTERVAL_NS: u64 = 100_000_000;

mod memory;

#[inline(always)]
fn global_u32(g: &'static u32) -> usize {
    unsafe { core::ptr::read_volatile(g) as usize }
}

// ---- maps (names shared with userspace through keeper_common::maps) ----
#[map]
static TRADING_CPUS: Array<u8> = Array::with_max_entries(MAX_CPUS, 0);
#[map]
static PROTECTED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);
#[map]
static CPU_STATS: PerCpuArray<CpuStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CGROUP_RUNTIME: LruPerCpuHashMap<u64, u64> = LruPerCpuHashMap::with_max_entries(4096, 0);
#[map]
static INTRUDER_TOTALS: LruHashMap<u32, IntruderTotal> = LruHashMap::with_max_entries(4096, 0);
#[map]
static INTRUDER_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Wakeup (or preemption) timestamp of tasks waiting for a trading core, by pid; 0 once the task
/// got the core. Entries are rewritten in place through their pointer (no bucket lock on the hot
/// path) and stay; userspace prunes those of dead pids and stale ones.
#[map]
static RUNNABLE_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);
/// Per-CPU state between two switches.
#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct CpuState {
    /// When the running task was switched in (0: not seen yet).
    on_cpu_since: u64,
    /// Latency sample of the running task, filed at its switch-out (pid 0: none).
    pending_pid: u32,
    _pad: u32,
    pending_ns: u64,
    /// Run time of `batch_cgroup` not yet added to CGROUP_RUNTIME: consecutive slices of one
    /// cgroup are summed here and written to the hash map when another cgroup runs.
    batch_cgroup: u64,
    batch_ns: u64,
}

/// `prev_state` value the kernel reports for a preempted task (TASK_REPORT_MAX, 0x100 since
/// 4.14); 0 is TASK_RUNNING (yield). Either way the task stays runnable.
const PREEMPTED_STATE: u64 = 0x100;

#[inline(always)]
fn is_trading_cpu(cpu: u32) -> bool {
    matches!(TRADING_CPUS.get(cpu), Some(&1))
}

#[tracepoint]
pub fn keeper_wakeup(ctx: TracePointContext) -> u32 {
    on_wakeup(
        &ctx,
        global_u32(&WAKEUP_PID_OFF),
        global_u32(&WAKEUP_CPU_OFF),
    );
    0
}

#[tracepoint]
pub fn keeper_wake_new(ctx: TracePointContext) -> u32 {
    on_wakeup(
        &ctx,
        global_u32(&WAKEUP_NEW_PID_OFF),
        global_u32(&WAKEUP_NEW_CPU_OFF),
    );
    0
}

#[inline(always)]
fn on_wakeup(ctx: &TracePointContext, pid_off: usize, cpu_off: usize) {
    let Ok(cpu) = (unsafe { ctx.read_at::<i32>(cpu_off) }) else {
        return;
    };
    if cpu < 0 || !is_trading_cpu(cpu as u32) {
        return;
    }
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(pid_off) }) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    mark_runnable(pid as u32, unsafe { bpf_ktime_get_ns() });
}

#[inline(always)]
fn mark_runnable(pid: u32, now: u64) {
    match RUNNABLE_SINCE.get_ptr_mut(pid) {
        Some(since) => unsafe { *since = now },
        None => {
            let _ = RUNNABLE_SINCE.insert(pid, now, 0);
        }
    }
}

#[tracepoint]
pub fn keeper_switch(ctx: TracePointContext) -> u32 {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if !is_trading_cpu(cpu) {
        return 0;
    }
    let _ = on_trading_switch(&ctx, cpu);
    0
}

#[inline(always)]
fn on_trading_switch(ctx: &TracePointContext, cpu: u32) -> Result<(), i32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let prev_pid = unsafe { ctx.read_at::<i32>(global_u32(&SWITCH_PREV_PID_OFF))? } as u32;
    let prev_state = unsafe { ctx.read_at::<i64>(global_u32(&SWITCH_PREV_STATE_OFF))? } as u64;
    let next_pid = unsafe { ctx.read_at::<i32>(global_u32(&SWITCH_NEXT_PID_OFF))? } as u32;
    let stats = CPU_STATS.get_ptr_mut(0).ok_or(0)?;
    let state = CPU_STATE.get_ptr_mut(0).ok_or(0)?;
    let (stats, state) = unsafe { (&mut *stats, &mut *state) };
    stats.switches += 1;

    // --- the outgoing task: run time and, if it had one, its latency sample ---
    let ran = if state.on_cpu_since != 0 && now > state.on_cpu_since {
        now - state.on_cpu_since
    } else {
        0
    };
    if prev_pid == 0 {
        stats.idle_ns += ran;
    } else {
        let comm = unsafe { ctx.read_at::<[u8; COMM_LEN]>(global_u32(&SWITCH_PREV_COMM_OFF))? };
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let protected = unsafe { PROTECTED_CGROUPS.get(cgroup_id) }.is_some();
        if state.pending_pid == prev_pid {
            let class = if protected {
                CLASS_PROTECTED
            } else {
                CLASS_OTHER
            };
            file_latency(stats, class, state.pending_ns);
        }
        if is_percpu_kthread_comm(&comm) {
            stats.kernel_ns += ran;
        } else {
            if state.batch_cgroup != cgroup_id {
                if state.batch_ns != 0 {
                    add_cgroup_runtime(state.batch_cgroup, state.batch_ns);
                }
                state.batch_cgroup = cgroup_id;
                state.batch_ns = 0;
            }
            state.batch_ns += ran;
            if protected {
                stats.protected_ns += ran;
            } else {
                stats.intruder_ns += ran;
                on_intruder(stats, cpu, prev_pid, cgroup_id, ran, ran, now, &comm);
            }
        }
        if prev_state == 0 || prev_state & PREEMPTED_STATE != 0 {
            mark_runnable(prev_pid, now);
        }
    }

    // --- the incoming task: how long it waited ---
    state.pending_pid = 0;
    if next_pid != 0
        && let Some(since_ptr) = RUNNABLE_SINCE.get_ptr_mut(next_pid)
    {
        let since = unsafe { *since_ptr };
        unsafe { *since_ptr = 0 };
        if since != 0 && now > since {
            state.pending_pid = next_pid;
            state.pending_ns = now - since;
        }
    }
    state.on_cpu_since = now;
    Ok(())
}

#[inline(always)]
fn file_latency(stats: &mut CpuStats, class: usize, ns: u64) {
    let b = latency_bucket(ns);
    if class < stats.hist.len() && b < stats.hist[class].len() {
        stats.hist[class][b] += 1;
        if ns > stats.max_ns[class] {
            stats.max_ns[class] = ns;
        }
    }
}

#[inline(always)]
fn add_cgroup_runtime(cgroup_id: u64, ran: u64) {
    match CGROUP_RUNTIME.get_ptr_mut(cgroup_id) {
        Some(total) => unsafe { *total += ran },
        None => {
            let _ = CGROUP_RUNTIME.insert(cgroup_id, ran, 0);
        }
    }
}

#[perf_event]
pub fn keeper_sample(_ctx: PerfEventContext) -> u32 {
    let _ = sample();
    0
}

/// The task running on a trading core right now, if it is an intruder, is reported (its time
/// is not added here: the switch-out does that).
#[inline(always)]
fn sample() -> Result<(), i32> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if !is_trading_cpu(cpu) {
        return Ok(());
    }
    let pid = bpf_get_current_pid_tgid() as u32;
    if pid == 0 {
        return Ok(());
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { PROTECTED_CGROUPS.get(cgroup_id) }.is_some() {
        return Ok(());
    }
    let comm = bpf_get_current_comm()?;
    if is_percpu_kthread_comm(&comm) {
        return Ok(());
    }
    let stats = CPU_STATS.get_ptr_mut(0).ok_or(0)?;
    let state = CPU_STATE.get_ptr_mut(0).ok_or(0)?;
    let (stats, state) = unsafe { (&mut *stats, &*state) };
    let now = unsafe { bpf_ktime_get_ns() };
    let running = if state.on_cpu_since != 0 && now > state.on_cpu_since {
        now - state.on_cpu_since
    } else {
        0
    };
    on_intruder(stats, cpu, pid, cgroup_id, 0, running, now, &comm);
    Ok(())
}

/// Adds `add_ns` to the pid's total and sends an event (its slice so far: `slice_ns`) unless one
/// went out less than the rate-limit interval ago.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn on_intruder(
    stats: &mut CpuStats,
    cpu: u32,
    pid: u32,
    cgroup_id: u64,
    add_ns: u64,
    slice_ns: u64,
    now: u64,
    comm: &[u8; COMM_LEN],
) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let interval = unsafe { core::ptr::read_volatile(&INTRUDER_EVENT_INTERVAL_NS) };
    match INTRUDER_TOTALS.get_ptr_mut(pid) {
        Some(total) => unsafe {
            (*total).ran_ns += add_ns;
            (*total).last_cpu = cpu;
            // A task that moved to another cgroup is news at once (it may have left or entered
            // a workload or the scope); otherwise one event per interval.
            let moved = (*total).cgroup_id != cgroup_id;
            (*total).cgroup_id = cgroup_id;
            // exec and prctl(PR_SET_NAME) rename a task: keep the latest name.
            (*total).comm = *comm;
            if !moved && now.saturating_sub((*total).last_event_ns) < interval {
                return;
            }
            (*total).last_event_ns = now;
        },
        None => {
            let total = IntruderTotal {
                ran_ns: add_ns,
                cgroup_id,
                last_event_ns: now,
                tgid,
                last_cpu: cpu,
                comm: *comm,
            };
            let _ = INTRUDER_TOTALS.insert(pid, total, 0);
        }
    }
    match INTRUDER_EVENTS.reserve::<IntruderEvent>(0) {
        Some(mut entry) => {
            entry.write(IntruderEvent {
                timestamp_ns: now,
                cgroup_id,
                ran_ns: slice_ns,
                pid,
                tgid,
                cpu,
                _pad: 0,
                comm: *comm,
            });
            entry.submit(0);
            stats.events_sent += 1;
        }
        None => stats.events_lost += 1,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

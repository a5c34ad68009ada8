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
//!   cgroup id; a task outside the protected set (not idle, not a kernel thread by its
//!   `PF_KTHREAD` flag, read at an offset from the kernel's BTF: a name proves nothing) is an
//!   intruder: its pid total is kept and an event goes on the ring buffer, rate-limited per pid.
//! - arrivals: a task's first switch-in on a trading core, and a fork whose child is placed on
//!   one (`sched_wakeup_new`), are reported at once, before the newcomer has run, once per pid
//!   and cgroup (`SEEN_PIDS`; userspace forgets an evicted pid, so its return is news again).
//!   The switch-in is read from the incoming task itself where the kernel's BTF gives the
//!   offsets (`arrival`: `keeper_arrive`, and `keeper_joined` for a task that moves itself to
//!   another cgroup while it runs there); else from the classic tracepoint (pid and name only).
//! - the keeper's own threads (its eviction thread waits on the trading cores) are no
//!   intruders: their time is `keeper_ns`.
//! - the sampler: a CPU-clock perf event on each trading core looks at the running task every
//!   few milliseconds, so an intruder that never switches out (a lone busy loop) is reported
//!   while it runs, not after its slice.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, TracePointContext},
};
use keeper_common::{
    CLASS_OTHER, CLASS_PROTECTED, COMM_LEN, CPU_MASK_WORDS, CpuStats, IntruderEvent, IntruderTotal,
    MAX_CPUS, PF_KTHREAD, event, latency_bucket,
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
static SWITCH_NEXT_COMM_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_FLAGS_OFF: u32 = 0;
#[unsafe(no_mangle)]
static ARRIVALS_BY_TASK: u32 = 0;
#[unsafe(no_mangle)]
static KEEPER_TGID: u32 = 0;
#[unsafe(no_mangle)]
static INTRUDER_EVENT_INTERVAL_NS: u64 = 100_000_000;

mod arrival;
mod memory;
mod noise;

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
static INTRUDER_TOTALS: LruHashMap<u32, IntruderTotal> = LruHashMap::with_max_entries(4096, 0);
#[map]
static INTRUDER_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map]
static SEEN_PIDS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Wakeup (or preemption) timestamp of tasks waiting for a trading core, by pid; 0 once the task
/// got the core. Entries are rewritten in place through their pointer (no bucket lock on the hot
/// path) and stay; userspace prunes those of dead pids and stale ones, and being an LRU map it
/// never refuses a new Banker thread because a fork storm filled it with stale pids.
#[map]
static RUNNABLE_SINCE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);
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
    /// The global rate limit: events sent from this CPU in the millisecond that began at
    /// `window_start`.
    window_start: u64,
    window_events: u64,
}

/// At most this many events leave one CPU per millisecond (a fork storm on a trading core is
/// handled at a bounded cost); the rest count as lost, and userspace rescans the trading cores.
const MAX_EVENTS_PER_MS: u64 = 32;

/// `prev_state` value the kernel reports for a preempted task (TASK_REPORT_MAX, 0x100 since
/// 4.14); 0 is TASK_RUNNING (yield). Either way the task stays runnable.
const PREEMPTED_STATE: u64 = 0x100;

#[inline(always)]
fn is_trading_cpu(cpu: u32) -> bool {
    matches!(TRADING_CPUS.get(cpu), Some(&1))
}

#[tracepoint]
pub fn keeper_wakeup(ctx: TracePointContext) -> u32 {
    let _ = on_wakeup(
        &ctx,
        global_u32(&WAKEUP_PID_OFF),
        global_u32(&WAKEUP_CPU_OFF),
    );
    0
}

/// A new task (any CPU). Placed on a trading core, it is news before it has run: this runs in
/// the parent's context (`wake_up_new_task` in the fork), so the parent's cgroup (which the
/// child inherits), flags and name tell whether the child intrudes. Note: the CPU stats
/// counted here are those of the CPU the parent forks on.
#[tracepoint]
pub fn keeper_wake_new(ctx: TracePointContext) -> u32 {
    if let Ok(pid) = unsafe { ctx.read_at::<i32>(global_u32(&WAKEUP_NEW_PID_OFF)) } {
        // A new task never ran on a trading core, whatever an earlier task of its pid did.
        let _ = SEEN_PIDS.remove(pid as u32);
    }
    let Some((pid, cpu)) = on_wakeup(
        &ctx,
        global_u32(&WAKEUP_NEW_PID_OFF),
        global_u32(&WAKEUP_NEW_CPU_OFF),
    ) else {
        return 0;
    };
    // Where keeper_arrive reports switch-ins, the child's is still news: it reads the child's
    // own cgroup, which may differ from its parent's by then (a launcher that moves its
    // child into a cgroup after the fork, as runc does).
    if global_u32(&ARRIVALS_BY_TASK) == 0 {
        let _ = SEEN_PIDS.insert(pid, 1, 0);
    }
    if current_is_kthread() || current_is_keeper() {
        return 0;
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { PROTECTED_CGROUPS.get(cgroup_id) }.is_some() {
        return 0;
    }
    if let (Ok(comm), Some(stats)) = (bpf_get_current_comm(), CPU_STATS.get_ptr_mut(0)) {
        let now = unsafe { bpf_ktime_get_ns() };
        let header = Header {
            cpu,
            pid,
            tgid: 0,
            cgroup_id,
            now,
            start: 0,
            cpus_mask: [0; CPU_MASK_WORDS],
            wake: true,
        };
        send(unsafe { &mut *stats }, &header, event::FORK, 0, &comm);
    }
    0
}

/// Notes when a task woken for a trading core became runnable; its pid and CPU.
#[inline(always)]
fn on_wakeup(ctx: &TracePointContext, pid_off: usize, cpu_off: usize) -> Option<(u32, u32)> {
    let cpu = unsafe { ctx.read_at::<i32>(cpu_off) }.ok()?;
    if cpu < 0 || !is_trading_cpu(cpu as u32) {
        return None;
    }
    let pid = unsafe { ctx.read_at::<i32>(pid_off) }.ok()?;
    if pid <= 0 {
        return None;
    }
    mark_runnable(pid as u32, unsafe { bpf_ktime_get_ns() });
    Some((pid as u32, cpu as u32))
}

/// Whether the running task is a kernel thread, by its `PF_KTHREAD` flag (never by its name,
/// which any task can set). Without a BTF offset nothing is taken for one here.
#[inline(always)]
fn current_is_kthread() -> bool {
    let off = global_u32(&TASK_FLAGS_OFF);
    if off == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let flags = unsafe { bpf_probe_read_kernel(task.wrapping_add(off) as *const u32) };
    matches!(flags, Ok(f) if f & PF_KTHREAD != 0)
}

/// Whether `tgid` is the keeper's process (its eviction thread, woken on a trading core by an
/// arrival, runs there): never an intruder.
#[inline(always)]
fn is_keeper(tgid: u32) -> bool {
    let keeper = unsafe { core::ptr::read_volatile(&KEEPER_TGID) };
    keeper != 0 && tgid == keeper
}

/// Whether the running task is one of the keeper's own threads.
#[inline(always)]
fn current_is_keeper() -> bool {
    is_keeper((bpf_get_current_pid_tgid() >> 32) as u32)
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
        // A protected task is counted without reading its flags (kernel threads live in the
        // root cgroup; a kernel thread attached to a protected one, 6.1's vhost workers, works
        // for it); an intruder's name is read only when an event goes out.
        if protected {
            stats.protected_ns += ran;
        } else if current_is_kthread() {
            stats.kernel_ns += ran;
        } else if current_is_keeper() {
            stats.keeper_ns += ran;
        } else {
            stats.intruder_ns += ran;
            let off = global_u32(&SWITCH_PREV_COMM_OFF);
            let comm = || unsafe { ctx.read_at::<[u8; COMM_LEN]>(off) }.ok();
            on_intruder(stats, cpu, prev_pid, cgroup_id, ran, ran, now, comm);
        }
        if prev_state == 0 || prev_state & PREEMPTED_STATE != 0 {
            mark_runnable(prev_pid, now);
        }
    }

    // --- the incoming task: news if it never ran here (unless keeper_arrive tells, from the
    // task itself); how long it waited ---
    if next_pid != 0
        && global_u32(&ARRIVALS_BY_TASK) == 0
        && unsafe { SEEN_PIDS.get(next_pid) }.is_none()
    {
        let _ = SEEN_PIDS.insert(next_pid, 1, 0);
        let comm = unsafe { ctx.read_at::<[u8; COMM_LEN]>(global_u32(&SWITCH_NEXT_COMM_OFF))? };
        let header = Header {
            cpu,
            pid: next_pid,
            tgid: 0,
            cgroup_id: 0,
            now,
            start: 0,
            cpus_mask: [0; CPU_MASK_WORDS],
            wake: true,
        };
        send(stats, &header, event::ARRIVAL, 0, &comm);
    }
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
    if current_is_kthread() || current_is_keeper() {
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
    let comm = || bpf_get_current_comm().ok();
    on_intruder(stats, cpu, pid, cgroup_id, 0, running, now, comm);
    Ok(())
}

/// Adds `add_ns` to the pid's total and sends an event (its slice so far: `slice_ns`) unless one
/// went out less than the rate-limit interval ago. The task's name (`comm`) is read only then:
/// most switches of an intruder send nothing.
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
    comm: impl FnOnce() -> Option<[u8; COMM_LEN]>,
) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let interval = unsafe { core::ptr::read_volatile(&INTRUDER_EVENT_INTERVAL_NS) };
    let total = INTRUDER_TOTALS.get_ptr_mut(pid);
    let moved = match total {
        Some(total) => unsafe {
            (*total).ran_ns += add_ns;
            (*total).last_cpu = cpu;
            // A task that moved to another cgroup is news at once (it may have left or entered
            // a workload or the scope); otherwise one event per interval.
            let moved = (*total).cgroup_id != cgroup_id;
            (*total).cgroup_id = cgroup_id;
            if !moved && now.saturating_sub((*total).last_event_ns) < interval {
                return;
            }
            (*total).last_event_ns = now;
            moved
        },
        None => false,
    };
    let Some(comm) = comm() else {
        return;
    };
    match total {
        // exec and prctl(PR_SET_NAME) rename a task: the latest name, at each event.
        Some(total) => unsafe { (*total).comm = comm },
        None => {
            let total = IntruderTotal {
                ran_ns: add_ns,
                cgroup_id,
                last_event_ns: now,
                tgid,
                last_cpu: cpu,
                comm,
            };
            let _ = INTRUDER_TOTALS.insert(pid, total, 0);
        }
    }
    let header = Header {
        cpu,
        pid,
        tgid,
        cgroup_id,
        now,
        start: 0,
        cpus_mask: [0; CPU_MASK_WORDS],
        // The sampler's report (nothing added: the task runs now) or a move: on the core now.
        wake: add_ns == 0 || moved,
    };
    send(stats, &header, event::SLICE, slice_ns, &comm);
}

/// Who an event is about.
struct Header {
    cpu: u32,
    pid: u32,
    tgid: u32,
    cgroup_id: u64,
    now: u64,
    /// The task's `start_boottime` where it was read (0: not).
    start: u64,
    /// The task's CPUs where they were read (all 0: not).
    cpus_mask: [u64; CPU_MASK_WORDS],
    /// Whether the event wakes the eviction thread: what is on a trading core now (an
    /// arrival, a fork placed there, a running intruder the sampler found, a task that changed
    /// cgroup). The accounting of a slice that ended waits for the next wake-up (or the
    /// thread's 100 ms poll): the thread waits on the trading core, where each wake-up is time
    /// taken from the Banker.
    wake: bool,
}

/// `bpf_ringbuf_submit` flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Puts one event on the ring buffer (counted as sent or lost), within the rate limit.
#[inline(always)]
fn send(stats: &mut CpuStats, h: &Header, kind: u32, ran_ns: u64, comm: &[u8; COMM_LEN]) {
    if let Some(state) = CPU_STATE.get_ptr_mut(0) {
        let state = unsafe { &mut *state };
        if h.now.saturating_sub(state.window_start) > 1_000_000 {
            state.window_start = h.now;
            state.window_events = 0;
        }
        state.window_events += 1;
        if state.window_events > MAX_EVENTS_PER_MS {
            stats.events_lost += 1;
            return;
        }
    }
    match INTRUDER_EVENTS.reserve::<IntruderEvent>(0) {
        Some(mut entry) => {
            entry.write(IntruderEvent {
                timestamp_ns: h.now,
                cgroup_id: h.cgroup_id,
                ran_ns,
                start_boottime_ns: h.start,
                cpus_mask: h.cpus_mask,
                pid: h.pid,
                tgid: h.tgid,
                cpu: h.cpu,
                kind,
                comm: *comm,
            });
            // A forced wake-up: the default (adaptive) one is skipped while an earlier,
            // unwoken event waits unread, and an arrival must not wait behind it.
            entry.submit(match h.wake {
                true => BPF_RB_FORCE_WAKEUP,
                false => BPF_RB_NO_WAKEUP,
            });
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

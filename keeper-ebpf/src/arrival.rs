//! Arrivals on the trading cores, read from the task itself (raw tracepoints, offsets from
//! the kernel's BTF that userspace hands over before loading): a task's first switch-in there
//! (`keeper_arrive`), and a task that moves itself to another cgroup while it runs there
//! (`keeper_joined`). Kernel threads (by their flags), the keeper's own threads and protected
//! tasks are no news; a newcomer's event carries its cgroup id and start time, so userspace
//! reads nothing from /proc before its eviction.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use keeper_common::{COMM_LEN, CPU_MASK_WORDS, PF_KTHREAD, event};

use crate::{
    CPU_STATS, Header, PROTECTED_CGROUPS, SEEN_PIDS, TASK_FLAGS_OFF, global_u32, is_keeper,
    is_trading_cpu, send,
};

// ---- the incoming task's fields (read-only globals written by userspace before load) ----
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_COMM_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_START_BOOTTIME_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_CPUS_MASK_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP_OFF: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFF: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFF: u32 = 0;

/// A task switched in on a trading core for the first time (raw `sched_switch`: `next` is
/// the incoming task, arg 2 of `TP_PROTO(preempt, prev, next, prev_state)`). Its flags and
/// cgroup are read from the task itself, so a kernel thread or a protected task is no news
/// and a newcomer's event carries its cgroup id: userspace reads nothing from /proc before
/// evicting it. Attached only when userspace found every offset in the kernel's BTF.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn keeper_arrive(ctx: RawTracePointContext) -> i32 {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if is_trading_cpu(cpu) {
        let _ = on_arrival(ctx.arg::<*const u8>(2), cpu);
    }
    0
}

/// A task that moved itself to another cgroup (raw `cgroup_attach_task`: arg 2 of
/// `TP_PROTO(dst_cgrp, path, task, threadgroup)`, after the move) while it runs on a trading
/// core: news now, in its new cgroup, as if it had just arrived (a launcher's child that
/// joins its workload after the fork and goes on running: no switch-in would report it).
/// A task moved by another is news at its next switch-in, by `SEEN_PIDS`.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn keeper_joined(ctx: RawTracePointContext) -> i32 {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let task = ctx.arg::<*const u8>(2);
    if is_trading_cpu(cpu) && task == unsafe { bpf_get_current_task() } as *const u8 {
        let _ = on_arrival(task, cpu);
    }
    0
}

/// A task that is no news at its switch-in: a kernel thread (by its flags) or the keeper.
const NEVER_NEWS: u64 = u64::MAX;

#[inline(always)]
fn on_arrival(next: *const u8, cpu: u32) -> Result<(), i64> {
    let read_u64 = |base: *const u8, off: &'static u32| unsafe {
        bpf_probe_read_kernel(base.wrapping_add(global_u32(off)) as *const u64)
    };
    let read_u32 = |base: *const u8, off: &'static u32| unsafe {
        bpf_probe_read_kernel(base.wrapping_add(global_u32(off)) as *const u32)
    };
    let pid = read_u32(next, &TASK_PID_OFF)?;
    if pid == 0 {
        return Ok(());
    }
    let seen = unsafe { SEEN_PIDS.get(pid) }.copied();
    if seen == Some(NEVER_NEWS) {
        return Ok(());
    }
    if read_u32(next, &TASK_FLAGS_OFF)? & PF_KTHREAD != 0
        || is_keeper(read_u32(next, &TASK_TGID_OFF)?)
    {
        let _ = SEEN_PIDS.insert(pid, NEVER_NEWS, 0);
        return Ok(());
    }
    let css_set = read_u64(next, &TASK_CGROUPS_OFF)? as *const u8;
    let cgroup = read_u64(css_set, &CSS_SET_DFL_CGRP_OFF)? as *const u8;
    let kn = read_u64(cgroup, &CGROUP_KN_OFF)? as *const u8;
    let cgroup_id = read_u64(kn, &KERNFS_NODE_ID_OFF)?;
    // Seen in this cgroup: no news. Seen in another: it moved (a launcher's child moved
    // after its fork, a task that entered the scope), and is news again.
    if seen == Some(cgroup_id) {
        return Ok(());
    }
    let _ = SEEN_PIDS.insert(pid, cgroup_id, 0);
    if unsafe { PROTECTED_CGROUPS.get(cgroup_id) }.is_some() {
        return Ok(());
    }
    let comm = unsafe {
        bpf_probe_read_kernel(
            next.wrapping_add(global_u32(&TASK_COMM_OFF)) as *const [u8; COMM_LEN]
        )?
    };
    let start = read_u64(next, &TASK_START_BOOTTIME_OFF)?;
    // Its CPUs, for the eviction's journal (all 0: not known here, and userspace asks).
    let cpus_mask = match global_u32(&TASK_CPUS_MASK_OFF) {
        0 => [0; CPU_MASK_WORDS],
        off => {
            unsafe { bpf_probe_read_kernel(next.wrapping_add(off) as *const [u64; CPU_MASK_WORDS]) }
                .unwrap_or([0; CPU_MASK_WORDS])
        }
    };
    let stats = CPU_STATS.get_ptr_mut(0).ok_or(0i64)?;
    let header = Header {
        cpu,
        pid,
        tgid: 0,
        cgroup_id,
        now: unsafe { bpf_ktime_get_ns() },
        start,
        cpus_mask,
        wake: true,
    };
    send(unsafe { &mut *stats }, &header, event::ARRIVAL, 0, &comm);
    Ok(())
}

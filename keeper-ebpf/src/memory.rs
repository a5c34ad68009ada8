//! The memory sensor: direct-reclaim stalls per cgroup (vmscan:mm_vmscan_direct_reclaim_begin
//! and _end) and OOM kills (oom:mark_victim) on a ring buffer. Like the scheduler sensor, the
//! one field read from a tracepoint record (mark_victim's `pid`) has its offset written by
//! userspace from tracefs, so the object loads on 6.1 and 6.18 alike.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use keeper_common::{OomEvent, ReclaimStats, latency_bucket};

#[unsafe(no_mangle)]
static OOM_VICTIM_PID_OFF: u32 = 0;

#[map(name = "RECLAIM_START")]
static RECLAIM_START: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// Per cgroup (an LRU map is allocated whole: 1024 × 2.6 KB of log-linear buckets; a host's
/// memory cgroups that stall are far fewer, and the least recent one makes room).
#[map(name = "RECLAIM_STATS")]
static RECLAIM_STATS: LruHashMap<u64, ReclaimStats> = LruHashMap::with_max_entries(1024, 0);

/// A zeroed [`ReclaimStats`], never written: a cgroup's first stall inserts a copy of it (the
/// log-linear buckets do not fit on the 512-byte BPF stack).
#[map(name = "RECLAIM_ZERO")]
static RECLAIM_ZERO: PerCpuArray<ReclaimStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "OOM_EVENTS")]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[tracepoint]
pub fn keeper_rcl_begin(_ctx: TracePointContext) -> u32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RECLAIM_START.insert(pid, now, 0);
    0
}

#[tracepoint]
pub fn keeper_rcl_end(_ctx: TracePointContext) -> u32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    let Some(start) = (unsafe { RECLAIM_START.get(pid) }).copied() else {
        return 0;
    };
    let _ = RECLAIM_START.remove(pid);
    let now = unsafe { bpf_ktime_get_ns() };
    if now <= start {
        return 0;
    }
    let ns = now - start;
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let b = latency_bucket(ns);
    if RECLAIM_STATS.get_ptr_mut(cgroup).is_none() {
        let Some(zero) = RECLAIM_ZERO.get_ptr(0) else {
            return 0;
        };
        // SAFETY: a valid pointer to the map's value, read whole by the helper. By reference:
        // a value would be copied onto the stack, which it does not fit.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = RECLAIM_STATS.insert(cgroup, unsafe { &*zero }, 0);
    }
    if let Some(s) = RECLAIM_STATS.get_ptr_mut(cgroup) {
        // SAFETY: a pointer to this cgroup's value in the map, valid for this program's run;
        // concurrent updates from another CPU may lose a count (statistics only).
        unsafe {
            if b < (*s).hist.len() {
                (*s).hist[b] += 1;
            }
            (*s).count += 1;
            (*s).total_ns += ns;
        }
    }
    0
}

#[tracepoint]
pub fn keeper_oom(ctx: TracePointContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&OOM_VICTIM_PID_OFF) } as usize;
    let Ok(victim) = (unsafe { ctx.read_at::<i32>(off) }) else {
        return 0;
    };
    if let Some(mut entry) = OOM_EVENTS.reserve::<OomEvent>(0) {
        entry.write(OomEvent {
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            victim_pid: victim as u32,
            killer_pid: bpf_get_current_pid_tgid() as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        });
        entry.submit(0);
    }
    0
}

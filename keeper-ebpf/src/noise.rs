//! Kernel noise on the trading cores, by name: hard IRQ time per IRQ line and softirq time per
//! vector (irq:irq_handler_entry/_exit, irq:softirq_entry/_exit), counted the way the kernel's
//! osnoise tracer counts it: a softirq's time is net of the hard IRQs that interrupted it
//! (hard IRQs do not nest on Linux). Only the trading cores count; elsewhere each program
//! returns after one array lookup. The `irq` and `vec` offsets come from tracefs, as the
//! scheduler's do.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use keeper_common::{NoiseTotal, SOFTIRQ_NAMES};

#[unsafe(no_mangle)]
static IRQ_EXIT_IRQ_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SOFTIRQ_VEC_OFF: u32 = 0;

#[map(name = "NOISE_IRQ")]
static NOISE_IRQ: PerCpuHashMap<u32, NoiseTotal> = PerCpuHashMap::with_max_entries(1024, 0);

#[map(name = "NOISE_SOFTIRQ")]
static NOISE_SOFTIRQ: PerCpuArray<NoiseTotal> =
    PerCpuArray::with_max_entries(SOFTIRQ_NAMES.len() as u32, 0);

/// This CPU's handlers in progress.
#[repr(C)]
struct NoiseState {
    /// When the hard IRQ in progress began (0: none).
    irq_since: u64,
    /// When the softirq in progress began (0: none), and the hard IRQ time inside it.
    softirq_since: u64,
    softirq_nested_ns: u64,
}

#[map(name = "NOISE_STATE")]
static NOISE_STATE: PerCpuArray<NoiseState> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn offset(g: &'static u32) -> usize {
    unsafe { core::ptr::read_volatile(g) as usize }
}

#[inline(always)]
fn state() -> Option<*mut NoiseState> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if !crate::is_trading_cpu(cpu) {
        return None;
    }
    NOISE_STATE.get_ptr_mut(0)
}

#[inline(always)]
fn add(t: *mut NoiseTotal, ns: u64) {
    unsafe {
        (*t).ns += ns;
        (*t).count += 1;
        if ns > (*t).max_ns {
            (*t).max_ns = ns;
        }
    }
}

#[tracepoint]
pub fn keeper_irq_in(_ctx: TracePointContext) -> u32 {
    if let Some(s) = state() {
        unsafe { (*s).irq_since = bpf_ktime_get_ns() };
    }
    0
}

#[tracepoint]
pub fn keeper_irq_out(ctx: TracePointContext) -> u32 {
    let Some(s) = state() else { return 0 };
    let since = unsafe { (*s).irq_since };
    if since == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe { (*s).irq_since = 0 };
    let ns = now.saturating_sub(since);
    unsafe {
        if (*s).softirq_since != 0 {
            (*s).softirq_nested_ns += ns;
        }
    }
    let Ok(irq) = (unsafe { ctx.read_at::<i32>(offset(&IRQ_EXIT_IRQ_OFF)) }) else {
        return 0;
    };
    let irq = irq as u32;
    match NOISE_IRQ.get_ptr_mut(irq) {
        Some(t) => add(t, ns),
        None => {
            let t = NoiseTotal {
                ns,
                count: 1,
                max_ns: ns,
            };
            let _ = NOISE_IRQ.insert(irq, t, 0);
        }
    }
    0
}

#[tracepoint]
pub fn keeper_sirq_in(_ctx: TracePointContext) -> u32 {
    if let Some(s) = state() {
        unsafe {
            (*s).softirq_since = bpf_ktime_get_ns();
            (*s).softirq_nested_ns = 0;
        }
    }
    0
}

#[tracepoint]
pub fn keeper_sirq_out(ctx: TracePointContext) -> u32 {
    let Some(s) = state() else { return 0 };
    let since = unsafe { (*s).softirq_since };
    if since == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ns = now
        .saturating_sub(since)
        .saturating_sub(unsafe { (*s).softirq_nested_ns });
    unsafe { (*s).softirq_since = 0 };
    let Ok(vec) = (unsafe { ctx.read_at::<u32>(offset(&SOFTIRQ_VEC_OFF)) }) else {
        return 0;
    };
    if let Some(t) = NOISE_SOFTIRQ.get_ptr_mut(vec) {
        add(t, ns);
    }
    0
}

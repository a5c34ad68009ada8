//! The loop's event sources besides the scheduler sensor: the memory sensor's OOM ring buffer,
//! PSI triggers (host and workloads), and systemd's watchdog period. Each waits forever when
//! its source is absent (an old kernel, no memory rules, no systemd), so the loop's `select!`
//! needs no special case.

use std::time::Duration;

use tokio::io::{Interest, unix::AsyncFd};

use crate::sense::{
    memory::{MemorySensor, OomEvents},
    pressure::WorkloadTriggers,
    psi::{PsiTrigger, Stall},
    tracefs::Tracefs,
};

/// Attaches the memory sensor and registers its OOM ring buffer for polling.
pub fn attach(tracefs: &Tracefs) -> (Option<MemorySensor>, Option<AsyncFd<OomEvents>>) {
    let mut sensor = match MemorySensor::attach(tracefs) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no memory sensor: OOM kills and reclaim stalls are not watched");
            return (None, None);
        }
    };
    let events = sensor.take_oom_events().ok().and_then(|e| {
        // SAFETY: OomEvents owns the ring buffer's fd and keeps it open while the AsyncFd lives.
        unsafe { AsyncFd::register_with_interest(e, Interest::READABLE) }.ok()
    });
    (Some(sensor), events)
}

/// Waits until OOM events are waiting (forever without the sensor).
pub async fn ready(
    events: &mut Option<AsyncFd<OomEvents>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, OomEvents>> {
    match events {
        Some(e) => e.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The memory rules' lowest `some` threshold (%), where PSI triggers are armed.
pub fn memory_share(policy: &crate::policy::Policy) -> Option<f64> {
    let m = policy.rules.memory.as_ref()?;
    let pct = [m.high_above, m.balloon_above]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    pct.is_finite().then_some(pct)
}

/// A PSI trigger on the memory pressure the memory rules read, at `pct` % `some`: a spike is
/// acted on when the kernel reports it, not at the next tick. Where no trigger can be
/// registered (a plain file, an old kernel), the rules read PSI every tick.
pub fn memory_trigger(pct: f64, path: &std::path::Path) -> Option<(PsiTrigger, f64)> {
    match PsiTrigger::register_share(path, Stall::Some, pct) {
        Ok(t) => {
            tracing::info!(trigger = %t.describe(), "memory pressure trigger armed");
            Some((t, pct))
        }
        Err(e) => {
            tracing::info!(error = %e, "no memory pressure trigger; the memory rules read PSI every tick");
            None
        }
    }
}

/// Waits for a workload's trigger (forever without memory rules).
pub async fn workload_fired(t: &mut Option<WorkloadTriggers>) -> Option<(String, f64)> {
    match t {
        Some(t) => t.fired().await,
        None => std::future::pending().await,
    }
}

/// Waits for the memory trigger (forever when there is none); its share on firing.
pub async fn trigger_fired(t: &mut Option<(PsiTrigger, f64)>) -> std::io::Result<f64> {
    match t {
        Some((trigger, pct)) => trigger.fired().await.map(|()| *pct),
        None => std::future::pending().await,
    }
}

/// systemd's watchdog period halved (the kick interval), as libsystemd's sd_watchdog_enabled
/// reads it: WATCHDOG_USEC set, and WATCHDOG_PID unset or ours.
pub fn systemd_watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(50)))
}

/// Waits until `deadline` (forever without one: no `--for`).
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

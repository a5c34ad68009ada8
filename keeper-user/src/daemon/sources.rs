//! The loop's event sources besides the scheduler sensor: the memory sensor's OOM ring buffer,
//! PSI triggers (host and workloads), and systemd's watchdog period. Each waits forever when
//! its source is absent (an old kernel, no memory rules, no systemd), so the loop's `select!`
//! needs no special case.

use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::sense::{memory::OomEvents, pressure::WorkloadTriggers, psi::PsiTrigger};

/// Waits until OOM events are waiting (forever without the sensor).
pub async fn ready(
    events: &mut Option<AsyncFd<OomEvents>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, OomEvents>> {
    match events {
        Some(e) => e.readable_mut().await,
        None => std::future::pending().await,
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

//! `cargo xtask bench …`: benchmarks whose results go in docs/BENCHMARKS.md.
//!
//! - `probe`: cost per event of the eBPF programs vs bpftrace (issue: foundation);
//! - `isolation`: the trading core's latency unprotected / statically isolated / with the
//!   keeper, intruder eviction and EVA preemption latency, the daemon's footprint.

mod balloon;
mod isolation;
mod probe;

use std::{
    path::Path,
    process::Child,
    thread::sleep,
    time::{Duration, Instant},
};

#[derive(clap::Subcommand)]
pub enum Which {
    /// Probe cost per event vs bpftrace, and storm throughput loss.
    Probe {
        /// Repetitions per condition (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Length of one storm, in seconds.
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// Reclaiming 1 GiB from an idle guest: the keeper vs Proxmox's auto-ballooning pace.
    Balloon {
        /// Repetitions of the keeper's reclaim (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Trading-core isolation: a trading loop on CPU 1 against hogs, churn and adversaries.
    Isolation {
        /// Length of each condition's trading-loop run, in seconds.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Rounds of every condition, interleaved (medians are reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// `keeper interaction start` → Muse frozen round trips to time.
        #[arg(long, default_value_t = 100)]
        preemptions: usize,
        /// Only these conditions (comma-separated keys: static, unprotected, keeper, sensing,
        /// churn, kworker, repin, forks); static isolation always runs, as the reference.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Inside Debian's 6.1 guest (TCG, full cgroup v2) instead of on this host: static,
        /// unprotected, and the keeper with a partition and without one (evictions).
        #[arg(long)]
        guest: bool,
    },
}

pub fn run(root: &Path, which: Which) -> anyhow::Result<()> {
    match which {
        Which::Probe { reps, secs } => probe::probe(root, reps, secs),
        Which::Balloon { reps } => balloon::run(root, reps),
        Which::Isolation {
            guest: true,
            secs,
            rounds,
            ..
        } => isolation::guest::run(root, rounds, secs),
        Which::Isolation {
            secs,
            rounds,
            preemptions,
            only,
            ..
        } => isolation::run(root, secs, rounds, preemptions, &only),
    }
}

/// Stops a process we started (by its pid) with SIGINT, then SIGKILL after 10 s.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// Nearest-rank quantile.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

//! The keeper's figures checked from outside it.
//!
//! - **Evictions, by tracepoints**: bpftrace (not the keeper) watches the scheduler during each
//!   keeper condition: an intruder's (`kb_*`) first instant on CPU 1 (woken or forked onto it,
//!   migrated onto it, or switched in there) → its migration off it. Each return is timed
//!   afresh; a wake-up elsewhere ends a stay without an eviction. A migration by the kernel's
//!   load balancer counts too (rare while the keeper holds the core).
//! - **Wake-up latency, three ways**: `keeper-probe wakes` in the Banker's cgroup on CPU 1,
//!   woken through an eventfd every millisecond by its own thread on CPU 0, times each wake-up
//!   itself (the waker's stamp → running: the cross-CPU wake-up's delivery included); bpftrace
//!   times the same task's run-queue latency (`sched_wakeup` → `sched_switch`, runqlat's
//!   definition); the keeper's p50/p99/p99.9 of protected wake-ups on CPU 1 from its run record,
//!   same task, same window. The keeper and bpftrace measure one interval and must agree.

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Bench, load::Load, rig::Daemon, rig::spawn_in};
use crate::bench::{ChildGuard, median, quantile};

/// An intruder's first instant on CPU 1 → its migration off it, in ns.
pub const EVICTIONS_BT: &str = r#"
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new /strncmp(args->comm, "kb_", 3) == 0/ {
  if (args->target_cpu == 1) { if (@first[args->pid] == 0) { @first[args->pid] = nsecs; } }
  else { delete(@first[args->pid]); }
}
tracepoint:sched:sched_switch /cpu == 1 && strncmp(args->next_comm, "kb_", 3) == 0/ {
  if (@first[args->next_pid] == 0) { @first[args->next_pid] = nsecs; }
}
tracepoint:sched:sched_migrate_task /strncmp(str(args->comm), "kb_", 3) == 0/ {
  if (args->dest_cpu == 1) { if (@first[args->pid] == 0) { @first[args->pid] = nsecs; } }
  else if (args->orig_cpu == 1 && @first[args->pid] != 0) {
    printf("sample %d\n", nsecs - @first[args->pid]);
    delete(@first[args->pid]);
  }
}
END { clear(@first); }
"#;

/// The protected probe's run-queue latency on CPU 1 (woken there, or preempted there, →
/// switched in), in ns: what the keeper measures, by another tool.
const RUNQLAT_BT: &str = r#"
tracepoint:sched:sched_wakeup /args->target_cpu == 1 && args->comm == "keeper-probe"/ { @w[args->pid] = nsecs; }
tracepoint:sched:sched_switch /cpu == 1/ {
  if (args->prev_state == 0 && args->prev_comm == "keeper-probe") { @w[args->prev_pid] = nsecs; }
  $t = @w[args->next_pid];
  if ($t) { printf("sample %d\n", nsecs - $t); delete(@w[args->next_pid]); }
}
END { clear(@w); }
"#;

/// bpftrace running a script that prints `sample NS` lines, while it lives.
pub struct Tracer {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Tracer {
    /// Started and attached (it says so), or an error after 30 s.
    pub fn start(script: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let out = child.stdout.take().context("bpftrace's stdout")?;
        let (tx, lines) = mpsc::channel();
        crate::forward_lines(out, tx);
        let t = Instant::now();
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.starts_with("Attaching") => break,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("bpftrace exited"),
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("bpftrace did not attach within 30 s");
            }
        }
        Ok(Self {
            child: ChildGuard(Some(child)),
            lines,
        })
    }

    /// Stopped (SIGINT): its samples, in µs.
    pub fn finish(mut self) -> Vec<f64> {
        if let Some(c) = self.child.0.as_mut() {
            // SAFETY: a signal to our own child, by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
        self.child.0 = None;
        (self.lines.try_iter())
            .filter_map(|l| Some(l.strip_prefix("sample ")?.trim().parse::<f64>().ok()? / 1000.0))
            .collect()
    }
}

/// One phase of the latency check: the probe's own wake-up latencies and the keeper's.
pub struct LatencyCheck {
    label: &'static str,
    /// The probe's own, µs.
    probe_us: Vec<f64>,
    /// bpftrace's run-queue latency of the probe, µs.
    traced_us: Vec<f64>,
    /// The keeper's protected wake-ups on CPU 1: count, p50, p99, p99.9 (µs).
    keeper: (u64, [Option<f64>; 3]),
}

const QS: [f64; 3] = [0.5, 0.99, 0.999];

/// The protected probe on CPU 1 with the keeper running: alone, then with hogs on CPUs 0-1.
pub fn latency_check(b: &Bench<'_>) -> anyhow::Result<Vec<LatencyCheck>> {
    let mut out = Vec::new();
    for (label, load) in [
        ("keeper, CPU 1 quiet", None),
        ("keeper vs 4 hogs on CPUs 0-1", Some(Load::Hogs)),
    ] {
        let daemon = Daemon::start(b.keeper, b.policy, b.scope, b.work, 0)?;
        let load = match load {
            Some(l) => Some(l.start(b.scope, b.probe, &[0, 1], b.secs + 2)?),
            None => None,
        };
        let tracer = Tracer::start(RUNQLAT_BT)?;
        sleep(Duration::from_millis(500));
        let file = b.work.join("wakes");
        let args = [
            "wakes".to_string(),
            b.secs.to_string(),
            "1000".into(),
            "0".into(),
            file.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let banker = b.scope.dir.join("banker");
        let status = spawn_in(&banker, &[1], b.probe, &args)?.wait()?;
        anyhow::ensure!(status.success(), "keeper-probe wakes failed: {status}");
        let traced_us = tracer.finish();
        drop(load);
        let record = daemon.stop()?;
        let probe_us: Vec<f64> = (std::fs::read_to_string(&file)?.lines())
            .filter_map(|l| l.parse::<f64>().ok())
            .map(|ns| ns / 1000.0)
            .collect();
        let _ = std::fs::remove_file(&file);
        out.push(LatencyCheck {
            label,
            probe_us,
            traced_us,
            keeper: keeper_latency(&record),
        });
    }
    Ok(out)
}

/// The run record's protected wake-ups on CPU 1.
fn keeper_latency(record: &serde_json::Value) -> (u64, [Option<f64>; 3]) {
    let Some(p) = super::cpu1(record).map(|c| &c["protected"]) else {
        return (0, [None; 3]);
    };
    let q = |k: &str| p[k].as_f64();
    (
        p["count"].as_u64().unwrap_or(0),
        [q("p50_us"), q("p99_us"), q("p999_us")],
    )
}

/// The table: each quantile three ways, whether the keeper and bpftrace agree within 10 %, and
/// what the task's own figure adds (its wake-up's delivery from CPU 0).
pub fn print_latency_check(checks: &[LatencyCheck]) {
    println!(
        "\nWake-up latency of the protected task on CPU 1, three ways (µs): its own (`keeper-probe \
         wakes`, woken by its thread on CPU 0 every 1 ms, the waker's stamp → running), bpftrace's \
         run-queue latency of the same task (sched_wakeup → sched_switch) and the keeper's \
         (protected wake-ups on CPU 1 in its run record, interpolated)\n"
    );
    println!(
        "| phase | wake-ups own / bpftrace / keeper | p50 own / bpftrace / keeper | p99 own / bpftrace / keeper | p99.9 own / bpftrace / keeper | keeper vs bpftrace within 10 % | own − bpftrace, median (the wake-up's delivery) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for c in checks {
        let mut cells = Vec::new();
        let mut off = Vec::new();
        for (i, q) in QS.iter().enumerate() {
            let (own, traced) = (quantile(&c.probe_us, *q), quantile(&c.traced_us, *q));
            let keeper = c.keeper.1[i];
            cells.push(format!("{} / {} / {}", f(own), f(traced), f(keeper)));
            if let (Some(t), Some(k)) = (traced, keeper)
                && (k - t).abs() > 0.1 * t
            {
                off.push(format!("p{}", q * 100.0));
            }
        }
        let delivery = median(&c.probe_us).zip(median(&c.traced_us));
        println!(
            "| {} | {} / {} / {} | {} | {} | {} |",
            c.label,
            c.probe_us.len(),
            c.traced_us.len(),
            c.keeper.0,
            cells.join(" | "),
            if off.is_empty() {
                "yes".to_string()
            } else {
                format!("no: {}", off.join(", "))
            },
            delivery.map_or("-".into(), |(o, t)| format!("{:.1}", o - t)),
        );
    }
}

//! The keeper's figures checked from outside it.
//!
//! - **Evictions, by tracepoints**: bpftrace (not the keeper) watches `sched_switch` and
//!   `sched_migrate_task` during each keeper condition: an intruder's (`kb_*`) first switch-in
//!   on CPU 1 → its migration to another CPU. Each return to CPU 1 is timed afresh. A
//!   migration by the kernel's load balancer counts too (rare while the keeper holds the core).
//! - **Wake-up latency, by the protected task itself**: `keeper-probe wakes` in the Banker's
//!   cgroup on CPU 1, woken through an eventfd every millisecond by its own thread on CPU 0,
//!   times each wake-up from the waker's stamp to running again; beside it the keeper's
//!   p50/p99/p99.9 of protected wake-ups on CPU 1 from its run record, same task, same window.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Bench, load::Load, rig::Daemon, rig::spawn_in};
use crate::bench::{ChildGuard, quantile};

/// An intruder's first switch-in on CPU 1 → its migration off it, in ns.
const EVICTIONS_BT: &str = r#"
tracepoint:sched:sched_switch /cpu == 1 && strncmp(args->next_comm, "kb_", 3) == 0/ {
  if (@first[args->next_pid] == 0) { @first[args->next_pid] = nsecs; }
}
tracepoint:sched:sched_migrate_task /args->orig_cpu == 1 && args->dest_cpu != 1 && @first[args->pid] != 0/ {
  printf("evicted %d %d\n", args->pid, nsecs - @first[args->pid]);
  delete(@first[args->pid]);
}
END { clear(@first); }
"#;

/// bpftrace timing evictions while it lives.
pub struct EvictionTracer {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl EvictionTracer {
    /// Started and attached (it says so), or an error after 30 s.
    pub fn start() -> anyhow::Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", EVICTIONS_BT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let out = child.stdout.take().context("bpftrace's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
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

    /// Stopped (SIGINT): the evictions it timed, in µs.
    pub fn finish(mut self) -> Vec<f64> {
        if let Some(c) = self.child.0.as_mut() {
            // SAFETY: a signal to our own child, by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
        self.child.0 = None;
        (self.lines.try_iter())
            .filter_map(|l| {
                let ns: f64 = l
                    .strip_prefix("evicted ")?
                    .split(' ')
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(ns / 1000.0)
            })
            .collect()
    }
}

/// One phase of the latency check: the probe's own wake-up latencies and the keeper's.
pub struct LatencyCheck {
    label: &'static str,
    /// The probe's own, µs.
    probe_us: Vec<f64>,
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
            keeper: keeper_latency(&record),
        });
    }
    Ok(out)
}

/// The run record's protected wake-ups on CPU 1.
fn keeper_latency(record: &serde_json::Value) -> (u64, [Option<f64>; 3]) {
    let cpu1 = (record["cpus"].as_array().into_iter().flatten()).find(|c| c["cpu"] == 1);
    let Some(p) = cpu1.map(|c| &c["protected"]) else {
        return (0, [None; 3]);
    };
    let q = |k: &str| p[k].as_f64();
    (
        p["count"].as_u64().unwrap_or(0),
        [q("p50_us"), q("p99_us"), q("p999_us")],
    )
}

/// The table: each quantile both ways and their ratio, and whether they agree within 10 %.
pub fn print_latency_check(checks: &[LatencyCheck]) {
    println!(
        "\nWake-up latency of the protected task on CPU 1, two ways (µs): its own (`keeper-probe wakes`, \
         woken by its thread on CPU 0 every 1 ms, waker's stamp → running) and the keeper's \
         (protected wake-ups on CPU 1 in its run record, interpolated)\n"
    );
    println!(
        "| phase | wake-ups own / keeper | p50 own / keeper | p99 own / keeper | p99.9 own / keeper | within 10 % |"
    );
    println!("|---|---|---|---|---|---|");
    for c in checks {
        let mut cells = Vec::new();
        let mut agree = Vec::new();
        for (i, q) in QS.iter().enumerate() {
            let own = quantile(&c.probe_us, *q);
            let keeper = c.keeper.1[i];
            cells.push(format!(
                "{} / {}",
                own.map_or("-".into(), |v| format!("{v:.1}")),
                keeper.map_or("-".into(), |v| format!("{v:.1}"))
            ));
            if let (Some(o), Some(k)) = (own, keeper) {
                agree.push((k - o).abs() <= 0.1 * o);
            }
        }
        let verdict = match (agree.iter().all(|a| *a), agree.is_empty()) {
            (_, true) => "-".to_string(),
            (true, false) => "yes".to_string(),
            (false, false) => format!(
                "no: {}",
                (QS.iter().zip(&agree))
                    .filter(|(_, a)| !**a)
                    .map(|(q, _)| format!("p{}", q * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        println!(
            "| {} | {} / {} | {} | {} |",
            c.label,
            c.probe_us.len(),
            c.keeper.0,
            cells.join(" | "),
            verdict
        );
    }
}

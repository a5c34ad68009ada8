//! `cargo xtask bench isolation`: does the keeper hold the trading core (CPU 1) clear?
//!
//! The protected probe is a trading loop (`keeper-probe ticks`: every 1 ms, 300 µs of CPU
//! work) pinned to CPU 1 in the Banker's cgroup; each tick's response time (due → work done)
//! is the measure. A wakeup-latency probe (cyclictest, SCHED_OTHER) is not hurt by CPU hogs
//! under EEVDF on this kernel (p99 16 µs with 8 hogs pinned on its CPU): a bench on it proves
//! nothing. A task that needs the CPU is hurt by anything sharing the core.
//!
//! Conditions, interleaved in rounds (medians and per-round ratios reported): static isolation
//! (the load `taskset` to CPU 0), unprotected (the load on CPUs 0-1), the keeper enforcing
//! against the same load, the keeper attached with the load on CPU 0 (its sensing cost), and
//! adversaries against the keeper: a churn of respawning hogs, a spinner renamed
//! `kworker/1:9`, a spinner that re-pins itself onto CPU 1 every millisecond, a fork storm, a
//! SCHED_FIFO 99 spinner on CPU 1 and stress-ng's affinity stressor (each also unprotected, to
//! show that it hurts), and every adversary at once.
//! For each: the load's share of CPU 1 sampled from /proc apart from the keeper, and the
//! keeper's evictions with their latency (first instant on CPU 1 → moved), from its record and
//! from outside it (bpftrace on the scheduler's tracepoints, [`outside`]).
//! Then, with the keeper running: the protected task's own wake-up latencies beside the
//! keeper's figures, EVA preemption round trips and the daemon's footprint.

pub mod guest;
mod load;
mod outside;
mod rig;

use std::{
    collections::BTreeMap,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, median, quantile};
use crate::cargo;
use load::{Load, ShareSampler, newcomers, trading_probe};
use rig::{Daemon, Scope, control, cpu_ns, policy, spawn_in, status_kib};

/// One condition of the bench.
#[derive(Clone, Copy)]
struct Condition {
    /// Its name for `--only`.
    key: &'static str,
    label: &'static str,
    load: Load,
    /// CPUs the load may use.
    cpus: &'static [usize],
    keeper: bool,
    /// Fresh 30 ms spinners every 50 ms besides the load.
    newcomers: bool,
    /// The keeper's policy asks for the IRQ guard (`host.irq_guard: true`).
    irq_guard: bool,
}

const STATIC: Condition = Condition {
    key: "static",
    label: "static isolation (load taskset to CPU 0)",
    load: Load::Hogs,
    cpus: &[0],
    keeper: false,
    newcomers: true,
    irq_guard: false,
};
const UNPROTECTED: Condition = Condition {
    key: "unprotected",
    label: "unprotected (load on CPUs 0-1)",
    load: Load::Hogs,
    cpus: &[0, 1],
    keeper: false,
    newcomers: true,
    irq_guard: false,
};
const KEEPER: Condition = Condition {
    key: "keeper",
    label: "keeper enforcing (load on CPUs 0-1)",
    load: Load::Hogs,
    cpus: &[0, 1],
    keeper: true,
    newcomers: true,
    irq_guard: false,
};
const WATCHING: Condition = Condition {
    key: "sensing",
    label: "keeper attached, load taskset to CPU 0 (sensing cost)",
    load: Load::Hogs,
    cpus: &[0],
    keeper: true,
    newcomers: true,
    irq_guard: false,
};
const CHURN: Condition = Condition {
    key: "churn",
    label: "keeper vs churn: 8 respawning 50 ms hogs",
    load: Load::Churn,
    cpus: &[0, 1],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const KWORKER: Condition = Condition {
    key: "kworker",
    label: "keeper vs a spinner renamed kworker/1:9",
    load: Load::Kworker,
    cpus: &[0],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const REPIN: Condition = Condition {
    key: "repin",
    label: "keeper vs a spinner re-pinning itself every 1 ms",
    load: Load::Repin,
    cpus: &[1],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const FORKS: Condition = Condition {
    key: "forks",
    label: "keeper vs a fork storm (4 shells forking /bin/true)",
    load: Load::ForkStorm,
    cpus: &[0, 1],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const IO_STATIC: Condition = Condition {
    key: "io-static",
    label: "static isolation + disk I/O (reader on CPU 0)",
    load: Load::DiskIo,
    cpus: &[0],
    keeper: false,
    newcomers: false,
    irq_guard: false,
};
const IO_KEEPER: Condition = Condition {
    key: "io-keeper",
    label: "keeper + disk I/O, no IRQ guard",
    load: Load::DiskIo,
    cpus: &[0],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const IO_GUARD: Condition = Condition {
    key: "io-guard",
    label: "keeper + disk I/O, IRQ guard on",
    load: Load::DiskIo,
    cpus: &[0],
    keeper: true,
    newcomers: false,
    irq_guard: true,
};
const FIFO_UNPROTECTED: Condition = Condition {
    key: "fifo-unprotected",
    label: "unprotected vs a SCHED_FIFO 99 spinner on CPU 1",
    load: Load::RealTime,
    cpus: &[1],
    keeper: false,
    newcomers: false,
    irq_guard: false,
};
const FIFO: Condition = Condition {
    key: "fifo",
    label: "keeper vs a SCHED_FIFO 99 spinner on CPU 1",
    load: Load::RealTime,
    cpus: &[1],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const AFFINITY_UNPROTECTED: Condition = Condition {
    key: "affinity-unprotected",
    label: "unprotected vs stress-ng --affinity 2 --affinity-rand",
    load: Load::AffinityStress,
    cpus: &[0, 1],
    keeper: false,
    newcomers: false,
    irq_guard: false,
};
const AFFINITY: Condition = Condition {
    key: "affinity",
    label: "keeper vs stress-ng --affinity 2 --affinity-rand (defaults)",
    load: Load::AffinityStress,
    cpus: &[0, 1],
    keeper: true,
    newcomers: false,
    irq_guard: false,
};
const EVERYTHING_UNPROTECTED: Condition = Condition {
    key: "all-unprotected",
    label: "unprotected vs every adversary at once",
    load: Load::Everything,
    cpus: &[0, 1],
    keeper: false,
    newcomers: true,
    irq_guard: false,
};
const EVERYTHING: Condition = Condition {
    key: "all",
    label: "keeper vs every adversary at once",
    load: Load::Everything,
    cpus: &[0, 1],
    keeper: true,
    newcomers: true,
    irq_guard: false,
};
const ALL: [Condition; 17] = [
    STATIC,
    UNPROTECTED,
    KEEPER,
    WATCHING,
    CHURN,
    KWORKER,
    REPIN,
    FORKS,
    IO_STATIC,
    IO_KEEPER,
    IO_GUARD,
    FIFO_UNPROTECTED,
    FIFO,
    AFFINITY_UNPROTECTED,
    AFFINITY,
    EVERYTHING_UNPROTECTED,
    EVERYTHING,
];

/// What one condition measured in one round.
struct Row {
    label: &'static str,
    ticks: Vec<f64>,
    share: f64,
    evictions: u64,
    eviction_us: Vec<f64>,
    /// The same evictions timed by bpftrace (first switch-in on CPU 1 → migrated off it).
    traced_us: Vec<f64>,
    /// The keeper's own share of CPU 1 over its run (its eviction thread waits there), from
    /// its record (`None` without a keeper).
    keeper_share: Option<f64>,
    /// Interrupts on CPU 1 per second during the probe, by IRQ (`N: name`).
    irqs_per_s: BTreeMap<String, f64>,
}

impl Row {
    fn irqs_total(&self) -> f64 {
        self.irqs_per_s.values().fold(0.0, |a, b| a + b)
    }

    fn q(&self, q: f64) -> f64 {
        quantile(&self.ticks, q).unwrap_or(0.0)
    }
}

struct Bench<'a> {
    keeper: &'a Path,
    probe: &'a str,
    scope: &'a Scope,
    policy: &'a Path,
    /// The same with `host.irq_guard: true`.
    guarded: &'a Path,
    work: &'a Path,
    secs: u64,
}

impl Bench<'_> {
    fn run(&self, c: Condition, round: usize) -> anyhow::Result<Row> {
        let daemon = match c.keeper {
            true => Some(Daemon::start(
                self.keeper,
                if c.irq_guard {
                    self.guarded
                } else {
                    self.policy
                },
                self.scope,
                self.work,
                round,
            )?),
            false => None,
        };
        let tracer = match c.keeper {
            true => Some(outside::Tracer::start(outside::EVICTIONS_BT)?),
            false => None,
        };
        let load = c
            .load
            .start(self.scope, self.probe, c.cpus, self.secs + 2)?;
        let fresh = match c.newcomers {
            true => Some(newcomers(self.scope, self.probe, c.cpus, self.secs)?),
            false => None,
        };
        sleep(Duration::from_millis(500));
        let share = ShareSampler::start(self.scope);
        let (irqs, t0) = (load::cpu1_interrupts(), std::time::Instant::now());
        let ticks = trading_probe(self.scope, self.probe, self.secs)?;
        let (after, secs) = (load::cpu1_interrupts(), t0.elapsed().as_secs_f64());
        let share = share.finish();
        let irqs_per_s = (after.iter())
            .map(|(k, n)| {
                (
                    k.clone(),
                    n.saturating_sub(irqs.get(k).copied().unwrap_or(0)) as f64 / secs,
                )
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        drop(load);
        drop(fresh);
        let traced_us = tracer.map(|t| t.finish()).unwrap_or_default();
        let (evictions, eviction_us, keeper_share) = match daemon {
            Some(d) => {
                let record = d.stop()?;
                let evictions = record["evictions"].as_u64().unwrap_or(0);
                (evictions, samples(&record), keeper_share(&record))
            }
            None => (0, vec![], None),
        };
        Ok(Row {
            label: c.label,
            ticks,
            share,
            evictions,
            eviction_us,
            traced_us,
            keeper_share,
            irqs_per_s,
        })
    }
}

pub fn run(
    root: &Path,
    secs: u64,
    rounds: usize,
    preemptions: usize,
    only: &[String],
) -> anyhow::Result<()> {
    if let Some(k) = only.iter().find(|k| !ALL.iter().any(|c| c.key == *k)) {
        bail!(
            "--only: no condition {k:?} (known: {})",
            ALL.map(|c| c.key).join(", ")
        );
    }
    let chosen: Vec<Condition> = ALL
        .into_iter()
        .filter(|c| only.is_empty() || c.key == STATIC.key || only.iter().any(|k| k == c.key))
        .collect();
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bins"]))?;
    let keeper = root.join("target/release/keeper");
    let probe = root.join("target/release/keeper-probe");
    let probe = probe.to_str().context("path")?;
    let scope = Scope::new()?;
    let work = std::env::temp_dir().join(format!("keeper-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let guarded = policy(&scope, &work, true)?;
    let policy = policy(&scope, &work, false)?;
    let bench = Bench {
        keeper: &keeper,
        probe,
        scope: &scope,
        policy: &policy,
        guarded: &guarded,
        work: &work,
        secs,
    };
    let rounds = rounds.max(1);
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=rounds {
        for &c in &chosen {
            eprintln!("bench: round {round}/{rounds}: {}", c.label);
            rows.push(bench.run(c, round)?);
        }
    }
    eprintln!("bench: the protected task's own wake-up latencies beside the keeper's");
    let checks = outside::latency_check(&bench)?;
    let (preempt_ms, idle_cpu_pct, rss_kib, hwm_kib) =
        preemption_and_footprint(&bench, preemptions)?;
    let _ = std::fs::remove_dir_all(&work);
    load::remove_disk_file();
    print_tables(&rows, &chosen, rounds, secs);
    outside::print_latency_check(&checks);
    let pq = |q| quantile(&preempt_ms, q).map_or("-".into(), |v| format!("{v:.2}"));
    println!("\n| measure | count | p50 | p99 | max | target |\n|---|---|---|---|---|---|");
    println!(
        "| EVA preemption, `interaction start` → Muse frozen (ms) | {} | {} | {} | {} | p99 ≤ 0.5 ms (issue 32; 20 ms before) |",
        preempt_ms.len(),
        pq(0.5),
        pq(0.99),
        pq(1.0)
    );
    println!("\n| daemon footprint | value | target |\n|---|---|---|");
    println!(
        "| RSS while idle | {:.1} MiB (peak {:.1} MiB) | ≤ 25 MiB |",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!(
        "| CPU while idle (10 s, from each thread's schedstat) | {idle_cpu_pct:.3} % of one core | ≤ 0.2 % |"
    );
    Ok(())
}

fn print_tables(rows: &[Row], chosen: &[Condition], rounds: usize, secs: u64) {
    println!(
        "\nTrading loop on CPU 1 (every 1 ms, {} µs of CPU work; response = due → done), {rounds} \
         rounds of every condition interleaved, {secs} s each; medians over the rounds (max: the \
         largest); share: the load runnable on CPU 1, sampled from /proc every 500 µs\n",
        load::WORK_US
    );
    println!(
        "| condition | ticks | p50 µs | p99 µs | p99.9 µs | max µs | p99 vs static | load's share of CPU 1 | evictions | eviction p50 / p99 µs (keeper's record) | eviction p50 / p99 µs (bpftrace: on CPU 1 → migrated) | keeper's own share of CPU 1 | IRQs/s on CPU 1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let of = |label: &str| rows.iter().filter(|r| r.label == label).collect::<Vec<_>>();
    let med = |rs: &[&Row], f: &dyn Fn(&Row) -> f64| {
        median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let static_p99 = med(&of(STATIC.label), &|r| r.q(0.99)).max(1.0);
    for &c in chosen {
        let rs = of(c.label);
        let ev: Vec<f64> = rs.iter().flat_map(|r| r.eviction_us.clone()).collect();
        let eq = |q| quantile(&ev, q).map_or("-".into(), |v| format!("{v:.0}"));
        let tr: Vec<f64> = rs.iter().flat_map(|r| r.traced_us.clone()).collect();
        let tq = |q| quantile(&tr, q).map_or("-".into(), |v| format!("{v:.0}"));
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2} % | {} | {} / {} | {} / {} ({}) | {} | {:.0} |",
            c.label,
            rs.iter().map(|r| r.ticks.len()).sum::<usize>(),
            med(&rs, &|r| r.q(0.5)),
            med(&rs, &|r| r.q(0.99)),
            med(&rs, &|r| r.q(0.999)),
            rs.iter().map(|r| r.q(1.0)).fold(0.0, f64::max),
            med(&rs, &|r| r.q(0.99)) / static_p99,
            100.0 * med(&rs, &|r| r.share),
            rs.iter().map(|r| r.evictions).sum::<u64>(),
            eq(0.5),
            eq(0.99),
            tq(0.5),
            tq(0.99),
            tr.len(),
            median(&rs.iter().filter_map(|r| r.keeper_share).collect::<Vec<_>>())
                .map_or("-".into(), |s| format!("{:.3} %", 100.0 * s)),
            med(&rs, &|r| r.irqs_total()),
        );
    }
    for &c in chosen.iter().filter(|c| c.load == Load::DiskIo) {
        let rs = of(c.label);
        let mut names: Vec<&String> = rs.iter().flat_map(|r| r.irqs_per_s.keys()).collect();
        names.sort();
        names.dedup();
        let each: Vec<String> = (names.into_iter())
            .map(|n| {
                let rate = med(&rs, &|r| r.irqs_per_s.get(n).copied().unwrap_or(0.0));
                format!("{n} {rate:.0}/s")
            })
            .collect();
        println!(
            "
interrupts on CPU 1 (median per second), {}: {}",
            c.label,
            each.join(", ")
        );
    }
    for &c in chosen
        .iter()
        .filter(|c| c.key != STATIC.key && c.key != WATCHING.key)
    {
        let ratios: Vec<String> = of(c.label)
            .iter()
            .zip(of(STATIC.label))
            .map(|(k, s)| format!("{:.2}×", k.q(0.99) / s.q(0.99).max(1.0)))
            .collect();
        println!(
            "\np99 / static p99 per round, {}: {}",
            c.label,
            ratios.join(", ")
        );
    }
    if std::env::var_os("KEEPER_BENCH_SAMPLES").is_some() {
        for &c in chosen {
            let ev: Vec<f64> = of(c.label)
                .iter()
                .flat_map(|r| r.eviction_us.clone())
                .collect();
            println!("\neviction samples (µs), {}: {ev:?}", c.label);
            let tr: Vec<f64> = (of(c.label).iter())
                .flat_map(|r| r.traced_us.clone())
                .collect();
            println!("bpftrace's eviction samples (µs), {}: {tr:?}", c.label);
        }
    }
}

/// EVA preemption round trips (`interaction start` → Muse frozen, the reply comes after
/// cgroup.events says so), then the idle daemon's CPU and memory.
fn preemption_and_footprint(
    b: &Bench<'_>,
    preemptions: usize,
) -> anyhow::Result<(Vec<f64>, f64, u64, u64)> {
    let daemon = Daemon::start(b.keeper, b.policy, b.scope, b.work, 0)?;
    let (pid, socket) = (daemon.pid, daemon.socket.clone());
    let muse = ChildGuard(Some(spawn_in(
        &b.scope.dir.join("muse"),
        &[0],
        b.probe,
        &["spin", "600", "kb_muse"],
    )?));
    let eva = ChildGuard(Some(spawn_in(
        &b.scope.dir.join("eva"),
        &[0],
        b.probe,
        &["sleep", "600000", "1000"],
    )?));
    sleep(Duration::from_millis(500));
    let mut preempt_ms = Vec::new();
    for _ in 0..preemptions {
        let t0 = Instant::now();
        let answer = control(&socket, r#"{"command":"interaction","state":"start"}"#)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if answer["ok"] != true || !b.scope.frozen("muse") {
            bail!("interaction start did not freeze muse: {answer}");
        }
        preempt_ms.push(ms);
        control(&socket, r#"{"command":"interaction","state":"stop"}"#)?;
        let t = Instant::now();
        while b.scope.frozen("muse") {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("muse not thawed 5 s after interaction stop");
            }
            sleep(Duration::from_millis(5));
        }
    }
    drop(muse);
    drop(eva);
    sleep(Duration::from_secs(1));
    let ns0 = cpu_ns(pid);
    let t0 = Instant::now();
    sleep(Duration::from_secs(10));
    let idle_cpu_pct = 100.0 * (cpu_ns(pid) - ns0) as f64 / 1e9 / t0.elapsed().as_secs_f64();
    let rss_kib = status_kib(pid, "VmRSS:");
    let hwm_kib = status_kib(pid, "VmHWM:");
    daemon.stop()?;
    Ok((preempt_ms, idle_cpu_pct, rss_kib, hwm_kib))
}

/// The keeper's own share of CPU 1 in a run record (`keeper_ns` over the CPU's time).
fn keeper_share(record: &serde_json::Value) -> Option<f64> {
    let cpu1 = cpu1(record)?;
    let ns = |k: &str| cpu1[k].as_f64().unwrap_or(0.0);
    let all = [
        "idle_ns",
        "kernel_ns",
        "protected_ns",
        "intruder_ns",
        "keeper_ns",
    ]
    .map(ns)
    .iter()
    .sum::<f64>();
    (all > 0.0).then(|| ns("keeper_ns") / all)
}

/// CPU 1 (the trading core) in a run record.
fn cpu1(record: &serde_json::Value) -> Option<&serde_json::Value> {
    (record["cpus"].as_array()?.iter()).find(|c| c["cpu"] == 1)
}

/// The eviction latency samples (µs) of a run record.
fn samples(record: &serde_json::Value) -> Vec<f64> {
    record["eviction_latency"]["samples_us"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default()
}

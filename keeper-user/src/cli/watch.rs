//! `keeper watch`: a runqlat for the trading cores. Attaches the scheduler sensor, waits for
//! `--for` or Ctrl-C, detaches, then prints per-CPU latency histograms and the intruders table.

use std::{
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use super::{Format, parse_duration};
use crate::{
    cgroupfs::CgroupFs,
    cpulist::CpuList,
    sense::{
        latency::Histogram,
        procfs,
        sched::{CpuReadout, SchedConfig, SchedSensor},
        tracefs::Tracefs,
    },
};

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// CPUs to watch (the trading cores), e.g. `1` or `2-3,6`.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// A cgroup whose tasks (and its subtree's) are protected, relative to the cgroup v2 mount
    /// (/sys/fs/cgroup/unified on hybrid hosts). Repeatable.
    #[arg(long)]
    pub protect: Vec<String>,
    /// Stop after this long (e.g. 10s, 2m). Without it, runs until Ctrl-C or SIGTERM.
    #[arg(long = "for", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Output format of the final view.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The JSON document `keeper watch --format json` prints (documented in docs/watch.md).
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub duration_s: f64,
    pub cpus_watched: String,
    pub protected: Vec<String>,
    pub cpus: Vec<CpuView>,
    pub intruders: Vec<IntruderView>,
    pub kernel_threads: Vec<IntruderView>,
    pub events: EventCounts,
}

#[derive(Debug, Serialize)]
pub struct CpuView {
    pub cpu: u32,
    pub protected: LatencyView,
    pub other: LatencyView,
    pub idle_ns: u64,
    pub kernel_ns: u64,
    pub protected_ns: u64,
    pub intruder_ns: u64,
    pub switches: u64,
}

#[derive(Debug, Serialize)]
pub struct LatencyView {
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<f64>,
    /// Bucket i counts wakeups with 2^i ≤ latency < 2^(i+1) µs (bucket 0 also holds 0 µs).
    pub buckets: Vec<u64>,
}

impl From<&Histogram> for LatencyView {
    fn from(h: &Histogram) -> Self {
        let count = h.count();
        Self {
            count,
            p50_us: h.quantile_upper_us(0.5),
            p99_us: h.quantile_upper_us(0.99),
            max_us: (count > 0).then(|| h.max_ns as f64 / 1000.0),
            buckets: h.buckets.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct IntruderView {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Run time taken on the watched CPUs.
    pub stolen_ns: u64,
    /// stolen_ns / (duration × number of watched CPUs).
    pub share: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct EventCounts {
    pub received: u64,
    pub sent: u64,
    pub lost: u64,
}

pub fn run(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt.block_on(watch(args))?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &report)?,
        Format::Text => write_text(&mut out, &report)?,
    }
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

async fn watch(args: &WatchArgs) -> anyhow::Result<WatchReport> {
    let cgroups = CgroupFs::discover()?;
    let protected_ids = protected_subtrees(&cgroups, &args.protect)?;
    let tracefs = Tracefs::find_or_mount()?;
    let config = SchedConfig {
        trading_cpus: args.cpus.clone(),
        protected_cgroups: protected_ids,
        intruder_event_interval: Duration::from_millis(100),
    };
    let mut sensor = SchedSensor::attach(&tracefs, &config)?;
    // SAFETY: IntruderEvents owns the ring buffer's fd and keeps it open while the AsyncFd lives.
    let mut events =
        unsafe { AsyncFd::register_with_interest(sensor.take_events()?, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("polling the ring buffer")?;
    let started = Instant::now();
    tracing::info!(cpus = %args.cpus, protect = ?args.protect, "watching; Ctrl-C to stop");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    let mut received = 0u64;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            guard = events.readable_mut() => {
                let mut guard = guard?;
                for ev in guard.get_inner_mut().drain() {
                    received += 1;
                    tracing::debug!(pid = ev.pid, comm = %crate::sense::sched::comm_str(&ev.comm), cpu = ev.cpu, ran_ns = ev.ran_ns, "intruder");
                }
                guard.clear_ready();
            }
            _ = rescan.tick() => {
                sensor.prune_runnable(Duration::from_secs(60))?;
                // New child cgroups of a protected cgroup are protected too.
                match protected_subtrees(&cgroups, &args.protect) {
                    Ok(ids) => sensor.set_protected(&ids)?,
                    Err(e) => tracing::warn!(error = %e, "protected cgroup rescan failed"),
                }
            }
        }
    }
    let elapsed = started.elapsed();
    received += events.get_mut().drain().len() as u64;
    let readouts = sensor.cpu_readouts()?;
    let intruders = sensor.intruders()?;
    drop(events);
    drop(sensor); // detaches and unloads every program before we print
    tracing::info!(elapsed = ?elapsed, "detached");

    let index = cgroups.id_index();
    let span_ns = (elapsed.as_nanos() as f64 * args.cpus.len() as f64).max(1.0);
    let (mut kernel, mut users): (Vec<_>, Vec<_>) = intruders
        .into_iter()
        .map(|i| {
            let is_kthread = procfs::task_stat(i.pid).is_some_and(|s| s.is_kernel_thread());
            let view = IntruderView {
                pid: i.pid,
                tgid: i.tgid,
                comm: i.comm,
                cgroup: index
                    .get(&i.cgroup_id)
                    .cloned()
                    .unwrap_or_else(|| format!("(gone, id {})", i.cgroup_id)),
                cgroup_id: i.cgroup_id,
                stolen_ns: i.ran_ns,
                share: i.ran_ns as f64 / span_ns,
            };
            (is_kthread, view)
        })
        .partition(|(k, _)| *k);
    let strip = |v: &mut Vec<(bool, IntruderView)>| {
        v.sort_by_key(|x| std::cmp::Reverse(x.1.stolen_ns));
        v.drain(..).map(|(_, x)| x).collect::<Vec<_>>()
    };
    let events = EventCounts {
        received,
        sent: readouts.iter().map(|r| r.events_sent).sum(),
        lost: readouts.iter().map(|r| r.events_lost).sum(),
    };
    Ok(WatchReport {
        duration_s: elapsed.as_secs_f64(),
        cpus_watched: args.cpus.to_string(),
        protected: args.protect.clone(),
        cpus: readouts.iter().map(cpu_view).collect(),
        intruders: strip(&mut users),
        kernel_threads: strip(&mut kernel),
        events,
    })
}

/// Ids of every cgroup in the protected subtrees; a missing cgroup is an error naming it.
fn protected_subtrees(cgroups: &CgroupFs, paths: &[String]) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for p in paths {
        ids.extend(
            cgroups
                .subtree_ids(p)
                .with_context(|| format!("--protect {p}"))?,
        );
    }
    Ok(ids)
}

pub fn cpu_view(r: &CpuReadout) -> CpuView {
    CpuView {
        cpu: r.cpu,
        protected: (&r.protected).into(),
        other: (&r.other).into(),
        idle_ns: r.idle_ns,
        kernel_ns: r.kernel_ns,
        protected_ns: r.protected_ns,
        intruder_ns: r.intruder_ns,
        switches: r.switches,
    }
}

fn write_text(out: &mut impl std::io::Write, r: &WatchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "Watched CPUs {} for {:.1} s{}",
        r.cpus_watched,
        r.duration_s,
        if r.protected.is_empty() {
            String::new()
        } else {
            format!(", protecting {}", r.protected.join(", "))
        }
    )?;
    for c in &r.cpus {
        for (label, l) in [("protected tasks", &c.protected), ("other tasks", &c.other)] {
            writeln!(out)?;
            write_histogram(out, c.cpu, label, l)?;
        }
        let total = (c.idle_ns + c.kernel_ns + c.protected_ns + c.intruder_ns).max(1) as f64;
        writeln!(
            out,
            "CPU {} time: protected {:.1} %, intruders {:.1} %, kernel {:.1} %, idle {:.1} % ({} switches)",
            c.cpu,
            100.0 * c.protected_ns as f64 / total,
            100.0 * c.intruder_ns as f64 / total,
            100.0 * c.kernel_ns as f64 / total,
            100.0 * c.idle_ns as f64 / total,
            c.switches
        )?;
    }
    writeln!(out)?;
    write_intruders(out, "Intruders", &r.intruders)?;
    if !r.kernel_threads.is_empty() {
        writeln!(out)?;
        write_intruders(out, "Kernel threads (not evictable)", &r.kernel_threads)?;
    }
    writeln!(
        out,
        "\nIntruder events: {} received, {} sent, {} lost",
        r.events.received, r.events.sent, r.events.lost
    )
}

fn write_histogram(
    out: &mut impl std::io::Write,
    cpu: u32,
    label: &str,
    l: &LatencyView,
) -> std::io::Result<()> {
    let fmt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("≤ {v} µs"));
    writeln!(
        out,
        "CPU {cpu}, {label}: {} wakeups, p50 {}, p99 {}, max {}",
        l.count,
        fmt(l.p50_us),
        fmt(l.p99_us),
        l.max_us.map_or("-".to_string(), |m| format!("{m:.0} µs"))
    )?;
    let first = l.buckets.iter().position(|&c| c > 0);
    let last = l.buckets.iter().rposition(|&c| c > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(());
    };
    let peak = l.buckets.iter().copied().max().unwrap_or(1).max(1);
    writeln!(
        out,
        "{:>10} -> {:<10} : {:<8} distribution",
        "µs", "", "count"
    )?;
    for i in first..=last {
        let c = l.buckets[i];
        let bar = "*".repeat(((c * 40).div_ceil(peak)) as usize);
        writeln!(
            out,
            "{:>10} -> {:<10} : {:<8} |{:<40}|",
            Histogram::bucket_low_us(i),
            (1u64 << (i + 1)) - 1,
            c,
            bar
        )?;
    }
    Ok(())
}

fn write_intruders(
    out: &mut impl std::io::Write,
    title: &str,
    list: &[IntruderView],
) -> std::io::Result<()> {
    writeln!(out, "{title}:")?;
    if list.is_empty() {
        return writeln!(out, "  (none)");
    }
    writeln!(
        out,
        "  {:<16} {:>8} {:<32} {:>12} {:>7}",
        "COMM", "PID", "CGROUP", "STOLEN", "SHARE"
    )?;
    for i in list {
        writeln!(
            out,
            "  {:<16} {:>8} {:<32} {:>9.3} ms {:>6.1}%",
            i.comm,
            i.pid,
            i.cgroup,
            i.stolen_ns as f64 / 1e6,
            100.0 * i.share
        )?;
    }
    Ok(())
}

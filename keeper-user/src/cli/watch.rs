//! `keeper watch`: a runqlat for the trading cores. Attaches the scheduler sensor, waits for
//! `--for` or Ctrl-C, detaches, then prints per-CPU latency histograms, the intruders table and
//! the kernel noise (IRQ and softirq time) on the watched CPUs.

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

use super::{Format, parse_cpus, parse_duration};
use crate::{
    cpulist::CpuList,
    device::cgroupfs::CgroupFs,
    report::view::{
        CpuView, EventCounts, IntruderView, NoiseView, cpu_view, intruder_views, noise_views,
        write_histogram, write_intruders, write_noise,
    },
    sense::{
        sched::{SchedConfig, SchedSensor},
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

/// The JSON document `keeper watch --format json` prints (documented in docs/watch.md).
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub duration_s: f64,
    pub cpus_watched: String,
    pub protected: Vec<String>,
    pub cpus: Vec<CpuView>,
    pub intruders: Vec<IntruderView>,
    pub kernel_threads: Vec<IntruderView>,
    /// IRQ and softirq time on the watched CPUs, most first (`None`: not measured here).
    pub noise: Option<Vec<NoiseView>>,
    pub events: EventCounts,
}

pub fn run(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
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
            _ = rescan.tick() => match protected_subtrees(&cgroups, &args.protect) {
                Ok(ids) => sensor.upkeep(&ids)?,
                Err(e) => tracing::warn!(error = %e, "protected cgroup rescan failed"),
            },
        }
    }
    let elapsed = started.elapsed();
    received += events.get_mut().drain().len() as u64;
    let readouts = sensor.cpu_readouts()?;
    let intruders = sensor.intruders()?;
    let noise = sensor.noise();
    drop(events);
    drop(sensor); // detaches and unloads every program before we print
    tracing::info!(elapsed = ?elapsed, "detached");

    let span_ns = elapsed.as_nanos() as f64 * args.cpus.len() as f64;
    let (users, kernel) = intruder_views(intruders, &cgroups.id_index(), span_ns);
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
        intruders: users,
        kernel_threads: kernel,
        noise: noise.map(|n| noise_views(&n, span_ns)),
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
        writeln!(
            out,
            "CPU {} time: protected {:.1} %, intruders {:.1} %, kernel {:.1} %, keeper {:.2} %, idle {:.1} % ({} switches)",
            c.cpu,
            c.pct(c.protected_ns),
            c.pct(c.intruder_ns),
            c.pct(c.kernel_ns),
            c.pct(c.keeper_ns),
            c.pct(c.idle_ns),
            c.switches
        )?;
    }
    writeln!(out)?;
    write_intruders(out, "Intruders", &r.intruders)?;
    if !r.kernel_threads.is_empty() {
        writeln!(out)?;
        write_intruders(out, "Kernel threads (not evictable)", &r.kernel_threads)?;
    }
    if let Some(noise) = &r.noise {
        writeln!(out)?;
        write_noise(out, noise)?;
    }
    writeln!(
        out,
        "\nIntruder events: {} received, {} sent, {} lost",
        r.events.received, r.events.sent, r.events.lost
    )
}

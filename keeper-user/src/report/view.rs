//! The views shared by `keeper watch`, the run record and `keeper report`: per-CPU latency
//! histograms, intruders, event counts, and their text renderings.

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::sense::{
    latency::Histogram,
    sched::{CpuReadout, IntruderTime},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyView {
    pub count: u64,
    pub p50_us: Option<u64>,
    #[serde(default)]
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    #[serde(default)]
    pub p999_us: Option<u64>,
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
            p90_us: h.quantile_upper_us(0.9),
            p99_us: h.quantile_upper_us(0.99),
            p999_us: h.quantile_upper_us(0.999),
            max_us: (count > 0).then(|| h.max_ns as f64 / 1000.0),
            buckets: h.buckets.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventCounts {
    pub received: u64,
    pub sent: u64,
    pub lost: u64,
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

/// Intruder totals as views, most time stolen first, split into (user tasks, kernel threads).
/// `span_ns`: the time watched × the number of CPUs watched (for the share).
pub fn intruder_views(
    intruders: Vec<IntruderTime>,
    index: &HashMap<u64, String>,
    span_ns: f64,
) -> (Vec<IntruderView>, Vec<IntruderView>) {
    let (mut kernel, mut users): (Vec<_>, Vec<_>) = intruders
        .into_iter()
        .map(|i| {
            let is_kthread = i.kernel_thread;
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
                share: i.ran_ns as f64 / span_ns.max(1.0),
            };
            (is_kthread, view)
        })
        .partition(|(k, _)| *k);
    let strip = |v: &mut Vec<(bool, IntruderView)>| {
        v.sort_by_key(|x| std::cmp::Reverse(x.1.stolen_ns));
        v.drain(..).map(|(_, x)| x).collect::<Vec<_>>()
    };
    (strip(&mut users), strip(&mut kernel))
}

pub fn write_histogram(
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

pub fn write_intruders(
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

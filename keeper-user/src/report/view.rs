//! The views shared by `keeper watch`, the run record and `keeper report`: per-CPU latency
//! histograms, intruders, kernel noise (IRQ and softirq time), event counts, and their text
//! renderings.

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::sense::{
    latency::Histogram,
    noise::{Noise, NoiseCount},
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
    /// The keeper's own time on the core: its eviction thread, woken there by arrivals
    /// (absent from records written before it was counted).
    #[serde(default)]
    pub keeper_ns: u64,
    pub switches: u64,
}

impl CpuView {
    /// The CPU's time counted so far, whoever ran.
    pub fn total_ns(&self) -> u64 {
        self.idle_ns + self.kernel_ns + self.protected_ns + self.intruder_ns + self.keeper_ns
    }

    /// `ns` as a percentage of [`Self::total_ns`].
    pub fn pct(&self, ns: u64) -> f64 {
        100.0 * ns as f64 / self.total_ns().max(1) as f64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyView {
    pub count: u64,
    /// Quantiles in µs, interpolated in their bucket ([`crate::sense::latency::QUANTILE_ERROR`];
    /// in records written before the log-linear buckets: their log2 bucket's upper bound).
    pub p50_us: Option<f64>,
    #[serde(default)]
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    #[serde(default)]
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Counts per log-linear bucket ([`Histogram::bucket_bounds_ns`]); a record written with
    /// the former 32 log2 buckets is read into them, each count at its bucket's midpoint.
    #[serde(deserialize_with = "log_linear_buckets")]
    pub buckets: Vec<u64>,
}

/// Buckets as a record holds them: log-linear, or the former 32 log2 buckets (bucket i:
/// 2^i ≤ µs < 2^(i+1)), each count moved to the log-linear bucket of its midpoint.
fn log_linear_buckets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let read = Vec::<u64>::deserialize(d)?;
    const LOG2_BUCKETS: usize = 32;
    if read.len() != LOG2_BUCKETS {
        return Ok(read);
    }
    let mut out = vec![0; keeper_common::HIST_BUCKETS];
    for (i, n) in read.into_iter().enumerate() {
        let mid_ns = if i == 0 { 500 } else { 1500u64 << i };
        out[keeper_common::latency_bucket(mid_ns)] += n;
    }
    Ok(out)
}

impl From<&Histogram> for LatencyView {
    fn from(h: &Histogram) -> Self {
        let count = h.count();
        let q = |q: f64| h.quantile(q).map(|q| q.us());
        Self {
            count,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
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
        keeper_ns: r.keeper_ns,
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

/// The histogram as text: its quantiles, then one line per power of two that holds wakeups
/// (its 16 log-linear buckets summed; the quantiles come from the fine buckets).
pub fn write_histogram(
    out: &mut impl std::io::Write,
    cpu: u32,
    label: &str,
    l: &LatencyView,
) -> std::io::Result<()> {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} µs"));
    writeln!(
        out,
        "CPU {cpu}, {label}: {} wakeups, p50 {}, p99 {}, p99.9 {}, max {}",
        l.count,
        fmt(l.p50_us),
        fmt(l.p99_us),
        fmt(l.p999_us),
        l.max_us.map_or("-".to_string(), |m| format!("{m:.1} µs"))
    )?;
    let rows = octaves(&l.buckets);
    let peak = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:>10} -> {:<10} : {:<8} distribution",
        "µs", "", "count"
    )?;
    for (low, high, c) in rows {
        let bar = "*".repeat(((c * 40).div_ceil(peak)) as usize);
        let high = if high == u64::MAX {
            "…".to_string()
        } else {
            format!("{:.1}", high as f64 / 1000.0)
        };
        writeln!(
            out,
            "{:>10.1} -> {:<10} : {:<8} |{:<40}|",
            low as f64 / 1000.0,
            high,
            c,
            bar
        )?;
    }
    Ok(())
}

/// Log-linear buckets summed by power of two (the first 2 µs as one row), from the first row
/// that holds a count to the last: `(low ns, high ns, count)`.
pub fn octaves(buckets: &[u64]) -> Vec<(u64, u64, u64)> {
    let rows = all_octaves(buckets);
    let first = rows.iter().position(|r| r.2 > 0);
    let last = rows.iter().rposition(|r| r.2 > 0);
    match (first, last) {
        (Some(f), Some(l)) => rows[f..=l].to_vec(),
        _ => vec![],
    }
}

/// Every power of two's row of [`octaves`], from 0 µs.
pub fn all_octaves(buckets: &[u64]) -> Vec<(u64, u64, u64)> {
    let sub = keeper_common::HIST_SUB;
    (buckets.chunks(sub).enumerate())
        .map(|(o, chunk)| {
            let low = Histogram::bucket_bounds_ns(o * sub).0;
            let high = Histogram::bucket_bounds_ns(o * sub + chunk.len() - 1).1;
            (low, high, chunk.iter().sum())
        })
        .collect()
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

/// One interrupt source's time on the watched (trading) cores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseView {
    /// `irq` (a hard interrupt line) or `softirq` (a vector).
    pub kind: String,
    /// The IRQ number (hard interrupts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
    /// The device's action name (`virtio1-req.0`) or the softirq vector (`TIMER`).
    pub name: String,
    /// Net handler time (a softirq's without the hard IRQs inside it).
    pub time_ns: u64,
    pub count: u64,
    pub max_us: f64,
    /// time_ns / (duration × number of watched CPUs).
    pub share: f64,
}

/// Noise as views, most time first; IRQs by the names the sensor read with them. `span_ns`:
/// the time watched × the number of CPUs watched.
pub fn noise_views(noise: &Noise, span_ns: f64) -> Vec<NoiseView> {
    let names = &noise.names;
    let view = |kind: &str, irq: Option<u32>, name: String, c: &NoiseCount| NoiseView {
        kind: kind.into(),
        irq,
        name,
        time_ns: c.ns,
        count: c.count,
        max_us: c.max_ns as f64 / 1000.0,
        share: c.ns as f64 / span_ns.max(1.0),
    };
    let irqs = noise.irqs.iter().map(|(n, c)| {
        let name = names.get(n).cloned().unwrap_or_else(|| format!("irq {n}"));
        view("irq", Some(*n), name, c)
    });
    let softirqs = (noise.softirqs.iter()).map(|(v, c)| view("softirq", None, v.clone(), c));
    let mut out: Vec<NoiseView> = irqs.chain(softirqs).collect();
    out.sort_by_key(|v| std::cmp::Reverse(v.time_ns));
    out
}

/// The noise table (`keeper watch`, `keeper report`).
pub fn write_noise(out: &mut impl std::io::Write, list: &[NoiseView]) -> std::io::Result<()> {
    writeln!(out, "Kernel noise (interrupt time, net of nested IRQs):")?;
    if list.is_empty() {
        return writeln!(out, "  (none measured)");
    }
    writeln!(
        out,
        "  {:<8} {:<28} {:>9} {:>12} {:>10} {:>7}",
        "KIND", "SOURCE", "COUNT", "TIME", "MAX", "SHARE"
    )?;
    for n in list {
        let source = match n.irq {
            Some(irq) => format!("{irq}: {}", n.name),
            None => n.name.clone(),
        };
        writeln!(
            out,
            "  {:<8} {:<28} {:>9} {:>9.3} ms {:>7.1} µs {:>6.2}%",
            n.kind,
            source,
            n.count,
            n.time_ns as f64 / 1e6,
            n.max_us,
            100.0 * n.share
        )?;
    }
    Ok(())
}

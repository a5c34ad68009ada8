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

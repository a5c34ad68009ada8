//! `cargo xtask bench isolation --guest`: the same trading loop inside Debian's 6.1 guest
//! (TCG, full cgroup v2): static isolation, unprotected, the keeper enforcing with a cpuset
//! partition, and the keeper enforcing without one (the Banker under a parent that is no
//! partition: affinity and evictions, the host's path), interleaved in rounds by
//! tests/vm/bench.sh. The hogs are a neighbour with the highest CPU weight. TCG runs guest
//! code tens of times slower than the host, so the loop is scaled (a 10 ms period, 6 ms of
//! work) and only the ratios between the rows mean something.

use std::{collections::BTreeMap, path::Path};

use anyhow::bail;

use super::super::{median, quantile};
use crate::{cargo, vm};

/// The conditions bench.sh measures, in its order, with their labels.
const ROWS: [(&str, &str); 4] = [
    ("static", "static isolation (hogs taskset to CPU 0)"),
    ("unprotected", "unprotected (hogs on CPUs 0-1)"),
    (
        "keeper",
        "keeper enforcing (hogs on CPUs 0-1, partition path)",
    ),
    (
        "fallback",
        "keeper enforcing (hogs on CPUs 0-1, no partition: evictions)",
    ),
];

/// One `BENCH <condition> <round> key=value…` line.
struct Measure {
    condition: String,
    fields: BTreeMap<String, String>,
}

impl Measure {
    fn parse(line: &str) -> Option<Measure> {
        let mut words = line.split_whitespace();
        let condition = words.next()?.to_string();
        let _round = words.next()?;
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Measure { condition, fields })
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.fields.get(key)?.parse().ok()
    }

    /// A record's eviction latency samples (`samples_us=12.5,30,…`; `none`: no eviction).
    fn samples(&self) -> Vec<f64> {
        let list = self.fields.get("samples_us").map_or("", String::as_str);
        list.split(',').filter_map(|v| v.parse().ok()).collect()
    }
}

pub fn run(root: &Path, rounds: usize, secs: u64) -> anyhow::Result<()> {
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bins"]))?;
    let lines = vm::bench(root, rounds.max(1), secs)?;
    let measures: Vec<Measure> = lines.iter().filter_map(|l| Measure::parse(l)).collect();
    let of = |c: &str| -> Vec<&Measure> { measures.iter().filter(|m| m.condition == c).collect() };
    if of("keeper").is_empty() {
        bail!("the guest measured no keeper row: {lines:#?}");
    }
    let p99s = |c: &str| -> Vec<f64> { of(c).iter().filter_map(|m| m.num("p99")).collect() };
    let statics = p99s("static");
    println!(
        "\nTrading loop on CPU 1 of Debian's 6.1 guest (TCG, 2 vCPUs; every 10 ms, 6 ms of CPU work; \
         response = due → done) against 8 hogs of a neighbour with the highest CPU weight, \
         {rounds} rounds of {secs} s interleaved; medians over the rounds; share: a hog runnable \
         on CPU 1, sampled from /proc every 100 ms; evictions and their latency (first instant \
         on CPU 1 → moved) from the keeper's record, every round's samples together\n"
    );
    println!(
        "| condition | p50 µs | p99 µs | p99 vs static | p99 vs static, per round | hogs' share of CPU 1 | banker's partition | evictions | eviction p50 / p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (key, label) in ROWS {
        let ms = of(key);
        let p50: Vec<f64> = ms.iter().filter_map(|m| m.num("p50")).collect();
        let p99 = p99s(key);
        let ratios: Vec<String> = (p99.iter().zip(&statics))
            .map(|(p, s)| format!("{:.2}×", p / s.max(1.0)))
            .collect();
        let share: Vec<f64> = ms.iter().filter_map(|m| m.num("share")).collect();
        let partition = ms.last().and_then(|m| m.fields.get("partition").cloned());
        let (p99m, sm) = (median(&p99), median(&statics));
        let records = of(&format!("{key}-record"));
        let evictions: Option<u64> = (!records.is_empty()).then(|| {
            records
                .iter()
                .filter_map(|m| m.num("evictions"))
                .sum::<f64>() as u64
        });
        let samples: Vec<f64> = records.iter().flat_map(|m| m.samples()).collect();
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(median(&p50)),
            fmt(p99m),
            match (p99m, sm) {
                (Some(p), Some(s)) => format!("{:.2}×", p / s.max(1.0)),
                _ => "-".into(),
            },
            ratios.join(", "),
            median(&share).map_or("-".into(), |s| format!("{:.1} %", s / 10.0)),
            partition.unwrap_or_else(|| "-".into()),
            evictions.map_or("-".into(), |e| e.to_string()),
            if samples.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} / {}",
                    fmt(quantile(&samples, 0.5)),
                    fmt(quantile(&samples, 0.99))
                )
            },
        );
    }
    for m in measures.iter().filter(|m| m.condition.ends_with("-record")) {
        let fields: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{}: {}", m.condition, fields.join(" "));
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

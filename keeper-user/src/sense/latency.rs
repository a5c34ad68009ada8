//! Log2 latency histograms (bucket i: 2^i ≤ µs < 2^(i+1)), the percentiles read off them, and
//! the trading cores' p99 over the last 5 s (`LatencyWindow`).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use keeper_common::HIST_BUCKETS;
use serde::Serialize;

/// A log2 histogram of run-queue latency in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Counts per bucket, index i covering [2^i, 2^(i+1)) µs (bucket 0 also holds 0 µs).
    pub buckets: Vec<u64>,
    /// Largest sample, in nanoseconds (exact, not bucketed).
    pub max_ns: u64,
}

impl Histogram {
    pub fn from_buckets(buckets: &[u64; HIST_BUCKETS], max_ns: u64) -> Self {
        Self {
            buckets: buckets.to_vec(),
            max_ns,
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another histogram into this one.
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Upper bound in µs of the bucket holding quantile `q` (0 < q ≤ 1): "p99 ≤ N µs".
    /// The top bucket is bounded by the exact maximum. `None` when empty.
    pub fn quantile_upper_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = 1u64 << (i + 1);
                let max_us = self.max_ns.div_ceil(1000).max(1);
                return Some(upper.min(max_us));
            }
        }
        None
    }

    /// Lower bound in µs of bucket i.
    pub fn bucket_low_us(i: usize) -> u64 {
        if i == 0 { 0 } else { 1u64 << i }
    }
}

/// p99 wakeup latency of protected tasks on the trading cores over the last ~5 s.
#[derive(Default)]
pub struct LatencyWindow {
    snapshots: VecDeque<(Instant, HashMap<u32, Histogram>)>,
}

impl LatencyWindow {
    /// From this pass's readouts (`None`: the maps could not be read).
    pub fn p99(&mut self, readouts: Option<&[super::sched::CpuReadout]>) -> Option<u64> {
        let now: HashMap<u32, Histogram> = readouts?
            .iter()
            .map(|r| (r.cpu, r.protected.clone()))
            .collect();
        while self.snapshots.len() > 1 && self.snapshots[1].0.elapsed() > Duration::from_secs(5) {
            self.snapshots.pop_front();
        }
        let mut window = Histogram::default();
        for (cpu, h) in &now {
            let mut d = h.clone();
            if let Some((_, old)) = self.snapshots.front()
                && let Some(o) = old.get(cpu)
            {
                for (a, b) in d.buckets.iter_mut().zip(&o.buckets) {
                    *a = a.saturating_sub(*b);
                }
            }
            window.merge(&d);
        }
        if self
            .snapshots
            .back()
            .is_none_or(|(t, _)| t.elapsed() > Duration::from_millis(500))
        {
            self.snapshots.push_back((Instant::now(), now));
        }
        window.quantile_upper_us(0.99).map(|us| us * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut b = [0u64; HIST_BUCKETS];
        b[3] = 98; // 8..16 µs
        b[10] = 2; // 1024..2048 µs
        let h = Histogram::from_buckets(&b, 1_500_000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_upper_us(0.5), Some(16));
        assert_eq!(h.quantile_upper_us(0.98), Some(16));
        assert_eq!(h.quantile_upper_us(0.99), Some(1500));
        assert_eq!(Histogram::default().quantile_upper_us(0.5), None);
    }
}

//! The daemon's memory of a run: actions, samples over time, eviction and preemption timings,
//! and the run record built from them (`--report` at exit, `keeper report --live` meanwhile).

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use crate::{
    act::execute::Done,
    decide::{Applied, Observations},
    device::{
        cgroupfs::CgroupFs,
        placement::{Placement, owner_of_cgroup},
    },
    enforcer::Enforcer,
    policy::Policy,
    report::{
        ActionRecord, EvictionLatency, MAX_ACTIONS, MAX_SAMPLES, OomKillRecord, RECORD_VERSION,
        ReclaimRecord, RunRecord, Sample, SloVerdict,
        oom_history::{Kill, OomHistory, WEEK},
        quantile,
        view::{CpuView, IntruderView, NoiseView},
    },
    sense::{
        latency::Histogram,
        memory::{MemorySensor, OomEvents},
    },
};

/// At most this many timing samples of each kind are kept (the oldest go first).
const MAX_TIMINGS: usize = 100_000;

pub struct Recorder {
    started: Instant,
    started_at: jiff::Timestamp,
    actions: VecDeque<ActionRecord>,
    actions_dropped: u64,
    samples: Vec<Sample>,
    /// Keep one sample in `stride` (doubles each time the series is thinned).
    stride: u64,
    ticks: u64,
    eviction_us: VecDeque<f64>,
    preemption_ms: VecDeque<f64>,
    oom_kills: Vec<OomKillRecord>,
    /// The rolling week's OOM kills, across restarts (`None`: this run's only).
    history: Option<OomHistory>,
}

impl Recorder {
    pub fn new(started_at: jiff::Timestamp) -> Self {
        Self {
            started: Instant::now(),
            started_at,
            actions: VecDeque::new(),
            actions_dropped: 0,
            samples: Vec::new(),
            stride: 1,
            ticks: 0,
            eviction_us: VecDeque::new(),
            preemption_ms: VecDeque::new(),
            oom_kills: Vec::new(),
            history: None,
        }
    }

    pub fn started_at(&self) -> jiff::Timestamp {
        self.started_at
    }

    fn since_start(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn actions(&mut self, done: &[Done]) {
        let t_s = self.since_start();
        for d in done {
            if self.actions.len() == MAX_ACTIONS {
                self.actions.pop_front();
                self.actions_dropped += 1;
            }
            let detail = serde_json::to_value(&d.action.kind).unwrap_or_default();
            let kind = d.action.kind.name().to_string();
            self.actions.push_back(ActionRecord {
                at: d.at.clone(),
                t_s,
                kind,
                action: d.action.kind.to_string(),
                rule: d.action.rule.to_string(),
                reason: d.action.reason.clone(),
                outcome: d.lines(),
                ok: d.ok(),
                elapsed_ms: d.elapsed_ms,
                detail,
            });
        }
    }

    /// One tick's readings (`trading_p99_ns`: the latency window the engine saw;
    /// `intruder_ns`: intruders' time on the trading cores so far).
    pub fn sample(
        &mut self,
        applied: &Applied,
        gpu_power_w: Option<f64>,
        obs: &Observations,
        trading_p99_ns: Option<u64>,
        intruder_ns: Option<u64>,
    ) {
        self.ticks += 1;
        if !self.ticks.is_multiple_of(self.stride) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            self.stride *= 2;
        }
        self.samples.push(Sample {
            t_s: self.since_start(),
            trading_p99_us: trading_p99_ns.map(|ns| ns as f64 / 1000.0),
            loadavg: Some(obs.loadavg),
            cpu_pressure_some_avg10: Some(obs.cpu_pressure.some_avg10),
            memory_pressure_some_avg10: Some(obs.memory_pressure.some_avg10),
            memory_pressure_full_avg10: Some(obs.memory_pressure.full_avg10),
            gpu_temperature_c: obs.gpu.as_ref().map(|g| g.temperature_c),
            gpu_power_w,
            frozen: applied.frozen.len() as u32,
            throttled: applied.knobs.values().filter(|k| !k.is_empty()).count() as u32,
            trading_intruder_ns: intruder_ns,
        });
    }

    pub fn eviction(&mut self, us: f64) {
        push_capped(&mut self.eviction_us, us);
    }

    /// An OOM kill the memory sensor saw.
    /// Counts the OOM kills of the week before this run too, and keeps this run's.
    pub fn keep_history(&mut self, history: OomHistory) {
        self.history = Some(history);
    }

    pub fn oom_kill(&mut self, pid: u32, comm: String, cgroup: String, workload: Option<String>) {
        if let (Some(h), Some(w)) = (&mut self.history, &workload) {
            h.record(Kill {
                at: jiff::Timestamp::now(),
                workload: w.clone(),
                comm: comm.clone(),
                cgroup: cgroup.clone(),
            });
        }
        if self.oom_kills.len() < MAX_TIMINGS {
            let t_s = self.since_start();
            self.oom_kills.push(OomKillRecord {
                t_s,
                pid,
                comm,
                cgroup,
                workload,
            });
        }
    }

    /// `interaction start` → the preemption's freezes confirmed, in ms.
    pub fn preemption(&mut self, ms: f64) {
        push_capped(&mut self.preemption_ms, ms);
    }

    /// The record of the run so far.
    pub fn build(&self, run: &RunFacts, sensed: Sensed, live: bool) -> RunRecord {
        let evictions: Vec<f64> = self.eviction_us.iter().copied().collect();
        RunRecord {
            version: RECORD_VERSION,
            started: self.started_at.to_string(),
            ended: jiff::Timestamp::now().to_string(),
            duration_s: self.since_start(),
            policy: run.policy_name.clone(),
            mode: if run.dry_run { "dry-run" } else { "enforcing" }.to_string(),
            trading_cores: run.policy.host.trading_cores.to_string(),
            scope: run.scope.clone(),
            live,
            restored_at_start: sensed.restored_at_start,
            restored_at_exit: sensed.restored_at_exit,
            slo: verdicts(run.policy, &sensed.cpus, &self.preemption_ms, &self.samples),
            cpus: sensed.cpus,
            intruders: sensed.intruders,
            noise: sensed.noise,
            evictions: run.evictions,
            eviction_latency: EvictionLatency::of(&evictions),
            errors: run.errors,
            sizing: self.sizing(run.policy),
            oom_kills: self.oom_kills.clone(),
            reclaim: sensed.reclaim,
            samples: self.samples.clone(),
            actions: self.actions.iter().cloned().collect(),
            actions_dropped: self.actions_dropped,
        }
    }
}

impl Recorder {
    /// The sizing advice: over the rolling week where the history is kept, else this run.
    fn sizing(&self, policy: &Policy) -> Vec<crate::report::SizingAdvice> {
        let (kills, span_s): (Vec<&str>, f64) = match &self.history {
            Some(h) => (
                h.last_week(jiff::Timestamp::now())
                    .map(|k| k.workload.as_str())
                    .collect(),
                WEEK.as_secs_f64(),
            ),
            None => (
                (self.oom_kills.iter())
                    .filter_map(|k| k.workload.as_deref())
                    .collect(),
                self.since_start(),
            ),
        };
        crate::report::sizing::advise(policy, &kills, span_s)
    }
}

/// What the keeper that ran contributes to a record: its policy and its counters.
pub struct RunFacts<'a> {
    pub policy: &'a Policy,
    pub policy_name: String,
    pub dry_run: bool,
    pub scope: Option<String>,
    pub evictions: u64,
    pub errors: u64,
}

impl<'a> RunFacts<'a> {
    /// What the run record says of this enforcer.
    pub fn of(e: &'a Enforcer) -> RunFacts<'a> {
        RunFacts {
            policy: &e.policy,
            policy_name: e.source.name(),
            dry_run: e.act.dry_run(),
            scope: e.act.scope().map(str::to_string),
            evictions: e.evictions,
            errors: e.errors,
        }
    }
}

/// What the sensor and the actuators contribute to a record.
#[derive(Default)]
pub struct Sensed {
    pub cpus: Vec<CpuView>,
    pub intruders: Vec<IntruderView>,
    pub noise: Vec<NoiseView>,
    pub restored_at_start: Vec<String>,
    pub restored_at_exit: Vec<String>,
    pub reclaim: Vec<ReclaimRecord>,
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == MAX_TIMINGS {
        q.pop_front();
    }
    q.push_back(v);
}

/// Whether the run kept each promise of the policy: the trading cores' p99 wakeup latency and
/// intruder share (rules.slo, for the workload that owns them) and each `preempt.deadline`.
pub fn verdicts(
    policy: &Policy,
    cpus: &[CpuView],
    preemption_ms: &VecDeque<f64>,
    samples: &[Sample],
) -> Vec<SloVerdict> {
    let mut out = Vec::new();
    let slo = policy.rules.slo.as_ref();
    for w in policy.workloads.iter().filter(|w| w.owns_trading_cores) {
        if let Some(target) = slo.and_then(|s| s.trading_p99_wakeup) {
            out.push(wakeup_verdict(&w.name, target, cpus));
        }
        if let Some(target) = slo.and_then(|s| s.trading_intruder_share) {
            out.push(share_verdict(&w.name, target.get(), cpus, samples));
        }
    }
    let mut sorted: Vec<f64> = preemption_ms.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    for w in &policy.workloads {
        let Some(p) = &w.preempt else { continue };
        let deadline_ms = p.deadline.as_secs_f64() * 1000.0;
        let p99 = quantile(&sorted, 0.99);
        out.push(SloVerdict {
            workload: w.name.clone(),
            objective: "preemption_deadline".into(),
            target: format!("≤ {deadline_ms:.0} ms"),
            measured: p99.map(|v| {
                format!(
                    "p99 {v:.2} ms, max {:.2} ms ({} interactions)",
                    sorted.last().copied().unwrap_or(0.0),
                    sorted.len()
                )
            }),
            met: sorted.last().map(|max| *max <= deadline_ms),
            detail: format!(
                "`interaction start` → {} frozen (confirmed by cgroup.events)",
                p.targets.join(", ")
            ),
        });
    }
    out
}

fn wakeup_verdict(workload: &str, target: std::time::Duration, cpus: &[CpuView]) -> SloVerdict {
    let mut merged = Histogram::default();
    for c in cpus {
        merged.merge(&Histogram {
            buckets: c.protected.buckets.clone(),
            max_ns: c.protected.max_us.map_or(0, |m| (m * 1000.0) as u64),
        });
    }
    let target_us = target.as_secs_f64() * 1e6;
    let p99 = merged.quantile(0.99).map(|q| q.us());
    SloVerdict {
        workload: workload.into(),
        objective: "trading_p99_wakeup".into(),
        target: format!("p99 ≤ {target_us:.0} µs"),
        measured: p99.map(|p| format!("p99 {p:.1} µs ({} wakeups)", merged.count())),
        met: p99.map(|p| p <= target_us),
        detail: format!(
            "protected tasks' wakeup latency on the trading cores, whole run (quantiles {})",
            crate::sense::latency::QUANTILE_ERROR
        ),
    }
}

/// The window over which the intruder share is also judged.
const SHARE_WINDOW_S: f64 = 5.0;

/// Intruders' share of each trading core over the run (their time against everything the
/// programs counted there), and of all trading cores over the worst 5 s window of the samples.
fn share_verdict(
    workload: &str,
    target_pct: f64,
    cpus: &[CpuView],
    samples: &[Sample],
) -> SloVerdict {
    let run = cpus
        .iter()
        .map(|c| (c.cpu, c.pct(c.intruder_ns), c.total_ns()))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let worst = worst_window_pct(samples, cpus.len().max(1));
    let measured = run.filter(|r| r.2 > 0).map(|(cpu, pct, _)| {
        let window = worst.map_or("no 5 s window yet".into(), |w| {
            format!("worst 5 s window {w:.3} %")
        });
        format!("{pct:.3} % of CPU {cpu} over the run, {window}")
    });
    let met = measured
        .is_some()
        .then(|| run.is_some_and(|r| r.1 <= target_pct) && worst.is_none_or(|w| w <= target_pct));
    SloVerdict {
        workload: workload.into(),
        objective: "trading_intruder_share".into(),
        target: format!("≤ {target_pct} % of each trading core"),
        measured,
        met,
        detail: "time intruders (neither protected nor kernel threads) ran on the trading cores, \
                 from the programs' counters"
            .into(),
    }
}

/// The largest intruder share (%) of `cores` trading cores over any stretch of at least 5 s
/// between two samples.
fn worst_window_pct(samples: &[Sample], cores: usize) -> Option<f64> {
    let points: Vec<(f64, u64)> = samples
        .iter()
        .filter_map(|s| Some((s.t_s, s.trading_intruder_ns?)))
        .collect();
    let mut worst: Option<f64> = None;
    let mut j = 0;
    for (i, &(t, ns)) in points.iter().enumerate() {
        while j + 1 < i && t - points[j + 1].0 >= SHARE_WINDOW_S {
            j += 1;
        }
        let (t0, ns0) = points[j];
        if j < i && t - t0 >= SHARE_WINDOW_S {
            let pct = 100.0 * ns.saturating_sub(ns0) as f64 / ((t - t0) * 1e9 * cores as f64);
            worst = Some(worst.map_or(pct, |w: f64| w.max(pct)));
        }
    }
    worst
}

/// Logs and records the OOM kills waiting in the ring buffer.
pub fn oom_kills(
    events: &mut OomEvents,
    cg: &CgroupFs,
    placements: &BTreeMap<String, Placement>,
    recorder: &mut Recorder,
) {
    let kills = events.drain();
    if kills.is_empty() {
        return;
    }
    let index = cg.id_index();
    for k in kills {
        let cgroup = index
            .get(&k.cgroup_id)
            .cloned()
            .unwrap_or_else(|| format!("(id {})", k.cgroup_id));
        let workload = owner_of_cgroup(placements, &cgroup);
        let comm = k.victim_comm.clone().unwrap_or_else(|| "?".into());
        tracing::warn!(pid = k.victim_pid, %comm, cgroup = %cgroup, workload = ?workload, killer = %k.killer_comm, "OOM kill");
        recorder.oom_kill(k.victim_pid, comm, cgroup, workload);
    }
}

/// Direct-reclaim stalls per cgroup, most stalled time first.
pub fn reclaim_records(
    sensor: Option<&MemorySensor>,
    cg: &CgroupFs,
    placements: &BTreeMap<String, Placement>,
) -> Vec<ReclaimRecord> {
    let Some(list) = sensor.and_then(|s| s.reclaim().ok()) else {
        return vec![];
    };
    let index = cg.id_index();
    let mut out: Vec<ReclaimRecord> = list
        .into_iter()
        .map(|r| {
            let cgroup = index
                .get(&r.cgroup_id)
                .cloned()
                .unwrap_or_else(|| format!("(id {})", r.cgroup_id));
            ReclaimRecord {
                workload: owner_of_cgroup(placements, &cgroup),
                cgroup,
                stalls: r.count,
                total_ms: r.total_ns as f64 / 1e6,
                p99_us: r.stalls.quantile(0.99).map(|q| q.us()),
            }
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::view::LatencyView;

    fn cpu(intruder_ns: u64, rest_ns: u64) -> CpuView {
        let none = LatencyView {
            count: 0,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            p999_us: None,
            max_us: None,
            buckets: vec![],
        };
        CpuView {
            cpu: 1,
            protected: none.clone(),
            other: none,
            idle_ns: rest_ns,
            kernel_ns: 0,
            protected_ns: 0,
            intruder_ns,
            keeper_ns: 0,
            switches: 0,
        }
    }

    fn sample(t_s: f64, ns: u64) -> Sample {
        Sample {
            t_s,
            trading_intruder_ns: Some(ns),
            ..Sample::default()
        }
    }

    #[test]
    fn an_intruder_holding_the_core_fails_the_share_objective() {
        // 20 s run; an intruder held CPU 1 for 0.5 s between t=10 and t=11.
        let samples: Vec<Sample> = (0..=20)
            .map(|t| sample(t as f64, if t >= 11 { 500_000_000 } else { 0 }))
            .collect();
        let v = share_verdict("banker", 1.0, &[cpu(500_000_000, 19_500_000_000)], &samples);
        assert_eq!(v.objective, "trading_intruder_share");
        assert_eq!(v.met, Some(false), "{v:?}");
        let m = v.measured.unwrap();
        assert!(m.contains("2.500 % of CPU 1 over the run"), "{m}");
        assert!(m.contains("worst 5 s window 10.000 %"), "{m}");
        // The same 0.5 ms instead: met.
        let samples: Vec<Sample> = (0..=20)
            .map(|t| sample(t as f64, if t >= 11 { 500_000 } else { 0 }))
            .collect();
        let v = share_verdict("banker", 1.0, &[cpu(500_000, 19_999_500_000)], &samples);
        assert_eq!(v.met, Some(true), "{v:?}");
        // Nothing counted: not measured.
        assert_eq!(share_verdict("banker", 1.0, &[], &[]).met, None);
    }
}

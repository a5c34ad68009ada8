//! The daemon's memory of a run: actions, samples over time, eviction and preemption timings,
//! and the run record built from them (`--report` at exit, `keeper report --live` meanwhile).

use std::{collections::VecDeque, time::Instant};

use super::keeper::{Done, Keeper};
use crate::{
    decide::{ActionKind, Observations},
    policy::Policy,
    report::{
        ActionRecord, EvictionLatency, MAX_ACTIONS, MAX_SAMPLES, OomKillRecord, RECORD_VERSION,
        ReclaimRecord, RunRecord, Sample, SloVerdict, quantile,
        view::{CpuView, IntruderView},
    },
    sense::latency::Histogram,
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
            let kind = kind_name(&detail).unwrap_or_default().to_string();
            self.actions.push_back(ActionRecord {
                at: d.at.clone(),
                t_s,
                kind,
                action: d.action.kind.to_string(),
                rule: d.action.rule.to_string(),
                reason: d.action.reason.clone(),
                outcome: d.outcome.clone(),
                ok: d.ok,
                elapsed_ms: d.elapsed_ms,
                detail,
            });
        }
    }

    /// One tick's readings (`trading_p99_ns`: the latency window the engine saw).
    pub fn sample(&mut self, keeper: &Keeper, obs: &Observations, trading_p99_ns: Option<u64>) {
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
        let applied = &keeper.state.applied;
        self.samples.push(Sample {
            t_s: self.since_start(),
            trading_p99_us: trading_p99_ns.map(|ns| ns as f64 / 1000.0),
            loadavg: Some(obs.loadavg),
            cpu_pressure_some_avg10: Some(obs.cpu_pressure.some_avg10),
            memory_pressure_some_avg10: Some(obs.memory_pressure.some_avg10),
            memory_pressure_full_avg10: Some(obs.memory_pressure.full_avg10),
            gpu_temperature_c: obs.gpu.as_ref().map(|g| g.temperature_c),
            gpu_power_w: keeper.gpu_power_w(),
            frozen: applied.frozen.len() as u32,
            throttled: applied.knobs.values().filter(|k| !k.is_empty()).count() as u32,
        });
    }

    pub fn eviction(&mut self, us: f64) {
        push_capped(&mut self.eviction_us, us);
    }

    /// An OOM kill the memory sensor saw.
    pub fn oom_kill(&mut self, pid: u32, comm: String, cgroup: String, workload: Option<String>) {
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
    pub fn build(&self, keeper: &Keeper, sensed: Sensed, live: bool) -> RunRecord {
        let evictions: Vec<f64> = self.eviction_us.iter().copied().collect();
        RunRecord {
            version: RECORD_VERSION,
            started: self.started_at.to_string(),
            ended: jiff::Timestamp::now().to_string(),
            duration_s: self.since_start(),
            policy: keeper.source.name(),
            mode: if keeper.act.dry_run() {
                "dry-run"
            } else {
                "enforcing"
            }
            .to_string(),
            trading_cores: keeper.policy.host.trading_cores.to_string(),
            scope: keeper.act.scope().map(str::to_string),
            live,
            restored_at_start: sensed.restored_at_start,
            restored_at_exit: sensed.restored_at_exit,
            slo: verdicts(&keeper.policy, &sensed.cpus, &self.preemption_ms),
            cpus: sensed.cpus,
            intruders: sensed.intruders,
            evictions: keeper.evictions,
            eviction_latency: EvictionLatency::of(&evictions),
            errors: keeper.errors,
            sizing: crate::report::sizing::advise(
                &keeper.policy,
                &self.oom_kills,
                self.since_start(),
            ),
            oom_kills: self.oom_kills.clone(),
            reclaim: sensed.reclaim,
            samples: self.samples.clone(),
            actions: self.actions.iter().cloned().collect(),
            actions_dropped: self.actions_dropped,
        }
    }
}

/// What the sensor and the actuators contribute to a record.
#[derive(Default)]
pub struct Sensed {
    pub cpus: Vec<CpuView>,
    pub intruders: Vec<IntruderView>,
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

/// Whether the run kept each latency promise of the policy: the trading cores' p99 wakeup
/// latency (rules.slo, for the workload that owns them) and each `preempt.deadline`.
pub fn verdicts(
    policy: &Policy,
    cpus: &[CpuView],
    preemption_ms: &VecDeque<f64>,
) -> Vec<SloVerdict> {
    let mut out = Vec::new();
    if let Some(slo) = &policy.rules.slo {
        let mut merged = Histogram::default();
        for c in cpus {
            merged.merge(&Histogram {
                buckets: c.protected.buckets.clone(),
                max_ns: c.protected.max_us.map_or(0, |m| (m * 1000.0) as u64),
            });
        }
        let target_us = slo.trading_p99_wakeup.as_secs_f64() * 1e6;
        let p99 = merged.quantile_upper_us(0.99);
        for w in policy.workloads.iter().filter(|w| w.owns_trading_cores) {
            out.push(SloVerdict {
                workload: w.name.clone(),
                objective: "trading_p99_wakeup".into(),
                target: format!("p99 ≤ {target_us:.0} µs"),
                measured: p99.map(|p| format!("p99 ≤ {p} µs ({} wakeups)", merged.count())),
                met: p99.map(|p| (p as f64) <= target_us),
                detail: "protected tasks' wakeup latency on the trading cores, whole run (log2 \
                         buckets: the p99 is the upper bound of its bucket)"
                    .into(),
            });
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

/// An action's kind as the engine names it (`freeze`, `evict_intruder`): the `action` tag of
/// its serialized form.
pub fn kind_name(detail: &serde_json::Value) -> Option<&str> {
    detail["action"].as_str()
}

/// The pid of the intruder this action evicted, if it did.
pub fn is_eviction_done(d: &Done) -> Option<u32> {
    match d.action.kind {
        ActionKind::EvictIntruder { pid, .. }
            if d.ok && d.outcome.iter().any(|o| o.starts_with("done")) =>
        {
            Some(pid)
        }
        _ => None,
    }
}

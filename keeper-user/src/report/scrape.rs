//! What the loop tells the scrape's snapshot ([`Metrics`]): each tick's readings, and the
//! actions done and preemptions timed as they come.

use super::{
    metrics::Metrics,
    view::{self, NoiseView},
};
use crate::{
    act::execute::Done,
    decide::{EngineState, Observations},
    policy::Policy,
    sense::sched::CpuReadout,
};

/// A tick's readings and the engine's counts, as the scrape shows them.
pub struct Tick<'a> {
    pub policy: &'a Policy,
    pub state: &'a EngineState,
    pub obs: &'a Observations,
    pub readouts: &'a [CpuReadout],
    pub noise: Vec<NoiseView>,
    pub p99_ns: Option<u64>,
    pub evictions: u64,
    pub errors: u64,
    pub gpu_power_w: Option<f64>,
    pub undo_pending: usize,
}

impl Metrics {
    /// The snapshot as of this tick.
    pub fn tick(&self, t: Tick<'_>) {
        let (policy, obs, applied) = (t.policy, t.obs, &t.state.applied);
        self.update(|m| {
            m.cpus = t.readouts.iter().map(view::cpu_view).collect();
            m.noise = t.noise;
            m.events_sent = t.readouts.iter().map(|r| r.events_sent).sum();
            m.events_lost = t.readouts.iter().map(|r| r.events_lost).sum();
            m.evictions = t.evictions;
            m.errors = t.errors;
            m.workloads = (policy.workloads.iter())
                .map(|w| {
                    let frozen = applied.frozen.contains_key(&w.name);
                    (w.name.clone(), (frozen, applied.throttled(&w.name)))
                })
                .collect();
            m.trading_p99_seconds = t.p99_ns.map(|ns| ns as f64 / 1e9);
            m.loadavg = obs.loadavg;
            m.cpu_pressure_some = obs.cpu_pressure.some_avg10;
            m.memory_pressure_some = obs.memory_pressure.some_avg10;
            m.memory_pressure_full = obs.memory_pressure.full_avg10;
            m.gpu_temperature_celsius = obs.gpu.as_ref().map(|g| g.temperature_c);
            m.gpu_power_watts = t.gpu_power_w;
            m.undo_pending = t.undo_pending as u64;
            m.thermal_guard_active = !t.state.thermal.frozen.is_empty();
            m.last_tick_unix_s = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            // The service levels count only where someone owns the trading cores.
            let owned = policy.workloads.iter().any(|w| w.owns_trading_cores);
            let slo = policy.rules.slo.as_ref().filter(|_| owned);
            m.slo_trading_p99_seconds = slo
                .and_then(|s| s.trading_p99_wakeup)
                .map(|d| d.as_secs_f64());
            m.slo_trading_intruder_share_ratio = slo
                .and_then(|s| s.trading_intruder_share)
                .map(|p| p.get() / 100.0);
        });
    }

    /// Actions done, counted by kind and result, and a preemption that took `preempted_ms`
    /// (late past the policy's tightest `preempt.deadline`).
    pub fn done(&self, policy: &Policy, done: &[Done], preempted_ms: Option<f64>) {
        let deadline_ms = (policy.workloads.iter())
            .filter_map(|w| w.preempt.as_ref())
            .map(|p| p.deadline.as_secs_f64() * 1000.0)
            .fold(f64::INFINITY, f64::min);
        self.update(|m| {
            if let Some(ms) = preempted_ms {
                m.preemptions += 1;
                m.preemptions_late += u64::from(ms > deadline_ms);
            }
            for d in done {
                let kind = d.action.kind.name().to_string();
                *m.actions.entry((kind, d.ok())).or_default() += 1;
            }
        });
    }
}

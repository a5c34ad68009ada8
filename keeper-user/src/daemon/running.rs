//! The loop's state between wake-ups, and what each wake-up does: intruder events turned
//! into the engine's intruders (the fast path, decided on the last tick's readings), a tick
//! (read the host, decide, act, sample), a slow action coming back, OOM kills, and the exit.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use keeper_common::IntruderEvent;

use super::{
    DaemonError,
    fast::{Batch, FastHands},
};
use crate::{
    act::execute::Done,
    decide::{ActionKind, Intruder, Observations, Outcome, fast::FastEvictions},
    device::{cgroupfs::CgroupFs, watchdog::Watchdog},
    enforcer::Enforcer,
    report::{
        RunRecord,
        first_look::first_look,
        metrics,
        record::{self, Recorder, Sensed},
        scrape, view,
    },
    report::{first_look::Abilities, record::RunFacts},
    sense::{
        latency::LatencyWindow,
        memory::{MemorySensor, OomEvents},
        pressure::WorkloadTriggers,
        sched::{CpuReadout, LostEvents, SchedSensor, monotonic_ns},
        stays::Stays,
    },
};

pub(super) struct Running {
    pub enforcer: Enforcer,
    pub sensor: SchedSensor,
    pub memory_sensor: Option<MemorySensor>,
    pub cg: CgroupFs,
    pub recorder: Recorder,
    /// The scrape's snapshot (`--metrics`).
    metrics: Option<metrics::Metrics>,
    latency: LatencyWindow,
    /// The intruders' stays, and the cgroup index their events are read with.
    stays: Stays,
    last_prune: Instant,
    lost_events: LostEvents,
    restored_at_start: Vec<String>,
    /// Whether the first look (what the policy found here) was said.
    explained: bool,
    /// The hardware watchdog (`host.watchdog`), fed by the loop; disarmed at an orderly exit.
    pub watchdog: Option<Watchdog>,
    /// The eviction thread, and the filter it was last given.
    pub fast: Option<FastHands>,
    fast_filter: Option<FastEvictions>,
}

impl Running {
    pub fn new(
        enforcer: Enforcer,
        sensor: SchedSensor,
        memory_sensor: Option<MemorySensor>,
        cg: CgroupFs,
        recorder: Recorder,
        metrics: Option<metrics::Metrics>,
        restored_at_start: Vec<String>,
    ) -> Running {
        Running {
            stays: Stays::new(&cg),
            enforcer,
            sensor,
            memory_sensor,
            cg,
            recorder,
            metrics,
            latency: LatencyWindow::default(),
            last_prune: Instant::now(),
            lost_events: LostEvents::default(),
            restored_at_start,
            explained: false,
            watchdog: None,
            fast: None,
            fast_filter: None,
        }
    }

    /// Restarts the hardware watchdog's count (the loop's own timer, beside the events).
    pub fn feed_watchdog(&mut self) {
        if let Some(w) = &self.watchdog
            && let Err(e) = w.keepalive()
        {
            tracing::error!(error = %e, "hardware watchdog keepalive failed");
        }
    }

    /// The trading cores' p99 wakeup latency over the last window.
    pub fn p99(&mut self) -> Option<u64> {
        self.latency.p99(self.sensor.cpu_readouts().ok().as_deref())
    }

    /// The ticker: pending undos retried, the sensor's maps pruned every 5 s, then a full
    /// pass.
    pub fn tick(&mut self, triggers: &mut Option<WorkloadTriggers>) -> Result<(), DaemonError> {
        match self.enforcer.act.retry_undo() {
            Ok(done) => done
                .iter()
                .for_each(|r| tracing::info!(restored = %r, "undid a change that was pending")),
            Err(e) => tracing::warn!(error = %e, "retrying pending undos failed"),
        }
        if self.last_prune.elapsed() > Duration::from_secs(5) {
            self.stays.prune();
            (self.sensor).upkeep(&protected_ids(&self.enforcer, &self.cg))?;
            self.last_prune = Instant::now();
        }
        let lost = self.lost_events.rescan(&self.sensor);
        let intruders = self.intruders(lost, &HashSet::new());
        let started = Instant::now();
        self.full_pass(intruders, true, triggers);
        if !self.explained {
            self.explained = true;
            self.explain();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(
                took_ms = format!("{ms:.1}"),
                evict_on_arrival = self.fast_filter.is_some(),
                "first pass done: the policy is enforced"
            );
        }
        Ok(())
    }

    /// The first look, once the host has been read: what the policy found, what this host
    /// allows, and what the keeper will therefore do.
    fn explain(&self) {
        let abilities = Abilities::of(&self.enforcer, &self.cg);
        let placements = &self.enforcer.observer.placements;
        for line in first_look(&self.enforcer.policy, placements, &abilities) {
            tracing::info!(target: "keeper::first_look", "{line}");
        }
    }

    /// Intruder events, some evicted already by the eviction thread: those are counted and
    /// recorded, and the engine decides on all of them with the last tick's readings (nothing
    /// is read from the host before an eviction). A burst may have overflowed the ring or the
    /// programs' rate limit: then the trading cores' run queues are read too.
    pub fn events(&mut self, batch: Batch) {
        let mut events = batch.events;
        if events.len() >= 64 {
            events.extend(self.lost_events.rescan(&self.sensor));
        }
        let moved: HashSet<u32> = batch.evicted.iter().filter_map(Done::evicted).collect();
        let index_was = self.stays.generation();
        let owner_was = self.enforcer.state.applied.trading.clone();
        let intruders = self.intruders(events, &moved);
        if !batch.evicted.is_empty() {
            let done = self.enforcer.evicted_on_arrival(batch.evicted);
            self.after(&done);
        }
        if !intruders.is_empty() {
            let obs = self.enforcer.observe_intruders(intruders);
            let done = self.enforcer.tick(&obs);
            self.after(&done);
        }
        // A cgroup new to the index, or the cores held for another: the eviction thread
        // learns it now, not at the next tick.
        if self.stays.generation() != index_was || self.enforcer.state.applied.trading != owner_was
        {
            self.refresh_fast();
        }
    }

    /// Hands the eviction thread the engine's filter for its present state (only when it
    /// changed). A dry run evicts nothing, on arrival or later.
    fn refresh_fast(&mut self) {
        let Some(fast) = self.fast.as_mut() else {
            return;
        };
        if self.enforcer.act.dry_run() {
            return;
        }
        let protected: HashSet<u64> = protected_ids(&self.enforcer, &self.cg)
            .into_iter()
            .collect();
        let k = &self.enforcer;
        let filter = crate::decide::fast::compile(
            &k.policy,
            &k.state,
            self.stays.index(),
            &protected,
            k.act.scope(),
        );
        if filter != self.fast_filter {
            fast.set(filter.clone());
            self.fast_filter = filter;
        }
    }

    /// A PSI trigger fired: the host read and decided on at once.
    pub fn trigger(&mut self, triggers: &mut Option<WorkloadTriggers>) {
        self.full_pass(vec![], false, triggers);
    }

    /// Reads the host (one read of the per-CPU maps, for the latency window and the
    /// metrics), decides and acts; a tick also samples the run and syncs the journal.
    fn full_pass(
        &mut self,
        intruders: Vec<Intruder>,
        ticked: bool,
        triggers: &mut Option<WorkloadTriggers>,
    ) {
        let readouts = self.sensor.cpu_readouts().ok();
        let p99 = self.latency.p99(readouts.as_deref());
        let obs = self.enforcer.observe(intruders, p99);
        let done = self.enforcer.tick(&obs);
        self.after(&done);
        self.refresh_fast();
        if !ticked {
            return;
        }
        // New cgroups get their trigger within a tick; intruder events do not wait for it.
        if let Some(w) = triggers {
            let armed = w.sync(&self.enforcer.observer.placements, &self.cg);
            if !armed.is_empty() {
                tracing::info!(?armed, "memory pressure triggers armed on workloads");
            }
        }
        if let Err(e) = self.enforcer.act.sync_journal() {
            tracing::warn!(error = %e, "could not sync the journal to disk");
        }
        let intruder_ns = readouts
            .as_ref()
            .map(|r| r.iter().map(|c| c.intruder_ns).sum());
        let gpu_w = self.enforcer.observer.gpu_power_w();
        let applied = &self.enforcer.state.applied;
        self.recorder.sample(applied, gpu_w, &obs, p99, intruder_ns);
        self.refresh_metrics(readouts.as_deref().unwrap_or_default(), &obs, p99);
    }

    /// A slow action came back from the slow hands.
    pub fn slow_done(&mut self, d: Done) {
        let done = self.enforcer.slow_done(d);
        self.after(&done);
    }

    /// OOM kills waiting in the memory sensor's ring buffer, logged and recorded.
    pub fn oom_kills(&mut self, events: &mut OomEvents) {
        let placements = &self.enforcer.observer.placements;
        record::oom_kills(events, &self.cg, placements, &mut self.recorder);
    }

    /// The engine's intruders from kernel events (`moved`: evicted on arrival already).
    fn intruders(&mut self, events: Vec<IntruderEvent>, moved: &HashSet<u32>) -> Vec<Intruder> {
        let evicted = &self.enforcer.state.evicted;
        let was_evicted = |pid| evicted.contains_key(&pid);
        (self.stays).intruders(events, moved, was_evicted, &self.sensor)
    }

    /// How long the keeper has been running, in seconds.
    pub fn run_s(&self) -> f64 {
        (jiff::Timestamp::now().duration_since(self.recorder.started_at()))
            .as_secs_f64()
            .max(0.0)
    }

    /// The tasks that ran on the trading cores unprotected over the `run_s` seconds of the
    /// run, most time first (the cgroup index read again when one names a cgroup it lacks).
    pub fn intruder_views(&mut self, run_s: f64) -> Vec<view::IntruderView> {
        let span_ns = self.span_ns(run_s);
        let list = match self.sensor.intruders() {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "intruders unreadable");
                return vec![];
            }
        };
        if let Some(new) = list
            .iter()
            .find(|i| !self.stays.index().contains_key(&i.cgroup_id))
        {
            self.stays.know(new.cgroup_id);
        }
        view::intruder_views(list, self.stays.index(), span_ns).0
    }

    /// The trading cores' time over `run_s` seconds (ns): what shares are of.
    fn span_ns(&self, run_s: f64) -> f64 {
        run_s * 1e9 * self.sensor.trading_cpus().len() as f64
    }

    /// Interrupt time on the trading cores over the run, by source, most first (empty where
    /// it is not measured).
    pub fn noise_views(&self, run_s: f64) -> Vec<view::NoiseView> {
        (self.sensor.noise()).map_or_else(Vec::new, |n| view::noise_views(&n, self.span_ns(run_s)))
    }

    /// What follows actions done: recorded and counted, evictions timed, evicted tasks'
    /// arrival reports re-armed.
    pub fn after(&mut self, done: &[Done]) {
        self.recorder.actions(done);
        let preempted = self.enforcer.preempted(done);
        if let Some(ms) = preempted {
            self.recorder.preemption(ms);
        }
        if let Some(m) = &self.metrics {
            m.done(&self.enforcer.policy, done, preempted);
        }
        for d in done {
            let ActionKind::EvictIntruder { pid, .. } = d.action.kind else {
                continue;
            };
            if let Some(first) = d.evicted().and_then(|pid| self.stays.end(pid)) {
                self.recorder
                    .eviction(moved_ns(d).saturating_sub(first) as f64 / 1000.0);
            }
            match d.outcome {
                // It may come back to a trading core: news at its next switch-in (also one
                // whose eviction found it already off the cores: it may be put back).
                Outcome::Done => {
                    if let Err(e) = self.sensor.forget_seen(pid) {
                        tracing::warn!(pid, error = %e, "could not re-arm the arrival report of an evicted task");
                    }
                }
                // Outside the scope: its time there is no eviction's latency.
                Outcome::ObservedOnly => {
                    self.stays.end(pid);
                }
                _ => {}
            }
        }
    }

    /// The scrape's snapshot, as of this tick.
    fn refresh_metrics(&self, readouts: &[CpuReadout], obs: &Observations, p99: Option<u64>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let k = &self.enforcer;
        metrics.tick(scrape::Tick {
            policy: &k.policy,
            state: &k.state,
            obs,
            readouts,
            noise: self.noise_views(self.run_s()),
            p99_ns: p99,
            evictions: k.evictions,
            errors: k.errors,
            gpu_power_w: k.observer.gpu_power_w(),
            undo_pending: k.act.undo_pending().len(),
        });
    }

    /// Per-CPU views, the intruders table and the reclaim stalls, as the sensors have them.
    pub fn sensed(&mut self) -> Sensed {
        let cpus: Vec<_> = (self.sensor.cpu_readouts())
            .map(|r| r.iter().map(view::cpu_view).collect())
            .unwrap_or_default();
        let run_s = self.run_s();
        let intruders = self.intruder_views(run_s);
        let noise = self.noise_views(run_s);
        let placements = &self.enforcer.observer.placements;
        Sensed {
            cpus,
            intruders,
            noise,
            reclaim: record::reclaim_records(self.memory_sensor.as_ref(), &self.cg, placements),
            ..Sensed::default()
        }
    }

    /// The exit: the sensors detached, the slow hands stopped, every change undone; the run
    /// record.
    pub fn finish(mut self) -> Result<RunRecord, DaemonError> {
        tracing::info!("stopping: undoing every change");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let mut sensed = self.sensed();
        // The eviction thread ends before the undo: nothing is moved while it runs.
        if let Some(fast) = self.fast.take() {
            let rescues = fast.rescues();
            if rescues > 0 {
                tracing::info!(
                    rescues,
                    "the eviction thread was sent home {rescues} times by its rescuer (a real-time task held it off the trading cores)"
                );
            }
        }
        drop(self.sensor);
        self.enforcer.stop_slow_hands();
        sensed.restored_at_exit = self.enforcer.act.restore_all()?;
        sensed.restored_at_start = self.restored_at_start;
        Ok(self
            .recorder
            .build(&RunFacts::of(&self.enforcer), sensed, false))
    }
}

/// Cgroup ids the sensor treats as protected: the subtrees of the trading-core owner's cgroups
/// (those its match names, and those found for it, such as a VM in a range).
pub(super) fn protected_ids(enforcer: &Enforcer, cg: &CgroupFs) -> Vec<u64> {
    let placements = &enforcer.observer.placements;
    let mut cgroups: Vec<String> = (enforcer.policy.workloads.iter())
        .filter(|w| w.owns_trading_cores)
        .flat_map(|w| {
            let found = placements.get(&w.name).map(|p| p.cgroups.clone());
            w.matcher
                .cgroups()
                .into_iter()
                .chain(found.unwrap_or_default())
        })
        .collect();
    cgroups.sort();
    cgroups.dedup();
    (cgroups.iter())
        .filter_map(|c| cg.subtree_ids(c).ok())
        .flatten()
        .collect()
}

/// When an eviction's task left the trading cores (now, if the actuators did not say).
fn moved_ns(d: &Done) -> u64 {
    d.moved_ns.unwrap_or_else(monotonic_ns)
}

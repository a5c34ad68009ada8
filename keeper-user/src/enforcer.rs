//! The enforcer: the policy, the engine's memory (`decide`'s state), the actuators with their
//! queue and slow hands, the observer, and what was done. One `tick` = observe → decide → act;
//! what an outcome changes goes back to the engine (`decide::acknowledge`, a GPU handoff's
//! rollback). The daemon's loop holds one and calls it on each wake-up.

use std::{collections::VecDeque, time::Instant};

use crate::{
    act::{
        Actuators,
        execute::Done,
        queue::{Carried, Hands, Queue},
        slow::SlowHands,
    },
    decide::{self, Action, EngineState, Intruder, Observations, Outcome, Step},
    device::procfs::HostTotals,
    policy::{Policy, PolicySource},
    sense::observer::{Observer, Reading},
};

/// What the observer reads besides the host: the policy, the cgroup tree, the GPU handle.
fn reading<'a>(policy: &'a Policy, act: &'a Actuators, interaction: bool) -> Reading<'a> {
    Reading {
        policy,
        cg: act.cgroups(),
        gpu: act.gpu_shared(),
        interaction,
    }
}

pub struct Enforcer {
    pub source: PolicySource,
    pub policy: Policy,
    pub state: EngineState,
    pub act: Actuators,
    pub totals: HostTotals,
    /// Placements, PSI hints, the GPU readout, the last observation.
    pub observer: Observer,
    pub interaction: bool,
    /// The last actions carried out or tried (not those observed only), oldest first.
    pub last: VecDeque<Done>,
    pub evictions: u64,
    pub errors: u64,
    /// Actions waiting behind a slow one.
    queue: Queue,
    /// When the interaction whose preemption is not done yet started.
    preempting: Option<Instant>,
    /// The thread that carries slow actions out (`None`: everything runs on the caller's).
    slow: Option<SlowHands>,
}

impl Enforcer {
    pub fn new(source: PolicySource, policy: Policy, act: Actuators) -> Self {
        Self {
            source,
            policy,
            state: EngineState::default(),
            act,
            totals: HostTotals::read(),
            observer: Observer::default(),
            interaction: false,
            last: VecDeque::new(),
            evictions: 0,
            errors: 0,
            queue: Queue::default(),
            preempting: None,
            slow: None,
        }
    }

    /// The policy's values the actuators keep: the balloon floor, and whether a real-time
    /// intruder is demoted as it moves (`rules.intruders.real_time`).
    pub fn set_actuator_values(&mut self) {
        if let Some(m) = &self.policy.rules.memory {
            self.act.balloon_floor = m.balloon_floor;
        }
        self.act.demote_real_time =
            self.policy.rules.intruders.real_time == crate::policy::RealTimeIntruders::Demote;
    }

    /// The eviction path: the last full observation with these intruders (nothing is read
    /// from the host before an eviction; the next tick reads it again).
    pub fn observe_intruders(&mut self, intruders: Vec<Intruder>) -> Observations {
        let r = reading(&self.policy, &self.act, self.interaction);
        self.observer.with_intruders(&r, intruders)
    }

    /// Gathers the observations of this instant (intruders and latency come from the sensor).
    pub fn observe(&mut self, intruders: Vec<Intruder>, p99_ns: Option<u64>) -> Observations {
        let r = reading(&self.policy, &self.act, self.interaction);
        self.observer.observe(&r, intruders, p99_ns)
    }

    /// Decides on `obs` and carries the actions out. Returns what was done now (a slow action
    /// comes back later, through [`Enforcer::slow_done`]). When a step of a GPU handoff fails,
    /// the engine is asked again at once and its rollback is carried out.
    pub fn tick(&mut self, obs: &Observations) -> Vec<Done> {
        // Freezes not confirmed by now and given up: the engine hears it before it decides.
        let (late, rollback) = self.unconfirmed_freezes();
        let actions = decide::decide(&self.policy, &mut self.state, obs, jiff::Timestamp::now());
        let mut carried = self.carry(|q, h, s| q.carry(h, s, actions));
        carried.done.splice(0..0, late);
        carried.rollback |= rollback;
        self.after(carried, obs)
    }

    /// The freezes and thaws that were not seen in time, as failed actions the engine has
    /// heard; whether a GPU handoff rolls back.
    fn unconfirmed_freezes(&mut self) -> (Vec<Done>, bool) {
        let mut rollback = false;
        let mut out = vec![];
        for (action, e, waited) in self.act.confirm_freezes() {
            let step = decide::Step::Failed {
                retryable: true,
                error: e.to_string(),
            };
            let d = Done::new(action, vec![step], waited.as_secs_f64() * 1000.0);
            let mut batch = decide::Batch::default();
            rollback |= decide::acknowledge(&mut self.state, &mut batch, &d.action, d.outcome);
            out.push(d);
        }
        (out, rollback)
    }

    /// A slow action came back from the slow hands.
    pub fn slow_done(&mut self, done: Done) -> Vec<Done> {
        let carried = self.carry(|q, h, s| q.finished(h, s, done));
        let obs = self.observer.last().cloned().unwrap_or_default();
        self.after(carried, &obs)
    }

    /// Evictions the eviction thread carried out on arrival: the engine told what each came
    /// to (a failed one is asked again by the engine), then counted and kept like any other.
    pub fn evicted_on_arrival(&mut self, done: Vec<Done>) -> Vec<Done> {
        for d in &done {
            let mut batch = decide::Batch::default();
            decide::acknowledge(&mut self.state, &mut batch, &d.action, d.outcome);
            decide::moved(&mut self.state, &d.action, d.moved_ns);
        }
        let carried = Carried {
            done,
            rollback: false,
        };
        // No rollback follows an eviction: the observations are not read.
        self.after(carried, &Observations::default())
    }

    /// An interaction starts or ends; a start times the preemption it causes.
    pub fn interact(&mut self, start: bool) {
        self.interaction = start;
        self.preempting = start.then(Instant::now);
    }

    /// The preemption's time (ms) when `done` holds the freeze an interaction caused.
    pub fn preempted(&mut self, done: &[Done]) -> Option<f64> {
        let froze = done
            .iter()
            .any(|d| d.ok() && matches!(d.action.kind, decide::ActionKind::Freeze { .. }));
        if !froze {
            return None;
        }
        let at = self.preempting.take()?;
        Some(at.elapsed().as_secs_f64() * 1000.0)
    }

    /// The actions decided and not carried out yet: the slow one out, then those behind it.
    pub fn pending(&self) -> Vec<&Action> {
        self.queue.pending()
    }

    /// Starts the slow hands: from now on actions that wait on a device run on their own
    /// thread and come back on `done`.
    pub fn start_slow_hands(
        &mut self,
        done: tokio::sync::mpsc::UnboundedSender<Done>,
    ) -> std::io::Result<()> {
        let slow = self.act.split_slow();
        self.slow = Some(SlowHands::start(slow, done)?);
        Ok(())
    }

    /// Stops the slow hands (before the exit's undo), letting the action out finish.
    pub fn stop_slow_hands(&mut self) {
        if let Some(slow) = self.slow.take()
            && let Some(act) = slow.stop(std::time::Duration::from_secs(10))
        {
            self.act.take_back(act);
        }
    }

    fn carry(
        &mut self,
        f: impl FnOnce(&mut Queue, &mut Hands, &mut EngineState) -> Carried,
    ) -> Carried {
        let mut hands = Hands {
            act: &mut self.act,
            slow: self.slow.as_ref(),
            placements: &self.observer.placements,
            totals: self.totals,
        };
        f(&mut self.queue, &mut hands, &mut self.state)
    }

    /// Counts and keeps what was done; a rollback is decided and carried out at once.
    fn after(&mut self, mut carried: Carried, obs: &Observations) -> Vec<Done> {
        if carried.rollback {
            let again = decide::decide(&self.policy, &mut self.state, obs, jiff::Timestamp::now());
            tracing::warn!(
                steps = again.len(),
                "GPU handoff step failed: rolling back to the holder running"
            );
            let more = self.carry(|q, h, s| q.carry(h, s, again));
            carried.done.extend(more.done);
        }
        for d in &carried.done {
            self.count(d);
            // Tasks outside `--scope` seen on a trading core are many (a shell, a terminal):
            // kept, they would push what was done out of `status` and `top` within seconds.
            // The run record and the log have them.
            if d.outcome == Outcome::ObservedOnly {
                continue;
            }
            if self.last.len() == 50 {
                self.last.pop_front();
            }
            self.last.push_back(d.clone());
        }
        carried.done
    }

    /// Counts and logs one action carried out.
    fn count(&mut self, d: &Done) {
        let (action, outcome, ms) = (&d.action, d.lines(), d.elapsed_ms);
        if d.evicted().is_some() {
            self.evictions += 1;
        }
        // Quiet: nothing was touched or looked at (outside the scope, a controller this host
        // lacks, already said); an action that found things already so is still news.
        let quiet = d
            .steps
            .iter()
            .all(|s| matches!(s, Step::ObservedOnly { .. } | Step::Skipped { .. }));
        if !d.ok() {
            self.errors += 1;
            tracing::warn!(rule = %action.rule, reason = %action.reason, ?outcome, elapsed_ms = ms, "{} failed", action.kind);
        } else if quiet {
            tracing::debug!(rule = %action.rule, reason = %action.reason, ?outcome, "{}", action.kind);
        } else {
            tracing::info!(rule = %action.rule, reason = %action.reason, ?outcome, elapsed_ms = ms, "{}", action.kind);
        }
    }
}

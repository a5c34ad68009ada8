//! Carrying the engine's actions out, in order, with slow ones off the loop. A batch (the
//! actions of one `decide`) runs at once until a slow action ([`super::slow::is_slow`]) is
//! reached; that one goes to the slow hands, and the rest of its batch, and batches decided
//! meanwhile, wait for its outcome, in order (a freeze after a GPU checkpoint, a start after a
//! hibernate). Evictions never wait: a batch's intruder actions run at once, whatever is
//! out. Without slow hands (tests, one-shot commands) everything runs at once.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use super::{
    Actuators,
    execute::{Done, execute, steps},
    slow::{Job, SlowHands, is_slow},
};
use crate::{
    decide::{self, Action, ActionKind, Batch, EngineState, Step},
    device::{placement::Placement, procfs::HostTotals},
};

/// What carrying an action out needs from the keeper.
pub struct Hands<'a> {
    pub act: &'a mut Actuators,
    pub slow: Option<&'a SlowHands>,
    pub placements: &'a BTreeMap<String, Placement>,
    pub totals: HostTotals,
}

/// Batches waiting behind a slow action, oldest first, each with its outcomes so far.
#[derive(Default)]
pub struct Queue {
    batches: VecDeque<(VecDeque<Action>, Batch)>,
    /// The slow action out on the slow hands (it belongs to the front batch), since when.
    out: Option<(Action, Instant)>,
}

/// What a call carried out now, and whether the engine must decide again at once (a GPU
/// handoff rolls back).
#[derive(Default)]
pub struct Carried {
    pub done: Vec<Done>,
    pub rollback: bool,
}

impl Queue {
    /// The slow action out, and for how long.
    pub fn out(&self) -> Option<(&Action, std::time::Duration)> {
        self.out.as_ref().map(|(a, at)| (a, at.elapsed()))
    }

    /// The actions decided and not carried out yet: the slow one out, then those behind it.
    pub fn pending(&self) -> Vec<&Action> {
        let out = self.out.iter().map(|(a, _)| a);
        out.chain(self.batches.iter().flat_map(|(b, _)| b.iter()))
            .collect()
    }

    /// Carries one batch out (at once, or behind the slow action out).
    pub fn carry(
        &mut self,
        h: &mut Hands,
        state: &mut EngineState,
        actions: Vec<Action>,
    ) -> Carried {
        // Intruders are evicted (or stopped) at once, whatever waits: nothing else in a batch
        // depends on them, nor they on it.
        let (intruders, rest): (VecDeque<Action>, VecDeque<Action>) =
            actions.into_iter().partition(|a| {
                matches!(
                    a.kind,
                    ActionKind::EvictIntruder { .. } | ActionKind::StopIntruder { .. }
                )
            });
        let mut out = Carried::default();
        run_inline(h, state, &mut (intruders, Batch::default()), &mut out);
        if !rest.is_empty() {
            self.batches.push_back((rest, Batch::default()));
            let more = self.pump(h, state);
            out.done.extend(more.done);
            out.rollback |= more.rollback;
        }
        out
    }

    /// The slow action out came back: the engine hears its outcome, and what waited goes on.
    pub fn finished(&mut self, h: &mut Hands, state: &mut EngineState, done: Done) -> Carried {
        self.out = None;
        let mut out = Carried::default();
        let batch = match self.batches.front_mut() {
            Some((_, b)) => b,
            None => &mut Batch::default(),
        };
        out.rollback |= decide::acknowledge(state, batch, &done.action, done.outcome);
        decide::moved(state, &done.action, done.moved_ns);
        out.done.push(done);
        let more = self.pump(h, state);
        out.done.extend(more.done);
        out.rollback |= more.rollback;
        out
    }

    /// Runs the front batches until one waits on a slow action or none is left.
    fn pump(&mut self, h: &mut Hands, state: &mut EngineState) -> Carried {
        let mut out = Carried::default();
        while self.out.is_none() {
            let Some(front) = self.batches.front_mut() else {
                break;
            };
            if let Some(slow) = h.slow
                && let Some(action) = next_slow(h, state, front, &mut out)
            {
                let job = Job {
                    action: action.clone(),
                    placements: h.placements.clone(),
                    totals: h.totals,
                };
                match slow.send(job) {
                    Ok(()) => self.out = Some((action, Instant::now())),
                    Err(job) => {
                        // The slow hands are gone (stopping): carried out here.
                        front.0.push_front(job.action);
                        run_inline(h, state, front, &mut out);
                    }
                }
                continue;
            }
            if h.slow.is_none() {
                run_inline(h, state, front, &mut out);
            }
            if self.out.is_none() {
                self.batches.pop_front();
            }
        }
        out
    }
}

/// Runs the batch's actions up to its next slow one, which it returns (taken off the batch).
fn next_slow(
    h: &mut Hands,
    state: &mut EngineState,
    batch: &mut (VecDeque<Action>, Batch),
    out: &mut Carried,
) -> Option<Action> {
    while let Some(action) = batch.0.pop_front() {
        if let Some(slow) = run_one(h, state, &mut batch.1, action, out, true) {
            return Some(slow);
        }
    }
    None
}

/// Runs every action of the batch here, slow ones included.
fn run_inline(
    h: &mut Hands,
    state: &mut EngineState,
    batch: &mut (VecDeque<Action>, Batch),
    out: &mut Carried,
) {
    while let Some(action) = batch.0.pop_front() {
        run_one(h, state, &mut batch.1, action, out, false);
    }
}

/// One action: skipped when the engine no longer wants it, returned when it is slow and
/// `hand_slow`, else carried out here and acknowledged.
fn run_one(
    h: &mut Hands,
    state: &mut EngineState,
    batch: &mut Batch,
    action: Action,
    out: &mut Carried,
    hand_slow: bool,
) -> Option<Action> {
    if let Some(why) = decide::still_wanted(state, batch, &action) {
        tracing::warn!(rule = %action.rule, "{} skipped: {why}", action.kind);
        out.done
            .push(Done::new(action, vec![Step::Skipped { detail: why }], 0.0));
        return None;
    }
    if hand_slow && is_slow(&action.kind) {
        return Some(action);
    }
    let started = Instant::now();
    let report = execute(h.act, h.placements, h.totals, &action);
    let steps = steps(h.act, report);
    let mut d = Done::new(action, steps, started.elapsed().as_secs_f64() * 1000.0);
    d.moved_ns = h.act.first_move_ns.take();
    out.rollback |= decide::acknowledge(state, batch, &d.action, d.outcome);
    decide::moved(state, &d.action, d.moved_ns);
    out.done.push(d);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        act::journal::Journal,
        decide::{Action, RuleId},
        device::cgroupfs::CgroupFs,
        policy::{Amount, Percent},
    };

    fn action(kind: ActionKind) -> Action {
        Action {
            kind,
            rule: RuleId::new("test"),
            reason: String::new(),
        }
    }

    fn kinds(done: &[Done]) -> Vec<&'static str> {
        done.iter().map(|d| d.action.kind.name()).collect()
    }

    #[test]
    fn a_slow_action_holds_its_batch_behind_it_and_never_an_eviction() {
        let root = std::env::temp_dir().join(format!("keeper-queue-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut act = Actuators::new(CgroupFs::at(&root), Journal::disabled(), true, None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let slow = SlowHands::start(act.split_slow(), tx).unwrap();
        let placements = BTreeMap::new();
        let totals = HostTotals {
            cpus: 2,
            memory_bytes: 1 << 30,
        };
        let mut h = Hands {
            act: &mut act,
            slow: Some(&slow),
            placements: &placements,
            totals,
        };
        let (mut q, mut state) = (Queue::default(), EngineState::default());
        let balloon = ActionKind::Balloon {
            workload: "lab".into(),
            vmid: 102,
            target: Amount::Percent(Percent::new(50.0)),
        };
        let freeze = ActionKind::Freeze {
            workload: "lab".into(),
        };
        let carried = q.carry(&mut h, &mut state, vec![action(balloon), action(freeze)]);
        assert!(carried.done.is_empty(), "{:?}", kinds(&carried.done));
        let pending: Vec<_> = q.pending().iter().map(|a| a.kind.name()).collect();
        assert_eq!(pending, ["balloon", "freeze"]);
        // An eviction decided meanwhile does not wait; a thaw does.
        let evict = ActionKind::EvictIntruder {
            pid: u32::MAX - 1,
            comm: "hog".into(),
            cgroup: "x".into(),
            cpu: 1,
            to: "0".parse().unwrap(),
            seen_ns: None,
            start: None,
        };
        let thaw = ActionKind::Thaw {
            workload: "lab".into(),
        };
        let carried = q.carry(&mut h, &mut state, vec![action(thaw), action(evict)]);
        assert_eq!(kinds(&carried.done), ["evict_intruder"]);
        // The balloon comes back: the freeze, then the thaw, in the engine's order.
        let back = rx.blocking_recv().unwrap();
        let carried = q.finished(&mut h, &mut state, back);
        assert_eq!(kinds(&carried.done), ["balloon", "freeze", "thaw"]);
        assert!(q.pending().is_empty() && q.out().is_none());
        slow.stop(std::time::Duration::from_secs(5)).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Kernel work off the trading cores while they are protected. `host.workqueue_guard`: the
//! unbound workqueues run on the housekeeping cores (asked once; put back at exit).
//! `host.irq_guard`: every interrupt line allowed on
//! them is moved to the housekeeping cores, again each time a driver or irqbalance puts one
//! back (the sensor reads the lines at each tick). A line the kernel refuses to move (managed)
//! is reported once and left alone. A line asked for is not asked for again within
//! [`IRQ_RECHECK`]: the same observation twice gives no new action.

use std::time::Duration;

use jiff::Timestamp;

use super::{Action, ActionKind, EngineState, Observations, RuleId, elapsed};
use crate::policy::Policy;

/// A moved line seen on the trading cores again is moved again after this long.
pub const IRQ_RECHECK: Duration = Duration::from_secs(1);

/// The workqueues' CPUs, asked for once while the cores are protected (after `reconcile`,
/// which says whether they are now).
pub fn workqueues(policy: &Policy, state: &mut EngineState) -> Option<Action> {
    let to = &policy.host.housekeeping_cores;
    let text = to.to_string();
    let a = &mut state.applied;
    if !policy.host.workqueue_guard || a.trading.is_none() || a.workqueues.as_ref() == Some(&text) {
        return None;
    }
    a.workqueues = Some(text);
    Some(Action {
        kind: ActionKind::SetWorkqueueCpus { to: to.clone() },
        rule: RuleId::new("host.workqueue_guard"),
        reason: format!(
            "the trading cores {} are protected: kernel work that may run anywhere runs on {to}",
            policy.host.trading_cores
        ),
    })
}

/// What `host.irq_guard` asks for once while the cores are protected, besides moving lines:
/// block I/O completed on the CPU that submitted it (the completion work of a disk whose
/// interrupt stays on a trading core, a managed line that cannot move at run time, leaves
/// with the submitter), and a running irqbalance told to leave the trading cores out of its
/// balancing (the guard moves its lines back anyway; this keeps it from putting them there
/// every pass). Each is asked again after its own failure.
pub fn irq_guard_once(policy: &Policy, state: &mut EngineState) -> Vec<Action> {
    let a = &mut state.applied;
    if !policy.host.irq_guard || a.trading.is_none() {
        return vec![];
    }
    let cores = &policy.host.trading_cores;
    let rule = RuleId::new("host.irq_guard");
    let mut out = Vec::new();
    if !std::mem::replace(&mut a.io_on_submitter, true) {
        out.push(Action {
            kind: ActionKind::CompleteIoOnSubmitter,
            rule: rule.clone(),
            reason: format!(
                "the trading cores {cores} are protected: block I/O completes on the CPU that submitted it, not where its disk's interrupt fires"
            ),
        });
    }
    let told = cores.to_string();
    if a.irqbalance_off.as_ref() != Some(&told) {
        a.irqbalance_off = Some(told);
        out.push(Action {
            kind: ActionKind::KeepIrqbalanceOff {
                cpus: cores.clone(),
            },
            rule,
            reason: format!(
                "the trading cores {cores} are protected: irqbalance leaves them alone"
            ),
        });
    }
    out
}

/// The IRQ moves of this decision (after `reconcile`, which says whether the cores are
/// protected now).
pub fn irqs(
    policy: &Policy,
    obs: &Observations,
    state: &mut EngineState,
    now: Timestamp,
) -> Vec<Action> {
    state
        .irqs_asked
        .retain(|_, at| elapsed(*at, now) < IRQ_RECHECK);
    if !policy.host.irq_guard || state.applied.trading.is_none() {
        return vec![];
    }
    let cores = &policy.host.trading_cores;
    let wanted: Vec<_> = obs
        .irqs_on_trading_cores
        .iter()
        .filter(|i| {
            !state.unmovable_irqs.contains(&i.irq) && !state.irqs_asked.contains_key(&i.irq)
        })
        .collect();
    for i in &wanted {
        state.irqs_asked.insert(i.irq, now);
    }
    wanted
        .into_iter()
        .map(|i| Action {
            kind: ActionKind::MoveIrq {
                irq: i.irq,
                name: i.name.clone(),
                to: policy.host.housekeeping_cores.clone(),
            },
            rule: RuleId::new("host.irq_guard"),
            reason: format!(
                "IRQ {} ({}) may fire on the trading cores {cores}",
                i.irq, i.name
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Batch, IrqObs, Outcome, WorkloadObs, acknowledge, decide};
    use crate::policy::{HostFacts, load};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_773_100_000_000 + ms).unwrap()
    }

    fn policy(guards: &str) -> Policy {
        let text = format!(
            "version: 1\nhost: {{ trading_cores: \"1\", housekeeping_cores: \"0\", {guards} }}\n\
             workloads:\n  - {{ name: banker, rank: 1, match: {{ vmid: 100 }}, owns_trading_cores: true }}\n"
        );
        load(text.as_bytes(), &HostFacts::default()).unwrap().policy
    }

    fn obs(banker: bool, irqs: &[u32]) -> Observations {
        let mut o = Observations::default();
        if banker {
            o.workloads.insert("banker".into(), WorkloadObs::default());
        }
        o.irqs_on_trading_cores = irqs
            .iter()
            .map(|irq| IrqObs {
                irq: *irq,
                name: format!("dev{irq}"),
            })
            .collect();
        o
    }

    fn moves(actions: &[Action]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match &a.kind {
                ActionKind::MoveIrq { irq, to, .. } if to.to_string() == "0" => Some(*irq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_on_the_trading_cores_move_while_they_are_protected_managed_ones_once() {
        let p = policy("irq_guard: true");
        let mut s = EngineState::default();
        // Nobody owns the cores: nothing moves.
        assert!(moves(&decide(&p, &mut s, &obs(false, &[36, 38]), t(0))).is_empty());
        let first = decide(&p, &mut s, &obs(true, &[36, 38]), t(100));
        assert_eq!(moves(&first), [36, 38]);
        // The same observation again, at once: no new action.
        assert!(moves(&decide(&p, &mut s, &obs(true, &[36, 38]), t(100))).is_empty());
        // 36 is managed (skipped); 38 moved, then put back by irqbalance.
        let a36 = first
            .iter()
            .find(|a| moves(&[(*a).clone()]) == [36])
            .unwrap();
        acknowledge(&mut s, &mut Batch::default(), a36, Outcome::Skipped);
        assert!(moves(&decide(&p, &mut s, &obs(true, &[36, 38]), t(600))).is_empty());
        assert_eq!(
            moves(&decide(&p, &mut s, &obs(true, &[36, 38]), t(1200))),
            [38]
        );
        // Without the guard nothing moves.
        let mut s = EngineState::default();
        assert!(
            moves(&decide(
                &policy("irq_guard: false"),
                &mut s,
                &obs(true, &[38]),
                t(0)
            ))
            .is_empty()
        );
    }

    #[test]
    fn io_completes_on_its_submitter_and_irqbalance_is_told_once_under_the_irq_guard() {
        // One of each, as a pair: the I/O completions and the irqbalance ban.
        let io = |a: &[Action]| {
            let n = |f: fn(&ActionKind) -> bool| a.iter().filter(|a| f(&a.kind)).count();
            let io = n(|k| matches!(k, ActionKind::CompleteIoOnSubmitter));
            let ban = n(
                |k| matches!(k, ActionKind::KeepIrqbalanceOff { cpus } if cpus.to_string() == "1"),
            );
            assert_eq!(io, ban, "{a:#?}");
            io
        };
        let p = policy("irq_guard: true");
        let mut s = EngineState::default();
        assert_eq!(io(&decide(&p, &mut s, &obs(false, &[]), t(0))), 0);
        let first = decide(&p, &mut s, &obs(true, &[]), t(100));
        assert_eq!(io(&first), 1);
        let guard = |a: &&Action| {
            matches!(
                a.kind,
                ActionKind::CompleteIoOnSubmitter | ActionKind::KeepIrqbalanceOff { .. }
            )
        };
        assert!(
            first
                .iter()
                .filter(guard)
                .all(|a| a.rule.0 == "host.irq_guard")
        );
        assert_eq!(io(&decide(&p, &mut s, &obs(true, &[]), t(200))), 0);
        // A reload that moves the trading cores tells irqbalance the new ones (before: the
        // ban stayed on the old cores, and irqbalance balanced onto the new ones).
        let mut moved = p.clone();
        moved.host.trading_cores = "0".parse().unwrap();
        moved.host.housekeeping_cores = "1".parse().unwrap();
        let again = decide(&moved, &mut s, &obs(true, &[]), t(300));
        let told = again.iter().filter(|a| {
            matches!(&a.kind, ActionKind::KeepIrqbalanceOff { cpus } if cpus.to_string() == "0")
        });
        assert_eq!(told.count(), 1, "{again:#?}");
        let mut s = EngineState::default();
        let unguarded = policy("irq_guard: false");
        assert_eq!(io(&decide(&unguarded, &mut s, &obs(true, &[]), t(0))), 0);
    }

    #[test]
    fn workqueues_are_asked_once_while_the_cores_are_protected() {
        let p = policy("workqueue_guard: true");
        let mut s = EngineState::default();
        let wq = |a: &[Action]| {
            a.iter()
                .filter(|a| matches!(&a.kind, ActionKind::SetWorkqueueCpus { to } if to.to_string() == "0"))
                .count()
        };
        assert_eq!(wq(&decide(&p, &mut s, &obs(false, &[]), t(0))), 0);
        let first = decide(&p, &mut s, &obs(true, &[]), t(100));
        assert_eq!(wq(&first), 1);
        assert_eq!(wq(&decide(&p, &mut s, &obs(true, &[]), t(200))), 0);
        // Refused for now (a transient error): asked again after its backoff.
        let a = first.iter().find(|a| wq(&[(*a).clone()]) == 1).unwrap();
        acknowledge(
            &mut s,
            &mut Batch::default(),
            a,
            Outcome::Failed { retryable: true },
        );
        assert_eq!(wq(&decide(&p, &mut s, &obs(true, &[]), t(300))), 0);
        assert_eq!(wq(&decide(&p, &mut s, &obs(true, &[]), t(1200))), 1);
        let mut s = EngineState::default();
        assert_eq!(wq(&decide(&policy(""), &mut s, &obs(true, &[]), t(0))), 0);
    }
}

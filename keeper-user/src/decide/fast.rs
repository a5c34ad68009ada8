//! The fast eviction: what the engine lets the eviction thread do on its own, at an
//! intruder's arrival, before the loop hears of it.
//!
//! The engine compiles [`FastEvictions`] from the policy and its state (who owns the trading
//! cores now, which cgroups are the owner's, which are in the scope); the eviction thread asks
//! [`FastEvictions::eviction`] for each event and carries out the action it gets at once. The
//! loop then hands the engine the same intruder marked `evicted` ([`super::Intruder`]): the
//! engine keeps count as if it had decided the eviction itself (returns, repeat offenders,
//! escalation), and emits nothing more for it. Anything the filter does not know (a cgroup
//! created since, an event with no start time, a fork) goes the loop's way, as before.

use std::collections::{HashMap, HashSet};

use super::{Action, ActionKind, EngineState, RuleId};
use crate::{cpulist::CpuList, policy::Policy};

/// What the eviction thread may evict on its own, and how.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FastEvictions {
    /// The workload that owns the trading cores now.
    pub owner: String,
    pub trading: CpuList,
    /// Where an intruder goes (the housekeeping cores).
    pub to: CpuList,
    /// Cgroup id → path: the cgroups whose tasks are intruders on the trading cores.
    pub cgroups: HashMap<u64, String>,
    /// Whether a real-time intruder is demoted as it moves (`rules.intruders.real_time`).
    pub demote: bool,
}

/// An arrival on a trading core, as the programs read it from the task.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    pub pid: u32,
    pub comm: String,
    pub cpu: u32,
    pub cgroup_id: u64,
    /// The event's instant (CLOCK_MONOTONIC ns).
    pub seen_ns: u64,
    /// Its start time (clock ticks since boot), read from the task (`None`: not read).
    pub start: Option<u64>,
}

/// The filter for the engine's present state: `None` while no workload holds the trading
/// cores (nothing to evict for). `index` is every cgroup id → path; `protected` the ids the
/// sensor treats as the owner's; `scope` the `--scope` cgroup (tasks outside it are only
/// observed, which is the loop's business).
pub fn compile(
    policy: &Policy,
    state: &EngineState,
    index: &HashMap<u64, String>,
    protected: &HashSet<u64>,
    scope: Option<&str>,
) -> Option<FastEvictions> {
    let owner_name = state.applied.trading.as_deref()?;
    let owner = policy.workloads.iter().find(|w| w.name == owner_name)?;
    let scope = scope.map(|s| s.trim_matches('/'));
    let in_scope = |path: &str| {
        let p = path.trim_matches('/');
        scope.is_none_or(|s| s.is_empty() || p == s || p.starts_with(&format!("{s}/")))
    };
    let cgroups = index
        .iter()
        .filter(|(id, path)| {
            !protected.contains(id) && !owner.matcher.owns_cgroup(path) && in_scope(path)
        })
        .map(|(id, path)| (*id, path.clone()))
        .collect();
    Some(FastEvictions {
        owner: owner.name.clone(),
        trading: policy.host.trading_cores.clone(),
        to: policy.host.housekeeping_cores.clone(),
        cgroups,
        demote: policy.rules.intruders.real_time == crate::policy::RealTimeIntruders::Demote,
    })
}

impl FastEvictions {
    /// Whether a task of cgroup `cgroup_id` on `cpu` is an intruder to evict at once: the
    /// question alone, asked before anything is built (the eviction thread moves the task
    /// first, then asks [`Self::eviction`] for the action it reports).
    pub fn evicts(&self, cpu: u32, cgroup_id: u64) -> bool {
        self.trading.contains(cpu) && self.cgroups.contains_key(&cgroup_id)
    }

    /// The eviction to carry out at once for `a`, if the filter knows it for an intruder:
    /// on a trading core, in a known cgroup that is not the owner's, read from the task (its
    /// start time known, so the move needs no read of /proc first).
    pub fn eviction(&self, a: &Arrival) -> Option<Action> {
        a.start?;
        if !self.evicts(a.cpu, a.cgroup_id) {
            return None;
        }
        let cgroup = self.cgroups.get(&a.cgroup_id)?;
        Some(Action {
            kind: ActionKind::EvictIntruder {
                pid: a.pid,
                comm: a.comm.clone(),
                cgroup: cgroup.clone(),
                cpu: a.cpu,
                to: self.to.clone(),
                seen_ns: Some(a.seen_ns),
                start: a.start,
            },
            rule: RuleId::new(format!("{}.owns_trading_cores", self.owner)),
            reason: format!(
                "{}[{}] from `{cgroup}` ran 0us on trading core {} owned by {} (evicted on arrival)",
                a.comm, a.pid, a.cpu, self.owner
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        crate::policy::parse_str(
            r#"
host: { trading_cores: "1", housekeeping_cores: "0" }
workloads:
  - name: banker
    rank: 1
    owns_trading_cores: true
    match: { cgroup: kt/banker }
"#,
        )
        .unwrap()
    }

    fn index() -> HashMap<u64, String> {
        [
            (1, "/"),
            (2, "/kt"),
            (3, "/kt/banker"),
            (4, "/kt/banker/vcpu0"),
            (5, "/kt/load"),
            (6, "/elsewhere"),
        ]
        .into_iter()
        .map(|(id, p)| (id, p.to_string()))
        .collect()
    }

    fn arrival(cgroup_id: u64, cpu: u32) -> Arrival {
        Arrival {
            pid: 42,
            comm: "hog".into(),
            cpu,
            cgroup_id,
            seen_ns: 1000,
            start: Some(7),
        }
    }

    fn owned() -> EngineState {
        let mut s = EngineState::default();
        s.applied.trading = Some("banker".into());
        s
    }

    #[test]
    fn nothing_is_evicted_while_nobody_owns_the_trading_cores() {
        let none = compile(
            &policy(),
            &EngineState::default(),
            &index(),
            &HashSet::new(),
            None,
        );
        assert_eq!(none, None);
    }

    #[test]
    fn only_intruders_in_known_cgroups_of_the_scope_are_evicted_on_arrival() {
        let protected = HashSet::from([4]);
        let f = compile(&policy(), &owned(), &index(), &protected, Some("/kt")).unwrap();
        let mut ids: Vec<_> = f.cgroups.keys().copied().collect();
        ids.sort();
        // The owner's cgroups (by match and by the sensor's set) and those outside the scope
        // are not the filter's.
        assert_eq!(ids, vec![2, 5]);
        let a = f.eviction(&arrival(5, 1)).expect("an intruder in kt/load");
        assert_eq!(a.rule.0, "banker.owns_trading_cores");
        match a.kind {
            ActionKind::EvictIntruder {
                pid, to, cgroup, ..
            } => {
                assert_eq!(
                    (pid, to.to_string(), cgroup.as_str()),
                    (42, "0".into(), "/kt/load")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.eviction(&arrival(5, 0)), None, "not on a trading core");
        assert_eq!(f.eviction(&arrival(3, 1)), None, "the owner's");
        assert_eq!(f.eviction(&arrival(6, 1)), None, "outside the scope");
        assert_eq!(
            f.eviction(&arrival(99, 1)),
            None,
            "a cgroup the filter does not know"
        );
        let unread = Arrival {
            start: None,
            ..arrival(5, 1)
        };
        assert_eq!(f.eviction(&unread), None, "not read from the task");
    }
}

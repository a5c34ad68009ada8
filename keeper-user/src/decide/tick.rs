//! One tick's scratch pad: the wanted state the rules build before it is reconciled.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::action::{Action, ActionKind, RuleId};
use super::observe::Observations;
use super::state::{EngineState, Hold, elapsed};
use crate::policy::{Amount, Percent, Policy, Workload};

/// A rule wants a workload frozen.
#[derive(Clone, Debug)]
pub struct Claim {
    pub workload: String,
    pub rule: RuleId,
    pub reason: String,
}

/// A wanted knob value, with who wants it.
#[derive(Clone, Debug)]
pub struct Want<T> {
    pub value: T,
    pub rule: RuleId,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct WantedKnobs {
    pub cpu_weight: Option<Want<u32>>,
    pub cpu_max: Option<Want<Percent>>,
    pub memory_high: Option<Want<Amount>>,
}

pub struct Tick<'a> {
    pub policy: &'a Policy,
    pub obs: &'a Observations,
    pub now: Timestamp,
    /// Workloads active now (present, in a window, gate open).
    pub active: BTreeMap<String, bool>,
    pub claims: Vec<Claim>,
    pub knobs: BTreeMap<String, WantedKnobs>,
    pub balloons: BTreeMap<String, Want<Amount>>,
    /// VMs the memory ladder wants stopped (hibernated).
    pub stop_vms: BTreeMap<String, Claim>,
    pub power_limit: Option<Want<Percent>>,
    pub clock_offset: Option<Want<i32>>,
    /// Workloads whose GPU state a handoff wants checkpointed (VRAM released).
    pub checkpoint: BTreeMap<String, Claim>,
    /// Why a handoff ended, by workload (used in the restore's reason).
    pub handback: BTreeMap<String, (RuleId, String)>,
    pub trading: Option<Want<String>>,
    /// Why a hold ended, by workload (used in the thaw's reason).
    pub released: BTreeMap<String, (RuleId, String)>,
    /// Workloads whose `start_on` service a preemption wants running.
    pub services: BTreeMap<String, Claim>,
    /// Actions that are events rather than state (evictions, SLO reports).
    pub events: Vec<Action>,
}

impl<'a> Tick<'a> {
    pub fn new(policy: &'a Policy, obs: &'a Observations, now: Timestamp) -> Self {
        Self {
            policy,
            obs,
            now,
            active: BTreeMap::new(),
            claims: Vec::new(),
            knobs: BTreeMap::new(),
            balloons: BTreeMap::new(),
            stop_vms: BTreeMap::new(),
            power_limit: None,
            clock_offset: None,
            checkpoint: BTreeMap::new(),
            handback: BTreeMap::new(),
            trading: None,
            released: BTreeMap::new(),
            services: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    pub fn is_active(&self, workload: &str) -> bool {
        self.active.get(workload).copied().unwrap_or(false)
    }

    /// Never rank 1, never one that is `never_frozen`, never the keeper itself.
    pub fn freezable(&self, w: &Workload) -> bool {
        w.rank > 1
            && !w.never_frozen
            && w.matcher.systemd_unit.as_deref() != Some(self.policy.host.keeper_unit.as_str())
    }

    pub fn claimed(&self, workload: &str) -> bool {
        self.claims.iter().any(|c| c.workload == workload)
    }

    pub fn claim(&mut self, workload: &str, rule: &RuleId, reason: String) {
        let freezable = self
            .policy
            .workload(workload)
            .is_some_and(|w| self.freezable(w));
        if freezable && self.obs.present(workload) {
            self.claims.push(Claim {
                workload: workload.to_string(),
                rule: rule.clone(),
                reason,
            });
        }
    }

    /// A claim that comes before the others, so its rule names the freeze (a handoff's freeze
    /// is one of its steps, whoever else wants the workload frozen too).
    pub fn claim_first(&mut self, workload: &str, rule: &RuleId, reason: String) {
        let n = self.claims.len();
        self.claim(workload, rule, reason);
        if self.claims.len() > n
            && let Some(c) = self.claims.pop()
        {
            self.claims.insert(0, c);
        }
    }

    /// Present, freezable workloads, lowest rank first, that no rule froze yet this tick.
    pub fn victims(&self, filter: impl Fn(&Workload) -> bool) -> Vec<&'a Workload> {
        let policy: &'a Policy = self.policy;
        policy
            .workloads
            .iter()
            .rev()
            .filter(|w| {
                self.freezable(w)
                    && self.obs.present(&w.name)
                    && !self.claimed(&w.name)
                    && filter(w)
            })
            .collect()
    }

    pub fn event(&mut self, kind: ActionKind, rule: &RuleId, reason: String) {
        self.events.push(Action {
            kind,
            rule: rule.clone(),
            reason,
        });
    }

    /// A claim with hysteresis: held while `cause` is true and `release_after` beyond. Returns
    /// whether the claim still holds; records why it ended when it ends.
    pub fn hold(
        &mut self,
        state: &mut EngineState,
        rule: &RuleId,
        workload: &str,
        cause: Option<String>,
        release_after: Duration,
    ) -> bool {
        let idx = state
            .holds
            .iter()
            .position(|h| &h.rule == rule && h.workload == workload);
        match (cause, idx) {
            (Some(reason), Some(i)) => {
                let h = &mut state.holds[i];
                h.released_at = None;
                h.reason = reason.clone();
                self.claim(workload, rule, reason);
                true
            }
            (Some(reason), None) => {
                state.holds.push(Hold {
                    rule: rule.clone(),
                    workload: workload.to_string(),
                    reason: reason.clone(),
                    released_at: None,
                });
                self.claim(workload, rule, reason);
                true
            }
            (None, Some(i)) => {
                let since = *state.holds[i].released_at.get_or_insert(self.now);
                if elapsed(since, self.now) < release_after {
                    let reason = state.holds[i].reason.clone();
                    self.claim(workload, rule, reason);
                    true
                } else {
                    state.holds.remove(i);
                    let note = format!(
                        "`{rule}` released it: its cause ended {} ago (hysteresis {})",
                        crate::policy::amount::format_duration(elapsed(since, self.now)),
                        crate::policy::amount::format_duration(release_after)
                    );
                    self.released
                        .insert(workload.to_string(), (rule.clone(), note));
                    false
                }
            }
            (None, None) => false,
        }
    }
}

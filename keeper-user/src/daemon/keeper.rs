//! The daemon's state between events: the policy, the engine's memory, the actuators, and
//! what was done. One `tick` = observe → decide → act.

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    time::Instant,
};

use serde::Serialize;

use super::{
    execute::{self, HostTotals},
    host::{self, Placement},
};
use crate::{
    act::{ActError, Actuators, Outcome},
    cpulist::CpuList,
    decide::{self, Action, EngineState, Intruder, Observations},
    policy::{self, HostFacts, Match, Policy, Workload},
};

/// Where the policy comes from, and the command-line overrides applied on top.
#[derive(Clone, Debug)]
pub struct PolicySource {
    /// `None`: the embedded policies/hive.yaml.
    pub file: Option<PathBuf>,
    pub trading_cores: Option<CpuList>,
    /// Cgroups that own the trading cores, always (replaces the owner's match and windows).
    pub protect: Vec<String>,
}

impl PolicySource {
    pub fn name(&self) -> String {
        self.file
            .as_ref()
            .map_or("embedded policies/hive.yaml".into(), |f| {
                f.display().to_string()
            })
    }

    /// Reads, checks (for this host) and applies the overrides. Errors read `FILE:LINE:COL`.
    pub fn load(&self) -> Result<Policy, String> {
        let (name, bytes) = match &self.file {
            Some(f) => (
                f.display().to_string(),
                std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?,
            ),
            None => (
                "policies/hive.yaml".into(),
                policy::HIVE_YAML.as_bytes().to_vec(),
            ),
        };
        let facts = HostFacts {
            online_cpus: CpuList::online().ok(),
            for_this_host: true,
        };
        let loaded = policy::load(&bytes, &facts).map_err(|d| {
            d.0.iter()
                .map(|x| x.render(&name))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        for w in &loaded.warnings {
            tracing::warn!("{}", w.render(&name));
        }
        let mut p = loaded.policy;
        if let Some(cores) = &self.trading_cores {
            let online = CpuList::online().unwrap_or_default();
            p.host.housekeeping_cores = online.difference(cores);
            p.host.trading_cores = cores.clone();
            if p.host.housekeeping_cores.is_empty() {
                return Err(format!(
                    "--trading-cores {cores} leaves no housekeeping core on this host"
                ));
            }
        }
        if let Some(first) = self.protect.first() {
            let owner = match p.workloads.iter_mut().find(|w| w.owns_trading_cores) {
                Some(w) => w,
                None => {
                    p.workloads.insert(0, protected_workload());
                    &mut p.workloads[0]
                }
            };
            owner.matcher = Match {
                cgroup: Some(first.trim_matches('/').to_string()),
                ..Match::default()
            };
            owner.windows.clear();
            owner.conditions = Default::default();
        }
        Ok(p)
    }
}

fn protected_workload() -> Workload {
    Workload {
        name: "protected".into(),
        rank: 1,
        matcher: Match::default(),
        class: None,
        windows: vec![],
        conditions: Default::default(),
        when_inactive: Default::default(),
        pauses: vec![],
        preempt: None,
        owns_trading_cores: true,
        gpu_handoff: None,
    }
}

/// One action as carried out.
#[derive(Clone, Debug, Serialize)]
pub struct Done {
    pub at: String,
    #[serde(flatten)]
    pub action: Action,
    pub outcome: Vec<String>,
    pub ok: bool,
}

pub struct Keeper {
    pub source: PolicySource,
    pub policy: Policy,
    pub state: EngineState,
    pub act: Actuators,
    pub totals: HostTotals,
    pub placements: BTreeMap<String, Placement>,
    pub interaction: bool,
    pub last: VecDeque<Done>,
    pub timeline: Vec<Done>,
    pub evictions: u64,
    pub eviction_latencies_us: Vec<f64>,
    pub errors: u64,
}

impl Keeper {
    pub fn new(source: PolicySource, policy: Policy, act: Actuators) -> Self {
        Self {
            source,
            policy,
            state: EngineState::default(),
            act,
            totals: HostTotals::read(),
            placements: BTreeMap::new(),
            interaction: false,
            last: VecDeque::new(),
            timeline: Vec::new(),
            evictions: 0,
            eviction_latencies_us: Vec::new(),
            errors: 0,
        }
    }

    /// Gathers the observations of this instant (intruders and latency come from the sensor).
    pub fn observe(
        &mut self,
        intruders: Vec<Intruder>,
        trading_p99_ns: Option<u64>,
    ) -> Observations {
        let cg = self.act.cgroups().clone();
        self.placements = host::place_workloads(&self.policy, &cg);
        Observations {
            loadavg: host::loadavg(),
            cpu_pressure: host::read_psi("/proc/pressure/cpu".as_ref()),
            memory_pressure: host::read_psi("/proc/pressure/memory".as_ref()),
            gpu: None,
            interaction: self.interaction,
            workloads: self
                .placements
                .iter()
                .map(|(n, p)| (n.clone(), host::observe_workload(p, &cg)))
                .collect(),
            intruders,
            trading_p99_wakeup_ns: trading_p99_ns,
        }
    }

    /// Decides on `obs` and carries the actions out. Returns what was done.
    pub fn tick(&mut self, obs: &Observations) -> Vec<Done> {
        let actions = decide::decide(&self.policy, &mut self.state, obs, jiff::Timestamp::now());
        let mut done = Vec::new();
        for action in actions {
            let started = Instant::now();
            let report = execute::execute(&mut self.act, &self.placements, self.totals, &action);
            let mut ok = true;
            let mut quiet = true;
            let mut outcome = Vec::new();
            for r in report {
                match r {
                    Ok(o) => {
                        if matches!(o, Outcome::Done(_))
                            && matches!(action.kind, decide::ActionKind::EvictIntruder { .. })
                        {
                            self.evictions += 1;
                        }
                        quiet = false;
                        outcome.push(o.to_string());
                    }
                    // Outside --scope: observed and reported, never touched.
                    Err(e @ ActError::OutOfScope { .. }) => {
                        outcome.push(format!("observed only: {e}"))
                    }
                    // A controller this host lacks: said once, then skipped.
                    Err(e @ ActError::Missing { .. }) => {
                        quiet &= !self.act.say_missing_once(&e);
                        outcome.push(format!("skipped: {e}"));
                    }
                    Err(e) => {
                        if execute::retryable(&e) {
                            execute::forget(&mut self.state, &action);
                        }
                        ok = false;
                        quiet = false;
                        outcome.push(format!("error: {e}"));
                    }
                }
            }
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            if !ok {
                self.errors += 1;
                tracing::warn!(rule = %action.rule, reason = %action.reason, outcome = ?outcome, elapsed_ms, "{} failed", action.kind);
            } else if quiet {
                tracing::debug!(rule = %action.rule, reason = %action.reason, outcome = ?outcome, "{}", action.kind);
            } else {
                tracing::info!(rule = %action.rule, reason = %action.reason, outcome = ?outcome, elapsed_ms, "{}", action.kind);
            }
            done.push(Done {
                at: jiff::Timestamp::now().to_string(),
                action,
                outcome,
                ok,
            });
        }
        for d in &done {
            if self.last.len() == 50 {
                self.last.pop_front();
            }
            self.last.push_back(d.clone());
            self.timeline.push(d.clone());
        }
        done
    }

    /// The answer to `keeper status`.
    pub fn status(&self) -> serde_json::Value {
        let a = &self.state.applied;
        let workloads: Vec<_> = self
            .policy
            .workloads
            .iter()
            .map(|w| {
                let p = self.placements.get(&w.name);
                serde_json::json!({
                    "name": w.name,
                    "rank": w.rank,
                    "present": p.is_some(),
                    "cgroups": p.map(|p| p.cgroups.clone()).unwrap_or_default(),
                    "pids": p.map(|p| p.pids.clone()).unwrap_or_default(),
                    "frozen": a.frozen.contains_key(&w.name),
                    "throttled": a.knobs.get(&w.name).is_some_and(|k| !k.is_empty()),
                })
            })
            .collect();
        serde_json::json!({
            "ok": true,
            "mode": if self.act.dry_run() { "dry-run" } else { "enforcing" },
            "policy": self.source.name(),
            "trading_cores": self.policy.host.trading_cores.to_string(),
            "housekeeping_cores": self.policy.host.housekeeping_cores.to_string(),
            "trading_cores_owner": a.trading,
            "interaction": self.interaction,
            "workloads": workloads,
            "frozen": a.frozen.keys().collect::<Vec<_>>(),
            "throttled": a.knobs.iter().filter(|(_, k)| !k.is_empty()).map(|(w, _)| w).collect::<Vec<_>>(),
            "evictions": self.evictions,
            "errors": self.errors,
            "last_actions": self.last.iter().rev().take(20).collect::<Vec<_>>(),
        })
    }
}

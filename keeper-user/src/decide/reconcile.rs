//! Wanted state vs applied state → the ordered list of actions. The only place actions are
//! made: one small planner per concern, called by [`run`] in the order their actions must be
//! carried out (classes, checkpoints, freezes lowest rank first, services, thaws highest rank
//! first, GPU state back, knobs, VMs stopped or started, balloons, the GPU's settings, the
//! trading cores), each comparing what is wanted with what `applied` says was done.

use std::collections::{BTreeMap, BTreeSet};

use super::action::{Action, ActionKind, RuleId};
use super::service;
use super::state::{Applied, Knobs};
use super::tick::{Claim, Tick, Want, WantedKnobs};
use super::{EngineState, Observations};
use crate::policy::{Amount, Percent, Policy, Workload};

/// The actions planned so far, in order.
#[derive(Default)]
struct Plan(Vec<Action>);

impl Plan {
    fn push(&mut self, kind: ActionKind, rule: &RuleId, reason: String) {
        self.0.push(Action {
            kind,
            rule: rule.clone(),
            reason,
        });
    }
}

/// Why a held state ends, for workloads let go this tick: the releasing rule and its note.
type Released = BTreeMap<String, (RuleId, String)>;

pub fn run(t: Tick<'_>, state: &mut EngineState) -> Vec<Action> {
    let Tick {
        policy,
        obs,
        claims,
        knobs,
        balloons,
        stop_vms,
        power_limit,
        clock_offset,
        checkpoint,
        handback,
        trading,
        released,
        services,
        events,
        ..
    } = t;
    let applied = &mut state.applied;
    let mut plan = Plan::default();
    forget_vanished(obs, applied);
    classes(policy, obs, applied, &mut plan);
    let mut wanted: BTreeMap<&str, &Claim> = BTreeMap::new();
    for c in &claims {
        wanted.entry(c.workload.as_str()).or_insert(c);
    }
    checkpoints(policy, &checkpoint, applied, &mut plan);
    freezes(policy, &wanted, applied, &mut plan);
    // What a preemption started: after its freezes, stopped before its thaws.
    let stops = service::stops(&services, applied);
    for a in service::starts(policy, &services, applied)
        .into_iter()
        .chain(stops)
    {
        plan.push(a.kind, &a.rule, a.reason);
    }
    thaws(policy, &wanted, &released, applied, &mut plan);
    let holding = |w: &str| checkpoint.contains_key(w) || wanted.contains_key(w);
    gpu_restores(policy, &holding, &handback, applied, &mut plan);
    for w in policy.workloads.iter().rev() {
        knobs_of(policy, w, knobs.get(&w.name), &released, applied, &mut plan);
    }
    vms(policy, &stop_vms, &released, applied, &mut plan);
    balloons_of(policy, &balloons, applied, &mut plan);
    gpu_settings(power_limit, clock_offset, applied, &mut plan);
    trading_cores(policy, obs, trading, applied, &mut plan);
    let mut out = plan.0;
    out.extend(events);
    out
}

/// A workload that vanished takes its cgroup state with it.
fn forget_vanished(obs: &Observations, applied: &mut Applied) {
    applied.frozen.retain(|w, _| obs.present(w));
    applied.knobs.retain(|w, _| obs.present(w));
    applied.balloons.retain(|w, _| obs.present(w));
    applied.classed.retain(|w| obs.present(w));
    applied.gpu_checkpointed.retain(|w, _| obs.present(w));
}

/// A present workload's class limits, once since it appeared.
fn classes(policy: &Policy, obs: &Observations, applied: &mut Applied, plan: &mut Plan) {
    for w in &policy.workloads {
        if let Some(class) = w.class
            && obs.present(&w.name)
            && applied.classed.insert(w.name.clone())
        {
            let limits = policy.limits_of(w);
            let rule = RuleId::new(format!("{}.class", w.name));
            let reason = format!(
                "{} is present; class {} gives its limits",
                w.name,
                class.name()
            );
            let kind = ActionKind::ApplyClassLimits {
                workload: w.name.clone(),
                class,
                limits,
            };
            plan.push(kind, &rule, reason);
        }
    }
}

/// Handoff: GPU state checkpointed before the freeze (a frozen process cannot answer
/// cuda-checkpoint), and only of a workload not frozen already.
fn checkpoints(
    policy: &Policy,
    checkpoint: &BTreeMap<String, Claim>,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in policy.workloads.iter().rev() {
        if let Some(c) = checkpoint.get(&w.name)
            && !applied.frozen.contains_key(&w.name)
            && !applied.gpu_checkpointed.contains_key(&w.name)
        {
            applied
                .gpu_checkpointed
                .insert(w.name.clone(), c.rule.clone());
            let kind = ActionKind::GpuCheckpoint {
                workload: w.name.clone(),
            };
            plan.push(kind, &c.rule, c.reason.clone());
        }
    }
}

/// Freezes, lowest rank first.
fn freezes(
    policy: &Policy,
    wanted: &BTreeMap<&str, &Claim>,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in policy.workloads.iter().rev() {
        if let Some(c) = wanted.get(w.name.as_str())
            && applied
                .frozen
                .insert(w.name.clone(), c.rule.clone())
                .is_none()
        {
            let kind = ActionKind::Freeze {
                workload: w.name.clone(),
            };
            plan.push(kind, &c.rule, c.reason.clone());
        }
    }
}

/// Thaws, highest rank first: each frozen workload no rule holds any more.
fn thaws(
    policy: &Policy,
    wanted: &BTreeMap<&str, &Claim>,
    released: &Released,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in &policy.workloads {
        if wanted.contains_key(w.name.as_str()) {
            continue;
        }
        if let Some(held_by) = applied.frozen.remove(&w.name) {
            let (rule, reason) = match released.get(&w.name) {
                Some((rule, note)) => (
                    rule.clone(),
                    format!("no rule holds {} frozen any more; {note}", w.name),
                ),
                None => (
                    held_by.clone(),
                    format!(
                        "no rule holds {} frozen any more (last: `{held_by}`)",
                        w.name
                    ),
                ),
            };
            let kind = ActionKind::Thaw {
                workload: w.name.clone(),
            };
            plan.push(kind, &rule, reason);
        }
    }
}

/// Handoff over: GPU state back once the workload runs again (after its thaw).
fn gpu_restores(
    policy: &Policy,
    holding: &dyn Fn(&str) -> bool,
    handback: &Released,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in &policy.workloads {
        if holding(&w.name) {
            continue;
        }
        if let Some(held_by) = applied.gpu_checkpointed.remove(&w.name) {
            let (rule, reason) = handback.get(&w.name).cloned().unwrap_or_else(|| {
                (
                    held_by,
                    format!("{} runs again and gets its GPU state back", w.name),
                )
            });
            let kind = ActionKind::GpuRestore {
                workload: w.name.clone(),
            };
            plan.push(kind, &rule, reason);
        }
    }
}

/// One workload's CPU weight, CPU max and memory.high: its class limits back when a knob is
/// dropped, then each wanted knob that differs from what was applied.
fn knobs_of(
    policy: &Policy,
    w: &Workload,
    want: Option<&WantedKnobs>,
    released: &Released,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    let had = applied.knobs.get(&w.name).cloned().unwrap_or_default();
    let new = Knobs {
        cpu_weight: want.and_then(|k| k.cpu_weight.as_ref().map(|x| x.value)),
        cpu_max: want.and_then(|k| k.cpu_max.as_ref().map(|x| x.value)),
        memory_high: want.and_then(|k| k.memory_high.as_ref().map(|x| x.value)),
    };
    let dropped = (had.cpu_weight.is_some() && new.cpu_weight.is_none())
        || (had.cpu_max.is_some() && new.cpu_max.is_none())
        || (had.memory_high.is_some() && new.memory_high.is_none());
    let base = if dropped {
        let (rule, note) = released.get(&w.name).cloned().unwrap_or_else(|| {
            (
                RuleId::new("rules.escalation"),
                "pressure is gone".to_string(),
            )
        });
        let limits = policy.limits_of(w);
        let reason = format!("throttle on {} lifted: {note}", w.name);
        let kind = ActionKind::RestoreLimits {
            workload: w.name.clone(),
            limits,
        };
        plan.push(kind, &rule, reason);
        Knobs::default()
    } else {
        had
    };
    if let Some(k) = want {
        let workload = || w.name.clone();
        if let Some(x) = &k.cpu_weight
            && base.cpu_weight != Some(x.value)
        {
            let kind = ActionKind::SetCpuWeight {
                workload: workload(),
                weight: x.value,
            };
            plan.push(kind, &x.rule, x.reason.clone());
        }
        if let Some(x) = &k.cpu_max
            && base.cpu_max != Some(x.value)
        {
            let kind = ActionKind::SetCpuMax {
                workload: workload(),
                percent: x.value,
            };
            plan.push(kind, &x.rule, x.reason.clone());
        }
        if let Some(x) = &k.memory_high
            && base.memory_high != Some(x.value)
        {
            let kind = ActionKind::SetMemoryHigh {
                workload: workload(),
                amount: x.value,
            };
            plan.push(kind, &x.rule, x.reason.clone());
        }
    }
    if new.is_empty() {
        applied.knobs.remove(&w.name);
    } else {
        applied.knobs.insert(w.name.clone(), new);
    }
}

/// The memory ladder's last step (a VM stopped), and its undo before any balloon is given
/// back.
fn vms(
    policy: &Policy,
    stop_vms: &BTreeMap<String, Claim>,
    released: &Released,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in &policy.workloads {
        let Some(vmid) = w.matcher.vmid else { continue };
        if !stop_vms.contains_key(&w.name) && applied.stopped_vms.remove(&w.name).is_some() {
            let (rule, reason) = released.get(&w.name).cloned().unwrap_or_else(|| {
                let note = "memory pressure is gone".to_string();
                (RuleId::new("rules.memory"), note)
            });
            let reason = format!("{reason}; {} is started again", w.name);
            let kind = ActionKind::StartVm {
                workload: w.name.clone(),
                vmid,
            };
            plan.push(kind, &rule, reason);
        }
    }
    for w in policy.workloads.iter().rev() {
        let Some(vmid) = w.matcher.vmid else { continue };
        if let Some(c) = stop_vms.get(&w.name)
            && !applied.stopped_vms.contains_key(&w.name)
        {
            applied.stopped_vms.insert(w.name.clone(), c.rule.clone());
            let kind = ActionKind::StopVm {
                workload: w.name.clone(),
                vmid,
            };
            plan.push(kind, &c.rule, c.reason.clone());
        }
    }
}

/// Each VM's balloon: its wanted size, or all its memory back once none is wanted.
fn balloons_of(
    policy: &Policy,
    balloons: &BTreeMap<String, Want<Amount>>,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    for w in policy.workloads.iter().rev() {
        let Some(vmid) = w.matcher.vmid else { continue };
        match (
            balloons.get(&w.name),
            applied.balloons.get(&w.name).copied(),
        ) {
            (Some(want), had) if had != Some(want.value) => {
                applied.balloons.insert(w.name.clone(), want.value);
                let kind = ActionKind::Balloon {
                    workload: w.name.clone(),
                    vmid,
                    target: want.value,
                };
                plan.push(kind, &want.rule, want.reason.clone());
            }
            (None, Some(_)) => {
                applied.balloons.remove(&w.name);
                let rule = RuleId::new("rules.memory");
                let full = Amount::Percent(Percent::new(100.0));
                let reason = format!("memory pressure is gone; {} gets its memory back", w.name);
                let kind = ActionKind::Balloon {
                    workload: w.name.clone(),
                    vmid,
                    target: full,
                };
                plan.push(kind, &rule, reason);
            }
            _ => {}
        }
    }
}

/// The GPU's power limit and clock offset, when they change.
fn gpu_settings(
    power_limit: Option<Want<Percent>>,
    clock_offset: Option<Want<i32>>,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    if let Some(want) = power_limit
        && applied.gpu_power_limit != Some(want.value)
    {
        applied.gpu_power_limit = Some(want.value);
        let kind = ActionKind::SetGpuPowerLimit {
            percent: want.value,
        };
        plan.push(kind, &want.rule, want.reason);
    }
    if let Some(want) = clock_offset
        && applied.gpu_clock_offset != Some(want.value)
    {
        applied.gpu_clock_offset = Some(want.value);
        let kind = ActionKind::SetGpuClockOffset { mhz: want.value };
        plan.push(kind, &want.rule, want.reason);
    }
}

/// The trading cores protected for their owner: again when the owner, the cores, its vCPU
/// threads or the other workloads present change; let go when it is no longer active.
fn trading_cores(
    policy: &Policy,
    obs: &Observations,
    trading: Option<Want<String>>,
    applied: &mut Applied,
    plan: &mut Plan,
) {
    let cores = policy.host.trading_cores.to_string();
    let others: BTreeSet<String> = (policy.workloads.iter())
        .filter(|w| obs.present(&w.name) && Some(&w.name) != trading.as_ref().map(|t| &t.value))
        .map(|w| w.name.clone())
        .collect();
    applied.kept_off.retain(|w| others.contains(w));
    let newcomer = others.difference(&applied.kept_off).next().cloned();
    let vcpus = |owner: &str| (obs.workloads.get(owner)).map_or(Vec::new(), |w| w.vcpus.clone());
    match (trading, applied.trading.clone()) {
        (Some(mut want), had)
            if had.as_deref() != Some(want.value.as_str())
                || applied.trading_cores.as_deref() != Some(cores.as_str())
                || newcomer.is_some()
                || vcpus(&want.value) != applied.trading_vcpus =>
        {
            let now = vcpus(&want.value);
            if let (Some(w), Some(_)) = (&newcomer, &had) {
                want.reason = format!(
                    "{w} appeared while the trading cores are protected: kept off them too"
                );
            } else if had.as_deref() == Some(want.value.as_str())
                && applied.trading_cores.as_deref() == Some(cores.as_str())
            {
                want.reason = format!(
                    "{}'s vCPU threads changed ({} → {}): placed on the trading cores again",
                    want.value,
                    applied.trading_vcpus.len(),
                    now.len()
                );
            }
            applied.trading = Some(want.value.clone());
            applied.trading_cores = Some(cores);
            applied.trading_vcpus = now;
            applied.kept_off = others;
            let vcpu_fifo = policy.workload(&want.value).and_then(|w| w.vcpu_fifo);
            let kind = ActionKind::ProtectTradingCores {
                workload: want.value,
                cpus: policy.host.trading_cores.clone(),
                housekeeping: policy.host.housekeeping_cores.clone(),
                vcpu_fifo,
            };
            plan.push(kind, &want.rule, want.reason);
        }
        (None, Some(owner)) => {
            applied.trading = None;
            applied.trading_cores = None;
            applied.trading_vcpus.clear();
            applied.kept_off.clear();
            let rule = RuleId::new(format!("{owner}.owns_trading_cores"));
            let reason = format!("{owner} is no longer active");
            let kind = ActionKind::ReleaseTradingCores { workload: owner };
            plan.push(kind, &rule, reason);
        }
        _ => {}
    }
}

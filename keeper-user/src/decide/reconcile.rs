//! Wanted state vs applied state → the ordered list of actions. The only place actions are made.

use std::collections::BTreeMap;

use super::action::{Action, ActionKind, RuleId};
use super::service;
use super::state::{EngineState, Knobs};
use super::tick::{Claim, Tick};
use crate::policy::{Amount, Percent};

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
    let mut out = Vec::new();
    let mut push = |kind: ActionKind, rule: &RuleId, reason: String| {
        out.push(Action {
            kind,
            rule: rule.clone(),
            reason,
        })
    };

    // A workload that vanished takes its cgroup state with it.
    applied.frozen.retain(|w, _| obs.present(w));
    applied.knobs.retain(|w, _| obs.present(w));
    applied.balloons.retain(|w, _| obs.present(w));
    applied.classed.retain(|w| obs.present(w));
    applied.gpu_checkpointed.retain(|w, _| obs.present(w));

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
            push(
                ActionKind::ApplyClassLimits {
                    workload: w.name.clone(),
                    class,
                    limits,
                },
                &rule,
                reason,
            );
        }
    }

    let mut wanted: BTreeMap<&str, &Claim> = BTreeMap::new();
    for c in &claims {
        wanted.entry(c.workload.as_str()).or_insert(c);
    }
    // Handoff: checkpoint GPU state before the freeze (a frozen process cannot answer
    // cuda-checkpoint), and only of a workload not frozen already.
    for w in policy.workloads.iter().rev() {
        if let Some(c) = checkpoint.get(&w.name)
            && !applied.frozen.contains_key(&w.name)
            && !applied.gpu_checkpointed.contains_key(&w.name)
        {
            applied
                .gpu_checkpointed
                .insert(w.name.clone(), c.rule.clone());
            push(
                ActionKind::GpuCheckpoint {
                    workload: w.name.clone(),
                },
                &c.rule,
                c.reason.clone(),
            );
        }
    }
    // Freeze lowest rank first.
    for w in policy.workloads.iter().rev() {
        if let Some(c) = wanted.get(w.name.as_str())
            && applied
                .frozen
                .insert(w.name.clone(), c.rule.clone())
                .is_none()
        {
            push(
                ActionKind::Freeze {
                    workload: w.name.clone(),
                },
                &c.rule,
                c.reason.clone(),
            );
        }
    }
    // What a preemption started: after its freezes, stopped before its thaws.
    let stops = service::stops(&services, applied);
    for a in service::starts(policy, &services, applied)
        .into_iter()
        .chain(stops)
    {
        push(a.kind, &a.rule, a.reason);
    }
    // Thaw in reverse: highest rank first.
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
            push(
                ActionKind::Thaw {
                    workload: w.name.clone(),
                },
                &rule,
                reason,
            );
        }
    }
    // Handoff over: GPU state back once the workload runs again (after its thaw).
    for w in &policy.workloads {
        if checkpoint.contains_key(&w.name) || wanted.contains_key(w.name.as_str()) {
            continue;
        }
        if let Some(held_by) = applied.gpu_checkpointed.remove(&w.name) {
            let (rule, reason) = handback.get(&w.name).cloned().unwrap_or_else(|| {
                (
                    held_by,
                    format!("{} runs again and gets its GPU state back", w.name),
                )
            });
            push(
                ActionKind::GpuRestore {
                    workload: w.name.clone(),
                },
                &rule,
                reason,
            );
        }
    }

    for w in policy.workloads.iter().rev() {
        let want = knobs.get(&w.name);
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
            push(
                ActionKind::RestoreLimits {
                    workload: w.name.clone(),
                    limits,
                },
                &rule,
                reason,
            );
            Knobs::default()
        } else {
            had
        };
        if let Some(k) = want {
            if let Some(x) = &k.cpu_weight
                && base.cpu_weight != Some(x.value)
            {
                push(
                    ActionKind::SetCpuWeight {
                        workload: w.name.clone(),
                        weight: x.value,
                    },
                    &x.rule,
                    x.reason.clone(),
                );
            }
            if let Some(x) = &k.cpu_max
                && base.cpu_max != Some(x.value)
            {
                push(
                    ActionKind::SetCpuMax {
                        workload: w.name.clone(),
                        percent: x.value,
                    },
                    &x.rule,
                    x.reason.clone(),
                );
            }
            if let Some(x) = &k.memory_high
                && base.memory_high != Some(x.value)
            {
                push(
                    ActionKind::SetMemoryHigh {
                        workload: w.name.clone(),
                        amount: x.value,
                    },
                    &x.rule,
                    x.reason.clone(),
                );
            }
        }
        if new.is_empty() {
            applied.knobs.remove(&w.name);
        } else {
            applied.knobs.insert(w.name.clone(), new);
        }
    }

    // The memory ladder's last step, and its undo before any balloon is given back.
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
            push(kind, &rule, reason);
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
            push(kind, &c.rule, c.reason.clone());
        }
    }

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
                push(kind, &want.rule, want.reason.clone());
            }
            (None, Some(_)) => {
                applied.balloons.remove(&w.name);
                let rule = RuleId::new("rules.memory");
                let full = Amount::Percent(Percent::new(100.0));
                let reason = format!("memory pressure is gone; {} gets its memory back", w.name);
                push(
                    ActionKind::Balloon {
                        workload: w.name.clone(),
                        vmid,
                        target: full,
                    },
                    &rule,
                    reason,
                );
            }
            _ => {}
        }
    }

    if let Some(want) = power_limit
        && applied.gpu_power_limit != Some(want.value)
    {
        applied.gpu_power_limit = Some(want.value);
        push(
            ActionKind::SetGpuPowerLimit {
                percent: want.value,
            },
            &want.rule,
            want.reason,
        );
    }

    if let Some(want) = clock_offset
        && applied.gpu_clock_offset != Some(want.value)
    {
        applied.gpu_clock_offset = Some(want.value);
        push(
            ActionKind::SetGpuClockOffset { mhz: want.value },
            &want.rule,
            want.reason,
        );
    }

    let cores = policy.host.trading_cores.to_string();
    let others: std::collections::BTreeSet<String> = (policy.workloads.iter())
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
            push(kind, &want.rule, want.reason);
        }
        (None, Some(owner)) => {
            applied.trading = None;
            applied.trading_cores = None;
            applied.trading_vcpus.clear();
            applied.kept_off.clear();
            let rule = RuleId::new(format!("{owner}.owns_trading_cores"));
            let reason = format!("{owner} is no longer active");
            push(
                ActionKind::ReleaseTradingCores { workload: owner },
                &rule,
                reason,
            );
        }
        _ => {}
    }
    out.extend(events);
    out
}

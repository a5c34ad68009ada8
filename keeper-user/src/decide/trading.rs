//! The trading cores for their active owner: protection (and the partition's repair),
//! intruders evicted, repeat offenders escalated (`rules.intruders`), and the latency SLO.

use super::PartitionState;
use super::action::{ActionKind, RuleId};
use super::state::{EVICT_COOLDOWN, EngineState, MAX_OBSERVED_ONLY, elapsed};
use super::tick::{Tick, Want};
use crate::policy::{IntruderRule, RepeatAction};

/// Trading cores for their active owner, intruder eviction, and the latency SLO report.
pub fn run(t: &mut Tick<'_>, state: &mut EngineState) {
    let policy = t.policy;
    let host = &policy.host;
    let owner = policy
        .workloads
        .iter()
        .find(|w| w.owns_trading_cores && t.is_active(&w.name));
    let Some(owner) = owner else {
        state.evicted.clear();
        state.moved_at.clear();
        state.repeat_frozen.clear();
        continue_stopped(t, state);
        let note = "the trading cores were let go".to_string();
        for w in std::mem::take(&mut state.repeat_throttled) {
            (t.released).insert(w, (RuleId::new("rules.intruders"), note.clone()));
        }
        state.partition_broken = None;
        report_slo(t, state, false);
        return;
    };
    let rule = RuleId::new(format!("{}.owns_trading_cores", owner.name));
    let mut reason = format!(
        "{} is active ({}) and owns the trading cores",
        owner.name,
        super::activity::window_text(owner)
    );
    if let Some(why) = repair_partition(t, state, &owner.name) {
        reason = format!("{why}: protected again");
    }
    t.trading = Some(Want {
        value: owner.name.clone(),
        rule: rule.clone(),
        reason,
    });
    let now = t.now;
    let repeat = &policy.rules.intruders;
    // The trading cores moved (a reload): the cpusets' change widens the masks of tasks the
    // keeper had moved, and the kernel puts them back on the cores: no task's doing, so the
    // record of evictions and returns starts over (a task stopped stays stopped).
    let cores = host.trading_cores.to_string();
    if (state.applied.trading_cores.as_ref()).is_some_and(|had| *had != cores) {
        state.evicted.clear();
        state.returns.clear();
        state.moved_at.clear();
    }
    state
        .evicted
        .retain(|_, at| elapsed(*at, now) < EVICT_COOLDOWN);
    state.returns.retain(|_, at| {
        at.retain(|a| elapsed(*a, now) < repeat.within);
        !at.is_empty()
    });
    if state.observed_only.len() > MAX_OBSERVED_ONLY {
        state.observed_only.clear();
    }
    let held = RuleId::new("rules.intruders");
    for w in state.repeat_frozen.clone() {
        let reason = format!(
            "a task of {w} kept coming back to the trading cores (rules.intruders.then: freeze); held while {} holds them",
            owner.name
        );
        t.claim(&w, &held, reason);
    }
    for w in state.repeat_throttled.clone() {
        let reason = format!(
            "a task of {w} kept coming back to the trading cores (rules.intruders.then: throttle, cpu.max {}); held while {} holds them",
            repeat.cpu_max, owner.name
        );
        throttle(t, &w, repeat, &held, reason);
    }
    for i in &t.obs.intruders {
        if !host.trading_cores.contains(i.cpu) || owner.matcher.owns_cgroup(&i.cgroup) {
            continue;
        }
        // Outside --scope and still in the cgroup it was observed in: no news.
        match state.observed_only.get(&i.pid) {
            Some(c) if c == i.cgroup.trim_matches('/') => continue,
            Some(_) => {
                state.observed_only.remove(&i.pid);
            }
            None => {}
        }
        // A stopped task cannot run: only an arrival (a new task that took its pid) is news,
        // and it starts with a clean slate.
        if state.stopped.contains(&i.pid) {
            if !i.arrived {
                continue;
            }
            state.stopped.remove(&i.pid);
            state.returns.remove(&i.pid);
            state.evicted.remove(&i.pid);
        }
        // Slices of an evicted task reported before its eviction took effect are no news;
        // an arrival is: it came back (it re-pinned itself, or a new task took its pid).
        let mut came_back = None;
        if state.evicted.contains_key(&i.pid) {
            if !i.arrived || reported_before_its_move(state, i) {
                continue;
            }
            let returns = state.returns.entry(i.pid).or_default();
            returns.push(now);
            let n = returns.len() as u32;
            came_back = Some(n);
            if n >= repeat.repeat && stop_or_hold(t, state, i, n, &owner.name) {
                continue;
            }
        }
        state.evicted.insert(i.pid, now);
        if i.evicted {
            continue; // moved on arrival by the eviction thread: its action is recorded there
        }
        let reason = format!(
            "{}[{}] from `{}` ran {}us on trading core {} owned by {}{}",
            i.comm,
            i.pid,
            i.cgroup,
            i.ran_ns / 1000,
            i.cpu,
            owner.name,
            came_back.map_or_else(String::new, |n| returns_said(n, repeat)),
        );
        let kind = ActionKind::EvictIntruder {
            pid: i.pid,
            comm: i.comm.clone(),
            cgroup: i.cgroup.clone(),
            cpu: i.cpu,
            to: host.housekeeping_cores.clone(),
            seen_ns: i.seen_ns,
            start: i.start,
        };
        t.event(kind, &rule, reason);
    }
    let evicted = &state.evicted;
    state.moved_at.retain(|pid, _| evicted.contains_key(pid));
    report_slo(t, state, true);
}

/// An arrival of an evicted task reported from before its move took effect (a newborn's
/// fork, then its first switch-in there, both ahead of the eviction): the stay that was
/// evicted, not a return.
fn reported_before_its_move(state: &EngineState, i: &super::Intruder) -> bool {
    (i.seen_ns.zip(state.moved_at.get(&i.pid))).is_some_and(|(seen, moved)| seen < *moved)
}

/// A repeat offender (`n` returns within `rules.intruders.within`): its workload held
/// ([`hold_workload`]) and, where the rule says so, the task itself stopped: with `then: stop`,
/// and with `freeze` or `throttle` for a task of no workload (nothing else would hold it).
/// Never a task of a `never_frozen` workload or of rank 1: evicted again instead. Whether it
/// was stopped (nothing more to do for it).
fn stop_or_hold(
    t: &mut Tick<'_>,
    state: &mut EngineState,
    i: &super::Intruder,
    n: u32,
    owner: &str,
) -> bool {
    let policy = t.policy;
    let rule = &policy.rules.intruders;
    let held = RuleId::new("rules.intruders");
    let workload = workload_of(policy, &i.cgroup, owner);
    let spared = (workload.as_ref())
        .and_then(|w| policy.workloads.iter().find(|x| &x.name == w))
        .is_some_and(|w| w.never_frozen || w.rank == 1);
    let stop = match rule.then {
        RepeatAction::Stop => true,
        RepeatAction::Freeze | RepeatAction::Throttle => workload.is_none(),
        RepeatAction::Evict => false,
    };
    if let Some(w) = workload {
        hold_workload(t, state, w, i, n, &held);
    }
    if !stop || spared {
        return false;
    }
    state.stopped.insert(i.pid);
    let reason = format!(
        "{}[{}] from `{}` came back to trading core {} {n} times within {} (repeat: {}); stopped while the trading cores stay protected",
        i.comm,
        i.pid,
        i.cgroup,
        i.cpu,
        crate::policy::amount::format_duration(rule.within),
        rule.repeat
    );
    let kind = ActionKind::StopIntruder {
        pid: i.pid,
        comm: i.comm.clone(),
        cgroup: i.cgroup.clone(),
        returns: n,
    };
    t.event(kind, &held, reason);
    true
}

/// The repeat offenders stopped while the trading cores were protected, continued now that
/// they are let go.
fn continue_stopped(t: &mut Tick<'_>, state: &mut EngineState) {
    let rule = RuleId::new("rules.intruders");
    for pid in std::mem::take(&mut state.stopped) {
        let reason = "the trading cores were let go: a repeat offender stopped meanwhile goes on"
            .to_string();
        t.event(ActionKind::ContinueIntruder { pid }, &rule, reason);
    }
}

/// A repeat offender's workload held while the trading cores stay protected, once: frozen or
/// throttled as `rules.intruders.then` says (nothing for `evict` and `stop`).
fn hold_workload(
    t: &mut Tick<'_>,
    state: &mut EngineState,
    w: String,
    i: &super::Intruder,
    n: u32,
    held: &RuleId,
) {
    let rule = &t.policy.rules.intruders;
    let newly = match rule.then {
        RepeatAction::Freeze => state.repeat_frozen.insert(w.clone()),
        RepeatAction::Throttle => state.repeat_throttled.insert(w.clone()),
        RepeatAction::Evict | RepeatAction::Stop => false,
    };
    if !newly {
        return;
    }
    let reason = format!(
        "{}[{}] of {w} came back to trading core {} {n} times within {} (repeat: {})",
        i.comm,
        i.pid,
        i.cpu,
        crate::policy::amount::format_duration(rule.within),
        rule.repeat
    );
    match rule.then {
        RepeatAction::Throttle => {
            let reason = format!("{reason}: cpu.max {}", rule.cpu_max);
            throttle(t, &w, rule, held, reason);
        }
        _ => t.claim(&w, held, reason),
    }
}

/// A repeat offender's workload throttled to `rules.intruders.cpu_max` this tick (the
/// escalation ladder, decided after, may want its own `cpu.max` there). Rank 1 is never
/// throttled.
fn throttle(t: &mut Tick<'_>, workload: &str, rule: &IntruderRule, by: &RuleId, reason: String) {
    if (t.policy.workloads.iter()).any(|w| w.name == workload && w.rank == 1) {
        return;
    }
    let knobs = t.knobs.entry(workload.to_string()).or_default();
    if knobs
        .cpu_max
        .as_ref()
        .is_none_or(|k| k.value > rule.cpu_max)
    {
        knobs.cpu_max = Some(Want {
            value: rule.cpu_max,
            rule: by.clone(),
            reason,
        });
    }
}

/// What the eviction of a task that came back says: its returns within the window, and what
/// the policy does with a repeat offender.
fn returns_said(n: u32, rule: &IntruderRule) -> String {
    let within = crate::policy::amount::format_duration(rule.within);
    let who = if n >= rule.repeat {
        "a repeat offender".to_string()
    } else {
        format!("a repeat offender at {}", rule.repeat)
    };
    let then = rule.then;
    format!(
        "; return {n} within {within}, {who} (rules.intruders.then: {}, {})",
        then.name(),
        then.what()
    )
}

/// How often a partition that stays invalid is repaired.
pub const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The owner's cpuset partition went invalid while the cores are protected for it (a CPU
/// went offline, someone changed a parent): the protection is carried out again, the
/// partition written anew, at most every [`REPAIR_EVERY`], until it reads valid. A partition
/// that was never made (a `member` from the start: no cpuset partition on this kernel) is
/// not one to repair. Returns why, when it is repaired now.
fn repair_partition(t: &Tick<'_>, state: &mut EngineState, owner: &str) -> Option<String> {
    let now = t.obs.workloads.get(owner)?.partition.as_ref()?;
    let invalid = matches!(now.state, PartitionState::Invalid { .. });
    if now.state.is_valid() {
        state.partition_broken = None;
        return None;
    }
    if invalid && state.partition_broken.is_none() {
        state.partition_broken = Some(now.to_string());
    }
    let broken = state.partition_broken.clone()?;
    if state.applied.trading.as_deref() != Some(owner)
        || state
            .partition_repaired_at
            .is_some_and(|at| elapsed(at, t.now) < REPAIR_EVERY)
    {
        return None;
    }
    state.partition_repaired_at = Some(t.now);
    state.applied.trading_cores = None; // reconcile protects them again
    Some(format!(
        "the partition went invalid ({broken}), it reads `{now}` now"
    ))
}

/// The workload a cgroup belongs to (the deepest match), unless it is the owner's.
fn workload_of(policy: &crate::policy::Policy, cgroup: &str, owner: &str) -> Option<String> {
    (policy.workloads.iter())
        .filter(|w| w.name != owner)
        .filter_map(|w| w.matcher.depth_of(cgroup).map(|d| (d, &w.name)))
        .max_by_key(|(d, _)| *d)
        .map(|(_, n)| n.clone())
}

/// Whether the trading-core latency SLO is breached now (only while the cores are protected).
pub fn slo_breached(t: &Tick<'_>) -> Option<(f64, f64)> {
    let target = t.policy.rules.slo.as_ref()?.trading_p99_wakeup?;
    let p99 = t.obs.trading_p99_wakeup_ns?;
    let target = target.as_nanos() as f64;
    (t.trading.is_some() && p99 as f64 > target).then_some((p99 as f64 / 1000.0, target / 1000.0))
}

fn report_slo(t: &mut Tick<'_>, state: &mut EngineState, protected: bool) {
    let Some(target) = t
        .policy
        .rules
        .slo
        .as_ref()
        .and_then(|s| s.trading_p99_wakeup)
    else {
        return;
    };
    let breach = if protected { slo_breached(t) } else { None };
    let rule = RuleId::new("rules.slo");
    let target_us = target.as_nanos() as f64 / 1000.0;
    let p99_us = t.obs.trading_p99_wakeup_ns.unwrap_or(0) as f64 / 1000.0;
    match (breach, state.applied.slo_breached) {
        (Some((p99_us, target_us)), false) => {
            state.applied.slo_breached = true;
            let reason =
                "p99 wakeup latency on the trading cores is above target; the escalation throttles"
                    .into();
            t.event(ActionKind::SloBreach { p99_us, target_us }, &rule, reason);
        }
        (None, true) => {
            state.applied.slo_breached = false;
            let reason = if protected {
                "p99 wakeup latency is back within target"
            } else {
                "trading cores are no longer protected"
            };
            t.event(
                ActionKind::SloMet { p99_us, target_us },
                &rule,
                reason.into(),
            );
        }
        _ => {}
    }
}

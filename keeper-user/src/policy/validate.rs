//! [`RawPolicy`] → [`Policy`]: value parsing and the semantic checks, each with a location.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::tz::TimeZone;

use super::MIN_REACTION;
use super::amount::{Amount, Percent, parse_duration};
use super::at::{At, Pos};
use super::diag::{Diagnostic, suggestion};
use super::raw::*;
use super::types::*;
use crate::cpulist::CpuList;

/// What `check` knows about the machine it runs on.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Online CPUs; `None` skips the check.
    pub online_cpus: Option<CpuList>,
    /// Checking for this host: cores that do not exist are errors, not warnings.
    pub for_this_host: bool,
}

/// Default time zone of windows.
pub const DEFAULT_TIME_ZONE: &str = "Europe/Paris";
/// Default `rules.thaw_hysteresis`.
pub const DEFAULT_THAW_HYSTERESIS: Duration = Duration::from_secs(30);

pub(super) struct Checker<'a> {
    pub diags: Vec<Diagnostic>,
    facts: &'a HostFacts,
}

impl<'a> Checker<'a> {
    pub fn new(facts: &'a HostFacts) -> Self {
        Self {
            diags: Vec::new(),
            facts,
        }
    }
    pub(super) fn err(&mut self, pos: Pos, key: &str, msg: impl std::fmt::Display) {
        self.diags
            .push(Diagnostic::error(pos, format!("`{key}`: {msg}")));
    }
    pub(super) fn warn(&mut self, pos: Pos, key: &str, msg: impl std::fmt::Display) {
        self.diags
            .push(Diagnostic::warning(pos, format!("`{key}`: {msg}")));
    }
    pub(super) fn parsed<T>(
        &mut self,
        v: &At<String>,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match f(&v.value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(v.pos, key, e);
                None
            }
        }
    }
    pub(super) fn duration(&mut self, v: &At<String>, key: &str) -> Option<Duration> {
        self.parsed(v, key, parse_duration)
    }
    pub(super) fn opt_duration(
        &mut self,
        v: &Option<At<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        v.as_ref()
            .and_then(|v| self.duration(v, key))
            .unwrap_or(default)
    }
    pub(super) fn percent_num(&mut self, v: &At<f64>, key: &str) -> f64 {
        if !(0.0..=100.0).contains(&v.value) {
            self.err(
                v.pos,
                key,
                format!("{} is out of range 0..=100 (a percentage)", v.value),
            );
        }
        v.value
    }
    pub(super) fn time_zone(&mut self, v: &At<String>, key: &str) -> Option<TimeZone> {
        match TimeZone::get(v.value.trim()) {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.err(
                    v.pos,
                    key,
                    format!(
                        "`{}` is not a known time zone (IANA name, e.g. Europe/Paris)",
                        v.value
                    ),
                );
                None
            }
        }
    }

    pub fn policy(&mut self, raw: &RawPolicy) -> Option<Policy> {
        if let Some(v) = &raw.version
            && v.value != 1
        {
            self.err(
                v.pos,
                "version",
                format!(
                    "version {} is unknown; this keeper reads version 1",
                    v.value
                ),
            );
        }
        let host = self.host(&raw.host);
        let classes = self.classes(raw.classes.as_ref());
        let rules = self.rules(raw.rules.as_ref());
        let hysteresis = rules
            .as_ref()
            .map_or(DEFAULT_THAW_HYSTERESIS, |r| r.thaw_hysteresis);
        let workloads = self.workloads(&raw.workloads, host.as_ref(), hysteresis);
        if let Some(r) = &raw.rules {
            self.gpu_mutex_workloads(r, &workloads);
        }
        self.diags.sort_by_key(|d| (d.pos, d.severity));
        if self.diags.iter().any(Diagnostic::is_error) {
            return None;
        }
        Some(Policy {
            host: host?,
            classes,
            workloads,
            rules: rules?,
        })
    }

    fn host(&mut self, h: &At<RawHost>) -> Option<Host> {
        let h = &h.value;
        let (tz_name, tz) = match &h.time_zone {
            Some(v) => (
                v.value.trim().to_string(),
                self.time_zone(v, "host.time_zone"),
            ),
            None => (
                DEFAULT_TIME_ZONE.to_string(),
                TimeZone::get(DEFAULT_TIME_ZONE).ok(),
            ),
        };
        // `""`: no trading cores on this machine (a keeper inside a VM); none is guarded.
        let trading = self.parsed(&h.trading_cores, "host.trading_cores", |s| match s.trim() {
            "" => Ok(CpuList::default()),
            s => s.parse::<CpuList>().map_err(|e| e.to_string()),
        });
        let housekeeping = self.parsed(&h.housekeeping_cores, "host.housekeeping_cores", |s| {
            s.parse::<CpuList>().map_err(|e| e.to_string())
        });
        if let (Some(t), Some(k)) = (&trading, &housekeeping) {
            let both = t.intersection(k);
            if !both.is_empty() {
                self.err(
                    h.housekeeping_cores.pos,
                    "host.housekeeping_cores",
                    format!("cores {both} are also trading cores; trading and housekeeping cores must not overlap"),
                );
            }
        }
        for (list, v, key) in [
            (&trading, &h.trading_cores, "host.trading_cores"),
            (
                &housekeeping,
                &h.housekeeping_cores,
                "host.housekeeping_cores",
            ),
        ] {
            if let (Some(list), Some(online)) = (list, &self.facts.online_cpus) {
                let missing = list.difference(online);
                if !missing.is_empty() {
                    let msg = format!(
                        "cores {missing} do not exist on this host (online CPUs: {online}); an operator edits this list per host"
                    );
                    if self.facts.for_this_host {
                        self.err(v.pos, key, msg)
                    } else {
                        self.warn(v.pos, key, msg)
                    }
                }
            }
        }
        Some(Host {
            name: h
                .name
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "host".into()),
            time_zone_name: tz_name,
            time_zone: tz?,
            trading_cores: trading?,
            housekeeping_cores: housekeeping?,
            keeper_unit: h
                .keeper_unit
                .as_ref()
                .map(|u| u.value.clone())
                .unwrap_or_else(|| "keeper.service".into()),
            irq_guard: h.irq_guard.as_ref().is_some_and(|g| g.value),
            workqueue_guard: h.workqueue_guard.as_ref().is_some_and(|g| g.value),
            smt: h.smt.as_ref().map_or(Smt::AsListed, |s| s.value),
            watchdog: h.watchdog.as_ref().and_then(|w| self.watchdog(w)),
        })
    }

    /// `host.watchdog`: an absolute device path and a timeout of whole seconds, 2 s to 1 h.
    fn watchdog(&mut self, w: &At<RawWatchdog>) -> Option<WatchdogSpec> {
        let device = match &w.value.device {
            Some(d) if !d.value.starts_with('/') => {
                self.err(
                    d.pos,
                    "host.watchdog.device",
                    "an absolute path, e.g. /dev/watchdog",
                );
                return None;
            }
            Some(d) => d.value.clone(),
            None => "/dev/watchdog".into(),
        };
        let t = &w.value.timeout;
        let timeout = self.duration(t, "host.watchdog.timeout")?;
        if timeout.subsec_nanos() != 0 || !(2..=3600).contains(&timeout.as_secs()) {
            self.err(
                t.pos,
                "host.watchdog.timeout",
                "whole seconds from 2s to 1h (the kernel's watchdog API counts seconds)",
            );
            return None;
        }
        Some(WatchdogSpec {
            device: device.into(),
            timeout,
        })
    }

    fn classes(&mut self, raw: Option<&At<RawClasses>>) -> BTreeMap<Class, Limits> {
        let mut out: BTreeMap<Class, Limits> = Class::ALL
            .iter()
            .map(|c| (*c, c.default_limits()))
            .collect();
        let Some(raw) = raw else { return out };
        let r = &raw.value;
        for (class, lim) in [
            (Class::Micro, &r.micro),
            (Class::LightBrowser, &r.light_browser),
            (Class::HeavyBrowser, &r.heavy_browser),
            (Class::Batch, &r.batch),
            (Class::Experimental, &r.experimental),
        ] {
            if let Some(lim) = lim {
                let key = format!("classes.{}", class.name());
                let entry = out.entry(class).or_default();
                self.limits(&lim.value, &key, entry);
            }
        }
        out
    }

    fn limits(&mut self, l: &RawLimits, key: &str, into: &mut Limits) {
        if let Some(w) = &l.cpu_weight {
            if !(1..=10_000).contains(&w.value) {
                self.err(
                    w.pos,
                    &format!("{key}.cpu_weight"),
                    format!("{} is out of range 1..=10000", w.value),
                );
            }
            into.cpu_weight = Some(w.value);
        }
        if let Some(v) = &l.cpu_max {
            let k = format!("{key}.cpu_max");
            if let Some(p) = self.parsed(v, &k, |s| s.parse::<Percent>()) {
                if p.get() <= 0.0 {
                    self.err(
                        v.pos,
                        &k,
                        "0% would stop the workload; use `freeze` for that",
                    );
                }
                into.cpu_max = Some(p);
            }
        }
        for (v, field, slot) in [
            (&l.memory_high, "memory_high", &mut into.memory_high),
            (&l.memory_max, "memory_max", &mut into.memory_max),
        ] {
            if let Some(v) = v {
                *slot = self
                    .parsed(v, &format!("{key}.{field}"), |s| s.parse::<Amount>())
                    .or(*slot);
            }
        }
    }

    fn workloads(
        &mut self,
        raw: &At<Vec<At<RawWorkload>>>,
        host: Option<&Host>,
        hysteresis: Duration,
    ) -> Vec<Workload> {
        if raw.value.is_empty() {
            // The package's policy (policies/observe.yaml) until an operator edits it.
            self.warn(
                raw.pos,
                "workloads",
                "no workloads: the keeper observes only (latency, metrics) and changes nothing",
            );
        }
        let names: Vec<&str> = raw
            .value
            .iter()
            .map(|w| w.value.name.value.as_str())
            .collect();
        let ranks: HashMap<&str, u32> = raw
            .value
            .iter()
            .map(|w| (w.value.name.value.as_str(), w.value.rank.value))
            .collect();
        let never_frozen: Vec<&str> = (raw.value.iter())
            .filter(|w| w.value.never_frozen.as_ref().is_some_and(|n| n.value))
            .map(|w| w.value.name.value.as_str())
            .collect();
        let mut seen_names: HashMap<&str, Pos> = HashMap::new();
        let mut seen_ranks: HashMap<u32, (&str, Pos)> = HashMap::new();
        let mut owner: Option<&str> = None;
        let mut out = Vec::new();
        for w in &raw.value {
            let w = &w.value;
            let name = w.name.value.as_str();
            if !valid_name(name) {
                self.err(
                    w.name.pos,
                    "name",
                    format!(
                        "`{name}` is not a workload name (letters, digits, `-` and `_`, at most 64)"
                    ),
                );
            }
            if let Some(first) = seen_names.insert(name, w.name.pos) {
                self.err(
                    w.name.pos,
                    "name",
                    format!("duplicate workload name `{name}` (first at {first})"),
                );
            }
            if w.rank.value == 0 {
                self.err(
                    w.rank.pos,
                    &format!("{name}.rank"),
                    "ranks start at 1 (1 = highest)",
                );
            } else if let Some((other, at)) = seen_ranks.insert(w.rank.value, (name, w.rank.pos)) {
                self.err(
                    w.rank.pos,
                    &format!("{name}.rank"),
                    format!("duplicate rank {} (also `{other}` at {at})", w.rank.value),
                );
            }
            if let Some(o) = &w.owns_trading_cores
                && o.value
            {
                if let Some(first) = owner {
                    self.err(
                        o.pos,
                        &format!("{name}.owns_trading_cores"),
                        format!("`{first}` already owns the trading cores"),
                    );
                }
                if host.is_some_and(|h| h.trading_cores.is_empty()) {
                    self.err(
                        o.pos,
                        &format!("{name}.owns_trading_cores"),
                        "`host.trading_cores` is empty: there are no trading cores to own",
                    );
                }
                owner = Some(name);
            }
            let refs = Refs {
                names: &names,
                ranks: &ranks,
                never_frozen: &never_frozen,
                hysteresis,
            };
            if let Some(wl) = self.workload(w, host, &refs) {
                out.push(wl);
            }
        }
        self.containment(&raw.value, &out, host);
        self.shared_guests(&raw.value, &out);
        out.sort_by_key(|w| w.rank);
        out
    }

    fn workload(
        &mut self,
        w: &RawWorkload,
        host: Option<&Host>,
        refs: &Refs<'_>,
    ) -> Option<Workload> {
        let name = w.name.value.clone();
        let matcher = self.matcher(&w.matcher, &name, host);
        let mut windows = Vec::new();
        if let Some(ws) = &w.windows {
            if ws.value.is_empty() {
                self.err(
                    ws.pos,
                    &format!("{name}.windows"),
                    "empty list; leave `windows` out for \"always\"",
                );
            }
            for (i, win) in ws.value.iter().enumerate() {
                if let Some(win) = self.window(&win.value, &format!("{name}.windows[{i}]"), host) {
                    windows.push(win);
                }
            }
        }
        let conditions = w
            .conditions
            .as_ref()
            .map(|c| self.conditions(&c.value, &name))
            .unwrap_or_default();
        let pauses = match &w.pauses {
            Some(p) => self.targets(
                &p.value,
                &format!("{name}.pauses"),
                &name,
                w.rank.value,
                refs,
            ),
            None => Vec::new(),
        };
        let preempt = w
            .preempt
            .as_ref()
            .and_then(|p| self.preempt(&p.value, &name, w.rank.value, refs));
        let gpu_handoff = w
            .gpu_handoff
            .as_ref()
            .map(|h| self.gpu_handoff(&h.value, &name, w.rank.value, refs));
        let start_on = (w.start_on.as_ref()).and_then(|s| self.start_on(s, &name, w));
        Some(Workload {
            name,
            rank: w.rank.value,
            matcher: matcher?,
            class: w.class.as_ref().map(|c| c.value),
            windows,
            conditions,
            when_inactive: w
                .when_inactive
                .as_ref()
                .map(|v| v.value)
                .unwrap_or_default(),
            pauses,
            preempt,
            owns_trading_cores: w.owns_trading_cores.as_ref().is_some_and(|o| o.value),
            never_frozen: w.never_frozen.as_ref().is_some_and(|n| n.value),
            vcpu_fifo: w
                .vcpu_priority
                .as_ref()
                .and_then(|v| self.vcpu_priority(v, &format!("{}.vcpu_priority", w.name.value), w)),
            gpu_handoff,
            start_on,
        })
    }

    /// `fifo:N`, 1 to 98, on the workload that owns the trading cores.
    fn vcpu_priority(&mut self, v: &At<String>, key: &str, w: &RawWorkload) -> Option<u8> {
        if !w.owns_trading_cores.as_ref().is_some_and(|o| o.value) {
            self.err(
                v.pos,
                key,
                "only the workload that owns the trading cores (a VM) has vCPUs pinned there",
            );
            return None;
        }
        let n = v
            .value
            .trim()
            .strip_prefix("fifo:")
            .and_then(|n| n.parse::<u8>().ok());
        match n {
            Some(n @ 1..=98) => Some(n),
            _ => {
                self.err(
                    v.pos,
                    key,
                    format!("`{}` is not `fifo:N` with N from 1 to 98", v.value),
                );
                None
            }
        }
    }

    /// Checks references to other workloads: known, not self, lower-ranked, never rank 1 nor
    /// one that is `never_frozen`.
    pub(super) fn targets(
        &mut self,
        list: &[At<String>],
        key: &str,
        me: &str,
        my_rank: u32,
        refs: &Refs<'_>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for t in list {
            let n = t.value.as_str();
            match refs.ranks.get(n) {
                None => self.err(
                    t.pos,
                    key,
                    format!(
                        "unknown workload `{n}`{}",
                        suggestion(n, refs.names.iter().copied())
                    ),
                ),
                Some(_) if n == me => self.err(t.pos, key, format!("`{me}` cannot target itself")),
                Some(1) => self.err(
                    t.pos,
                    key,
                    format!("`{n}` has rank 1, which is never frozen"),
                ),
                Some(_) if refs.never_frozen.contains(&n) => {
                    self.err(t.pos, key, format!("`{n}` is `never_frozen`"))
                }
                Some(r) if *r <= my_rank => self.err(
                    t.pos,
                    key,
                    format!("`{n}` (rank {r}) is not ranked below `{me}` (rank {my_rank})"),
                ),
                Some(_) => out.push(n.to_string()),
            }
        }
        out
    }

    fn preempt(
        &mut self,
        p: &RawPreempt,
        name: &str,
        rank: u32,
        refs: &Refs<'_>,
    ) -> Option<Preempt> {
        let key = format!("{name}.preempt");
        let deadline = self.duration(&p.deadline, &format!("{key}.deadline"));
        if let Some(d) = deadline
            && d < MIN_REACTION
        {
            self.err(
                p.deadline.pos,
                &format!("{key}.deadline"),
                format!("{d:?} is below the engine's minimum reaction time ({MIN_REACTION:?})"),
            );
        }
        let targets = match &p.targets {
            Some(t) => self.targets(&t.value, &format!("{key}.targets"), name, rank, refs),
            None => {
                let mut lower: Vec<(&str, u32)> = refs
                    .ranks
                    .iter()
                    .filter(|(_, r)| **r > rank)
                    .map(|(n, r)| (*n, *r))
                    .collect();
                lower.sort_by_key(|(_, r)| *r);
                lower.into_iter().map(|(n, _)| n.to_string()).collect()
            }
        };
        let release_after = p
            .release_after
            .as_ref()
            .and_then(|r| self.duration(r, &format!("{key}.release_after")));
        Some(Preempt {
            on: p.on.value,
            deadline: deadline?,
            targets,
            release_after: release_after.unwrap_or(refs.hysteresis),
        })
    }
}

pub(super) struct Refs<'a> {
    pub(super) names: &'a [&'a str],
    pub(super) ranks: &'a HashMap<&'a str, u32>,
    /// Workloads with `never_frozen: true`.
    pub(super) never_frozen: &'a [&'a str],
    pub(super) hysteresis: Duration,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

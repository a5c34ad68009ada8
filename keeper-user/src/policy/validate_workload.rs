//! A workload's `match`, `windows`, `conditions`, `gpu_handoff` and `start_on` keys: values
//! and checks, located.

use jiff::tz::TimeZone;

use super::at::At;
use super::raw::RawWorkload;
use super::raw::{
    RawConditions, RawDocker, RawGpuHandoff, RawIds, RawMatch, RawStartOn, RawWindow,
};
use super::types::{
    Conditions, DockerMatch, GpuHandoff, Host, IdRange, Match, Service, StartOn, Workload,
};
use super::validate::{Checker, DEFAULT_TIME_ZONE, Refs};
use super::window::{DaySet, Window};

/// True when cgroup `outer` is `inner` or one of its ancestors.
fn contains(outer: &str, inner: &str) -> bool {
    let (outer, inner) = (outer.trim_matches('/'), inner.trim_matches('/'));
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Checker<'_> {
    /// A workload's cgroup must not contain the keeper's own cgroup, nor a cgroup of the
    /// workload that owns the trading cores or has rank 1 (`cgroup: system.slice`,
    /// `cgroup: qemu.slice`): freezing or throttling it would hit them too. The owner of the
    /// trading cores is not matched through Docker (its cgroups must be known without it).
    pub(super) fn containment(
        &mut self,
        raw: &[At<RawWorkload>],
        built: &[Workload],
        host: Option<&Host>,
    ) {
        let keeper = host.map(|h| format!("system.slice/{}", h.keeper_unit));
        let guarded: Vec<(&str, String)> = built
            .iter()
            .filter(|w| w.rank == 1 || w.owns_trading_cores)
            .flat_map(|w| {
                w.matcher
                    .cgroups()
                    .into_iter()
                    .map(|c| (w.name.as_str(), c))
            })
            .collect();
        for w in built {
            let Some(r) = raw.iter().find(|r| r.value.name.value == w.name) else {
                continue;
            };
            let key = format!("{}.match", w.name);
            if let (true, Some(d)) = (w.owns_trading_cores, &r.value.matcher.value.docker) {
                self.err(
                    d.pos,
                    &format!("{key}.docker"),
                    "the workload that owns the trading cores is matched by cgroup paths the eviction path knows without asking the engine: give the containers' cgroup parent as `cgroup` (`dockerd --cgroup-parent`) instead",
                );
            }
            if let (true, Some(p)) = (w.owns_trading_cores, &r.value.matcher.value.process) {
                self.err(
                    p.pos,
                    &format!("{key}.process"),
                    "the workload that owns the trading cores is matched by a name any local user can give a process (prctl PR_SET_NAME): such a process would be protected on the trading cores, and its threads named like vCPUs made real-time; match it by `vmid`, `cgroup`, `systemd_unit` or a root-owned `pid_file`",
                );
            }
            // A `systemd_unit` that is the keeper's own is reported by `matcher` already.
            let own_unit =
                host.is_some_and(|h| w.matcher.systemd_unit.as_ref() == Some(&h.keeper_unit));
            for c in w.matcher.cgroups() {
                let said = own_unit && keeper.as_ref() == Some(&c);
                if let Some(k) = keeper.as_ref().filter(|k| !said && contains(&c, k)) {
                    let msg = format!("cgroup `{c}` contains the keeper's own cgroup `{k}`");
                    self.err(r.value.matcher.pos, &key, msg);
                }
                for (other, g) in guarded.iter().filter(|(o, _)| *o != w.name) {
                    if contains(&c, g) {
                        let msg = format!(
                            "cgroup `{c}` contains `{other}`'s cgroup `{g}`: acting on {} would act on `{other}`, which is never frozen or throttled",
                            w.name
                        );
                        self.err(r.value.matcher.pos, &key, msg);
                    }
                }
            }
        }
    }

    /// A guest id or range (`200`, `300-399`); Proxmox ids run from 100 to 999999999.
    fn ids(&mut self, v: &At<RawIds>, key: &str, what: &str) -> Option<IdRange> {
        const IDS: std::ops::RangeInclusive<u32> = 100..=999_999_999;
        let range = match &v.value {
            RawIds::One(id) => Ok(IdRange {
                first: *id,
                last: *id,
            }),
            RawIds::Range(text) => text
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .map(|(first, last)| IdRange { first, last })
                .ok_or_else(|| format!("`{text}` is not a {what} id or a range FIRST-LAST")),
        };
        let range = range.and_then(|r| match r {
            r if !IDS.contains(&r.first) || !IDS.contains(&r.last) => {
                Err(format!("{r} is not a Proxmox {what} id (100..=999999999)"))
            }
            r if r.first > r.last => Err(format!("{r}: the range ends before it starts")),
            r => Ok(r),
        });
        range.map_err(|msg| self.err(v.pos, key, msg)).ok()
    }

    pub(super) fn matcher(
        &mut self,
        m: &At<RawMatch>,
        name: &str,
        host: Option<&Host>,
    ) -> Option<Match> {
        let r = &m.value;
        let key = format!("{name}.match");
        let vms = r
            .vmid
            .as_ref()
            .and_then(|v| self.ids(v, &format!("{key}.vmid"), "VM"));
        let cts = r
            .ctid
            .as_ref()
            .and_then(|v| self.ids(v, &format!("{key}.ctid"), "container"));
        let out = Match {
            cgroup: r.cgroup.as_ref().map(|v| v.value.clone()),
            systemd_unit: r.systemd_unit.as_ref().map(|v| v.value.clone()),
            vmid: vms.filter(|v| v.first == v.last).map(|v| v.first),
            vmids: vms.filter(|v| v.first != v.last),
            ctids: cts,
            process: r.process.as_ref().map(|v| v.value.clone()),
            pid_file: r.pid_file.as_ref().map(|v| v.value.clone()),
            docker: r
                .docker
                .as_ref()
                .and_then(|d| self.docker(d, &format!("{key}.docker"))),
            protect: vec![],
        };
        if out == Match::default() && r.vmid.is_none() && r.ctid.is_none() && r.docker.is_none() {
            self.err(
                m.pos,
                &key,
                "no match key; give one of cgroup, systemd_unit, vmid, ctid, process, pid_file, docker",
            );
        }
        if let Some(p) = &r.process
            && (p.value.is_empty() || p.value.len() > 15)
        {
            self.err(
                p.pos,
                &format!("{key}.process"),
                "a process name (comm) has 1 to 15 bytes",
            );
        }
        if let Some(c) = &r.cgroup
            && (c.value.contains("..") || c.value.trim_matches('/').is_empty())
        {
            self.err(
                c.pos,
                &format!("{key}.cgroup"),
                format!("`{}` is not a cgroup path below the root", c.value),
            );
        }
        if let (Some(u), Some(h)) = (&r.systemd_unit, host)
            && u.value == h.keeper_unit
        {
            self.err(
                u.pos,
                &format!("{key}.systemd_unit"),
                "this is the keeper itself, which is never a workload",
            );
        }
        if let Some(p) = &r.pid_file
            && !p.value.starts_with('/')
        {
            self.err(
                p.pos,
                &format!("{key}.pid_file"),
                "a pid file path is absolute",
            );
        }
        Some(out)
    }

    /// `match.docker`: a name as Docker writes them, a label `KEY` or `KEY=VALUE`; one at least.
    fn docker(&mut self, d: &At<RawDocker>, key: &str) -> Option<DockerMatch> {
        let r = &d.value;
        if r.name.is_none() && r.label.is_none() {
            self.err(d.pos, key, "no key; give `name`, `label` or both");
            return None;
        }
        let mut ok = true;
        if let Some(n) = &r.name {
            let valid = n.value.len() <= 255
                && n.value
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && (n.value.chars()).all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                let msg = format!(
                    "`{}` is not a Docker container name (a letter or digit, then letters, digits, `_`, `.`, `-`)",
                    n.value
                );
                self.err(n.pos, &format!("{key}.name"), msg);
                ok = false;
            }
        }
        let label = r.label.as_ref().and_then(|l| {
            let (k, v) = match l.value.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (l.value.as_str(), None),
            };
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                let msg = format!(
                    "`{}` is not a label: `KEY` or `KEY=VALUE`, the key not empty and without spaces",
                    l.value
                );
                self.err(l.pos, &format!("{key}.label"), msg);
                ok = false;
                return None;
            }
            Some((k.to_string(), v))
        });
        ok.then(|| DockerMatch {
            name: r.name.as_ref().map(|n| n.value.clone()),
            label,
        })
    }

    pub(super) fn window(
        &mut self,
        w: &RawWindow,
        key: &str,
        host: Option<&Host>,
    ) -> Option<Window> {
        let days = self.parsed(&w.days, &format!("{key}.days"), DaySet::parse);
        let (tz_name, tz) = match &w.time_zone {
            Some(v) => (
                v.value.trim().to_string(),
                self.time_zone(v, &format!("{key}.time_zone")),
            ),
            // Without a valid host zone the window is still checked (in UTC) for its own errors.
            None => match host {
                Some(h) => (h.time_zone_name.clone(), Some(h.time_zone.clone())),
                None => (DEFAULT_TIME_ZONE.to_string(), None),
            },
        };
        // Hours are checked even when days or zone failed, so every mistake is reported.
        let (d, z) = (
            days.unwrap_or(DaySet::ALL),
            tz.clone().unwrap_or(TimeZone::UTC),
        );
        let win = self.parsed(&w.hours, &format!("{key}.hours"), |s| {
            Window::parse(d, s, &tz_name, z)
        });
        days.and(tz).and(win)
    }

    pub(super) fn conditions(&mut self, c: &RawConditions, name: &str) -> Conditions {
        if let Some(l) = &c.loadavg_below
            && !(l.value.is_finite() && l.value > 0.0)
        {
            self.err(
                l.pos,
                &format!("{name}.conditions.loadavg_below"),
                "a load average threshold is a positive number",
            );
        }
        let mem = c
            .memory_pressure_below
            .as_ref()
            .map(|m| self.percent_num(m, &format!("{name}.conditions.memory_pressure_below")));
        Conditions {
            loadavg_below: c.loadavg_below.as_ref().map(|l| l.value),
            gpu_idle: c.gpu_idle.as_ref().is_some_and(|g| g.value),
            memory_pressure_below: mem,
        }
    }

    pub(super) fn gpu_handoff(
        &mut self,
        h: &RawGpuHandoff,
        name: &str,
        rank: u32,
        refs: &Refs<'_>,
    ) -> GpuHandoff {
        let key = format!("{name}.gpu_handoff");
        if h.from.value.is_empty() {
            self.err(
                h.from.pos,
                &format!("{key}.from"),
                "empty list; name the workloads that give the GPU up",
            );
        }
        let from = self.targets(&h.from.value, &format!("{key}.from"), name, rank, refs);
        let release_after = h
            .release_after
            .as_ref()
            .and_then(|r| self.duration(r, &format!("{key}.release_after")));
        GpuHandoff {
            on: h.on.value,
            from,
            release_after: release_after.unwrap_or(refs.hysteresis),
        }
    }

    /// `start_on`: a unit or a command (one of them, not empty), started by the workload's
    /// own preemption (so it needs one), with a deadline (default 30 s).
    pub(super) fn start_on(
        &mut self,
        s: &At<RawStartOn>,
        name: &str,
        w: &RawWorkload,
    ) -> Option<StartOn> {
        let key = format!("{name}.start_on");
        if w.preempt.is_none() {
            self.err(
                s.pos,
                &key,
                format!("it starts with {name}'s preemption, and {name} has no `preempt`"),
            );
        }
        let deadline = match &s.value.deadline {
            Some(d) => self.duration(d, &format!("{key}.deadline"))?,
            None => std::time::Duration::from_secs(30),
        };
        let service = match (&s.value.unit, &s.value.command) {
            (Some(u), None) if !u.value.trim().is_empty() => Service::Unit(u.value.clone()),
            (None, Some(c)) if c.value.first().is_some_and(|p| !p.value.is_empty()) => {
                Service::Command(c.value.iter().map(|a| a.value.clone()).collect())
            }
            (Some(_), Some(_)) => {
                self.err(s.pos, &key, "a `unit` or a `command`, not both");
                return None;
            }
            _ => {
                self.err(s.pos, &key, "needs a `unit` or a `command` (not empty)");
                return None;
            }
        };
        (w.preempt.is_some()).then_some(StartOn { service, deadline })
    }
}

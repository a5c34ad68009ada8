//! The `rules:` section: escalation, thermal guard, eco mode, memory rules, SLOs.

use std::time::Duration;

use super::amount::{Amount, Percent};
use super::at::At;
use super::intruders::IntruderRule;
use super::raw::*;
use super::types::*;
use super::validate::{Checker, DEFAULT_THAW_HYSTERESIS};

/// Default `rules.thermal_guard.dwell`.
pub const DEFAULT_THERMAL_DWELL: Duration = Duration::from_secs(30);
/// How long ballooning is tried before the memory ladder stops a VM.
pub const DEFAULT_STOP_VM_AFTER: Duration = Duration::from_secs(30);

impl Checker<'_> {
    pub(super) fn rules(&mut self, raw: Option<&At<RawRules>>) -> Option<Rules> {
        let Some(raw) = raw else {
            return Some(Rules {
                thaw_hysteresis: DEFAULT_THAW_HYSTERESIS,
                escalation: None,
                thermal_guard: None,
                eco_mode: None,
                memory: None,
                slo: None,
                intruders: IntruderRule::default(),
                gpu_mutex: None,
            });
        };
        let r = &raw.value;
        let hysteresis = self.opt_duration(
            &r.thaw_hysteresis,
            "rules.thaw_hysteresis",
            DEFAULT_THAW_HYSTERESIS,
        );
        let mut ok = true;
        let escalation = match &r.escalation {
            Some(e) => {
                let v = self.escalation(&e.value);
                ok &= v.is_some();
                v
            }
            None => None,
        };
        let thermal_guard = r.thermal_guard.as_ref().map(|t| self.thermal(&t.value));
        let eco_mode = match &r.eco_mode {
            Some(e) => {
                let v = self.eco(&e.value);
                ok &= v.is_some();
                v
            }
            None => None,
        };
        let memory = r.memory.as_ref().map(|m| self.memory(&m.value, hysteresis));
        let slo = match &r.slo {
            Some(s) => {
                let v = self.slo(s);
                ok &= v.is_some();
                v
            }
            None => None,
        };
        let intruders = r.intruders.as_ref().map(|i| self.intruders(&i.value));
        ok &= intruders.as_ref().is_none_or(Option::is_some);
        let gpu_mutex = r.gpu_mutex.as_ref().map(|m| self.gpu_mutex(m));
        ok &= gpu_mutex.as_ref().is_none_or(Option::is_some);
        ok.then_some(Rules {
            thaw_hysteresis: hysteresis,
            escalation,
            thermal_guard,
            eco_mode,
            memory,
            slo,
            intruders: intruders.flatten().unwrap_or_default(),
            gpu_mutex: gpu_mutex.flatten(),
        })
    }

    /// `rules.gpu_mutex`'s own values: a device with an `id` and a `driver`, a deadline. Its
    /// workloads are checked with the workloads ([`Checker::gpu_mutex_workloads`]).
    fn gpu_mutex(&mut self, m: &At<RawGpuMutex>) -> Option<GpuMutex> {
        let key = "rules.gpu_mutex";
        let device: std::collections::BTreeMap<String, String> = (m.value.device.value.iter())
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        let mut ok = true;
        for needed in ["id", "driver"] {
            if device.get(needed).is_none_or(|v| v.is_empty()) {
                let at = format!("{key}.device");
                self.err(
                    m.value.device.pos,
                    &at,
                    format!("needs `{needed}` (QMP's device_add)"),
                );
                ok = false;
            }
        }
        let deadline = self.opt_duration(
            &m.value.deadline,
            "rules.gpu_mutex.deadline",
            Duration::from_secs(30),
        );
        ok.then(|| GpuMutex {
            holder: m.value.holder.value.clone(),
            lend_to: (m.value.lend_to.value.iter())
                .map(|w| w.value.clone())
                .collect(),
            device,
            config: m.value.config.as_ref().map(|c| c.value.clone()),
            deadline,
        })
    }

    /// `rules.gpu_mutex`'s holder and borrowers: known VM workloads with one `vmid` each, the
    /// holder not among the borrowers, none owning the trading cores.
    pub(super) fn gpu_mutex_workloads(&mut self, raw: &At<RawRules>, workloads: &[Workload]) {
        let Some(m) = &raw.value.gpu_mutex else {
            return;
        };
        let m = &m.value;
        let names = std::iter::once((&m.holder, "rules.gpu_mutex.holder")).chain(
            m.lend_to
                .value
                .iter()
                .map(|w| (w, "rules.gpu_mutex.lend_to")),
        );
        for (name, key) in names {
            let why = match workloads.iter().find(|w| w.name == name.value) {
                None => Some(format!("unknown workload `{}`", name.value)),
                Some(w) if w.matcher.vmid.is_none() => {
                    Some(format!("`{}` is not one VM (`match: {{vmid: N}}`)", w.name))
                }
                Some(w) if w.owns_trading_cores => {
                    Some(format!("`{}` owns the trading cores", w.name))
                }
                Some(_) if key.ends_with("lend_to") && name.value == m.holder.value => {
                    Some(format!("`{}` holds the GPU already", name.value))
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                self.err(name.pos, key, why);
            }
        }
    }

    fn intruders(&mut self, i: &RawIntruders) -> Option<IntruderRule> {
        let d = IntruderRule::default();
        let within = self.opt_duration(&i.within, "rules.intruders.within", d.within);
        let repeat = i.repeat.as_ref().map_or(d.repeat, |r| r.value);
        let mut ok = true;
        if let Some(r) = i.repeat.as_ref().filter(|r| r.value == 0) {
            self.err(r.pos, "rules.intruders.repeat", "at least 1 return");
            ok = false;
        }
        if within.is_zero() {
            let pos = i.within.as_ref().map(|w| w.pos).unwrap_or_default();
            self.err(pos, "rules.intruders.within", "a window above 0");
            ok = false;
        }
        let cpu_max = match &i.cpu_max {
            Some(v) => match self.pct_text(v, "rules.intruders.cpu_max") {
                Some(p) if p.get() > 0.0 => p,
                Some(_) => {
                    self.err(v.pos, "rules.intruders.cpu_max", "a share above 0%");
                    return None;
                }
                None => return None,
            },
            None => d.cpu_max,
        };
        ok.then_some(IntruderRule {
            repeat,
            within,
            then: i.then.as_ref().map_or(d.then, |t| t.value),
            cpu_max,
            real_time: i.real_time.as_ref().map_or(d.real_time, |r| r.value),
        })
    }

    fn escalation(&mut self, e: &RawEscalation) -> Option<Escalation> {
        let key = "rules.escalation";
        let pressure =
            self.percent_num(&e.cpu_pressure_above, &format!("{key}.cpu_pressure_above"));
        if e.steps.value.is_empty() {
            self.err(
                e.steps.pos,
                &format!("{key}.steps"),
                "the ladder needs at least one step",
            );
        }
        let mut steps = Vec::new();
        for (i, s) in e.steps.value.iter().enumerate() {
            let k = format!("{key}.steps[{i}]");
            match &s.value {
                RawStep::CpuWeight(w) => {
                    if !(1..=10_000).contains(w) {
                        self.err(
                            s.pos,
                            &format!("{k}.cpu_weight"),
                            format!("{w} is out of range 1..=10000"),
                        );
                    }
                    steps.push(Step::CpuWeight(*w));
                }
                RawStep::CpuMax(p) => match p.parse::<Percent>() {
                    Ok(p) if p.get() > 0.0 => steps.push(Step::CpuMax(p)),
                    Ok(_) => self.err(
                        s.pos,
                        &format!("{k}.cpu_max"),
                        "0% would stop the workload; use `freeze`",
                    ),
                    Err(m) => self.err(s.pos, &format!("{k}.cpu_max"), m),
                },
                RawStep::Freeze => {
                    if i + 1 != e.steps.value.len() {
                        self.err(s.pos, &k, "`freeze` is the last step of a ladder");
                    }
                    steps.push(Step::Freeze);
                }
            }
        }
        let dwell = self.duration(&e.dwell, &format!("{key}.dwell"));
        let rollback = self.duration(&e.rollback_after, &format!("{key}.rollback_after"));
        Some(Escalation {
            cpu_pressure_above: pressure,
            steps,
            dwell: dwell?,
            rollback_after: rollback?,
        })
    }

    fn thermal(&mut self, t: &RawThermalGuard) -> ThermalGuard {
        let key = "rules.thermal_guard";
        for (v, k) in [
            (&t.gpu_temp_above, "gpu_temp_above"),
            (&t.resume_below, "resume_below"),
        ] {
            if !(v.value.is_finite() && (0.0..=150.0).contains(&v.value)) {
                self.err(
                    v.pos,
                    &format!("{key}.{k}"),
                    format!(
                        "{} °C is not a plausible GPU temperature (0..=150)",
                        v.value
                    ),
                );
            }
        }
        if t.resume_below.value >= t.gpu_temp_above.value {
            self.err(
                t.resume_below.pos,
                &format!("{key}.resume_below"),
                format!(
                    "must be below gpu_temp_above ({} °C) so that there is hysteresis",
                    t.gpu_temp_above.value
                ),
            );
        }
        ThermalGuard {
            gpu_temp_above: t.gpu_temp_above.value,
            resume_below: t.resume_below.value,
            dwell: self.opt_duration(&t.dwell, &format!("{key}.dwell"), DEFAULT_THERMAL_DWELL),
        }
    }

    fn eco(&mut self, e: &RawEcoMode) -> Option<EcoMode> {
        let key = "rules.eco_mode";
        let idle_below = self.percent_num(&e.idle_below, &format!("{key}.idle_below"));
        let idle_after = self.duration(&e.idle_after, &format!("{key}.idle_after"));
        let idle = self.pct_text(&e.idle_power_limit, &format!("{key}.idle_power_limit"));
        let busy = self.pct_text(&e.busy_power_limit, &format!("{key}.busy_power_limit"));
        if let (Some(i), Some(b)) = (idle, busy)
            && i.get() > b.get()
        {
            self.err(
                e.idle_power_limit.pos,
                &format!("{key}.idle_power_limit"),
                "is above busy_power_limit",
            );
        }
        for (p, v, k) in [
            (idle, &e.idle_power_limit, "idle_power_limit"),
            (busy, &e.busy_power_limit, "busy_power_limit"),
        ] {
            if p.is_some_and(|p| p.get() < 10.0) {
                self.err(
                    v.pos,
                    &format!("{key}.{k}"),
                    "a GPU power limit below 10% is not supported by drivers",
                );
            }
        }
        if let Some(c) = &e.clock_offset_mhz
            && !(-1000..=1000).contains(&c.value)
        {
            self.err(
                c.pos,
                &format!("{key}.clock_offset_mhz"),
                format!(
                    "{} MHz is not a plausible clock offset (-1000..=1000)",
                    c.value
                ),
            );
        }
        Some(EcoMode {
            idle_below,
            idle_after: idle_after?,
            idle_power_limit: idle?,
            busy_power_limit: busy?,
            clock_offset_mhz: e.clock_offset_mhz.as_ref().map(|c| c.value),
        })
    }

    fn memory(&mut self, m: &RawMemory, hysteresis: Duration) -> MemoryRule {
        let key = "rules.memory";
        let mut num = |v: &Option<At<f64>>, k: &str| {
            v.as_ref()
                .map(|v| self.percent_num(v, &format!("{key}.{k}")))
        };
        let high_above = num(&m.high_above, "high_above");
        let freeze_above = num(&m.freeze_above, "freeze_above");
        let balloon_above = num(&m.balloon_above, "balloon_above");
        let stop_vm_above = num(&m.stop_vm_above, "stop_vm_above");
        if let (Some(at), None) = (&m.stop_vm_above, balloon_above) {
            self.err(
                at.pos,
                &format!("{key}.stop_vm_above"),
                "needs `balloon_above`: a VM is stopped only once ballooning has not been enough",
            );
        }
        let amount = |c: &mut Self, v: &Option<At<String>>, k: &str| {
            v.as_ref()
                .and_then(|v| c.parsed(v, &format!("{key}.{k}"), |s| s.parse::<Amount>()))
        };
        let balloon_target = amount(self, &m.balloon_target, "balloon_target");
        let balloon_floor = amount(self, &m.balloon_floor, "balloon_floor");
        let memory_high = amount(self, &m.memory_high, "memory_high");
        MemoryRule {
            high_above,
            freeze_above,
            balloon_above,
            balloon_target: balloon_target.unwrap_or(Amount::Percent(Percent::new(50.0))),
            balloon_floor: balloon_floor.unwrap_or(Amount::Bytes(1 << 30)),
            memory_high,
            stop_vm_above,
            stop_vm_after: self.opt_duration(
                &m.stop_vm_after,
                &format!("{key}.stop_vm_after"),
                DEFAULT_STOP_VM_AFTER,
            ),
            release_after: self.opt_duration(
                &m.release_after,
                &format!("{key}.release_after"),
                hysteresis,
            ),
        }
    }

    fn slo(&mut self, s: &At<RawSlo>) -> Option<Slo> {
        let key = "rules.slo";
        let (wakeup, share) = (&s.value.trading_p99_wakeup, &s.value.trading_intruder_share);
        if wakeup.is_none() && share.is_none() {
            self.err(
                s.pos,
                key,
                "give trading_p99_wakeup, trading_intruder_share or both",
            );
            return None;
        }
        let mut ok = true;
        let wakeup = match wakeup {
            Some(w) => {
                let d = self.duration(w, &format!("{key}.trading_p99_wakeup"));
                if d == Some(Duration::ZERO) {
                    let k = format!("{key}.trading_p99_wakeup");
                    self.err(w.pos, &k, "a latency target above 0");
                }
                ok &= d.is_some();
                d
            }
            None => None,
        };
        let share = match share {
            Some(v) => {
                let p = self.pct_text(v, &format!("{key}.trading_intruder_share"));
                ok &= p.is_some();
                p
            }
            None => None,
        };
        ok.then_some(Slo {
            trading_p99_wakeup: wakeup,
            trading_intruder_share: share,
        })
    }

    fn pct_text(&mut self, v: &At<String>, key: &str) -> Option<Percent> {
        self.parsed(v, key, |s| s.parse::<Percent>())
    }
}

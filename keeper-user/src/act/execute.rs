//! Carries the engine's actions out through the actuators, workload by workload: cgroups
//! where the workload has them, signals to its processes where it has none.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    act::{ActError, Actuators, Effect},
    cpulist::CpuList,
    decide::{Action, ActionKind, Outcome, Step},
    device::{placement::Placement, procfs::HostTotals},
    policy::{Amount, Limits, Percent},
};

const CPU_PERIOD_US: u64 = 100_000;

/// `cpu.max` for a share of all host CPUs.
pub fn cpu_max_value(p: Percent, totals: HostTotals) -> String {
    let quota = p.of(CPU_PERIOD_US * totals.cpus as u64).max(1000);
    format!("{quota} {CPU_PERIOD_US}")
}

/// One action as carried out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub at: String,
    #[serde(flatten)]
    pub action: Action,
    pub outcome: Outcome,
    /// What it did, per cgroup or process touched.
    pub steps: Vec<Step>,
    /// How long carrying it out took.
    pub elapsed_ms: f64,
    /// An eviction: when its task left the trading cores (CLOCK_MONOTONIC ns, the programs'
    /// clock), where its latency ends.
    #[serde(skip)]
    pub moved_ns: Option<u64>,
}

impl Done {
    pub fn new(action: Action, steps: Vec<Step>, elapsed_ms: f64) -> Self {
        Done {
            at: jiff::Timestamp::now().to_string(),
            action,
            outcome: Outcome::of(&steps),
            steps,
            elapsed_ms,
            moved_ns: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The steps as the run record and the logs show them.
    pub fn lines(&self) -> Vec<String> {
        self.steps.iter().map(Step::to_string).collect()
    }

    /// The pid of the intruder this action moved off the trading cores, if it did.
    pub fn evicted(&self) -> Option<u32> {
        match self.action.kind {
            ActionKind::EvictIntruder { pid, .. }
                if self.ok() && self.steps.iter().any(|s| matches!(s, Step::Done { .. })) =>
            {
                Some(pid)
            }
            _ => None,
        }
    }
}

/// An action's report in the engine's terms. A controller this host lacks is said once
/// (`say_missing_once`) and is a skipped step, not a failure.
pub fn steps(act: &mut Actuators, report: Report) -> Vec<Step> {
    report
        .into_iter()
        .map(|r| match r {
            Ok(Effect::Done(detail)) => Step::Done { detail },
            Ok(Effect::Unchanged(detail)) => Step::Unchanged { detail },
            Ok(Effect::WouldDo(detail)) => Step::WouldDo { detail },
            Err(e @ ActError::OutOfScope { .. }) => Step::ObservedOnly {
                detail: e.to_string(),
            },
            Err(e @ ActError::Irq(crate::device::irq::IrqError::Managed { .. })) => Step::Skipped {
                detail: e.to_string(),
            },
            Err(e @ ActError::Missing { .. }) => {
                act.say_missing_once(&e);
                Step::Skipped {
                    detail: e.to_string(),
                }
            }
            Err(e) => Step::Failed {
                retryable: retryable(&e),
                error: e.to_string(),
            },
        })
        .collect()
}

/// Everything an action did, one line per cgroup/process touched.
pub type Report = Vec<Result<Effect, ActError>>;

/// Carries out one action.
pub fn execute(
    act: &mut Actuators,
    placements: &BTreeMap<String, Placement>,
    totals: HostTotals,
    action: &Action,
) -> Report {
    let place = |w: &str| placements.get(w).cloned().unwrap_or_default();
    match &action.kind {
        ActionKind::Freeze { workload } => {
            let report = freeze(act, &place(workload), true);
            act.unconfirmed_are(action);
            report
        }
        ActionKind::Thaw { workload } => {
            let report = freeze(act, &place(workload), false);
            act.unconfirmed_are(action);
            report
        }
        ActionKind::ApplyClassLimits {
            workload, limits, ..
        } => set_limits(act, &place(workload), limits, totals, false),
        ActionKind::RestoreLimits { workload, limits } => {
            set_limits(act, &place(workload), limits, totals, true)
        }
        ActionKind::SetCpuWeight { workload, weight } => {
            each_cgroup(act, &place(workload), |a, c| {
                a.write_file(c, "cpu.weight", &weight.to_string())
            })
        }
        ActionKind::SetCpuMax { workload, percent } => {
            let v = cpu_max_value(*percent, totals);
            each_cgroup(act, &place(workload), |a, c| a.write_file(c, "cpu.max", &v))
        }
        ActionKind::SetMemoryHigh { workload, amount } => {
            let v = amount.resolve(totals.memory_bytes).to_string();
            each_cgroup(act, &place(workload), |a, c| {
                a.write_file(c, "memory.high", &v)
            })
        }
        ActionKind::ProtectTradingCores {
            workload,
            cpus,
            housekeeping,
            vcpu_fifo,
        } => {
            let cores = (cpus, housekeeping);
            protect_trading_cores(act, placements, workload, cores, *vcpu_fifo)
        }
        ActionKind::MoveIrq { irq, name, to } => vec![act.move_irq(*irq, name, to)],
        ActionKind::SetWorkqueueCpus { to } => vec![act.set_workqueue_cpus(to)],
        ActionKind::CompleteIoOnSubmitter => act.complete_io_on_submitter(),
        ActionKind::KeepIrqbalanceOff { cpus } => vec![act.keep_irqbalance_off(cpus)],
        ActionKind::ReleaseTradingCores { workload } => {
            let mut out = each_cgroup(act, &place(workload), |a, c| {
                match a.read_file(c, "cpuset.cpus.partition") {
                    Ok(_) => a.write_file(c, "cpuset.cpus.partition", "member"),
                    Err(e) => Err(e),
                }
            });
            // The others get their parent's CPUs again (an empty cpuset.cpus).
            for (name, p) in placements {
                if name != workload {
                    for c in &p.cgroups {
                        if act.read_file(c, "cpuset.cpus").is_ok() {
                            out.push(act.widen_cpus(c));
                        }
                    }
                }
            }
            // Before 6.2 the partition's end widened every task's own mask.
            out.push(act.own_masks_again());
            // The VM's vCPUs share those cores again: not real-time any more.
            out.push(act.vcpus_normal_again());
            out
        }
        ActionKind::EvictIntruder {
            pid,
            to,
            seen_ns,
            start,
            cgroup,
            ..
        } => {
            let who = super::affinity::Who {
                seen_ns: *seen_ns,
                start: *start,
            };
            vec![act.evict(*pid, who, cgroup, to)]
        }
        ActionKind::StopIntruder { pid, .. } => vec![act.stop_intruder(*pid)],
        ActionKind::ContinueIntruder { pid } => vec![act.continue_intruder(*pid)],
        ActionKind::Balloon {
            vmid,
            target,
            workload,
        } => vec![act.balloon(*vmid, *target, &place(workload).cgroups)],
        ActionKind::StopVm { workload, vmid } => vec![act.stop_vm(*vmid, &place(workload).cgroups)],
        ActionKind::StartVm { vmid, .. } => vec![act.start_vm(*vmid)],
        ActionKind::StartService {
            workload,
            service,
            deadline_ms,
        } => vec![act.start_service(workload, service, Duration::from_millis(*deadline_ms))],
        ActionKind::MoveGpu {
            from_vmid,
            to_vmid,
            device,
            config,
            deadline_ms,
            back,
            ..
        } => {
            let ends = super::passthrough::Ends {
                from_vmid: *from_vmid,
                to_vmid: *to_vmid,
                back: *back,
                config: config.clone(),
            };
            vec![act.move_gpu(&ends, device, Duration::from_millis(*deadline_ms))]
        }
        ActionKind::StopService {
            workload,
            service,
            deadline_ms,
        } => vec![act.stop_service(workload, service, Duration::from_millis(*deadline_ms))],
        ActionKind::SetGpuPowerLimit { percent } => vec![act.set_gpu_power_limit(*percent)],
        ActionKind::SetGpuClockOffset { mhz } => vec![act.set_gpu_clock_offset(*mhz)],
        ActionKind::GpuCheckpoint { workload } => {
            vec![gpu_pids(act, placements, workload).and_then(|p| act.gpu_checkpoint(workload, &p))]
        }
        ActionKind::GpuRestore { workload } => vec![act.gpu_restore(workload)],
        ActionKind::SloBreach { .. } | ActionKind::SloMet { .. } => vec![],
    }
}

/// The trading cores for `workload` alone: a cpuset partition where the kernel allows one (a
/// local one for a child of the root cgroup, a remote one deeper on 6.7+), and in every case
/// every other workload's `cpuset.cpus` set to the housekeeping cores, so that the trading
/// cores stay clear even without a partition; a VM owner's vCPU threads pinned one to one.
fn protect_trading_cores(
    act: &mut Actuators,
    placements: &BTreeMap<String, Placement>,
    workload: &str,
    (cpus, housekeeping): (&CpuList, &CpuList),
    vcpu_fifo: Option<u8>,
) -> Report {
    let mut out: Report = Vec::new();
    let owner = placements.get(workload).cloned().unwrap_or_default();
    // Before 6.2, narrowing the others' cpusets forgets their tasks' own masks: kept first.
    out.push(act.keep_own_masks(&owner.cgroups));
    // The others next: a sibling whose cpuset.cpus holds the trading cores (written out by an
    // administrator, by Proxmox's `affinity`, or by 6.1 refusing an empty one) would make the
    // partition invalid. One with an empty cpuset.cpus (its parent's CPUs) is left so while a
    // partition holds the cores (it takes them from every other cpuset): the kernel refuses
    // an empty cpuset.cpus again while the cgroup has tasks, so once written it could only be
    // put back as the parent's CPUs of the moment (an LXC container stayed on 0-3 after the
    // keeper's stop on the host guest).
    let others: Vec<&String> = (placements.iter())
        .filter(|(name, _)| *name != workload)
        .flat_map(|(_, p)| &p.cgroups)
        .collect();
    let mut inherits = Vec::new();
    for c in &others {
        out.push(act.demote_pinned_in(c, cpus));
        match act.read_file(c, "cpuset.cpus") {
            Ok(v) if v.is_empty() && !owner.cgroups.is_empty() => inherits.push(*c),
            _ => out.push(act.restrict_cpus(c, &housekeeping.to_string())),
        }
    }
    let mut partitioned = !owner.cgroups.is_empty();
    for c in &owner.cgroups {
        match act.partition(c, cpus) {
            Err(ActError::Partition { cgroup, state }) => {
                // partition() left the cgroup a member with cpuset.cpus = the trading cores.
                partitioned = false;
                out.push(Ok(Effect::Unchanged(format!(
                    "no cpuset partition for {cgroup} ({state}): the trading cores are kept by \
                     the other workloads' cpusets and the tasks' affinity instead"
                ))));
            }
            other => {
                partitioned &= other.is_ok();
                out.push(other);
            }
        }
    }
    // No partition holds the cores: the others' cpusets keep them, and the tasks already
    // there are kept off them, so that what they start is born on the housekeeping cores;
    // newcomers from elsewhere are evicted.
    if !partitioned {
        for c in inherits {
            out.push(act.restrict_cpus(c, &housekeeping.to_string()));
        }
        out.push(act.keep_tasks_off(cpus, housekeeping, (&owner.cgroups, &owner.pids)));
    }
    // A VM's own threads: its vCPUs one to one on the trading cores, the rest off them.
    let owner = (&owner.cgroups[..], &owner.pids[..]);
    out.push(act.pin_vm_threads(owner, (cpus, housekeeping), vcpu_fifo));
    out
}

/// `workload`'s processes on the GPU now (a fresh readout, pids mapped through placements).
fn gpu_pids(
    act: &Actuators,
    placements: &BTreeMap<String, Placement>,
    workload: &str,
) -> Result<Vec<u32>, ActError> {
    let Some(gpu) = act.gpu() else {
        return Ok(vec![]);
    };
    let mut r = gpu.readout()?;
    r.assign(|pid| crate::device::placement::owner_of(pid, placements));
    Ok(r.pids_of(workload))
}

fn each_cgroup(
    act: &mut Actuators,
    p: &Placement,
    mut f: impl FnMut(&mut Actuators, &str) -> Result<Effect, ActError>,
) -> Report {
    if p.cgroups.is_empty() {
        return vec![Ok(Effect::Unchanged("workload has no cgroup here".into()))];
    }
    p.cgroups.iter().map(|c| f(act, c)).collect()
}

fn freeze(act: &mut Actuators, p: &Placement, frozen: bool) -> Report {
    let mut out: Report = p
        .cgroups
        .iter()
        .map(|c| if frozen { act.freeze(c) } else { act.thaw(c) })
        .collect();
    // Processes without a cgroup of their own: SIGSTOP/SIGCONT their trees.
    out.extend(p.pids.iter().map(|pid| act.signal_tree(*pid, frozen)));
    if out.is_empty() {
        out.push(Ok(Effect::Unchanged(
            "workload not found on this host".into(),
        )));
    }
    out
}

/// Writes the limits `l` sets. What it leaves unset is left alone, or, with `restore` (after
/// a throttle), put back to its value before the keeper wrote it: never a kernel default
/// written over an administrator's value.
fn set_limits(
    act: &mut Actuators,
    p: &Placement,
    l: &Limits,
    totals: HostTotals,
    restore: bool,
) -> Report {
    let bytes = |a: Option<Amount>| a.map(|a| a.resolve(totals.memory_bytes).to_string());
    let files: Vec<(&str, Option<String>)> = [
        ("cpu.weight", l.cpu_weight.map(|w| w.to_string())),
        ("cpu.max", l.cpu_max.map(|pc| cpu_max_value(pc, totals))),
        ("memory.high", bytes(l.memory_high)),
        ("memory.max", bytes(l.memory_max)),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some() || restore)
    .collect();
    each_cgroup(act, p, |a, c| {
        let mut last = Ok(Effect::Unchanged(format!("/{c}: limits already so")));
        for (f, v) in &files {
            let written = match v {
                Some(v) => a.write_file(c, f, v),
                None => a.restore_file(c, f),
            };
            match written {
                Ok(Effect::Unchanged(_)) => {}
                Err(e @ ActError::Missing { .. }) => {
                    a.say_missing_once(&e);
                }
                other => last = other,
            }
        }
        last
    })
}

/// Whether a failure is worth retrying on the next tick (a transient I/O failure), as opposed
/// to a fact of this host (missing controller, out of scope, vanished pid).
pub fn retryable(e: &ActError) -> bool {
    matches!(
        e,
        ActError::Io { .. }
            | ActError::FreezeTimeout { .. }
            | ActError::Process { .. }
            | ActError::Journal(_)
            | ActError::Qmp(_)
            | ActError::Irq(_)
            | ActError::Service { .. }
    ) || matches!(e, ActError::Proxmox(p) if !p.is_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_a_share_of_all_cpus() {
        let t = HostTotals {
            cpus: 2,
            memory_bytes: 0,
        };
        assert_eq!(cpu_max_value(Percent::new(25.0), t), "50000 100000");
        assert_eq!(cpu_max_value(Percent::new(90.0), t), "180000 100000");
    }

    #[test]
    fn class_limits_leave_an_administrators_values_alone() {
        use crate::{act::journal::Journal, device::cgroupfs::CgroupFs};
        let root = std::env::temp_dir().join(format!("keeper-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("w");
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            ("cpu.weight", "100"),
            ("cpu.max", "30000 100000"), // set by an administrator
            ("memory.high", "max"),
            ("memory.max", "1073741824"), // set by an administrator
        ];
        for (f, v) in files {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let journal = Journal::open(&root.join("state")).unwrap();
        let mut act = Actuators::new(CgroupFs::at(&root), journal, false, None);
        let place = Placement {
            cgroups: vec!["w".into()],
            pids: vec![],
        };
        let totals = HostTotals {
            cpus: 2,
            memory_bytes: 1 << 32,
        };
        let class = Limits {
            memory_high: Some(Amount::Bytes(400 << 20)),
            ..Limits::default()
        };
        set_limits(&mut act, &place, &class, totals, false);
        assert_eq!(read("memory.high"), (400u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "30000 100000");
        assert_eq!(read("memory.max"), "1073741824");
        // A throttle, then its release: back to the class, and what the class leaves unset
        // back to the administrator's value (not `max`).
        act.write_file("w", "cpu.max", "50000 100000").unwrap();
        set_limits(&mut act, &place, &class, totals, true);
        assert_eq!(read("cpu.max"), "30000 100000");
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("cpu.weight"), "100");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

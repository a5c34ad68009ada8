//! The first run that explains itself: once the keeper has looked at the host, a few lines on
//! what the policy found here (each workload, and why one is missing), what this host lets it
//! do, and what it will therefore do. Pure: the daemon gathers the facts and logs the lines.

use std::collections::BTreeMap;

use crate::{
    device::{cgroupfs::CgroupFs, placement::Placement},
    enforcer::Enforcer,
    policy::{Match, Policy, Workload},
};

/// What this host lets the keeper sense and do (its abilities here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Abilities {
    /// The cpuset controller on cgroup v2 (partitions, cpusets); else evictions only.
    pub cpuset_v2: bool,
    /// `cgroup.freeze` (cgroup v2, Linux 5.2+).
    pub freezer: bool,
    /// Pressure stall information (/proc/pressure).
    pub psi: bool,
    /// The GPU NVML found (its name).
    pub gpu: Option<String>,
    /// QMP sockets in `--qmp-dir` (ballooning).
    pub qmp_sockets: usize,
    /// `--proxmox` given (stopping VMs).
    pub proxmox: bool,
    /// `--scope`: nothing outside this cgroup is touched.
    pub scope: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
}

impl Abilities {
    /// What this host lets the keeper sense and do, for the first look.
    pub fn of(e: &Enforcer, cg: &CgroupFs) -> Abilities {
        let act = &e.act;
        let qmp_sockets = std::fs::read_dir(&act.qmp_dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "qmp"))
                .count()
        });
        Abilities {
            cpuset_v2: cg.has_controller("cpuset"),
            freezer: cg.has_freezer(),
            psi: std::path::Path::new("/proc/pressure/memory").exists(),
            gpu: act.gpu().map(|g| g.name.clone()),
            qmp_sockets,
            proxmox: act.proxmox.is_some(),
            scope: act.scope().map(str::to_string),
            dry_run: act.dry_run(),
        }
    }
}

/// The lines, in order: the workloads, the host, the plan, how to look.
pub fn first_look(
    policy: &Policy,
    placements: &BTreeMap<String, Placement>,
    facts: &Abilities,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in &policy.workloads {
        out.push(match placements.get(&w.name).filter(|p| !p.is_empty()) {
            Some(p) => format!("{} (rank {}): here: {}", w.name, w.rank, found(p)),
            None => format!(
                "{} (rank {}): not here: {}",
                w.name,
                w.rank,
                why_not(&w.matcher)
            ),
        });
    }
    out.push(host_line(facts));
    out.push(trading_plan(policy, placements, facts));
    if facts.dry_run {
        out.push("dry run: every action is logged as `would do`, nothing is changed".into());
    } else if let Some(scope) = &facts.scope {
        out.push(format!(
            "scope /{scope}: nothing outside it is touched (what lies outside is observed only)"
        ));
    }
    out.push(
        "look: `keeper top` (live), `keeper status`, `keeper report --live` (docs/run.md)".into(),
    );
    out
}

fn found(p: &Placement) -> String {
    let mut parts: Vec<String> = p.cgroups.iter().map(|c| format!("cgroup /{c}")).collect();
    if !p.pids.is_empty() {
        parts.push(format!("{} processes", p.pids.len()));
    }
    parts.join(", ")
}

/// What was looked for and not found, from the workload's match.
fn why_not(m: &Match) -> String {
    let mut looked = Vec::new();
    if let Some(v) = m.vmid {
        looked.push(format!("no VM {v} (no cgroup /qemu.slice/{v}.scope)"));
    }
    if let Some(v) = m.vmids {
        looked.push(format!("no VM {v} (no cgroup /qemu.slice/<vmid>.scope)"));
    }
    if let Some(c) = m.ctids {
        looked.push(format!("no container {c} (no cgroup /lxc/<ctid>)"));
    }
    if let Some(u) = &m.systemd_unit {
        looked.push(format!("no unit {u} (no cgroup /system.slice/{u})"));
    }
    if let Some(c) = &m.cgroup {
        looked.push(format!("no cgroup /{}", c.trim_matches('/')));
    }
    if let Some(p) = &m.process {
        looked.push(format!("no process named {p}"));
    }
    if let Some(f) = &m.pid_file {
        looked.push(format!("no live process in pid file {f}"));
    }
    if let Some(d) = &m.docker {
        looked.push(format!("no running Docker container with {d}"));
    }
    looked.extend(
        m.protect
            .iter()
            .map(|c| format!("no cgroup /{}", c.trim_matches('/'))),
    );
    if looked.is_empty() {
        return "it matches nothing".into();
    }
    looked.join("; ")
}

fn host_line(f: &Abilities) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "this host: cpuset v2 {}, freezer {}, PSI {}, GPU {}, QMP sockets {}, Proxmox API {}",
        yes(f.cpuset_v2),
        yes(f.freezer),
        yes(f.psi),
        f.gpu.as_deref().unwrap_or("none (GPU rules inactive)"),
        f.qmp_sockets,
        if f.proxmox {
            "yes"
        } else {
            "no (--proxmox: VMs are not stopped)"
        },
    )
}

/// What happens to the trading cores, and why.
fn trading_plan(
    policy: &Policy,
    placements: &BTreeMap<String, Placement>,
    facts: &Abilities,
) -> String {
    let host = &policy.host;
    if host.trading_cores.is_empty() {
        return "no trading cores on this machine (host.trading_cores is empty): nothing is evicted"
            .into();
    }
    let Some(owner) = policy.workloads.iter().find(|w| w.owns_trading_cores) else {
        return format!(
            "trading cores {}: no workload owns them (owns_trading_cores): not guarded",
            host.trading_cores
        );
    };
    let present = placements.get(&owner.name).is_some_and(|p| !p.is_empty());
    if !present {
        return format!(
            "trading cores {}: not guarded until {} is here; then {}",
            host.trading_cores,
            owner.name,
            how(owner, host, facts)
        );
    }
    format!(
        "trading cores {} for {} while it is active: {}",
        host.trading_cores,
        owner.name,
        how(owner, host, facts)
    )
}

fn how(owner: &Workload, host: &crate::policy::Host, facts: &Abilities) -> String {
    let evict = format!(
        "a task of another workload that arrives there is moved to {}",
        host.housekeeping_cores
    );
    let mut how = if facts.cpuset_v2 {
        format!(
            "{}'s cgroup becomes a cpuset partition where the kernel allows it, the others' \
             cpusets lose those cores, and {evict}",
            owner.name
        )
    } else {
        format!("{evict} (no cpuset v2 here: evictions only)")
    };
    if host.irq_guard {
        how.push_str("; movable IRQs are kept off them");
    }
    if host.workqueue_guard {
        how.push_str("; unbound workqueues run on the housekeeping cores");
    }
    how
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let text = "version: 1\n\
            host: { name: t, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }\n\
            workloads:\n\
            \x20 - { name: banker, rank: 1, match: { vmid: 200 }, owns_trading_cores: true }\n\
            \x20 - { name: muse, rank: 3, match: { cgroup: muse, process: comfyui } }\n";
        crate::policy::parse_str(text).unwrap()
    }

    #[test]
    fn a_missing_banker_is_said_with_what_was_looked_for() {
        let mut placements = BTreeMap::new();
        placements.insert(
            "muse".to_string(),
            Placement {
                cgroups: vec!["muse".into()],
                pids: vec![],
            },
        );
        let lines = first_look(&policy(), &placements, &Abilities::default());
        assert_eq!(
            lines[0],
            "banker (rank 1): not here: no VM 200 (no cgroup /qemu.slice/200.scope)"
        );
        assert_eq!(lines[1], "muse (rank 3): here: cgroup /muse");
        assert!(lines[2].starts_with("this host: cpuset v2 no, freezer no, PSI no, GPU none"));
        assert_eq!(
            lines[3],
            "trading cores 1: not guarded until banker is here; then a task of another \
             workload that arrives there is moved to 0 (no cpuset v2 here: evictions only)"
        );
    }

    #[test]
    fn a_present_banker_on_full_cgroup_v2_gets_a_partition() {
        let mut placements = BTreeMap::new();
        placements.insert(
            "banker".to_string(),
            Placement {
                cgroups: vec!["qemu.slice/200.scope".into()],
                pids: vec![],
            },
        );
        let facts = Abilities {
            cpuset_v2: true,
            scope: Some("lab".into()),
            ..Abilities::default()
        };
        let lines = first_look(&policy(), &placements, &facts);
        assert_eq!(
            lines[1],
            "muse (rank 3): not here: no cgroup /muse; no process named comfyui"
        );
        assert!(lines[3].starts_with("trading cores 1 for banker while it is active: banker's cgroup becomes a cpuset partition"), "{}", lines[3]);
        assert!(lines[4].starts_with("scope /lab: nothing outside it is touched"));
    }
}

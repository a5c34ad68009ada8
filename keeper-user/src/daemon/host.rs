//! Host observations read from kernel files: load average, PSI, and where each workload lives
//! (its cgroups, or its processes when it has no cgroup of its own).

use std::{collections::BTreeMap, fs, path::Path};

use crate::{
    act::task_cgroup,
    cgroupfs::CgroupFs,
    decide::{Psi, WorkloadObs},
    policy::{Policy, Workload},
};

/// Where a workload was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Its existing cgroups, relative to the v2 mount.
    pub cgroups: Vec<String>,
    /// Its processes outside those cgroups (matched by process name or pid file).
    pub pids: Vec<u32>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.pids.is_empty()
    }
}

/// 1-minute load average from /proc/loadavg.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Parses a PSI file (`some avg10=… …\nfull avg10=…`).
pub fn parse_psi(text: &str) -> Psi {
    let avg10 = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Psi {
        some_avg10: avg10("some"),
        full_avg10: avg10("full"),
    }
}

pub fn read_psi(path: &Path) -> Psi {
    fs::read_to_string(path)
        .map(|t| parse_psi(&t))
        .unwrap_or_default()
}

/// Finds every workload of the policy on this host.
pub fn place_workloads(policy: &Policy, cg: &CgroupFs) -> BTreeMap<String, Placement> {
    let comms = if policy.workloads.iter().any(|w| w.matcher.process.is_some()) {
        process_names()
    } else {
        Vec::new()
    };
    policy
        .workloads
        .iter()
        .map(|w| (w.name.clone(), place(w, cg, &comms)))
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

fn place(w: &Workload, cg: &CgroupFs, comms: &[(u32, String)]) -> Placement {
    let cgroups: Vec<String> = w
        .matcher
        .cgroups()
        .into_iter()
        .filter(|c| cg.dir(c).is_ok_and(|d| d.is_dir()))
        .collect();
    let mut pids = Vec::new();
    if let Some(name) = &w.matcher.process {
        pids.extend(comms.iter().filter(|(_, c)| c == name).map(|(p, _)| *p));
    }
    if let Some(file) = &w.matcher.pid_file
        && let Some(pid) = fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        pids.push(pid);
    }
    // Processes inside the workload's own cgroups are handled through the cgroup.
    pids.retain(|p| {
        task_cgroup(*p).is_none_or(|tc| !cgroups.iter().any(|c| crate::act::under(&tc, c)))
    });
    Placement { cgroups, pids }
}

/// The workload a process belongs to: the deepest workload cgroup holding it, else the
/// workload whose matched process is it or one of its ancestors (a GPU worker's parent).
pub fn owner_of(pid: u32, placements: &BTreeMap<String, Placement>) -> Option<String> {
    if let Some(cg) = task_cgroup(pid) {
        let best = placements
            .iter()
            .flat_map(|(n, p)| p.cgroups.iter().map(move |c| (n, c)))
            .filter(|(_, c)| crate::act::under(&cg, c))
            .max_by_key(|(_, c)| c.len());
        if let Some((name, _)) = best {
            return Some(name.clone());
        }
    }
    let mut cur = pid;
    for _ in 0..64 {
        if let Some((name, _)) = placements.iter().find(|(_, p)| p.pids.contains(&cur)) {
            return Some(name.clone());
        }
        cur = parent_of(cur)?;
        if cur <= 1 {
            return None;
        }
    }
    None
}

fn parent_of(pid: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn process_names() -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_string()))
        })
        .collect()
}

/// What the engine needs to know about a placed workload.
pub fn observe_workload(p: &Placement, cg: &CgroupFs) -> WorkloadObs {
    let mut frozen = !p.cgroups.is_empty();
    let mut procs = !p.pids.is_empty();
    let mut pressure = Psi::default();
    for c in &p.cgroups {
        let Ok(dir) = cg.dir(c) else { continue };
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        frozen &= events.lines().any(|l| l == "frozen 1");
        procs |= events.lines().any(|l| l == "populated 1");
        let psi = read_psi(&dir.join("memory.pressure"));
        pressure.some_avg10 = pressure.some_avg10.max(psi.some_avg10);
        pressure.full_avg10 = pressure.full_avg10.max(psi.full_avg10);
    }
    WorkloadObs {
        running: procs && !frozen,
        memory_pressure: pressure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_belongs_to_the_workload_of_its_cgroup_or_ancestor() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        let mut placements = BTreeMap::new();
        placements.insert(
            "launcher".to_string(),
            Placement {
                cgroups: vec![],
                pids: vec![parent],
            },
        );
        assert_eq!(owner_of(me, &placements).as_deref(), Some("launcher"));
        let mine = task_cgroup(me).unwrap();
        placements.insert(
            "here".to_string(),
            Placement {
                cgroups: vec![mine],
                pids: vec![],
            },
        );
        assert_eq!(owner_of(me, &placements).as_deref(), Some("here"));
        assert_eq!(owner_of(u32::MAX - 1, &BTreeMap::new()), None);
    }

    #[test]
    fn reads_psi_avg10() {
        let p = parse_psi(
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=1\nfull avg10=3.25 avg60=0 avg300=0 total=0\n",
        );
        assert_eq!(p.some_avg10, 12.5);
        assert_eq!(p.full_avg10, 3.25);
        assert_eq!(parse_psi("garbage"), Psi::default());
    }
}

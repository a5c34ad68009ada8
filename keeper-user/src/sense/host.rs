//! Host readings the engine observes each tick: the load average, PSI (host and each
//! workload's), whether a workload runs, and the host's totals that percentages refer to.

use std::{fs, path::Path};

use crate::{
    decide::{PartitionObs, PartitionState, Psi, WorkloadObs},
    device::{cgroupfs::CgroupFs, placement::Placement},
};

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

/// What the engine needs to know about a placed workload.
pub fn observe_workload(p: &Placement, cg: &CgroupFs) -> WorkloadObs {
    let mut frozen = !p.cgroups.is_empty();
    let mut procs = !p.pids.is_empty();
    let mut pressure = Psi::default();
    let mut partition: Option<PartitionObs> = None;
    for c in &p.cgroups {
        let Ok(dir) = cg.dir(c) else { continue };
        let read = fs::read_to_string(dir.join("cpuset.cpus.partition")).ok();
        if let Some(state) = read.as_deref().and_then(PartitionState::parse)
            && partition
                .as_ref()
                .is_none_or(|p| state.rank() > p.state.rank())
        {
            partition = Some(PartitionObs {
                cgroup: c.clone(),
                state,
            });
        }
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
        partition,
        vcpus: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

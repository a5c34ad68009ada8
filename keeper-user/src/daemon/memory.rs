//! The daemon's side of the memory sensor: OOM kills logged and recorded against their
//! workload, direct-reclaim stalls per cgroup for the run record. Without the sensor (an old
//! kernel, no vmscan/oom tracepoints) the keeper says so once and goes on.

use std::collections::BTreeMap;

use tokio::io::{Interest, unix::AsyncFd};

use super::{host::Placement, record::Recorder};
use crate::{
    cgroupfs::CgroupFs,
    report::ReclaimRecord,
    sense::{
        memory::{MemorySensor, OomEvents},
        tracefs::Tracefs,
    },
};

/// Attaches the memory sensor and registers its OOM ring buffer for polling.
pub fn attach(tracefs: &Tracefs) -> (Option<MemorySensor>, Option<AsyncFd<OomEvents>>) {
    let mut sensor = match MemorySensor::attach(tracefs) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no memory sensor: OOM kills and reclaim stalls are not watched");
            return (None, None);
        }
    };
    let events = sensor.take_oom_events().ok().and_then(|e| {
        // SAFETY: OomEvents owns the ring buffer's fd and keeps it open while the AsyncFd lives.
        unsafe { AsyncFd::register_with_interest(e, Interest::READABLE) }.ok()
    });
    (Some(sensor), events)
}

/// Waits until OOM events are waiting (forever without the sensor).
pub async fn ready(
    events: &mut Option<AsyncFd<OomEvents>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, OomEvents>> {
    match events {
        Some(e) => e.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The workload whose cgroups hold `cgroup` (a path relative to the v2 mount).
pub fn workload_of(placements: &BTreeMap<String, Placement>, cgroup: &str) -> Option<String> {
    let c = cgroup.trim_matches('/');
    placements.iter().find_map(|(name, p)| {
        p.cgroups
            .iter()
            .any(|w| {
                let w = w.trim_matches('/');
                c == w || c.starts_with(&format!("{w}/"))
            })
            .then(|| name.clone())
    })
}

/// Logs and records the OOM kills waiting in the ring buffer.
pub fn handle(
    events: &mut OomEvents,
    cg: &CgroupFs,
    placements: &BTreeMap<String, Placement>,
    recorder: &mut Recorder,
) {
    let kills = events.drain();
    if kills.is_empty() {
        return;
    }
    let index = cg.id_index();
    for k in kills {
        let cgroup = index
            .get(&k.cgroup_id)
            .cloned()
            .unwrap_or_else(|| format!("(id {})", k.cgroup_id));
        let workload = workload_of(placements, &cgroup);
        let comm = k.victim_comm.clone().unwrap_or_else(|| "?".into());
        tracing::warn!(pid = k.victim_pid, %comm, cgroup = %cgroup, workload = ?workload, killer = %k.killer_comm, "OOM kill");
        recorder.oom_kill(k.victim_pid, comm, cgroup, workload);
    }
}

/// Direct-reclaim stalls per cgroup, most stalled time first.
pub fn reclaim_records(
    sensor: Option<&MemorySensor>,
    cg: &CgroupFs,
    placements: &BTreeMap<String, Placement>,
) -> Vec<ReclaimRecord> {
    let Some(list) = sensor.and_then(|s| s.reclaim().ok()) else {
        return vec![];
    };
    let index = cg.id_index();
    let mut out: Vec<ReclaimRecord> = list
        .into_iter()
        .map(|r| {
            let cgroup = index
                .get(&r.cgroup_id)
                .cloned()
                .unwrap_or_else(|| format!("(id {})", r.cgroup_id));
            ReclaimRecord {
                workload: workload_of(placements, &cgroup),
                cgroup,
                stalls: r.count,
                total_ms: r.total_ns as f64 / 1e6,
                p99_us: r.stalls.quantile_upper_us(0.99),
            }
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_belongs_to_the_workload_whose_subtree_holds_it() {
        let mut p = BTreeMap::new();
        p.insert(
            "muse".to_string(),
            Placement {
                cgroups: vec!["system.slice/muse.service".into()],
                pids: vec![],
            },
        );
        assert_eq!(
            workload_of(&p, "/system.slice/muse.service/worker").as_deref(),
            Some("muse")
        );
        assert_eq!(
            workload_of(&p, "system.slice/muse.service").as_deref(),
            Some("muse")
        );
        assert_eq!(workload_of(&p, "system.slice/muse.serviceX"), None);
    }
}

//! Journal compaction: what undoing needs, without repeats. The oldest entry for a file, a
//! task's affinity, a balloon or the GPU's settings holds the value before the keeper, so later
//! ones for the same thing add nothing; a task that is gone needs nothing; a checkpoint given
//! back and a VM started again cancel their entries. Order is kept (undo reads it backwards).

use std::collections::{HashMap, HashSet};

use super::journal::Entry;

/// `entries` (oldest first) without what undoing them does not need. `alive(pid, start)`: the
/// task with that start time still exists.
pub fn compacted(entries: &[Entry], alive: impl Fn(u32, u64) -> bool) -> Vec<Entry> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out: Vec<Option<Entry>> = Vec::new();
    // Index in `out` of the open checkpoint / stop of each (pid, start) / vmid.
    let mut open_checkpoints: HashMap<(u32, u64), usize> = HashMap::new();
    let mut open_stops: HashMap<u32, usize> = HashMap::new();
    for e in entries {
        match e {
            Entry::GpuRestored { pid, start } => {
                if let Some(i) = open_checkpoints.remove(&(*pid, *start)) {
                    out[i] = None;
                }
                continue;
            }
            Entry::VmStarted { vmid } => {
                if let Some(i) = open_stops.remove(vmid) {
                    out[i] = None;
                }
                continue;
            }
            Entry::GpuCheckpoint { pid, start, .. } => {
                if alive(*pid, *start) {
                    open_checkpoints.insert((*pid, *start), out.len());
                    out.push(Some(e.clone()));
                }
                continue;
            }
            Entry::VmStopped { vmid, .. } => {
                if !open_stops.contains_key(vmid) {
                    open_stops.insert(*vmid, out.len());
                    out.push(Some(e.clone()));
                }
                continue;
            }
            Entry::Stop { pid, start }
            | Entry::ServiceCommand { pid, start }
            | Entry::Affinity { pid, start, .. }
            | Entry::OwnMask { pid, start, .. }
            | Entry::Scheduler { pid, start, .. }
                if !alive(*pid, *start) =>
            {
                continue;
            }
            _ => {}
        }
        if seen.insert(key(e)) {
            out.push(Some(e.clone()));
        }
    }
    out.into_iter().flatten().collect()
}

/// What an entry is about: two entries with one key undo the same thing.
pub(super) fn key(e: &Entry) -> String {
    match e {
        Entry::File { path, .. } => format!("file {}", path.display()),
        Entry::Enable { cgroup, controller } => format!("enable {} {controller}", cgroup.display()),
        Entry::Freeze { cgroup } => format!("freeze {}", cgroup.display()),
        Entry::Stop { pid, start } => format!("stop {pid} {start}"),
        Entry::Affinity { pid, start, .. } => format!("affinity {pid} {start}"),
        Entry::OwnMask { pid, start, .. } => format!("own mask {pid} {start}"),
        Entry::Scheduler { pid, start, .. } => format!("scheduler {pid} {start}"),
        Entry::Balloon { socket, .. } => format!("balloon {}", socket.display()),
        Entry::GpuPowerLimit { uuid, .. } => format!("power {uuid}"),
        Entry::GpuClockOffset { uuid, .. } => format!("clock {uuid}"),
        Entry::IrqAffinity { irq, .. } => format!("irq {irq}"),
        Entry::IrqbalanceBan { dir } => format!("irqbalance {}", dir.display()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_dead_tasks_and_cancelled_pairs_go_the_rest_stays_in_order() {
        let aff = |pid, original: &str| Entry::Affinity {
            pid,
            start: 1,
            original: original.into(),
            since: None,
        };
        let file = |v: &str| Entry::File {
            path: "/sys/fs/cgroup/m/cpu.max".into(),
            original: v.into(),
        };
        let mut entries = vec![file("max 100000"), aff(10, "0-1")];
        for _ in 0..1000 {
            entries.push(aff(10, "0")); // later evictions of the same task
            entries.push(file("50000 100000"));
        }
        entries.push(aff(99, "0-1")); // gone
        entries.push(Entry::VmStopped {
            vmid: 102,
            api: "/etc/keeper/pve.yaml".into(),
        });
        entries.push(Entry::VmStarted { vmid: 102 });
        entries.push(Entry::GpuCheckpoint {
            pid: 10,
            start: 1,
            tool: "/usr/bin/cuda-checkpoint".into(),
        });
        entries.push(Entry::Freeze {
            cgroup: "/sys/fs/cgroup/m".into(),
        });
        let kept = compacted(&entries, |pid, _| pid != 99);
        assert_eq!(
            kept,
            [
                file("max 100000"),
                aff(10, "0-1"),
                Entry::GpuCheckpoint {
                    pid: 10,
                    start: 1,
                    tool: "/usr/bin/cuda-checkpoint".into()
                },
                Entry::Freeze {
                    cgroup: "/sys/fs/cgroup/m".into()
                },
            ]
        );
    }
}

//! Tasks forked during the run by a task the keeper moved: without cpuset v2 the keeper moves
//! tasks one by one (sched_setaffinity), and a child or thread created meanwhile inherits the
//! housekeeping-only CPUs. Journaled is only what the keeper moved; the undo gives those back
//! their CPUs, and (here) their descendants too, before the journaled tasks themselves.
//!
//! A descendant is given its ancestor's original CPUs when it was born after the ancestor was
//! moved (the line's `since`; the ancestor's start where a line lacks it), is not journaled
//! itself, and has the very CPUs its ancestor was moved to
//! (read before the ancestor's undo). A child that chose other CPUs keeps them.

use std::collections::{BTreeMap, HashMap};

use super::{journal::Entry, process::Proc};
use crate::{cpulist::CpuList, device::procfs};

/// A journaled task still alive, its CPUs now (where the keeper moved it) and before, and
/// since when (its start where the line does not say).
struct Moved {
    since: u64,
    now: CpuList,
    original: CpuList,
}

/// Gives the descendants of the journaled (`Affinity`) tasks the CPUs those had before the
/// keeper moved them; run before the entries' own undo. Returns what it did, one line.
pub(super) fn restore_descendants(entries: &[Entry]) -> Option<String> {
    let moved = moved_tasks(entries);
    if moved.is_empty() {
        return None;
    }
    let journaled: std::collections::HashSet<u32> = moved.keys().copied().collect();
    let parents = parents();
    let mut given = 0usize;
    for (&tid, &(_, start)) in &parents {
        if journaled.contains(&tid) {
            continue;
        }
        let Some(ancestor) = ancestors(tid, &parents)
            .into_iter()
            .find_map(|a| moved.get(&a).filter(|m| m.since <= start))
        else {
            continue;
        };
        let Ok(task) = Proc::open_thread(tid, Some(start)) else {
            continue; // gone meanwhile
        };
        if task.affinity().is_ok_and(|cpus| cpus == ancestor.now)
            && task.set_affinity(&ancestor.original).is_ok()
        {
            given += 1;
        }
    }
    (given > 0).then(|| {
        tracing::info!(
            tasks = given,
            "tasks forked during the run given back the CPUs of the task they came from"
        );
        format!("{given} tasks forked during the run back on their parents' CPUs")
    })
}

/// The journaled tasks alive now whose CPUs differ from their original, by thread id.
fn moved_tasks(entries: &[Entry]) -> HashMap<u32, Moved> {
    let mut out = HashMap::new();
    for e in entries {
        let Entry::Affinity {
            pid,
            start,
            original,
            since,
        } = e
        else {
            continue;
        };
        let Ok(original) = original.parse::<CpuList>() else {
            continue;
        };
        let Ok(now) = Proc::open_thread(*pid, Some(*start)).and_then(|p| p.affinity()) else {
            continue;
        };
        if now != original && !original.is_empty() {
            // The oldest line holds the CPUs from before the keeper.
            out.entry(*pid).or_insert(Moved {
                since: since.unwrap_or(*start),
                now,
                original,
            });
        }
    }
    out
}

/// Every task (thread) of the host: its parent in the tree (the thread group's leader for a
/// thread, the parent process for a leader) and its start time.
fn parents() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    for pid in super::process::all_pids() {
        let Some(stat) = procfs::task_stat(pid) else {
            continue;
        };
        if stat.is_kernel_thread() {
            continue;
        }
        out.insert(pid, (stat.ppid, stat.start));
        for tid in super::process::threads(pid)
            .into_iter()
            .filter(|t| *t != pid)
        {
            let start = procfs::task_stat(tid).map_or(stat.start, |s| s.start);
            out.insert(tid, (pid, start));
        }
    }
    out
}

/// `tid`'s ancestors, nearest first, up to (not including) init.
fn ancestors(tid: u32, parents: &BTreeMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut out = vec![];
    let mut at = tid;
    while let Some(&(parent, _)) = parents.get(&at) {
        if parent <= 1 || out.contains(&parent) || out.len() > 64 {
            break;
        }
        out.push(parent);
        at = parent;
    }
    out
}

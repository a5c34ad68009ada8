//! Undoing what the journal holds: everything at start (after a crash) and at exit, newest
//! first; what fails stays in the journal and is tried again with a backoff, on a thread of
//! its own (an undo may wait on a device: a VM's QMP socket, the Proxmox API, systemctl), so
//! the loop never waits behind it.

use std::{
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::Duration,
};

use super::*;

/// A retry of pending undos on its own thread: the entries tried, those left for the exit,
/// and what the thread returns (what was undone, what failed again).
pub(crate) struct Retrying {
    now: Vec<Entry>,
    later: Vec<Entry>,
    pub(super) thread: JoinHandle<(Vec<String>, Vec<Entry>)>,
}

impl Actuators {
    /// Undoes everything in the journal, newest first. Used at start (after a crash) and at
    /// exit. An undo that fails is logged, does not stop the rest, and stays in the journal:
    /// [`Actuators::undo_pending`] lists it, [`Actuators::retry_undo`] tries it again with a
    /// backoff, and the next exit or start tries it once more.
    pub fn restore_all(&mut self) -> Result<Vec<String>, ActError> {
        // A retry still out first: its undos and these must not race.
        let mut done = self.collect_retry(true)?;
        let entries = self.journal().entries()?;
        // Tasks forked from moved ones during the run first: their ancestors' CPUs are read
        // before those are given back.
        done.extend(forks::restore_descendants(&entries));
        let (now, kept) = undo(&entries);
        done.extend(now);
        self.journal().rewrite(&kept)?;
        self.pending = kept;
        self.retry = Backoff::default();
        self.originals.clear();
        self.irqs_journaled.clear();
        self.gpu.journal_cleared();
        self.vms_stopped.clear();
        Ok(done)
    }

    /// Undos that failed and are still to do (oldest first).
    pub fn undo_pending(&self) -> &[Entry] {
        &self.pending
    }

    /// Tries the pending undos again once their backoff has passed (1 s, doubling up to 5
    /// min), on a thread of its own: this call starts a retry, and a later call, once that
    /// thread is done, takes what it came to (what succeeded leaves the journal). One that
    /// this run has changed again (a newer entry for the same file, task, ...) waits for the
    /// exit instead: undoing it now would take back what the engine holds. Returns what was
    /// undone.
    pub fn retry_undo(&mut self) -> Result<Vec<String>, ActError> {
        if self.retrying.is_some() {
            return self.collect_retry(false);
        }
        if self.pending.is_empty() || !self.retry.due() {
            return Ok(vec![]);
        }
        let journal = self.journal().entries()?;
        let superseded = |e: &Entry| {
            let at = journal.iter().position(|j| j == e).unwrap_or(journal.len());
            (journal.iter().skip(at + 1)).any(|j| compact::key(j) == compact::key(e))
        };
        let (later, now): (Vec<Entry>, Vec<Entry>) =
            self.pending.iter().cloned().partition(superseded);
        if now.is_empty() {
            self.pending = later;
            self.retry.failed();
            return Ok(vec![]);
        }
        let tried = now.clone();
        let thread = std::thread::Builder::new()
            .name("keeper-undo".into())
            .spawn(move || {
                crate::device::run_at_normal_priority();
                undo(&tried)
            })
            .map_err(|source| ActError::Io {
                path: PathBuf::from("(a thread for pending undos)"),
                source,
            })?;
        self.retrying = Some(Retrying { now, later, thread });
        Ok(vec![])
    }

    /// The retry's outcome once its thread is done (`wait`: wait for it); nothing while it
    /// runs.
    fn collect_retry(&mut self, wait: bool) -> Result<Vec<String>, ActError> {
        match &self.retrying {
            Some(r) if wait || r.thread.is_finished() => {}
            _ => return Ok(vec![]),
        }
        let Some(r) = self.retrying.take() else {
            return Ok(vec![]);
        };
        let (done, kept) = r.thread.join().unwrap_or_else(|_| (vec![], r.now.clone()));
        if kept.len() < r.now.len() {
            let mut journal = self.journal().entries()?;
            for gone in r.now.iter().filter(|e| !kept.contains(e)) {
                if let Some(i) = journal.iter().position(|e| e == gone) {
                    journal.remove(i);
                }
            }
            self.journal().rewrite(&journal)?;
        }
        self.pending = r.later.into_iter().chain(kept).collect();
        self.retry.failed();
        Ok(done)
    }
}

/// When the pending undos are tried next.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    next: Option<std::time::Instant>,
    tries: u32,
}

impl Backoff {
    pub(super) fn due(&self) -> bool {
        self.next.is_none_or(|t| std::time::Instant::now() >= t)
    }

    pub(super) fn failed(&mut self) {
        let wait = Duration::from_secs(1 << self.tries.min(8)).min(Duration::from_secs(300));
        self.tries += 1;
        self.next = Some(std::time::Instant::now() + wait);
    }
}

/// Undoes `entries` (oldest first as journaled): newest first, except that partitions are
/// dissolved before any cpuset.cpus is put back (a partition holds its CPUs out of its
/// siblings' reach until then). Returns what was undone and the entries whose undo failed,
/// oldest first.
fn undo(entries: &[Entry]) -> (Vec<String>, Vec<Entry>) {
    let is_partition = |e: &&Entry| matches!(e, Entry::File { path, .. } if path.ends_with("cpuset.cpus.partition"));
    // A real-time class given back last, once every CPU mask and cpuset is: given back while
    // its task still sat on the housekeeping cores, a spinner at SCHED_FIFO 99 starved the
    // keeper's own undo there (the 6.1 guest's exit never ended).
    let is_real_time = |e: &&Entry| matches!(e, Entry::Scheduler { policy, .. } if super::sched_class::is_real_time(*policy));
    let order = (entries.iter().rev().filter(is_partition))
        .chain((entries.iter().rev()).filter(|e| !is_partition(e) && !is_real_time(e)))
        .chain(entries.iter().rev().filter(is_real_time));
    // Checkpoints already given back (newer `GpuRestored` entries) and VMs already started
    // (`VmStarted`) need no undoing.
    let mut restored = HashSet::new();
    let mut started = HashSet::new();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for entry in order {
        match entry {
            Entry::GpuRestored { pid, start } => {
                restored.insert((*pid, *start));
                continue;
            }
            Entry::GpuCheckpoint { pid, start, .. } if restored.remove(&(*pid, *start)) => {
                continue;
            }
            Entry::VmStarted { vmid } => {
                started.insert(*vmid);
                continue;
            }
            Entry::VmStopped { vmid, .. } if started.remove(vmid) => continue,
            _ => {}
        }
        fault::at(entry, fault::Step::Undoing);
        let restored = restore(entry);
        if restored.is_ok() {
            fault::at(entry, fault::Step::Undone);
        }
        match restored {
            Ok(Some(what)) => done.push(what),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, ?entry, "could not undo: kept in the journal, tried again later");
                failed.push(entry.clone());
            }
        }
    }
    let failed = entries
        .iter()
        .filter(|e| failed.contains(e))
        .cloned()
        .collect();
    (done, failed)
}

fn restore(entry: &Entry) -> Result<Option<String>, ActError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ActError::Io { path, source }
    };
    match entry {
        Entry::File { path, original } => {
            if !path.exists() {
                return Ok(None);
            }
            match std::fs::write(path, cgroup::write_form(original)) {
                // 6.1 refuses an empty cpuset.cpus (= the parent's CPUs) while the cgroup has
                // tasks: give it the parent's effective CPUs, which is the same set.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOSPC)
                        && original.is_empty()
                        && path.file_name().is_some_and(|n| n == "cpuset.cpus") =>
                {
                    let parent = path
                        .parent()
                        .and_then(Path::parent)
                        .map(|p| p.join("cpuset.cpus.effective"))
                        .ok_or_else(|| io(path)(e))?;
                    let cpus = std::fs::read_to_string(&parent).map_err(io(&parent))?;
                    let cpus = cpus.trim();
                    std::fs::write(path, cpus).map_err(io(path))?;
                    Ok(Some(format!(
                        "{} = {cpus:?} (the parent's CPUs: the kernel refuses an empty cpuset while the cgroup has tasks)",
                        path.display()
                    )))
                }
                r => {
                    r.map_err(io(path))?;
                    Ok(Some(format!("{} = {original:?}", path.display())))
                }
            }
        }
        Entry::Enable { cgroup, controller } => {
            let file = cgroup.join("cgroup.subtree_control");
            if !file.exists() {
                return Ok(None);
            }
            std::fs::write(&file, format!("-{controller}")).map_err(io(&file))?;
            Ok(Some(format!("{} -{controller}", file.display())))
        }
        Entry::Freeze { cgroup } => {
            let file = cgroup.join("cgroup.freeze");
            if !file.exists() {
                return Ok(None);
            }
            std::fs::write(&file, "0").map_err(io(&file))?;
            Ok(Some(format!("thawed {}", cgroup.display())))
        }
        Entry::Stop { pid, start } => match Proc::open(*pid, Some(*start)) {
            Ok(p) => {
                p.signal(libc::SIGCONT)?;
                Ok(Some(format!("continued pid {pid}")))
            }
            Err(ActError::Vanished { .. }) => Ok(None),
            Err(e) => Err(e),
        },
        Entry::Affinity {
            pid,
            start,
            original,
            ..
        } => match Proc::open_thread(*pid, Some(*start)) {
            Ok(p) => {
                let cpus: CpuList = original.parse().unwrap_or_default();
                if cpus.is_empty() {
                    return Ok(None);
                }
                match p.set_affinity(&cpus) {
                    Ok(()) => Ok(Some(format!("pid {pid} back on CPUs {original}"))),
                    Err(ActError::Vanished { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Err(ActError::Vanished { .. }) => Ok(None),
            Err(e) => Err(e),
        },
        Entry::OwnMask {
            pid,
            start,
            original,
        } => own_masks::restore(*pid, *start, original),
        Entry::Scheduler {
            pid,
            start,
            policy,
            priority,
            deadline,
        } => super::sched_class::restore(*pid, *start, *policy, *priority, deadline.as_ref()),
        Entry::Balloon { socket, original } => balloon::restore(socket, *original),
        Entry::GpuPowerLimit {
            lib,
            uuid,
            original_mw,
        } => gpu::restore_power_limit(lib, uuid, *original_mw).map(Some),
        Entry::GpuClockOffset {
            lib,
            uuid,
            original_mhz,
        } => gpu::restore_clock_offset(lib, uuid, *original_mhz).map(Some),
        Entry::GpuCheckpoint { pid, start, tool } => gpu::restore_checkpoint(*pid, *start, tool),
        Entry::GpuRestored { .. } | Entry::VmStarted { .. } => Ok(None),
        Entry::VmStopped { vmid, api } => vm_stop::restore(*vmid, api),
        Entry::IrqAffinity { irq, original } => irq::restore(*irq, original),
        Entry::IrqbalanceBan { dir } => irq::lift_irqbalance_ban(dir),
        Entry::ServiceUnit { unit } => service::restore_unit(unit),
        Entry::GpuLent {
            holder,
            borrower,
            device,
        } => passthrough::restore_lend(holder, borrower, device),
        Entry::GpuConfigLent {
            api,
            holder,
            borrower,
            key,
            value,
        } => planned_restart::restore(api, (*holder, *borrower), (key, value)),
        Entry::ServiceCommand { pid, start } => service::restore_command(*pid, *start),
    }
}

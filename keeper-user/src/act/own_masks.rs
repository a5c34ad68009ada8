//! Tasks' own CPU masks across a cpuset partition. Kernels before 6.2 forget the affinity a
//! task set itself whenever its cpuset's CPUs change: making the trading cores a partition
//! narrows every other task to the housekeeping cores, and ending it (at the keeper's exit)
//! gives each the whole of its cpuset again, so a service pinned to CPU 0 before the keeper
//! came would run on every CPU after it left. From 6.2 the kernel keeps a task's own mask
//! itself. On the older kernels, before its first partition, the keeper journals the own
//! masks narrower than the CPUs online of the tasks outside it; undone after the partition
//! (older entries are undone later), a task found wider than its own mask gets it back. A
//! partition ended in the middle of a run (its owner no longer active) puts them back at
//! once too, keeping the entries.

use super::{
    ActError, Actuators, Effect, affinity::user_threads, journal::Entry, normalize, process::Proc,
    under,
};
use crate::cpulist::CpuList;

/// Whether a kernel of this release (`6.1.0-57-cloud-amd64`) forgets a task's own affinity
/// when its cpuset changes: before 6.2 (the kernel keeps the mask asked by
/// `sched_setaffinity` apart from 6.2 on). A release that does not parse is taken as recent.
pub fn kernel_forgets_own_masks(release: &str) -> bool {
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (6, 2),
        _ => false,
    }
}

/// Whether `current` is `own` widened (a strict superset): what the kernel made of it.
pub fn widened(current: &CpuList, own: &CpuList) -> bool {
    current != own && own.difference(current).is_empty()
}

impl Actuators {
    /// Journals, once per run and only on a kernel that forgets them, the own masks of the
    /// tasks outside the `owner`'s cgroups that are narrower than the CPUs online (kernel
    /// threads and this keeper left out): before anything of a partition's cpusets changes
    /// (the others' `cpuset.cpus` narrowed already forget them). Nothing without cpuset v2.
    pub(super) fn keep_own_masks(&mut self, owner: &[String]) -> Result<Effect, ActError> {
        let what = "own CPU masks before the partition";
        if self.dry_run || self.own_masks_kept || owner.is_empty() {
            return Ok(Effect::Unchanged(format!("{what}: nothing to journal")));
        }
        self.own_masks_kept = true;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let release = release.trim();
        let online = CpuList::online();
        let (true, Ok(online), Ok(())) = (
            kernel_forgets_own_masks(release),
            online,
            self.require_cpuset("cpuset.cpus.partition"),
        ) else {
            return Ok(Effect::Unchanged(format!(
                "{what}: kept by this kernel or no partition here"
            )));
        };
        let owner: Vec<String> = owner.iter().map(|o| normalize(o)).collect();
        let mut kept = 0;
        for tid in user_threads(|_, cg| !owner.iter().any(|o| under(cg, o))) {
            let Ok(task) = Proc::open_thread(tid, None) else {
                continue; // gone meanwhile
            };
            let Ok(own) = task.affinity() else { continue };
            if own == online {
                continue;
            }
            self.journal().record(&Entry::OwnMask {
                pid: tid,
                start: task.start,
                original: own.to_string(),
            })?;
            kept += 1;
        }
        tracing::info!(
            tasks = kept,
            kernel = release,
            "own CPU masks journaled before the partition: this kernel forgets them when the partition ends"
        );
        Ok(Effect::Done(format!(
            "{what}: {kept} threads journaled (kernel {release} forgets them when the partition ends)"
        )))
    }

    /// After a partition ended in the middle of the run (its owner no longer active), on a
    /// kernel that forgets them: the own masks journaled before it, put back where the kernel
    /// widened them. The entries stay, for the next partition's end and the exit.
    pub(super) fn own_masks_again(&mut self) -> Result<Effect, ActError> {
        if self.dry_run || !self.own_masks_kept {
            return Ok(Effect::Unchanged("no own CPU mask journaled".into()));
        }
        let entries = self.journal().entries()?;
        let mut back = 0;
        for e in entries {
            let Entry::OwnMask {
                pid,
                start,
                original,
            } = e
            else {
                continue;
            };
            match restore(pid, start, &original) {
                Ok(Some(what)) => {
                    tracing::debug!("{what}");
                    back += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(pid, error = %e, "own CPU mask not put back"),
            }
        }
        Ok(match back {
            0 => Effect::Unchanged("every task's own CPU mask is as it was".into()),
            n => Effect::Done(format!(
                "{n} threads on their own CPUs again (the partition's end had widened them)"
            )),
        })
    }
}

/// The undo of [`Entry::OwnMask`]: the task's own mask again where the kernel widened it; a
/// task gone, or whose mask is not wider (a recent kernel kept it, or the task set another
/// one itself), is left as it is.
pub(super) fn restore(pid: u32, start: u64, original: &str) -> Result<Option<String>, ActError> {
    let own: CpuList = original.parse().unwrap_or_default();
    let task = match Proc::open_thread(pid, Some(start)) {
        Ok(t) => t,
        Err(ActError::Vanished { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let current = match task.affinity() {
        Ok(c) => c,
        Err(ActError::Vanished { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if own.is_empty() || !widened(&current, &own) {
        return Ok(None);
    }
    match task.set_affinity(&own) {
        Ok(()) => Ok(Some(format!(
            "pid {pid} on its own CPUs {own} again (the partition's end had widened them to {current})"
        ))),
        Err(ActError::Vanished { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_6_2_forget_a_tasks_own_mask() {
        assert!(kernel_forgets_own_masks("6.1.0-57-cloud-amd64"));
        assert!(kernel_forgets_own_masks("5.15.158-2-pve"));
        assert!(!kernel_forgets_own_masks("6.2.16-3-pve"));
        assert!(!kernel_forgets_own_masks("6.12.48+deb13-cloud-amd64"));
        assert!(!kernel_forgets_own_masks("6.18.0"));
        assert!(!kernel_forgets_own_masks("weird"));
    }

    #[test]
    fn only_a_mask_the_kernel_widened_is_put_back() {
        let l = |s: &str| -> CpuList { s.parse().unwrap() };
        assert!(widened(&l("0-1"), &l("0")));
        assert!(widened(&l("0-3"), &l("1,3")));
        assert!(!widened(&l("0"), &l("0")), "kept by the kernel");
        assert!(!widened(&l("1"), &l("0")), "the task chose another");
        assert!(!widened(&l("0"), &l("0-1")), "narrower, not wider");
    }
}

//! Kernel work off the trading cores, journaled like any file: the unbound workqueues' CPUs
//! (`host.workqueue_guard`: writeback, crypto, most `queue_work` callers), and block I/O
//! completed on the CPU that submitted it (`host.irq_guard`: `queue/rq_affinity` = 2).

use std::path::Path;

use super::{ActError, Actuators, Effect, journal::Entry};
use crate::cpulist::CpuList;

/// The unbound workqueues' CPU mask (hex).
pub const CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";
/// CPUs the kernel itself keeps unbound work off (isolated partitions, 6.10+).
const CPUMASK_ISOLATED: &str = "/sys/devices/virtual/workqueue/cpumask_isolated";

impl Actuators {
    /// Lets unbound workqueues run only on `to`, journaling the mask before.
    pub fn set_workqueue_cpus(&mut self, to: &CpuList) -> Result<Effect, ActError> {
        let path = Path::new(CPUMASK);
        let current = read_trimmed(path)?;
        let what = format!("unbound workqueues on CPUs {to}");
        if CpuList::from_mask(&current).as_ref() == Some(to) {
            return Ok(Effect::Unchanged(what));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        self.write_journaled(path, &current, &to.to_mask())?;
        let was = CpuList::from_mask(&current).map_or(current, |c| c.to_string());
        Ok(Effect::Done(format!(
            "{what} (were on {was}){}",
            kernel_already()
        )))
    }
}

/// Where each disk's I/O completes (`1`: the submitter's CPU group, `2`: the submitting CPU).
const BLOCK: &str = "/sys/block";

impl Actuators {
    /// Every disk completes I/O on the submitting CPU (`queue/rq_affinity` = 2), each
    /// original journaled before: one step per disk.
    pub fn complete_io_on_submitter(&mut self) -> Vec<Result<Effect, ActError>> {
        let Ok(disks) = std::fs::read_dir(BLOCK) else {
            return vec![];
        };
        let mut paths: Vec<_> = (disks.flatten())
            .map(|d| d.path().join("queue/rq_affinity"))
            .filter(|p| p.exists())
            .collect();
        paths.sort();
        paths.iter().map(|p| self.rq_affinity(p)).collect()
    }

    fn rq_affinity(&mut self, path: &Path) -> Result<Effect, ActError> {
        let current = read_trimmed(path)?;
        let disk = (path.ancestors().nth(2))
            .and_then(|d| d.file_name())
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let what = format!("{disk} completes I/O on the submitting CPU");
        if current == "2" {
            return Ok(Effect::Unchanged(what));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        self.write_journaled(path, &current, "2")?;
        Ok(Effect::Done(format!("{what} (rq_affinity was {current})")))
    }

    /// Writes `value` to a kernel file whose value is `current`, the original journaled
    /// first (once per run).
    fn write_journaled(&mut self, path: &Path, current: &str, value: &str) -> Result<(), ActError> {
        if !self.originals.contains_key(path) {
            self.journal().record(&Entry::File {
                path: path.to_path_buf(),
                original: current.to_string(),
            })?;
            self.originals
                .insert(path.to_path_buf(), current.to_string());
        }
        std::fs::write(path, value).map_err(|source| ActError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        super::fault::at_kind("file", super::fault::Step::Applied);
        Ok(())
    }
}

/// A kernel file's value, without its newline.
fn read_trimmed(path: &Path) -> Result<String, ActError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|source| ActError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// What the kernel already keeps off its isolated CPUs, said beside the change.
fn kernel_already() -> String {
    std::fs::read_to_string(CPUMASK_ISOLATED)
        .ok()
        .and_then(|m| CpuList::from_mask(&m))
        .filter(|c| !c.is_empty())
        .map_or(String::new(), |c| {
            format!("; the kernel already keeps them off its isolated CPUs {c}")
        })
}

//! PSI triggers on each workload's `memory.pressure`, armed as its cgroups appear and dropped
//! as they go, at the memory rules' lowest `some` threshold. A trigger wakes the loop at once;
//! for a protected workload (rank 1, the owner of the trading cores) its share also counts as
//! that workload's memory pressure until avg10 catches up (the engine acts on it, see
//! `decide::memory`); the others' are said in the log, their own stalls being theirs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::psi::{PsiTrigger, Stall};
use crate::device::{cgroupfs::CgroupFs, placement::Placement};

/// The triggers of the workloads' cgroups.
pub struct WorkloadTriggers {
    pct: f64,
    armed: HashMap<PathBuf, (String, JoinHandle<()>)>,
    /// Files that refused a trigger (said once, not tried again while the cgroup stays).
    refused: BTreeSet<PathBuf>,
    tx: mpsc::UnboundedSender<(String, f64)>,
    rx: mpsc::UnboundedReceiver<(String, f64)>,
}

impl WorkloadTriggers {
    /// Triggers at `pct` % of `some` stall (the host trigger's share).
    pub fn new(pct: f64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            pct,
            armed: HashMap::new(),
            refused: BTreeSet::new(),
            tx,
            rx,
        }
    }

    /// Arms a trigger on every cgroup of every placed workload that has none yet; drops those
    /// of cgroups that are gone. Returns the files newly armed.
    pub fn sync(&mut self, placements: &BTreeMap<String, Placement>, cg: &CgroupFs) -> Vec<String> {
        let mut want: HashMap<PathBuf, String> = HashMap::new();
        for (name, p) in placements {
            for c in &p.cgroups {
                if let Ok(dir) = cg.dir(c) {
                    want.insert(dir.join("memory.pressure"), name.clone());
                }
            }
        }
        self.armed.retain(|path, (_, task)| {
            let keep = want.contains_key(path);
            if !keep {
                task.abort();
            }
            keep
        });
        self.refused.retain(|path| want.contains_key(path));
        let mut new = Vec::new();
        for (path, name) in want {
            if self.armed.contains_key(&path) || self.refused.contains(&path) {
                continue;
            }
            match PsiTrigger::register_share(&path, Stall::Some, self.pct) {
                Ok(mut trigger) => {
                    new.push(format!("{name}: {}", trigger.describe()));
                    let (tx, pct, who) = (self.tx.clone(), self.pct, name.clone());
                    let task = tokio::spawn(async move {
                        while trigger.fired().await.is_ok() {
                            if tx.send((who.clone(), pct)).is_err() {
                                break;
                            }
                        }
                    });
                    self.armed.insert(path, (name, task));
                }
                Err(e) => {
                    tracing::debug!(workload = %name, error = %e, "no memory pressure trigger for this cgroup; its pressure is read every tick");
                    self.refused.insert(path);
                }
            }
        }
        new
    }

    /// The next trigger that fires: the workload and the trigger's share.
    pub async fn fired(&mut self) -> Option<(String, f64)> {
        self.rx.recv().await
    }
}

impl Drop for WorkloadTriggers {
    fn drop(&mut self) {
        for (_, (_, task)) in self.armed.drain() {
            task.abort();
        }
    }
}

/// The memory rules' lowest `some` threshold (%), where PSI triggers are armed.
pub fn memory_share(policy: &crate::policy::Policy) -> Option<f64> {
    let m = policy.rules.memory.as_ref()?;
    let pct = [m.high_above, m.balloon_above]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    pct.is_finite().then_some(pct)
}

/// A PSI trigger on the memory pressure the memory rules read, at `pct` % `some`: a spike is
/// acted on when the kernel reports it, not at the next tick. Where no trigger can be
/// registered (a plain file, an old kernel), the rules read PSI every tick.
pub fn host_trigger(pct: f64, path: &std::path::Path) -> Option<(PsiTrigger, f64)> {
    match PsiTrigger::register_share(path, Stall::Some, pct) {
        Ok(t) => {
            tracing::info!(trigger = %t.describe(), "memory pressure trigger armed");
            Some((t, pct))
        }
        Err(e) => {
            tracing::info!(error = %e, "no memory pressure trigger; the memory rules read PSI every tick");
            None
        }
    }
}

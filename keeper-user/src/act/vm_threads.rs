//! The trading VM's own threads: each vCPU thread (QEMU names them `CPU n/KVM`, `CPU n/TCG`
//! under TCG) pinned to one trading core, and the VM's other threads (the main loop, I/O
//! threads, workers) on the housekeeping cores, so that only guest code runs on the trading
//! cores. Journaled per thread like every affinity change, put back at exit.

use super::{ActError, Actuators, Effect, process, task_cgroup, under};
use crate::{cpulist::CpuList, device::procfs};

/// The vCPU index a thread name gives (`CPU 3/KVM` → 3).
pub fn vcpu_index(comm: &str) -> Option<usize> {
    let rest = comm.strip_prefix("CPU ")?;
    let (n, accel) = rest.split_once('/')?;
    matches!(accel, "KVM" | "TCG" | "HVF" | "WHPX").then_some(())?;
    n.trim().parse().ok()
}

impl Actuators {
    /// For each process of the owner (its cgroups' and its pids) that has vCPU threads:
    /// vCPU n on the n-th trading core (wrapping when there are more vCPUs than cores), every
    /// other thread on the housekeeping cores. In a cpuset partition only the vCPUs move (the
    /// other threads cannot leave the partition's CPUs: EINVAL, left as they are).
    pub fn pin_vm_threads(
        &mut self,
        owner: (&[String], &[u32]),
        trading: &CpuList,
        housekeeping: &CpuList,
    ) -> Result<Effect, ActError> {
        let cores: Vec<u32> = trading.iter().collect();
        if cores.is_empty() {
            return Ok(Effect::Unchanged("no trading cores to pin vCPUs to".into()));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(
                "pin the VM's vCPU threads to the trading cores".into(),
            ));
        }
        let (mut vcpus, mut others) = (0, 0);
        for pid in owner_processes(owner) {
            let threads: Vec<(u32, Option<usize>)> = process::threads(pid)
                .into_iter()
                .map(|t| (t, procfs::task_stat(t).and_then(|s| vcpu_index(&s.comm))))
                .collect();
            if threads.iter().all(|(_, v)| v.is_none()) {
                continue; // not a VM
            }
            for (tid, vcpu) in threads {
                let to = match vcpu {
                    Some(n) => CpuList::new([cores[n % cores.len()]]),
                    None => housekeeping.clone(),
                };
                match self.move_thread(tid, |now| (now != &to).then(|| to.clone())) {
                    Ok(true) if vcpu.is_some() => vcpus += 1,
                    Ok(true) => others += 1,
                    Ok(false) => {}
                    Err(ActError::Process { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(if vcpus + others == 0 {
            Effect::Unchanged("the VM's threads are where they belong".into())
        } else {
            Effect::Done(format!(
                "pinned {vcpus} vCPU threads one to one on the trading cores {trading}, {others} other VM threads on {housekeeping}"
            ))
        })
    }
}

/// The owner's processes: those in its cgroups (and below), and its pids.
fn owner_processes((cgroups, pids): (&[String], &[u32])) -> Vec<u32> {
    let mut out: Vec<u32> = pids.to_vec();
    if !cgroups.is_empty() {
        out.extend(
            process::all_pids().into_iter().filter(|p| {
                task_cgroup(*p).is_some_and(|cg| cgroups.iter().any(|c| under(&cg, c)))
            }),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_are_told_by_qemus_names() {
        assert_eq!(vcpu_index("CPU 0/KVM"), Some(0));
        assert_eq!(vcpu_index("CPU 12/TCG"), Some(12));
        assert_eq!(vcpu_index("CPU x/KVM"), None);
        assert_eq!(vcpu_index("CPU 1/foo"), None);
        assert_eq!(vcpu_index("qemu-system-x86"), None);
        assert_eq!(vcpu_index("worker"), None);
    }
}

//! The trading VM's own threads: each vCPU thread (QEMU names them `CPU n/KVM`, `CPU n/TCG`
//! under TCG) pinned to one trading core, and the VM's other threads (the main loop, I/O
//! threads, workers) on the housekeeping cores, so that only guest code runs on the trading
//! cores; optionally the vCPUs in SCHED_FIFO (`vcpu_priority`), guarded by the kernel's RT
//! throttling. Journaled per thread, put back at exit.

use super::{
    ActError, Actuators, Effect,
    journal::Entry,
    process::{self, Proc},
    task_cgroup, under,
};
use crate::{cpulist::CpuList, device::vcpus::vcpu_threads};

/// Where the kernel says how much of each period real-time tasks may take.
const RT_RUNTIME: &str = "/proc/sys/kernel/sched_rt_runtime_us";

/// The guard against a SCHED_FIFO vCPU starving its core: the kernel's RT throttling must be
/// on (`sched_rt_runtime_us` not -1), so that every period leaves time (50 ms in 1 s by
/// default) to the core's other tasks, its kernel threads among them. `None`: guarded.
pub fn rt_unguarded(runtime_us: &str) -> Option<String> {
    match runtime_us.trim().parse::<i64>() {
        Ok(-1) => Some(
            "RT throttling is off (sched_rt_runtime_us = -1): a SCHED_FIFO vCPU that spins would starve its core's kernel threads"
                .into(),
        ),
        Ok(_) => None,
        Err(_) => Some(format!("{RT_RUNTIME} unreadable (`{}`)", runtime_us.trim())),
    }
}

impl Actuators {
    /// For each process of the owner (its cgroups' and its pids) that has vCPU threads:
    /// vCPU n on the n-th trading core (wrapping when there are more vCPUs than cores), every
    /// other thread on the housekeeping cores. In a cpuset partition only the vCPUs move (the
    /// other threads cannot leave the partition's CPUs: EINVAL, left as they are).
    pub fn pin_vm_threads(
        &mut self,
        owner: (&[String], &[u32]),
        (trading, housekeeping): (&CpuList, &CpuList),
        fifo: Option<u8>,
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
        let fifo = fifo.and_then(|n| {
            match rt_unguarded(&std::fs::read_to_string(RT_RUNTIME).unwrap_or_default()) {
                Some(why) => {
                    tracing::warn!("vcpu_priority not applied: {why}");
                    None
                }
                None => Some(n),
            }
        });
        let (mut vcpus, mut others, mut rt, mut stacked, mut sharing) = (0, 0, 0, 0, 0);
        for pid in owner_processes(owner) {
            let threads = vcpu_threads(pid);
            if threads.iter().all(|(_, v)| v.is_none()) {
                continue; // not a VM
            }
            let shared = shared_cores(threads.iter().filter_map(|t| t.1), &cores);
            for (tid, vcpu) in threads {
                let to = match vcpu {
                    Some(n) => CpuList::new([cores[n % cores.len()]]),
                    None => housekeeping.clone(),
                };
                let on_shared = vcpu.is_some_and(|v| shared.contains(&cores[v % cores.len()]));
                sharing += u32::from(on_shared);
                match (vcpu, fifo) {
                    (Some(_), Some(_)) if on_shared => {
                        stacked += 1;
                    }
                    (Some(_), Some(n)) => rt += u32::from(self.make_fifo(tid, n)?),
                    _ => {}
                }
                match self.move_thread(tid, |now| (now != &to).then(|| (to.clone(), false))) {
                    Ok(true) if vcpu.is_some() => vcpus += 1,
                    Ok(true) => others += 1,
                    Ok(false) => {}
                    Err(ActError::Process { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut fifo_note = match fifo {
            Some(n) if rt > 0 => format!(", {rt} vCPUs at SCHED_FIFO {n}"),
            _ => String::new(),
        };
        if stacked > 0 {
            tracing::warn!(stacked, trading_cores = %trading, "vcpu_priority: {stacked} vCPUs share a trading core with another vCPU of their VM: left at SCHED_OTHER (at SCHED_FIFO one spinning vCPU would hold the others off their core for good, and the guest would livelock); give the VM as many trading cores as vCPUs");
            fifo_note.push_str(&format!(
                ", {stacked} vCPUs sharing a core left at SCHED_OTHER"
            ));
        }
        let how = if sharing > 0 {
            format!(
                "on the trading cores {trading}, {sharing} of the VM's vCPUs sharing a core (more vCPUs than trading cores)"
            )
        } else {
            format!("one to one on the trading cores {trading}")
        };
        Ok(if vcpus + others + rt == 0 {
            Effect::Unchanged("the VM's threads are where they belong".into())
        } else {
            Effect::Done(format!(
                "pinned {vcpus} vCPU threads {how}, {others} other VM threads on {housekeeping}{fifo_note}"
            ))
        })
    }

    /// A vCPU thread in SCHED_FIFO at `priority`, its policy journaled first; whether it
    /// changed. A thread gone meanwhile did not.
    fn make_fifo(&mut self, tid: u32, priority: u8) -> Result<bool, ActError> {
        let task = match Proc::open_thread(tid, None) {
            Ok(t) => t,
            Err(ActError::Vanished { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let (policy, prio) = match task.scheduler() {
            Ok(p) => p,
            Err(ActError::Vanished { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if (policy, prio) == (libc::SCHED_FIFO, i32::from(priority)) {
            return Ok(false);
        }
        self.journal().record(&Entry::Scheduler {
            pid: task.pid,
            start: task.start,
            policy,
            priority: prio,
            deadline: None,
        })?;
        let set = task.set_scheduler(libc::SCHED_FIFO, i32::from(priority));
        super::fault::at_kind("scheduler", super::fault::Step::Applied);
        match set {
            Ok(()) => Ok(true),
            Err(ActError::Vanished { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Actuators {
    /// The trading cores let go: each vCPU thread made SCHED_FIFO back to the class it had
    /// (journaled by [`Actuators::make_fifo`]; a real-time class only where it was one).
    /// Before, a VM's vCPUs kept their real-time priority after the release, on cores shared
    /// again with everything else. Intruders demoted from a real-time class stay demoted
    /// until the exit gives them their CPUs back.
    pub(super) fn vcpus_normal_again(&mut self) -> Result<Effect, ActError> {
        if self.dry_run {
            return Ok(Effect::Unchanged(
                "dry run: no vCPU was made real-time".into(),
            ));
        }
        let mut back = 0;
        for e in self.journal().entries()? {
            let Entry::Scheduler {
                pid,
                start,
                policy,
                priority,
                deadline: None,
            } = e
            else {
                continue;
            };
            if super::sched_class::is_real_time(policy) {
                continue;
            }
            let fifo = Proc::open_thread(pid, Some(start))
                .and_then(|t| t.scheduler())
                .is_ok_and(|(p, _)| super::sched_class::is_real_time(p));
            if fifo && super::sched_class::restore(pid, start, policy, priority, None)?.is_some() {
                back += 1;
            }
        }
        Ok(match back {
            0 => Effect::Unchanged("no vCPU thread is real-time".into()),
            n => Effect::Done(format!(
                "{n} vCPU threads back to their own scheduling class (the trading cores are let go)"
            )),
        })
    }
}

/// The trading cores that more than one of a VM's vCPUs (their indexes `vcpus`) are pinned to
/// (vCPU n on `cores[n % len]`). SCHED_FIFO does not share a core between equals: a vCPU that
/// spins (a guest waiting on a lock held by another vCPU, or on an IPI to it) would hold the
/// others on its core off for good. Those vCPUs stay SCHED_OTHER.
fn shared_cores(vcpus: impl Iterator<Item = usize>, cores: &[u32]) -> Vec<u32> {
    let mut count = std::collections::BTreeMap::<u32, u32>::new();
    for v in vcpus {
        *count.entry(cores[v % cores.len()]).or_default() += 1;
    }
    (count.into_iter())
        .filter(|(_, n)| *n > 1)
        .map(|(c, _)| c)
        .collect()
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
    fn sched_fifo_needs_the_kernels_rt_throttling() {
        assert_eq!(rt_unguarded("950000\n"), None);
        assert!(
            rt_unguarded("-1\n")
                .unwrap()
                .contains("RT throttling is off")
        );
        assert!(rt_unguarded("").unwrap().contains("unreadable"));
    }

    /// A 4-vCPU Banker on one trading core (the shipped policy on a small host): all four
    /// share it, none gets SCHED_FIFO; 3 vCPUs on 2 cores: vCPU 1 has its core alone.
    #[test]
    fn vcpus_that_share_a_trading_core_are_never_stacked_at_sched_fifo() {
        assert_eq!(shared_cores(0..4, &[1]), vec![1]);
        assert_eq!(shared_cores(0..3, &[2, 3]), vec![2]);
        assert!(shared_cores(0..4, &[2, 3, 4, 5]).is_empty());
    }

    /// Before the fix a vCPU kept SCHED_FIFO after the trading cores were let go.
    #[test]
    fn vcpus_made_real_time_are_normal_again_when_the_cores_are_let_go() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // SCHED_FIFO needs CAP_SYS_NICE: the privileged run covers it
        }
        let dir = std::env::temp_dir().join(format!("keeper-vcpu-rt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = super::super::journal::Journal::open(&dir).unwrap();
        let mut act = Actuators::new(
            crate::device::cgroupfs::CgroupFs::at(&dir),
            journal,
            false,
            None,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let vcpu = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(act.make_fifo(tid, 1).unwrap());
        let class = || Proc::open_thread(tid, None).unwrap().scheduler().unwrap();
        assert_eq!(class(), (libc::SCHED_FIFO, 1));
        let effect = act.vcpus_normal_again().unwrap();
        assert_eq!(class(), (libc::SCHED_OTHER, 0), "{effect:?}");
        // Nothing real-time left: nothing to do.
        assert!(matches!(
            act.vcpus_normal_again().unwrap(),
            Effect::Unchanged(_)
        ));
        done_tx.send(()).unwrap();
        vcpu.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

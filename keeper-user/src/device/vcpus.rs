//! A VM's vCPU threads, told by the names QEMU gives them (`CPU n/KVM`, `CPU n/TCG` under TCG):
//! read by the sensors each tick for the owner of the trading cores (a vCPU thread born after
//! the protection, by a VM started moments later or a `qm set --vcpus` hot-plug, is placed
//! too) and by the actuators that pin them.

use std::{fs, path::Path};

use super::{cgroupfs::CgroupFs, placement::Placement, procfs};

/// The vCPU index a thread name gives (`CPU 3/KVM` → 3).
pub fn vcpu_index(comm: &str) -> Option<usize> {
    let rest = comm.strip_prefix("CPU ")?;
    let (n, accel) = rest.split_once('/')?;
    matches!(accel, "KVM" | "TCG" | "HVF" | "WHPX").then_some(())?;
    n.trim().parse().ok()
}

/// A process's threads (`/proc/<pid>/task`); none when it is gone.
pub fn threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's threads, each with its vCPU index where QEMU named it a vCPU thread.
pub fn vcpu_threads(pid: u32) -> Vec<(u32, Option<usize>)> {
    (threads(pid).into_iter())
        .map(|t| (t, procfs::task_stat(t).and_then(|s| vcpu_index(&s.comm))))
        .collect()
}

/// The vCPU threads of a placed workload, sorted: those in its cgroups (and below, from each
/// one's `cgroup.threads`) and its processes'. A thread's name is read from
/// `/proc/<tid>/comm`: one short read per thread of the VM, none of the rest of the host.
pub fn of_placement(p: &Placement, cg: &CgroupFs) -> Vec<u32> {
    let mut tids: Vec<u32> = p.pids.iter().flat_map(|&pid| threads(pid)).collect();
    for c in &p.cgroups {
        if let Ok(dir) = cg.dir(c) {
            cgroup_threads(&dir, 0, &mut tids);
        }
    }
    tids.sort_unstable();
    tids.dedup();
    tids.retain(|&t| {
        fs::read_to_string(format!("/proc/{t}/comm")).is_ok_and(|c| vcpu_index(c.trim()).is_some())
    });
    tids
}

/// The threads of a cgroup and its descendants (at most 8 levels down: a VM's scope has none
/// or a few).
fn cgroup_threads(dir: &Path, depth: u8, out: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.threads")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth >= 8 {
        return;
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_threads(&e.path(), depth + 1, out);
        }
    }
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

    /// This test's own threads, one named as QEMU names a vCPU thread: found by its pid,
    /// the others not.
    #[test]
    fn a_processs_vcpu_threads_are_found_by_name() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let vcpu = std::thread::Builder::new()
            .name("CPU 0/TCG".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let p = Placement {
            cgroups: vec![],
            pids: vec![std::process::id()],
        };
        let found = of_placement(&p, &CgroupFs::at("/nonexistent"));
        done_tx.send(()).unwrap();
        vcpu.join().unwrap();
        assert_eq!(found, vec![tid]);
    }
}

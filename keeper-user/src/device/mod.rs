//! Device clients under both [`crate::sense`] and [`crate::act`]: each reads or writes one
//! kind of host interface and says what it got, with no decisions. Sensing and acting meet
//! here, never in each other.
//!
//! - [`cgroupfs`]: cgroup v2 paths, ids and control files;
//! - [`procfs`]: what /proc says about a task (one parser of `/proc/<pid>/stat`), host totals;
//! - [`placement`]: where each workload of the policy lives, and whose a process or cgroup is;
//! - [`pid_file`]: pid files a policy names, read safely and off the loop;
//! - [`docker`]: the Docker Engine API (running containers, their names, labels and cgroups);
//! - [`qmp`]: a VM's QMP socket (balloon, status), Proxmox's socket layout;
//! - [`irq`]: interrupt lines, their names and affinities; [`irqbalance`]: its control socket;
//! - [`gpu`]: the GPU through NVML (readouts, power limit, clock offset);
//! - [`proxmox`]: the Proxmox VE API client (persistent balloon settings, hibernate/start);
//!   [`pve_config`]: its guest configurations in /etc/pve, the physical cores and the GPUs;
//! - [`vcpus`]: a VM's vCPU threads, by the names QEMU gives them;
//! - [`trust`]: whether a library or tool the keeper would load or run is root's alone.

pub mod cgroupfs;
pub mod clock;
pub mod docker;
pub mod gpu;
pub mod irq;
pub mod irqbalance;
pub mod pid_file;
pub mod placement;
pub mod procfs;
pub mod proxmox;
pub mod pve_config;
pub mod qmp;
pub mod topology;
pub mod trust;
pub mod vcpus;
pub mod watchdog;

/// The loop runs at SCHED_FIFO (it evicts intruders); device calls do not need to, and a
/// thread that waits on them must not hold a CPU from the rest of the host.
pub fn run_at_normal_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

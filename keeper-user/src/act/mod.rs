//! Actuators: thin adapters that change the host and report what they did. Every change is
//! journaled before it is applied ([`journal`]) and can be undone ([`Actuators::restore_all`]),
//! after a crash too. `--dry-run` builds them with `dry_run` set: they say what they would do.
//!
//! - [`cgroup`]: control files (cpu.weight, cpu.max, memory.high, cpuset), freeze/thaw
//!   confirmed through cgroup.events, the trading-core cpuset partition;
//! - [`process`]: pidfds, SIGSTOP/SIGCONT of process trees;
//! - [`affinity`]: CPU affinity: intruder eviction, and every task kept off the trading cores
//!   where no cpuset partition can be made;
//! - [`irq`]: interrupt affinity (`host.irq_guard`); [`workqueue`]: the unbound workqueues'
//!   CPUs (`host.workqueue_guard`);
//! - [`gpu`]: the GPU power limit and clock offset (NVML), cuda-checkpoint for the handoff;
//! - [`balloon`] (QMP) and [`vm_stop`] (Proxmox API): the VMs' memory;
//! - [`passthrough`] (QMP hot-unplug) and `planned_restart` (Proxmox API): the GPU lent
//!   between VMs (`rules.gpu_mutex`); `service`: what a preemption starts (`start_on`);
//! - [`journal`]: the crash-safety journal; `undo`: replaying it (at start, at exit, and the
//!   pending undos retried on a thread of their own);
//! - [`execute`]: one engine action carried out through the above, workload by workload.

pub mod affinity;
mod attach;
pub mod balloon;
pub mod cgroup;
mod compact;
pub mod execute;
pub mod fault;
mod forks;
pub mod gpu;
pub mod irq;
pub mod journal;
mod own_masks;
pub mod passthrough;
pub(crate) mod pending;
mod planned_restart;
pub mod process;
pub mod queue;
pub mod sched_class;
mod undo;
use undo::{Backoff, Retrying};
mod service;
pub mod slow;
pub mod vm_stop;
pub mod vm_threads;
pub mod workqueue;

use std::{
    collections::HashSet,
    io,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{cpulist::CpuList, device::cgroupfs::CgroupFs};
use journal::{Entry, Journal, JournalError};
use process::Proc;

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("pid {pid} vanished")]
    Vanished { pid: u32 },
    #[error("pid {pid}: {op}: {source}")]
    Process {
        pid: u32,
        op: &'static str,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup {cgroup} has no {file}: the {controller} controller is not available here")]
    Missing {
        cgroup: String,
        file: String,
        controller: String,
    },
    #[error("cgroup {cgroup} is gone")]
    CgroupGone { cgroup: String },
    #[error(
        "cgroup {cgroup} did not report `frozen {want}` in cgroup.events within {waited:?} (a freeze is taken back: cgroup.freeze 0)"
    )]
    FreezeTimeout {
        cgroup: String,
        want: u8,
        waited: Duration,
    },
    #[error("{what} is outside the scope {scope}: not touched")]
    OutOfScope { what: String, scope: String },
    #[error("cpuset partition of {cgroup} refused: {state}")]
    Partition { cgroup: String, state: String },
    #[error(transparent)]
    Cgroup(#[from] crate::device::cgroupfs::CgroupError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Qmp(#[from] crate::device::qmp::QmpError),
    #[error(transparent)]
    Gpu(#[from] crate::device::gpu::GpuError),
    #[error(transparent)]
    Proxmox(#[from] crate::device::proxmox::ProxmoxError),
    #[error("stopping VM {vmid} needs the Proxmox API (`keeper run --proxmox FILE`): nothing done")]
    NoApi { vmid: u32 },
    #[error(transparent)]
    Irq(#[from] crate::device::irq::IrqError),
    #[error("cuda-checkpoint, pid {pid}: {message}")]
    Checkpoint { pid: u32, message: String },
    #[error("{what}: {message}")]
    Service { what: String, message: String },
}

/// What an actuator did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Done(String),
    /// Nothing to do (already so).
    Unchanged(String),
    /// `--dry-run`: what would have been done.
    WouldDo(String),
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Done(s) => write!(f, "done: {s}"),
            Effect::Unchanged(s) => write!(f, "unchanged: {s}"),
            Effect::WouldDo(s) => write!(f, "dry run, would: {s}"),
        }
    }
}

/// The keeper's hands.
pub struct Actuators {
    pub(crate) cg: CgroupFs,
    /// Shared with the slow hands ([`Actuators::split_slow`]): one journal, one lock.
    journal: Arc<Mutex<Journal>>,
    pub(crate) dry_run: bool,
    /// Cgroup path (relative to the v2 mount) outside of which nothing is touched.
    pub(crate) scope: Option<String>,
    /// Files whose original value is already in the journal, and that value.
    pub(crate) originals: std::collections::HashMap<PathBuf, String>,
    /// Controllers already reported missing (said once).
    pub(crate) missing_said: HashSet<String>,
    /// Where the VMs' QMP sockets are (`<vmid>.qmp`).
    pub qmp_dir: PathBuf,
    /// No VM is ballooned below this (a size, or a share of its memory).
    pub balloon_floor: crate::policy::Amount,
    /// QMP sockets whose original balloon is in the journal.
    pub(crate) balloons_journaled: HashSet<PathBuf>,
    /// IRQs whose original affinity is in the journal.
    pub(crate) irqs_journaled: HashSet<u32>,
    /// The GPU (NVML) and cuda-checkpoint, when present.
    pub(crate) gpu: gpu::GpuHands,
    /// The Proxmox API (`--proxmox`), for stopping VMs.
    pub proxmox: Option<vm_stop::ProxmoxHands>,
    /// VMs this keeper hibernated and has not started again.
    pub(crate) vms_stopped: std::collections::BTreeSet<u32>,
    /// Journal entries whose undo failed, oldest first, and when they are tried again.
    pending: Vec<Entry>,
    retry: Backoff,
    /// Pending undos being tried again on their own thread.
    retrying: Option<Retrying>,
    /// The thread that syncs the journal to disk, off the loop (started at the first sync).
    syncer: Option<std::sync::mpsc::Sender<std::fs::File>>,
    /// When the last eviction moved its task off the trading cores (CLOCK_MONOTONIC ns):
    /// where an eviction's latency ends, taken by whoever times it.
    pub first_move_ns: Option<u64>,
    /// Freezes and thaws written but not yet seen in `cgroup.events` (confirmed on later
    /// ticks: [`Actuators::confirm_freezes`]).
    unconfirmed: Vec<cgroup::Unconfirmed>,
    /// The arriving thread [`Actuators::evict_arrival`] moved (pid, start time): the
    /// eviction that follows for it moves the rest.
    pub(crate) moved_on_arrival: Option<(u32, u64)>,
    /// The class a thread of the eviction under way had before it was demoted
    /// ([`Actuators::demote`]), said in the eviction's outcome.
    pub(crate) demoted: Option<String>,
    /// Whether a real-time task is demoted as it is moved off the trading cores
    /// (`rules.intruders.real_time`; set from the policy by the enforcer and the eviction
    /// thread's filter).
    pub demote_real_time: bool,
    /// Commands started by a preemption (`start_on`), by workload: this keeper's children.
    pub(crate) services: std::collections::HashMap<String, std::process::Child>,
    /// `start_on` units found active before the keeper would start them: left as they are,
    /// neither journaled nor stopped by the keeper.
    pub(crate) units_kept: HashSet<String>,
    /// The tasks' own CPU masks were journaled before this run's first partition.
    pub(crate) own_masks_kept: bool,
}

impl Actuators {
    pub fn new(cg: CgroupFs, journal: Journal, dry_run: bool, scope: Option<String>) -> Self {
        let scope = scope.map(|s| normalize(&s));
        Self {
            cg,
            journal: Arc::new(Mutex::new(journal)),
            dry_run,
            scope,
            originals: Default::default(),
            missing_said: HashSet::new(),
            qmp_dir: PathBuf::from(crate::device::qmp::DEFAULT_QMP_DIR),
            balloon_floor: crate::policy::Amount::Bytes(1 << 30),
            balloons_journaled: HashSet::new(),
            irqs_journaled: HashSet::new(),
            gpu: gpu::GpuHands::default(),
            proxmox: None,
            vms_stopped: Default::default(),
            pending: Vec::new(),
            retry: Backoff::default(),
            retrying: None,
            syncer: None,
            first_move_ns: None,
            unconfirmed: Vec::new(),
            moved_on_arrival: None,
            demoted: None,
            demote_real_time: true,
            services: Default::default(),
            units_kept: HashSet::new(),
            own_masks_kept: false,
        }
    }

    /// The journal (a panic elsewhere while it was held leaves it usable: every record is
    /// one write of a whole line).
    pub(crate) fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Syncs the journal's records since the last sync to disk (once per tick), on a thread
    /// of its own: an `fdatasync` takes milliseconds, and neither the loop nor the journal's
    /// lock waits for it.
    pub fn sync_journal(&mut self) -> Result<(), ActError> {
        self.journal().compact_if_due()?;
        let Some(file) = self.journal().to_sync()? else {
            return Ok(());
        };
        if self.syncer.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<std::fs::File>();
            std::thread::Builder::new()
                .name("keeper-sync".into())
                .spawn(move || {
                    crate::device::run_at_normal_priority();
                    for f in rx {
                        if let Err(e) = f.sync_data() {
                            tracing::warn!(error = %e, "could not sync the journal to disk");
                        }
                    }
                })
                .map_err(|source| ActError::Io {
                    path: "journal sync thread".into(),
                    source,
                })?;
            self.syncer = Some(tx);
        }
        if let Some(tx) = &self.syncer {
            let _ = tx.send(file);
        }
        Ok(())
    }

    /// Hands over what is slow to call (QMP, the Proxmox API, NVML, cuda-checkpoint) to a new
    /// set of actuators for a thread of its own, sharing this journal; these keep the cgroup
    /// files, freezes, signals and affinities, which never wait on a device.
    pub fn split_slow(&mut self) -> Actuators {
        let mut slow = Actuators {
            journal: Arc::clone(&self.journal),
            qmp_dir: self.qmp_dir.clone(),
            balloon_floor: self.balloon_floor,
            proxmox: self.proxmox.take(),
            gpu: std::mem::take(&mut self.gpu),
            services: std::mem::take(&mut self.services),
            units_kept: std::mem::take(&mut self.units_kept),
            ..Actuators::new(self.cg.clone(), Journal::disabled(), self.dry_run, None)
        };
        slow.scope = self.scope.clone();
        self.gpu.gpu = slow.gpu.gpu.clone();
        slow
    }

    /// Actuators for the eviction thread: the same journal and scope, and nothing else (it
    /// only moves tasks off the trading cores).
    pub fn split_fast(&self) -> Actuators {
        let mut fast = Actuators {
            journal: Arc::clone(&self.journal),
            ..Actuators::new(self.cg.clone(), Journal::disabled(), self.dry_run, None)
        };
        fast.scope = self.scope.clone();
        fast
    }

    /// Takes back what [`Actuators::split_slow`] handed over, once its thread has ended.
    pub fn take_back(&mut self, slow: Actuators) {
        self.proxmox = slow.proxmox;
        self.gpu = slow.gpu;
        self.services.extend(slow.services);
        self.units_kept.extend(slow.units_kept);
        self.vms_stopped.extend(slow.vms_stopped);
        self.balloons_journaled.extend(slow.balloons_journaled);
    }

    pub fn cgroups(&self) -> &CgroupFs {
        &self.cg
    }

    /// The `--scope` cgroup, normalised, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Refuses a cgroup outside the scope.
    pub fn check_scope_cgroup(&self, rel: &str) -> Result<(), ActError> {
        match &self.scope {
            Some(scope) if !under(&normalize(rel), scope) => Err(ActError::OutOfScope {
                what: format!("cgroup /{}", normalize(rel)),
                scope: format!("/{scope}"),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a task whose cgroup is outside the scope.
    pub fn check_scope_pid(&self, pid: u32) -> Result<(), ActError> {
        self.check_scope_task(pid, "")
    }

    /// Refuses a task whose cgroup (as just read by the caller; read from /proc when empty)
    /// is outside the scope.
    pub fn check_scope_task(&self, pid: u32, cgroup: &str) -> Result<(), ActError> {
        let Some(scope) = &self.scope else {
            return Ok(());
        };
        let cgroup = match cgroup {
            "" => task_cgroup(pid).ok_or(ActError::Vanished { pid })?,
            known => known.to_string(),
        };
        if under(&normalize(&cgroup), scope) {
            Ok(())
        } else {
            Err(ActError::OutOfScope {
                what: format!("pid {pid} (cgroup /{cgroup})"),
                scope: format!("/{scope}"),
            })
        }
    }

    /// Logs a missing controller once; later calls stay quiet. Returns true the first time.
    pub fn say_missing_once(&mut self, err: &ActError) -> bool {
        if let ActError::Missing { controller, .. } = err
            && self.missing_said.insert(controller.clone())
        {
            tracing::warn!(%controller, "{err}; actions that need it are skipped on this host");
            return true;
        }
        false
    }

    /// A repeat offender's process stopped (SIGSTOP through its pidfd; that process, not its
    /// children), journaled first.
    pub fn stop_intruder(&mut self, pid: u32) -> Result<Effect, ActError> {
        self.check_scope_pid(pid)?;
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("stop process {pid}")));
        }
        let proc = Proc::open(pid, None)?;
        if proc.kernel_thread {
            return Ok(Effect::Unchanged(format!("pid {pid} is a kernel thread")));
        }
        self.journal().record(&Entry::Stop {
            pid,
            start: proc.start,
        })?;
        proc.signal(libc::SIGSTOP)?;
        fault::at_kind("stop", fault::Step::Applied);
        Ok(Effect::Done(format!(
            "stopped process {pid} (SIGSTOP) while the trading cores stay protected"
        )))
    }

    /// A repeat offender stopped by [`Actuators::stop_intruder`] continued (SIGCONT), if it is
    /// still the process the journal names.
    pub fn continue_intruder(&mut self, pid: u32) -> Result<Effect, ActError> {
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("continue process {pid}")));
        }
        let start = (self.journal().entries()?.iter().rev()).find_map(|e| match e {
            Entry::Stop { pid: p, start } if *p == pid => Some(*start),
            _ => None,
        });
        let Some(start) = start else {
            return Ok(Effect::Unchanged(format!(
                "pid {pid} was not stopped by the keeper"
            )));
        };
        match Proc::open(pid, Some(start)).and_then(|p| p.signal(libc::SIGCONT)) {
            Ok(()) => Ok(Effect::Done(format!("continued process {pid} (SIGCONT)"))),
            Err(ActError::Vanished { .. }) => {
                Ok(Effect::Unchanged(format!("pid {pid} exited meanwhile")))
            }
            Err(e) => Err(e),
        }
    }

    /// SIGSTOP (`stop = true`) or SIGCONT a process and its descendants, through pidfds.
    pub fn signal_tree(&mut self, pid: u32, stop: bool) -> Result<Effect, ActError> {
        self.check_scope_pid(pid)?;
        let verb = if stop { "stop" } else { "continue" };
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("{verb} process tree of {pid}")));
        }
        let mut n = 0;
        for p in process::tree(pid) {
            let proc = match Proc::open(p, None) {
                Ok(x) => x,
                Err(ActError::Vanished { .. }) => continue,
                Err(e) => return Err(e),
            };
            if stop {
                self.journal().record(&Entry::Stop {
                    pid: p,
                    start: proc.start,
                })?;
            }
            match proc.signal(if stop { libc::SIGSTOP } else { libc::SIGCONT }) {
                Ok(()) => n += 1,
                Err(ActError::Vanished { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Err(ActError::Vanished { pid });
        }
        Ok(Effect::Done(format!("{verb} {n} processes under {pid}")))
    }
}

pub use crate::device::{
    cgroupfs::{normalize, under},
    procfs::task_cgroup,
};

#[cfg(test)]
mod tests;

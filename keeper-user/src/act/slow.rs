//! The slow hands: actions that wait on a device (a VM's QMP socket, the Proxmox API, NVML,
//! cuda-checkpoint) run on a thread of their own, one at a time, so that the loop (intruder
//! events, evictions, freezes for preemption, the watchdog) never waits behind them. Each call
//! there has its own deadline (QMP 3 s per step, Proxmox 5 s per request and DNS lookup,
//! cuda-checkpoint 30 s per process); what an action came to goes back to the loop as a
//! [`Done`], which the engine acknowledges like any other.

use std::{
    collections::BTreeMap,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    Actuators,
    execute::{Done, execute, steps},
};
use crate::{
    decide::{Action, ActionKind},
    device::{placement::Placement, procfs::HostTotals},
};

/// One slow action and what carrying it out reads.
pub struct Job {
    pub action: Action,
    pub placements: BTreeMap<String, Placement>,
    pub totals: HostTotals,
}

/// The thread that carries slow actions out, and the way to it.
pub struct SlowHands {
    jobs: Option<mpsc::Sender<Job>>,
    back: mpsc::Receiver<Actuators>,
    thread: Option<JoinHandle<()>>,
}

/// Whether `kind` waits on a device: carried out by the slow hands when the loop has them.
pub fn is_slow(kind: &ActionKind) -> bool {
    matches!(
        kind,
        ActionKind::Balloon { .. }
            | ActionKind::StopVm { .. }
            | ActionKind::StartVm { .. }
            | ActionKind::SetGpuPowerLimit { .. }
            | ActionKind::SetGpuClockOffset { .. }
            | ActionKind::GpuCheckpoint { .. }
            | ActionKind::GpuRestore { .. }
            | ActionKind::StartService { .. }
            | ActionKind::StopService { .. }
            | ActionKind::MoveGpu { .. }
    )
}

impl SlowHands {
    /// Starts the thread with `act` (from [`Actuators::split_slow`]); each action done is
    /// sent to `done`.
    pub fn start(
        mut act: Actuators,
        done: tokio::sync::mpsc::UnboundedSender<Done>,
    ) -> std::io::Result<SlowHands> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (give_back, back) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keeper-slow".into())
            .spawn(move || {
                crate::device::run_at_normal_priority();
                for job in rx {
                    let started = Instant::now();
                    let report = execute(&mut act, &job.placements, job.totals, &job.action);
                    let steps = steps(&mut act, report);
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if done.send(Done::new(job.action, steps, ms)).is_err() {
                        break;
                    }
                }
                let _ = give_back.send(act);
            })?;
        Ok(SlowHands {
            jobs: Some(jobs),
            back,
            thread: Some(thread),
        })
    }

    /// Hands `job` to the thread; gives it back when the thread is gone.
    pub fn send(&self, job: Job) -> Result<(), Box<Job>> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
        }
    }

    /// Lets the action in progress finish (within `grace`) and ends the thread. Returns its
    /// actuators, or `None` when a call outlived `grace` (its thread is left to end alone;
    /// what it changed is in the journal, which the exit undoes).
    pub fn stop(mut self, grace: Duration) -> Option<Actuators> {
        self.jobs = None;
        match self.back.recv_timeout(grace) {
            Ok(act) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                Some(act)
            }
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "a slow action (VM, GPU) is still running: not waiting for it"
                );
                None
            }
        }
    }
}

//! `keeper run`: the enforcement daemon, the loop and its wiring only. Restores what an
//! earlier run left (journal), attaches the sensors (`start`), then on every intruder event,
//! tick, trigger, slow action back or control request runs observe → decide → act
//! (`running`, `answer`). On SIGINT/SIGTERM or `--for` it undoes its changes.

mod answer;
mod fast;
mod running;
mod seat;
mod signals;
mod sources;
mod start;

use std::{path::PathBuf, time::Duration, time::Instant};

pub use crate::policy::PolicySource;
use crate::report::RunRecord;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("policy {0}")]
    Policy(String),
    #[error(transparent)]
    Sense(#[from] crate::sense::sched::SenseError),
    #[error(transparent)]
    Tracefs(#[from] crate::sense::tracefs::TracefsError),
    #[error(transparent)]
    Act(#[from] crate::act::ActError),
    #[error(transparent)]
    Journal(#[from] crate::act::journal::JournalError),
    #[error(transparent)]
    Cgroup(#[from] crate::device::cgroupfs::CgroupError),
    #[error(transparent)]
    Control(#[from] crate::interface::server::ControlError),
    #[error("--proxmox: {0}")]
    Proxmox(#[from] crate::device::proxmox::ProxmoxError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How long the undo at the exit (and the replay at a start) may keep the hardware watchdog
/// fed: a VM started again, QMP and systemctl calls take up to a minute. Below the unit's
/// `TimeoutStopSec` (90 s), past which systemd kills the keeper and the next start replays.
pub const UNDO_LIMIT: Duration = Duration::from_secs(80);

/// Everything `keeper run` was told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub source: PolicySource,
    pub scope: Option<String>,
    pub dry_run: bool,
    pub duration: Option<Duration>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Who may use the control socket (`--allow-uid`, `--allow-group`).
    pub access: crate::interface::server::Access,
    pub tick: Duration,
    /// Serve Prometheus metrics here (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the VMs' QMP sockets are (`--qmp-dir`).
    pub qmp_dir: PathBuf,
    /// The memory PSI file the memory rules read (`--memory-psi`).
    pub memory_psi: PathBuf,
    /// NVML library (`None`: `$KEEPER_NVML_LIB`, else the system's libnvidia-ml.so.1).
    pub nvml_lib: Option<PathBuf>,
    /// cuda-checkpoint (`None`: looked up on PATH).
    pub cuda_checkpoint: Option<PathBuf>,
    /// The Proxmox API file (`--proxmox`), for stopping VMs.
    pub proxmox: Option<PathBuf>,
}

pub async fn run(cfg: DaemonConfig) -> Result<RunRecord, DaemonError> {
    let signals = signals::catch()?;
    let (mut r, mut src) = start::start(&cfg, signals).await?;
    let served = serve(&mut r, &mut src).await;
    drop(src);
    // An orderly exit, even after an error in the loop: everything undone, then the hardware
    // watchdog disarmed. Only a keeper that hangs or is killed leaves it armed.
    let watchdog = r.watchdog.take();
    let dog = watchdog
        .as_ref()
        .map(|w| w as &dyn crate::device::watchdog::Feed);
    let record = crate::device::watchdog::fed_while(dog, UNDO_LIMIT, || r.finish());
    if let Some(w) = watchdog {
        match w.disarm() {
            Ok(true) => tracing::info!("hardware watchdog disarmed"),
            Ok(false) => tracing::warn!(
                "hardware watchdog closed, but its driver has no magic close (or is built with nowayout): it stays armed"
            ),
            Err(e) => {
                tracing::error!(error = %e, "hardware watchdog could not be disarmed: it stays armed")
            }
        }
    }
    let _ = std::fs::remove_file(&cfg.socket);
    served?;
    record
}

/// The loop, until a signal, `--for` or an error.
async fn serve(r: &mut running::Running, src: &mut start::Sources) -> Result<(), DaemonError> {
    let t = &mut src.timers;
    loop {
        tokio::select! {
            Some(heard) = src.signals.next() => match heard {
                signals::Heard::Stop(name) => {
                    tracing::info!(signal = name, "{name}: stopping");
                    break;
                }
                signals::Heard::Reload(name) => r.reload_on(name),
                signals::Heard::Ignored(name) => {
                    tracing::warn!(signal = name, "{name} ignored: SIGTERM, SIGINT or SIGQUIT stop the keeper (with its undo), SIGHUP reloads the policy");
                }
            },
            _ = sources::until(t.deadline) => break,
            Some(batch) = src.events.recv() => r.events(batch),
            Some(done) = src.slow_done.recv() => r.slow_done(done),
            Some(call) = src.calls.recv() => r.answer(call),
            guard = sources::ready(&mut src.oom_events) => {
                if let Ok(mut guard) = guard {
                    r.oom_kills(guard.get_inner_mut());
                    guard.clear_ready();
                }
            }
            fired = sources::trigger_fired(&mut t.memory_trigger) => match fired {
                Ok(pct) => {
                    tracing::debug!(share = pct, "memory pressure trigger fired");
                    r.enforcer.observer.pressure_hint = Some((pct, Instant::now()));
                    r.trigger(&mut t.workload_triggers);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "memory pressure trigger failed; reading PSI every tick instead");
                    t.memory_trigger = None;
                }
            },
            Some((workload, pct)) = sources::workload_fired(&mut t.workload_triggers) => {
                tracing::info!(%workload, share = pct, "memory pressure trigger fired on a workload's memory.pressure");
                r.enforcer.observer.workload_hints.insert(workload, (pct, Instant::now()));
                r.trigger(&mut t.workload_triggers);
            }
            _ = t.kick.tick(), if t.watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = t.feed.tick(), if r.watchdog.is_some() => r.feed_watchdog(),
            _ = t.ticker.tick() => r.tick(&mut t.workload_triggers)?,
        }
    }
    Ok(())
}

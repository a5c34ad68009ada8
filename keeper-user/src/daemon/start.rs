//! Start-up of `keeper run`: the journal locked and replayed, the policy read, the devices
//! opened, the keeper pinned, the sensors attached, the control socket and metrics served.
//! Returns the loop's state ([`Running`]) and what it waits on ([`Sources`]).

use std::time::Duration;

use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{
    DaemonConfig, DaemonError,
    fast::{Batch, FastHands},
    running::{Running, protected_ids},
    signals::Signals,
    sources,
};
use crate::{
    act::{Actuators, execute::Done, journal::Journal, process::Proc},
    cpulist::CpuList,
    device::{
        cgroupfs::CgroupFs,
        watchdog::{Feed, Watchdog, fed_while},
    },
    enforcer::Enforcer,
    interface::server,
    report::{metrics, oom_history::OomHistory, record::Recorder},
    sense::{
        memory::{self, OomEvents},
        pressure::{self, WorkloadTriggers},
        psi::PsiTrigger,
        sched::{SchedConfig, SchedSensor},
        tracefs::Tracefs,
    },
};

/// What the loop waits on.
pub(super) struct Sources {
    /// Caught before the start: one sent during the start waits for the loop.
    pub signals: Signals,
    /// What the eviction thread read from the sensor's ring buffer, and evicted at once.
    pub events: mpsc::UnboundedReceiver<Batch>,
    pub slow_done: mpsc::UnboundedReceiver<Done>,
    pub calls: mpsc::Receiver<server::Call>,
    pub oom_events: Option<AsyncFd<OomEvents>>,
    pub timers: Timers,
    /// Serves /metrics while it lives.
    pub _metrics_server: Option<tokio::task::JoinHandle<()>>,
}

/// The clocks and PSI triggers the loop waits on.
pub(super) struct Timers {
    pub deadline: Option<tokio::time::Instant>,
    pub memory_trigger: Option<(PsiTrigger, f64)>,
    pub workload_triggers: Option<WorkloadTriggers>,
    pub watchdog: Option<Duration>,
    pub kick: tokio::time::Interval,
    /// Feeds the hardware watchdog (`host.watchdog`), when one is armed.
    pub feed: tokio::time::Interval,
    pub ticker: tokio::time::Interval,
}

pub(super) async fn start(
    cfg: &DaemonConfig,
    signals: Signals,
) -> Result<(Running, Sources), DaemonError> {
    let started = jiff::Timestamp::now();
    let cg = CgroupFs::discover()?;
    let (enforcer, restored_at_start, slow_done, hardware) = enforcer(cfg, &cg)?;
    let tracefs = Tracefs::find_or_mount()?;
    let mut sensor = SchedSensor::attach(
        &tracefs,
        &SchedConfig {
            trading_cpus: enforcer.policy.host.trading_cores.clone(),
            protected_cgroups: protected_ids(&enforcer, &cg),
            intruder_event_interval: Duration::from_millis(20),
        },
    )?;
    // The eviction thread waits on the ring itself: an arrival is moved off the trading
    // cores there, never behind the loop's other work.
    let (batches, events) = mpsc::unbounded_channel();
    let fast = FastHands::start(
        sensor.take_events()?,
        enforcer.act.split_fast(),
        enforcer.totals,
        batches,
    )?;
    let (memory_sensor, oom_events) = memory::attach_polled(&tracefs);
    crate::sense::ebpf::release_load_memory();
    let calls = server::serve(&cfg.socket, cfg.access.clone())?;
    tracing::info!(
        mode = if cfg.dry_run { "dry-run" } else { "enforcing" },
        policy = %enforcer.source.name(),
        trading_cores = %enforcer.policy.host.trading_cores,
        scope = ?cfg.scope,
        socket = %cfg.socket.display(),
        "keeper running"
    );
    let metrics = metrics::Metrics::default();
    let metrics_server = match cfg.metrics {
        Some(addr) => Some(
            metrics::serve(addr, metrics.clone())
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("--metrics {addr}: {e}")))?,
        ),
        None => None,
    };
    let period = hardware.0.as_ref().map(Watchdog::period);
    let sources = Sources {
        signals,
        events,
        slow_done,
        calls,
        oom_events,
        timers: timers(cfg, &enforcer, period),
        _metrics_server: metrics_server,
    };
    let mut recorder = Recorder::new(started);
    // OOM kills counted over a rolling week across restarts (kept on disk unless a dry run).
    let history = cfg.state_dir.join("oom-kills.jsonl");
    recorder.keep_history(OomHistory::open(&history, !cfg.dry_run, started));
    let mut running = Running::new(
        enforcer,
        sensor,
        memory_sensor,
        cg,
        recorder,
        cfg.metrics.map(|_| metrics),
        restored_at_start,
    );
    let mut hardware = hardware;
    running.watchdog = hardware.0.take();
    running.fast = Some(fast);
    Ok((running, sources))
}

/// `host.watchdog`: the hardware watchdog opened (armed) and its timeout set, unless this is a
/// dry run. One that cannot be armed is said loudly, and the keeper goes on without it.
fn arm_watchdog(cfg: &DaemonConfig, policy: &crate::policy::Policy) -> Option<Watchdog> {
    let spec = policy.host.watchdog.as_ref()?;
    if cfg.dry_run {
        tracing::info!(device = %spec.device.display(), "dry run: the hardware watchdog is not armed");
        return None;
    }
    match Watchdog::arm(&spec.device, spec.timeout) {
        Ok(w) => {
            tracing::info!(
                device = %spec.device.display(),
                identity = w.identity(),
                timeout_s = spec.timeout.as_secs(),
                fed_every_s = w.period().as_secs(),
                "hardware watchdog armed: a keeper that hangs, or a kernel that freezes, resets this machine"
            );
            Some(w)
        }
        Err(e) => {
            tracing::error!(error = %e, "host.watchdog: not armed; this machine is NOT reset if the keeper or the kernel hangs");
            None
        }
    }
}

/// The journal replayed, the policy read, the devices opened, the slow hands started.
fn enforcer(
    cfg: &DaemonConfig,
    cg: &CgroupFs,
) -> Result<(Enforcer, Vec<String>, mpsc::UnboundedReceiver<Done>, Armed), DaemonError> {
    let journal = if cfg.dry_run {
        Journal::disabled()
    } else {
        Journal::open(&cfg.state_dir)?
    };
    let mut act = Actuators::new(cg.clone(), journal, cfg.dry_run, cfg.scope.clone());
    if let Some(scope) = &cfg.scope {
        cg.id(scope)
            .map_err(|e| DaemonError::Policy(format!("--scope {scope}: {e}")))?;
    }
    // The policy first: its `host.watchdog` is armed before the replay and fed through it (a
    // dead keeper's watchdog may still count down; a replay of VM or systemctl calls can take
    // longer than its timeout). A policy that does not load is an error after the replay.
    let policy = load_policy(&cfg.source);
    let hardware = Armed(policy.as_ref().ok().and_then(|p| arm_watchdog(cfg, p)));
    let dog = hardware.0.as_ref().map(|w| w as &dyn Feed);
    let restored_at_start = fed_while(dog, super::UNDO_LIMIT, || act.restore_all())?;
    for r in &restored_at_start {
        tracing::warn!(restored = %r, "undid a change left by an earlier keeper run");
    }
    if !act.undo_pending().is_empty() {
        tracing::warn!(
            pending = act.undo_pending().len(),
            "some changes left by an earlier keeper run could not be undone yet: kept in the journal, tried again with a backoff (`keeper status` lists them)"
        );
    }
    let policy = policy.map_err(DaemonError::Policy)?;
    act.attach_gpu(cfg.nvml_lib.as_deref(), cfg.cuda_checkpoint.as_deref());
    act.attach_proxmox(cfg.proxmox.as_deref(), &policy)?;
    pin_self(&policy.host.housekeeping_cores);
    let mut enforcer = Enforcer::new(cfg.source.clone(), policy, act);
    enforcer.observer.memory_psi = cfg.memory_psi.clone();
    enforcer.act.qmp_dir = cfg.qmp_dir.clone();
    enforcer.set_actuator_values();
    // VM, GPU and Proxmox calls run on a thread of their own: nothing on the loop waits on them.
    let (slow_tx, slow_done) = mpsc::unbounded_channel();
    if !cfg.dry_run {
        enforcer.start_slow_hands(slow_tx)?;
    }
    Ok((enforcer, restored_at_start, slow_done, hardware))
}

/// The hardware watchdog armed during the start: disarmed (the magic close) if the start
/// fails, so that a keeper that cannot start does not leave it counting down to a reset.
pub(super) struct Armed(pub Option<Watchdog>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let _ = w.disarm();
            tracing::warn!("the start failed: the hardware watchdog is disarmed");
        }
    }
}

/// The clocks and triggers the loop waits on besides the sensor and the socket.
fn timers(cfg: &DaemonConfig, enforcer: &Enforcer, feed: Option<Duration>) -> Timers {
    // systemd (Type=notify): ready now; the watchdog is kicked by the loop itself, so a hung
    // loop gets the keeper restarted (and the restart undoes what the journal holds).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let watchdog = sources::systemd_watchdog();
    let share = pressure::memory_share(&enforcer.policy);
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Timers {
        deadline: cfg.duration.map(|d| tokio::time::Instant::now() + d),
        memory_trigger: share.and_then(|pct| pressure::host_trigger(pct, &cfg.memory_psi)),
        workload_triggers: share.map(WorkloadTriggers::new),
        watchdog,
        kick: tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600))),
        feed: tokio::time::interval(feed.unwrap_or(Duration::from_secs(3600))),
        ticker,
    }
}

/// Keeps the keeper itself off the trading cores, and lets it run first on the housekeeping
/// cores: those are where the intruders it evicts pile up, and an enforcer that waits behind
/// eight CPU hogs evicts late. SCHED_FIFO priority 1 (the lowest real-time priority; the
/// kernel's RT throttling still bounds it), else nice -20.
fn pin_self(housekeeping: &CpuList) {
    for tid in crate::act::process::threads(std::process::id()) {
        if !housekeeping.is_empty()
            && let Ok(t) = Proc::open_thread(tid, None)
        {
            let _ = t.set_affinity(housekeeping);
        }
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler/setpriority on our own thread ids with a valid param.
        let rt = unsafe { libc::sched_setscheduler(tid as i32, libc::SCHED_FIFO, &param) } == 0;
        if !rt {
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -20) };
            tracing::info!("SCHED_FIFO refused; running at nice -20");
        }
    }
}

/// The policy for this host (start and reload): read and checked, then `host.smt:
/// reserve_siblings` applied to this host's SMT siblings (said in the log).
pub(super) fn load_policy(
    source: &crate::policy::PolicySource,
) -> Result<crate::policy::Policy, String> {
    let mut p = source.load()?;
    let boot = crate::device::topology::BootFacts::read(&p.host.trading_cores);
    let added = crate::policy::source::reserve_siblings(&mut p.host, &boot.siblings)?;
    if !added.is_empty() {
        tracing::info!(siblings = %added, trading_cores = %p.host.trading_cores, housekeeping_cores = %p.host.housekeeping_cores, "host.smt: reserve_siblings: the trading cores' SMT siblings are kept free of intruders too");
    }
    Ok(p)
}

//! `keeper run`: the enforcement daemon. Restores what an earlier run left (journal), attaches
//! the scheduler sensor on the trading cores, and on every tick, intruder event or control
//! request runs observe → decide → act. On SIGINT/SIGTERM or `--for` it undoes its changes.

pub mod control;
mod keeper;
mod sources;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use keeper::{Keeper, attach_gpu, attach_proxmox};

use crate::interface::{self, InteractionState, Reply, Request};
pub use crate::policy::PolicySource;
use crate::report::{
    RunRecord, metrics,
    record::{self, Recorder, Sensed},
    view,
};
use crate::{
    act::{Actuators, execute::Done, journal::Journal, process::Proc},
    decide::Intruder,
    device::{cgroupfs::CgroupFs, procfs},
    sense::{
        latency::LatencyWindow,
        pressure,
        sched::{CpuReadout, LostEvents, SchedConfig, SchedSensor, comm_str},
        tracefs::Tracefs,
    },
};
use control::Call;
use keeper_common::event;

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
    Control(#[from] control::ControlError),
    #[error("--proxmox: {0}")]
    Proxmox(#[from] crate::device::proxmox::ProxmoxError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything `keeper run` was told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub source: PolicySource,
    pub scope: Option<String>,
    pub dry_run: bool,
    pub duration: Option<Duration>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub allowed_uids: Vec<u32>,
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

/// Notes, for each intruder evicted in this tick, how long after its first run it was done.
fn record_evictions(recorder: &mut Recorder, done: &[Done], first_run: &mut HashMap<u32, u64>) {
    let now = crate::sense::sched::monotonic_ns();
    for pid in done.iter().filter_map(Done::evicted) {
        if let Some(first) = first_run.remove(&pid) {
            recorder.eviction(now.saturating_sub(first) as f64 / 1000.0);
        }
    }
}

pub async fn run(cfg: DaemonConfig) -> Result<RunRecord, DaemonError> {
    let started = jiff::Timestamp::now();
    // First: a SIGTERM during start-up waits for the loop, which then undoes what was done,
    // instead of killing the keeper half-way (the default action).
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let cg = CgroupFs::discover()?;
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
    let restored_at_start = act.restore_all()?;
    for r in &restored_at_start {
        tracing::warn!(restored = %r, "undid a change left by an earlier keeper run");
    }
    if !act.undo_pending().is_empty() {
        tracing::warn!(
            pending = act.undo_pending().len(),
            "some changes left by an earlier keeper run could not be undone yet: kept in the journal, tried again with a backoff (`keeper status` lists them)"
        );
    }
    let policy = cfg.source.load().map_err(DaemonError::Policy)?;
    attach_gpu(
        &mut act,
        cfg.nvml_lib.as_deref(),
        cfg.cuda_checkpoint.as_deref(),
    );
    attach_proxmox(&mut act, cfg.proxmox.as_deref(), &policy)?;
    pin_self(&policy.host.housekeeping_cores);
    let mut keeper = Keeper::new(cfg.source.clone(), policy, act);
    keeper.observer.memory_psi = cfg.memory_psi.clone();
    keeper.act.qmp_dir = cfg.qmp_dir.clone();
    keeper.set_balloon_floor();
    // VM, GPU and Proxmox calls run on a thread of their own: nothing on the loop waits on them.
    let (slow_tx, mut slow_done) = tokio::sync::mpsc::unbounded_channel();
    if !cfg.dry_run {
        keeper.start_slow_hands(slow_tx)?;
    }

    let protected = protected_ids(&keeper, &cg);
    let tracefs = Tracefs::find_or_mount()?;
    let mut sensor = SchedSensor::attach(
        &tracefs,
        &SchedConfig {
            trading_cpus: keeper.policy.host.trading_cores.clone(),
            protected_cgroups: protected,
            intruder_event_interval: Duration::from_millis(20),
        },
    )?;
    // SAFETY: IntruderEvents owns the ring buffer's fd and keeps it open while the AsyncFd lives.
    let mut events =
        unsafe { AsyncFd::register_with_interest(sensor.take_events()?, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
    let (memory_sensor, mut oom_events) = sources::attach(&tracefs);
    crate::sense::ebpf::release_load_memory();
    let mut calls = control::serve(&cfg.socket, cfg.allowed_uids.clone())?;
    tracing::info!(
        mode = if cfg.dry_run { "dry-run" } else { "enforcing" },
        policy = %keeper.source.name(),
        trading_cores = %keeper.policy.host.trading_cores,
        scope = ?cfg.scope,
        socket = %cfg.socket.display(),
        "keeper running"
    );

    // systemd (Type=notify): ready now; the watchdog is kicked by the loop itself, so a hung
    // loop gets the keeper restarted (and the restart undoes what the journal holds).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let watchdog = sources::systemd_watchdog();
    let mut kick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let share = sources::memory_share(&keeper.policy);
    let mut memory_trigger = share.and_then(|pct| sources::memory_trigger(pct, &cfg.memory_psi));
    let mut workload_triggers = share.map(pressure::WorkloadTriggers::new);
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latency = LatencyWindow::default();
    let mut index = cg.id_index();
    let mut last_prune = Instant::now();
    let mut first_run: HashMap<u32, u64> = HashMap::new();
    let mut lost_events = LostEvents::default();
    let mut recorder = Recorder::new(started);
    let metrics = metrics::Metrics::default();
    let _metrics_server = match cfg.metrics {
        Some(addr) => Some(
            metrics::serve(addr, metrics.clone())
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("--metrics {addr}: {e}")))?,
        ),
        None => None,
    };
    loop {
        let mut intruders = Vec::new();
        let mut pending: Vec<keeper_common::IntruderEvent> = Vec::new();
        let mut check_lost = false;
        let mut ticked = false;
        // Woken by intruder events only: decided on the last tick's readings (the fast path).
        let mut fast = false;
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            guard = events.readable_mut() => {
                let mut guard = guard?;
                pending = guard.get_inner_mut().drain();
                guard.clear_ready();
                // A burst may have overflowed the ring (or the programs' rate limit).
                check_lost = pending.len() >= 64;
                fast = true;
            }
            Some(d) = slow_done.recv() => {
                let done = keeper.slow_done(d);
                recorder.actions(&done);
                if let Some(ms) = keeper.preempted(&done) {
                    recorder.preemption(ms);
                }
                count_actions(&metrics, cfg.metrics.is_some(), &done);
                continue;
            }
            Some(call) = calls.recv() => {
                let p99 = latency.p99(sensor.cpu_readouts().ok().as_deref());
                answer(&mut keeper, &mut recorder, &mut sensor, memory_sensor.as_ref(), &cg, call, p99);
                continue;
            }
            guard = sources::ready(&mut oom_events) => {
                if let Ok(mut guard) = guard {
                    record::oom_kills(guard.get_inner_mut(), &cg, &keeper.observer.placements, &mut recorder);
                    guard.clear_ready();
                }
                continue;
            }
            fired = sources::trigger_fired(&mut memory_trigger) => {
                match fired {
                    Ok(pct) => {
                        tracing::debug!(share = pct, "memory pressure trigger fired");
                        keeper.observer.pressure_hint = Some((pct, Instant::now()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "memory pressure trigger failed; reading PSI every tick instead");
                        memory_trigger = None;
                        continue;
                    }
                }
            }
            Some((workload, pct)) = sources::workload_fired(&mut workload_triggers) => {
                tracing::info!(%workload, share = pct, "memory pressure trigger fired on a workload's memory.pressure");
                keeper.observer.workload_hints.insert(workload, (pct, Instant::now()));
            }
            _ = kick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            _ = ticker.tick() => {
                ticked = true;
                check_lost = true;
                match keeper.act.retry_undo() {
                    Ok(done) => done.iter().for_each(|r| tracing::info!(restored = %r, "undid a change that was pending")),
                    Err(e) => tracing::warn!(error = %e, "retrying pending undos failed"),
                }
                if last_prune.elapsed() > Duration::from_secs(5) {
                    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
                    first_run.retain(|pid, _| alive(pid));
                    sensor.prune_runnable(Duration::from_secs(60))?;
                    sensor.set_protected(&protected_ids(&keeper, &cg))?;
                    last_prune = Instant::now();
                }
            }
        }
        if check_lost {
            pending.extend(lost_events.rescan(&sensor));
        }
        for ev in pending {
            tracing::trace!(
                pid = ev.pid,
                comm = %comm_str(&ev.comm),
                cpu = ev.cpu,
                ran_ns = ev.ran_ns,
                age_us = crate::sense::sched::monotonic_ns().saturating_sub(ev.timestamp_ns) / 1000,
                "intruder event"
            );
            // An arrival comes before the kernel side knew the task's cgroup.
            let cgroup = if ev.kind == event::ARRIVAL {
                let Some(path) = procfs::task_cgroup(ev.pid) else {
                    continue;
                };
                path
            } else {
                if !index.contains_key(&ev.cgroup_id) {
                    index = cg.id_index();
                }
                index.get(&ev.cgroup_id).cloned().unwrap_or_default()
            };
            if procfs::task_stat(ev.pid).is_some_and(|s| s.is_kernel_thread()) {
                continue; // a kernel thread: never evicted
            }
            // When the intruder's stay on the trading core began (CLOCK_MONOTONIC): an arrival
            // starts a new stay (a return after an eviction too); a slice dates its own start.
            if ev.kind == event::SLICE {
                first_run
                    .entry(ev.pid)
                    .or_insert(ev.timestamp_ns.saturating_sub(ev.ran_ns));
            } else {
                first_run.insert(ev.pid, ev.timestamp_ns);
            }
            intruders.push(Intruder {
                pid: ev.pid,
                comm: comm_str(&ev.comm),
                cgroup,
                cpu: ev.cpu,
                ran_ns: ev.ran_ns,
                arrived: ev.kind != event::SLICE,
            });
        }
        if fast && intruders.is_empty() {
            continue;
        }
        // One read of the per-CPU maps per pass, for the latency window and the metrics.
        let (readouts, p99, obs) = if fast {
            (None, None, keeper.observe_intruders(intruders))
        } else {
            let readouts = sensor.cpu_readouts().ok();
            let p99 = latency.p99(readouts.as_deref());
            (readouts, p99, keeper.observe(intruders, p99))
        };
        // New cgroups get their trigger within a tick; intruder events do not wait for it.
        if ticked && let Some(w) = &mut workload_triggers {
            let armed = w.sync(&keeper.observer.placements, &cg);
            if !armed.is_empty() {
                tracing::info!(?armed, "memory pressure triggers armed on workloads");
            }
        }
        let done = keeper.tick(&obs);
        recorder.actions(&done);
        count_actions(&metrics, cfg.metrics.is_some(), &done);
        if ticked {
            if let Err(e) = keeper.act.sync_journal() {
                tracing::warn!(error = %e, "could not sync the journal to disk");
            }
            let intruder_ns = readouts
                .as_ref()
                .map(|r| r.iter().map(|c| c.intruder_ns).sum());
            recorder.sample(
                &keeper.state.applied,
                keeper.observer.gpu_power_w(),
                &obs,
                p99,
                intruder_ns,
            );
            if cfg.metrics.is_some() {
                let readouts = readouts.as_deref().unwrap_or_default();
                refresh_metrics(&metrics, &keeper, readouts, &obs, p99);
            }
        }
        record_evictions(&mut recorder, &done, &mut first_run);
        // An evicted task that comes back to a trading core is news at its next switch-in
        // (also one whose eviction found it already off the cores: it may be put back).
        let evicted = done.iter().filter_map(|d| match d.action.kind {
            crate::decide::ActionKind::EvictIntruder { pid, .. }
                if d.outcome == crate::decide::Outcome::Done =>
            {
                Some(pid)
            }
            _ => None,
        });
        for pid in evicted {
            if let Err(e) = sensor.forget_seen(pid) {
                tracing::warn!(pid, error = %e, "could not re-arm the arrival report of an evicted task");
            }
        }
        // An intruder outside the scope: its time there does not count towards an eviction's
        // latency (the engine no longer hands it over while it stays in that cgroup).
        for d in &done {
            if let crate::decide::ActionKind::EvictIntruder { pid, .. } = d.action.kind
                && d.outcome == crate::decide::Outcome::ObservedOnly
            {
                first_run.remove(&pid);
            }
        }
    }

    tracing::info!("stopping: undoing every change");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let mut sensed = sensed(&sensor, &cg, started);
    sensed.reclaim =
        record::reclaim_records(memory_sensor.as_ref(), &cg, &keeper.observer.placements);
    drop(events);
    drop(sensor);
    keeper.stop_slow_hands();
    sensed.restored_at_exit = keeper.act.restore_all()?;
    sensed.restored_at_start = restored_at_start;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(recorder.build(&keeper.run_facts(), sensed, false))
}

/// Counts the actions done, by kind and success, for the metrics.
fn count_actions(metrics: &metrics::Metrics, serving: bool, done: &[Done]) {
    if serving {
        metrics.update(|m| {
            for d in done {
                let kind = d.action.kind.name().to_string();
                *m.actions.entry((kind, d.ok())).or_default() += 1;
            }
        });
    }
}

/// The scrape's snapshot, as of this tick.
fn refresh_metrics(
    metrics: &metrics::Metrics,
    keeper: &Keeper,
    readouts: &[CpuReadout],
    obs: &crate::decide::Observations,
    p99: Option<u64>,
) {
    let applied = &keeper.state.applied;
    metrics.update(|m| {
        m.cpus = readouts.iter().map(view::cpu_view).collect();
        m.events_sent = readouts.iter().map(|r| r.events_sent).sum();
        m.events_lost = readouts.iter().map(|r| r.events_lost).sum();
        m.evictions = keeper.evictions;
        m.errors = keeper.errors;
        m.workloads = keeper
            .policy
            .workloads
            .iter()
            .map(|w| {
                let frozen = applied.frozen.contains_key(&w.name);
                let throttled = applied.knobs.get(&w.name).is_some_and(|k| !k.is_empty());
                (w.name.clone(), (frozen, throttled))
            })
            .collect();
        m.trading_p99_seconds = p99.map(|ns| ns as f64 / 1e9);
        m.loadavg = obs.loadavg;
        m.cpu_pressure_some = obs.cpu_pressure.some_avg10;
        m.memory_pressure_some = obs.memory_pressure.some_avg10;
        m.memory_pressure_full = obs.memory_pressure.full_avg10;
        m.gpu_temperature_celsius = obs.gpu.as_ref().map(|g| g.temperature_c);
        m.gpu_power_watts = keeper.observer.gpu_power_w();
    });
}

/// Per-CPU views and the intruders table, as the sensor has them now.
fn sensed(sensor: &SchedSensor, cg: &CgroupFs, started: jiff::Timestamp) -> Sensed {
    let cpus: Vec<_> = sensor
        .cpu_readouts()
        .map(|r| r.iter().map(view::cpu_view).collect())
        .unwrap_or_default();
    let span_s = jiff::Timestamp::now()
        .duration_since(started)
        .as_secs_f64()
        .max(0.0);
    let span_ns = span_s * 1e9 * sensor.trading_cpus().len() as f64;
    let intruders = sensor
        .intruders()
        .map(|list| view::intruder_views(list, &cg.id_index(), span_ns).0)
        .unwrap_or_default();
    Sensed {
        cpus,
        intruders,
        ..Sensed::default()
    }
}

fn answer(
    keeper: &mut Keeper,
    recorder: &mut Recorder,
    sensor: &mut SchedSensor,
    memory_sensor: Option<&crate::sense::memory::MemorySensor>,
    cg: &CgroupFs,
    call: Call,
    p99: Option<u64>,
) {
    let reply = match call.request {
        Request::Status => Reply::Status(Box::new(keeper.status())),
        Request::Report => {
            let mut s = sensed(sensor, cg, recorder.started_at());
            s.reclaim = record::reclaim_records(memory_sensor, cg, &keeper.observer.placements);
            let record = recorder.build(&keeper.run_facts(), s, true);
            Reply::Record(Box::new(interface::Record { ok: true, record }))
        }
        Request::Interaction { state } => {
            let started = Instant::now();
            keeper.interact(state == InteractionState::Start);
            let obs = keeper.observe(vec![], p99);
            let done = keeper.tick(&obs);
            recorder.actions(&done);
            if let Some(ms) = keeper.preempted(&done) {
                recorder.preemption(ms);
            }
            Reply::Interaction(interface::Interaction {
                ok: done.iter().all(|d| d.ok()),
                interaction: keeper.interaction,
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                actions: done,
                pending: keeper.pending().into_iter().cloned().collect(),
            })
        }
        Request::Reload => reload(keeper, recorder, sensor, cg, p99),
    };
    let _ = call.reply.send(reply);
}

/// `keeper reload`: the policy read again and acted on at once, or refused (the current one
/// stays).
fn reload(
    keeper: &mut Keeper,
    recorder: &mut Recorder,
    sensor: &mut SchedSensor,
    cg: &CgroupFs,
    p99: Option<u64>,
) -> Reply {
    let p = match keeper.source.load() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "reload refused: keeping the current policy");
            return Reply::refused(format!("policy not reloaded, the current one stays:\n{e}"));
        }
    };
    if p.host.trading_cores != keeper.policy.host.trading_cores
        && let Err(e) = sensor.set_trading_cpus(&p.host.trading_cores)
    {
        return Reply::refused(e.to_string());
    }
    keeper.policy = p;
    keeper.set_balloon_floor();
    let _ = sensor.set_protected(&protected_ids(keeper, cg));
    tracing::info!(policy = %keeper.source.name(), "policy reloaded");
    // Place and act at once (a VM that just started, a policy that changed).
    let obs = keeper.observe(vec![], p99);
    let done = keeper.tick(&obs);
    recorder.actions(&done);
    Reply::Reloaded(interface::Reloaded {
        ok: true,
        policy: keeper.source.name(),
    })
}

/// Cgroup ids the sensor treats as protected: the subtrees of the trading-core owner's cgroups.
fn protected_ids(keeper: &Keeper, cg: &CgroupFs) -> Vec<u64> {
    keeper
        .policy
        .workloads
        .iter()
        .filter(|w| w.owns_trading_cores)
        .flat_map(|w| w.matcher.cgroups())
        .filter_map(|c| cg.subtree_ids(&c).ok())
        .flatten()
        .collect()
}

/// Keeps the keeper itself off the trading cores, and lets it run first on the housekeeping
/// cores: those are where the intruders it evicts pile up, and an enforcer that waits behind
/// eight CPU hogs evicts late. SCHED_FIFO priority 1 (the lowest real-time priority; the
/// kernel's RT throttling still bounds it), else nice -20.
fn pin_self(housekeeping: &crate::cpulist::CpuList) {
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

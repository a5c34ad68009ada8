//! `keeper run`: the enforcement daemon. Restores what an earlier run left (journal), attaches
//! the scheduler sensor on the trading cores, and on every tick, intruder event or control
//! request runs observe → decide → act. On SIGINT/SIGTERM or `--for` it undoes its changes.

pub mod control;
pub mod execute;
pub mod host;
mod keeper;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

pub use keeper::{Done, Keeper, PolicySource, attach_gpu};

use crate::{
    act::{Actuators, journal::Journal, process::Proc},
    cgroupfs::CgroupFs,
    decide::Intruder,
    sense::{
        latency::Histogram,
        procfs,
        sched::{SchedConfig, SchedSensor, comm_str},
        tracefs::Tracefs,
    },
};
use control::{Call, InteractionState, Request};

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
    Cgroup(#[from] crate::cgroupfs::CgroupError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
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
    /// NVML library (`None`: `$KEEPER_NVML_LIB`, else the system's libnvidia-ml.so.1).
    pub nvml_lib: Option<PathBuf>,
    /// cuda-checkpoint (`None`: looked up on PATH).
    pub cuda_checkpoint: Option<PathBuf>,
}

/// What a run leaves behind for `--report`.
#[derive(Debug, serde::Serialize)]
pub struct RunRecord {
    pub started: String,
    pub ended: String,
    pub policy: String,
    pub mode: &'static str,
    pub trading_cores: String,
    pub restored_at_start: Vec<String>,
    pub restored_at_exit: Vec<String>,
    pub cpus: Vec<crate::cli::watch::CpuView>,
    pub evictions: u64,
    /// From an intruder's first run on a trading core to its eviction done, in µs.
    pub eviction_latency: EvictionLatency,
    pub errors: u64,
    pub actions: Vec<Done>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct EvictionLatency {
    pub count: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub samples_us: Vec<f64>,
}

impl EvictionLatency {
    fn of(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        let q = |q: f64| {
            (!samples.is_empty()).then(|| {
                samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
            })
        };
        Self {
            count: samples.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: samples.last().copied(),
            samples_us: samples.to_vec(),
        }
    }
}

/// Notes, for each intruder evicted in this tick, how long after its first run it was done.
fn record_evictions(keeper: &mut Keeper, done: &[Done], first_run: &mut HashMap<u32, u64>) {
    let now = crate::sense::sched::monotonic_ns();
    for d in done {
        if let crate::decide::ActionKind::EvictIntruder { pid, .. } = d.action.kind
            && d.ok
            && d.outcome.iter().any(|o| o.starts_with("done"))
            && let Some(first) = first_run.remove(&pid)
        {
            keeper
                .eviction_latencies_us
                .push(now.saturating_sub(first) as f64 / 1000.0);
        }
    }
}

pub async fn run(cfg: DaemonConfig) -> Result<RunRecord, DaemonError> {
    let started = jiff::Timestamp::now();
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
    let policy = cfg.source.load().map_err(DaemonError::Policy)?;
    attach_gpu(
        &mut act,
        cfg.nvml_lib.as_deref(),
        cfg.cuda_checkpoint.as_deref(),
    );
    pin_self(&policy.host.housekeeping_cores);
    let mut keeper = Keeper::new(cfg.source.clone(), policy, act);

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
    let mut calls = control::serve(&cfg.socket, cfg.allowed_uids.clone())?;
    tracing::info!(
        mode = if cfg.dry_run { "dry-run" } else { "enforcing" },
        policy = %keeper.source.name(),
        trading_cores = %keeper.policy.host.trading_cores,
        scope = ?cfg.scope,
        socket = %cfg.socket.display(),
        "keeper running"
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latency = LatencyWindow::default();
    let mut index = cg.id_index();
    let mut last_prune = Instant::now();
    let mut first_run: HashMap<u32, u64> = HashMap::new();
    // Intruders outside --scope, by pid → the cgroup id they were seen in: observed once and
    // not handed to the engine again until they move to another cgroup.
    let mut observed_only: HashMap<u32, u64> = HashMap::new();
    loop {
        let mut intruders = Vec::new();
        let mut cgroup_of: HashMap<u32, u64> = HashMap::new();
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            guard = events.readable_mut() => {
                let mut guard = guard?;
                for ev in guard.get_inner_mut().drain() {
                    tracing::trace!(
                        pid = ev.pid,
                        comm = %comm_str(&ev.comm),
                        cpu = ev.cpu,
                        ran_ns = ev.ran_ns,
                        age_us = crate::sense::sched::monotonic_ns().saturating_sub(ev.timestamp_ns) / 1000,
                        "intruder event"
                    );
                    if observed_only.get(&ev.pid) == Some(&ev.cgroup_id)
                        || procfs::task_stat(ev.pid).is_some_and(|s| s.is_kernel_thread())
                    {
                        continue; // outside the scope, or a kernel thread: never evicted
                    }
                    cgroup_of.insert(ev.pid, ev.cgroup_id);
                    if !index.contains_key(&ev.cgroup_id) {
                        index = cg.id_index();
                    }
                    // When the intruder's first slice began on the trading core (CLOCK_MONOTONIC).
                    first_run.entry(ev.pid).or_insert(ev.timestamp_ns.saturating_sub(ev.ran_ns));
                    intruders.push(Intruder {
                        pid: ev.pid,
                        comm: comm_str(&ev.comm),
                        cgroup: index.get(&ev.cgroup_id).cloned().unwrap_or_default(),
                        cpu: ev.cpu,
                        ran_ns: ev.ran_ns,
                    });
                }
                guard.clear_ready();
                if intruders.is_empty() {
                    continue;
                }
            }
            Some(call) = calls.recv() => {
                let p99 = latency.p99(&sensor);
                answer(&mut keeper, &mut sensor, &cg, call, p99);
                continue;
            }
            _ = ticker.tick() => {
                if last_prune.elapsed() > Duration::from_secs(5) {
                    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
                    first_run.retain(|pid, _| alive(pid));
                    observed_only.retain(|pid, _| alive(pid));
                    sensor.prune_runnable(Duration::from_secs(60))?;
                    sensor.set_protected(&protected_ids(&keeper, &cg))?;
                    last_prune = Instant::now();
                }
            }
        }
        let obs = keeper.observe(intruders, latency.p99(&sensor));
        let done = keeper.tick(&obs);
        record_evictions(&mut keeper, &done, &mut first_run);
        for d in &done {
            if let crate::decide::ActionKind::EvictIntruder { pid, .. } = d.action.kind
                && d.outcome.iter().any(|o| o.starts_with("observed only"))
                && let Some(id) = cgroup_of.get(&pid)
            {
                observed_only.insert(pid, *id);
                keeper.state.evicted.remove(&pid);
                // Its time outside the scope does not count towards an eviction's latency.
                first_run.remove(&pid);
            }
        }
    }

    tracing::info!("stopping: undoing every change");
    let cpus = sensor
        .cpu_readouts()
        .map(|r| r.iter().map(crate::cli::watch::cpu_view).collect())
        .unwrap_or_default();
    drop(events);
    drop(sensor);
    let restored_at_exit = keeper.act.restore_all()?;
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(RunRecord {
        started: started.to_string(),
        ended: jiff::Timestamp::now().to_string(),
        policy: keeper.source.name(),
        mode: if cfg.dry_run { "dry-run" } else { "enforcing" },
        trading_cores: keeper.policy.host.trading_cores.to_string(),
        restored_at_start,
        restored_at_exit,
        cpus,
        evictions: keeper.evictions,
        eviction_latency: EvictionLatency::of(&mut keeper.eviction_latencies_us),
        errors: keeper.errors,
        actions: keeper.timeline,
    })
}

fn answer(
    keeper: &mut Keeper,
    sensor: &mut SchedSensor,
    cg: &CgroupFs,
    call: Call,
    p99: Option<u64>,
) {
    let reply = match call.request {
        Request::Status => keeper.status(),
        Request::Interaction { state } => {
            let started = Instant::now();
            keeper.interaction = state == InteractionState::Start;
            let obs = keeper.observe(vec![], p99);
            let done = keeper.tick(&obs);
            serde_json::json!({
                "ok": done.iter().all(|d| d.ok),
                "interaction": keeper.interaction,
                "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
                "actions": done,
            })
        }
        Request::Reload => match keeper.source.load() {
            Ok(p) => {
                if p.host.trading_cores != keeper.policy.host.trading_cores
                    && let Err(e) = sensor.set_trading_cpus(&p.host.trading_cores)
                {
                    let _ = call
                        .reply
                        .send(serde_json::json!({"ok": false, "error": e.to_string()}));
                    return;
                }
                keeper.policy = p;
                let _ = sensor.set_protected(&protected_ids(keeper, cg));
                tracing::info!(policy = %keeper.source.name(), "policy reloaded");
                serde_json::json!({"ok": true, "policy": keeper.source.name()})
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: keeping the current policy");
                serde_json::json!({"ok": false, "error": format!("policy not reloaded, the current one stays:\n{e}")})
            }
        },
    };
    let _ = call.reply.send(reply);
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
            && let Ok(t) = Proc::open(tid, None)
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

/// p99 wakeup latency of protected tasks on the trading cores over the last ~5 s.
#[derive(Default)]
struct LatencyWindow {
    snapshots: VecDeque<(Instant, HashMap<u32, Histogram>)>,
}

impl LatencyWindow {
    fn p99(&mut self, sensor: &SchedSensor) -> Option<u64> {
        let now: HashMap<u32, Histogram> = sensor
            .cpu_readouts()
            .ok()?
            .into_iter()
            .map(|r| (r.cpu, r.protected))
            .collect();
        while self.snapshots.len() > 1 && self.snapshots[1].0.elapsed() > Duration::from_secs(5) {
            self.snapshots.pop_front();
        }
        let mut window = Histogram::default();
        for (cpu, h) in &now {
            let mut d = h.clone();
            if let Some((_, old)) = self.snapshots.front()
                && let Some(o) = old.get(cpu)
            {
                for (a, b) in d.buckets.iter_mut().zip(&o.buckets) {
                    *a = a.saturating_sub(*b);
                }
            }
            window.merge(&d);
        }
        if self
            .snapshots
            .back()
            .is_none_or(|(t, _)| t.elapsed() > Duration::from_millis(500))
        {
            self.snapshots.push_back((Instant::now(), now));
        }
        window.quantile_upper_us(0.99).map(|us| us * 1000)
    }
}

//! The daemon's state between events: the policy, the engine's memory, the actuators, and
//! what was done. One `tick` = observe → decide → act.

use std::{
    collections::{BTreeMap, VecDeque},
    path::Path,
    time::Instant,
};

use crate::{
    act::{
        Actuators,
        execute::Done,
        gpu::find_checkpoint_tool,
        queue::{Carried, Hands, Queue},
        slow::SlowHands,
    },
    decide::{self, Action, EngineState, GpuObs, Intruder, Observations, Step},
    device::{
        gpu::{self as gpu_dev, Gpu, GpuReadout},
        placement::{self, Placement},
        procfs::HostTotals,
    },
    policy::{Policy, PolicySource},
    report::record::RunFacts,
    sense::{self, host},
};

/// Opens the GPU for the daemon and finds cuda-checkpoint; says in one line what it found.
/// No GPU: the GPU rules stay inactive and everything else keeps working.
pub fn attach_gpu(act: &mut Actuators, lib: Option<&Path>, tool: Option<&Path>) {
    let lib = gpu_dev::library(lib);
    let gpu = match Gpu::open(&lib) {
        Ok(g) => g,
        Err(e) if e.is_no_gpu() => {
            tracing::info!("{e}; GPU rules inactive, everything else keeps working");
            return;
        }
        Err(e) => {
            tracing::warn!("{e}; GPU rules inactive, everything else keeps working");
            return;
        }
    };
    let found = find_checkpoint_tool(tool);
    if let (Some(t), None) = (tool, &found) {
        tracing::warn!(path = %t.display(), "--cuda-checkpoint is not an executable file");
    }
    let handoff = match &found {
        Some(t) => format!("handoff releases VRAM with {}", t.display()),
        None => {
            "cuda-checkpoint not found: a handoff freezes the holder, its VRAM stays held".into()
        }
    };
    tracing::info!(
        gpu = %gpu.name,
        uuid = %gpu.uuid,
        driver = %gpu.driver,
        library = %gpu.lib.display(),
        "GPU found: GPU rules active; {handoff}"
    );
    act.set_gpu(Some(gpu), found);
}

/// A trigger fires when stalls *exceed* its share: counted as just above it (PSI's own
/// resolution, 0.01 %), so that a rule whose threshold is that share acts.
fn above(pct: f64) -> f64 {
    pct + 0.01
}

/// A trigger's share stands in for avg10 (which lags a spike by seconds) for 2 s after it
/// fired; a stall that goes on fires it again each window.
fn fresh(at: Instant) -> bool {
    at.elapsed() < std::time::Duration::from_secs(2)
}

/// Opens the Proxmox API (`--proxmox`) for the memory ladder's last step: a bad file is an
/// error; a policy that may stop VMs without one is said once at start.
pub fn attach_proxmox(
    act: &mut Actuators,
    file: Option<&Path>,
    policy: &Policy,
) -> Result<(), crate::device::proxmox::ProxmoxError> {
    let stops = policy
        .rules
        .memory
        .as_ref()
        .is_some_and(|m| m.stop_vm_above.is_some());
    match file {
        Some(file) => {
            let client = crate::device::proxmox::Client::from_file(file)?;
            // Journaled with each stop: absolute, so that a keeper started elsewhere finds it.
            let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            tracing::info!(url = %client.url(), node = client.node(), "Proxmox API set up: VMs can be stopped (hibernated) by `rules.memory.stop_vm_above`");
            act.proxmox = Some(crate::act::vm_stop::ProxmoxHands { file, client });
        }
        None if stops => tracing::warn!(
            "`rules.memory.stop_vm_above` is set but there is no --proxmox: the ladder's last step (stopping a VM) will fail and be reported; the other steps work"
        ),
        None => {}
    }
    Ok(())
}

pub struct Keeper {
    pub source: PolicySource,
    pub policy: Policy,
    pub state: EngineState,
    pub act: Actuators,
    pub totals: HostTotals,
    pub placements: BTreeMap<String, Placement>,
    pub interaction: bool,
    pub last: VecDeque<Done>,
    /// The PSI file the memory rules read (`--memory-psi`; default the host's).
    pub memory_psi: std::path::PathBuf,
    /// A PSI trigger fired: stalls above this share (%) in its last window, and when.
    pub pressure_hint: Option<(f64, Instant)>,
    /// The same, from a trigger on a workload's own `memory.pressure`, by workload.
    pub workload_hints: std::collections::HashMap<String, (f64, Instant)>,
    pub evictions: u64,
    pub errors: u64,
    /// The last GPU readout, processes mapped to workloads (`None`: no GPU or unreadable).
    pub gpu_readout: Option<GpuReadout>,
    gpu_read_at: Option<Instant>,
    gpu_error: Option<String>,
    /// The last full observation (without its intruders): intruder events are decided on it.
    last_obs: Option<Observations>,
    /// Actions waiting behind a slow one.
    queue: Queue,
    /// When the interaction whose preemption is not done yet started.
    preempting: Option<Instant>,
    /// The thread that carries slow actions out (`None`: everything runs on the caller's).
    slow: Option<SlowHands>,
}

/// How long a GPU readout is reused.
pub const GPU_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl Keeper {
    pub fn new(source: PolicySource, policy: Policy, act: Actuators) -> Self {
        Self {
            source,
            policy,
            state: EngineState::default(),
            act,
            totals: HostTotals::read(),
            placements: BTreeMap::new(),
            interaction: false,
            last: VecDeque::new(),
            memory_psi: "/proc/pressure/memory".into(),
            pressure_hint: None,
            workload_hints: Default::default(),
            evictions: 0,
            errors: 0,
            gpu_readout: None,
            gpu_read_at: None,
            gpu_error: None,
            last_obs: None,
            queue: Queue::default(),
            preempting: None,
            slow: None,
        }
    }

    /// The eviction path: the last full observation with these intruders. Reading the host
    /// (placements, PSI, the GPU) takes milliseconds, and an intruder must not wait for it;
    /// the next tick reads it again.
    pub fn observe_intruders(&mut self, intruders: Vec<Intruder>) -> Observations {
        match &self.last_obs {
            Some(last) => Observations {
                intruders,
                ..last.clone()
            },
            None => self.observe(intruders, None),
        }
    }

    /// Gathers the observations of this instant (intruders and latency come from the sensor).
    pub fn observe(
        &mut self,
        intruders: Vec<Intruder>,
        trading_p99_ns: Option<u64>,
    ) -> Observations {
        let obs = self.read_host(intruders, trading_p99_ns);
        self.last_obs = Some(Observations {
            intruders: vec![],
            ..obs.clone()
        });
        obs
    }

    fn read_host(&mut self, intruders: Vec<Intruder>, trading_p99_ns: Option<u64>) -> Observations {
        let cg = self.act.cgroups().clone();
        self.placements = placement::place_workloads(&self.policy, &cg);
        Observations {
            loadavg: host::loadavg(),
            cpu_pressure: host::read_psi("/proc/pressure/cpu".as_ref()),
            memory_pressure: {
                let mut psi = host::read_psi(&self.memory_psi);
                // avg10 lags a spike by seconds; a trigger that just fired says the stall share
                // of its last window was above its threshold.
                if let Some((pct, at)) = self.pressure_hint
                    && fresh(at)
                {
                    psi.some_avg10 = psi.some_avg10.max(above(pct));
                }
                psi
            },
            gpu: self.observe_gpu(),
            interaction: self.interaction,
            workloads: self
                .placements
                .iter()
                .map(|(n, p)| {
                    let mut o = host::observe_workload(p, &cg);
                    if let Some((pct, _)) = self.workload_hints.get(n).filter(|h| fresh(h.1)) {
                        o.memory_pressure.some_avg10 =
                            o.memory_pressure.some_avg10.max(above(*pct));
                    }
                    (n.clone(), o)
                })
                .collect(),
            intruders,
            trading_p99_wakeup_ns: trading_p99_ns,
        }
    }

    /// The GPU's power draw at the last readout, in W.
    pub fn gpu_power_w(&self) -> Option<f64> {
        self.gpu_readout
            .as_ref()
            .and_then(|r| r.power_draw_mw)
            .map(|mw| mw as f64 / 1000.0)
    }

    /// What the run record says of this keeper.
    pub fn run_facts(&self) -> RunFacts<'_> {
        RunFacts {
            policy: &self.policy,
            policy_name: self.source.name(),
            dry_run: self.act.dry_run(),
            scope: self.act.scope().map(str::to_string),
            evictions: self.evictions,
            errors: self.errors,
        }
    }

    /// The policy's balloon floor, for the actuators.
    pub fn set_balloon_floor(&mut self) {
        if let Some(m) = &self.policy.rules.memory {
            self.act.balloon_floor = m.balloon_floor;
        }
    }

    /// Reads the GPU (if any) and maps its processes to workloads. A failing readout is said
    /// once (until it changes) and leaves the GPU rules still. NVML calls take milliseconds on
    /// real GPUs: a readout younger than [`GPU_READ_EVERY`] is reused (intruder events must not
    /// wait for the GPU).
    fn observe_gpu(&mut self) -> Option<GpuObs> {
        let gpu = self.act.gpu()?;
        if self
            .gpu_read_at
            .is_some_and(|at| at.elapsed() < GPU_READ_EVERY)
        {
            let r = self.gpu_readout.as_mut()?;
            r.assign(|pid| placement::owner_of(pid, &self.placements));
            return Some(sense::gpu::observation(r));
        }
        self.gpu_read_at = Some(Instant::now());
        match gpu.readout() {
            Ok(mut r) => {
                r.assign(|pid| placement::owner_of(pid, &self.placements));
                let o = sense::gpu::observation(&r);
                if self.gpu_error.take().is_some() {
                    tracing::info!(gpu = %r.name, "GPU readable again: GPU rules active");
                }
                self.gpu_readout = Some(r);
                Some(o)
            }
            Err(e) => {
                let msg = e.to_string();
                if self.gpu_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}; GPU rules inactive until it reads again");
                }
                self.gpu_error = Some(msg);
                self.gpu_readout = None;
                None
            }
        }
    }

    /// Decides on `obs` and carries the actions out. Returns what was done now (a slow action
    /// comes back later, through [`Keeper::slow_done`]). When a step of a GPU handoff fails,
    /// the engine is asked again at once and its rollback is carried out.
    pub fn tick(&mut self, obs: &Observations) -> Vec<Done> {
        let actions = decide::decide(&self.policy, &mut self.state, obs, jiff::Timestamp::now());
        let carried = self.carry(|q, h, s| q.carry(h, s, actions));
        self.after(carried, obs)
    }

    /// A slow action came back from the slow hands.
    pub fn slow_done(&mut self, done: Done) -> Vec<Done> {
        let carried = self.carry(|q, h, s| q.finished(h, s, done));
        let obs = self.last_obs.clone().unwrap_or_default();
        self.after(carried, &obs)
    }

    /// An interaction starts or ends; a start times the preemption it causes.
    pub fn interact(&mut self, start: bool) {
        self.interaction = start;
        self.preempting = start.then(Instant::now);
    }

    /// The preemption's time (ms) when `done` holds the freeze an interaction caused.
    pub fn preempted(&mut self, done: &[Done]) -> Option<f64> {
        let froze = done
            .iter()
            .any(|d| d.ok() && matches!(d.action.kind, decide::ActionKind::Freeze { .. }));
        if !froze {
            return None;
        }
        let at = self.preempting.take()?;
        Some(at.elapsed().as_secs_f64() * 1000.0)
    }

    /// The actions decided and not carried out yet: the slow one out, then those behind it.
    pub fn pending(&self) -> Vec<&Action> {
        self.queue.pending()
    }

    /// Starts the slow hands: from now on actions that wait on a device run on their own
    /// thread and come back on `done`.
    pub fn start_slow_hands(
        &mut self,
        done: tokio::sync::mpsc::UnboundedSender<Done>,
    ) -> std::io::Result<()> {
        let slow = self.act.split_slow();
        self.slow = Some(SlowHands::start(slow, done)?);
        Ok(())
    }

    /// Stops the slow hands (before the exit's undo), letting the action out finish.
    pub fn stop_slow_hands(&mut self) {
        if let Some(slow) = self.slow.take()
            && let Some(act) = slow.stop(std::time::Duration::from_secs(10))
        {
            self.act.take_back(act);
        }
    }

    fn carry(
        &mut self,
        f: impl FnOnce(&mut Queue, &mut Hands, &mut EngineState) -> Carried,
    ) -> Carried {
        let mut hands = Hands {
            act: &mut self.act,
            slow: self.slow.as_ref(),
            placements: &self.placements,
            totals: self.totals,
        };
        f(&mut self.queue, &mut hands, &mut self.state)
    }

    /// Counts and keeps what was done; a rollback is decided and carried out at once.
    fn after(&mut self, mut carried: Carried, obs: &Observations) -> Vec<Done> {
        if carried.rollback {
            let again = decide::decide(&self.policy, &mut self.state, obs, jiff::Timestamp::now());
            tracing::warn!(
                steps = again.len(),
                "GPU handoff step failed: rolling back to the holder running"
            );
            let more = self.carry(|q, h, s| q.carry(h, s, again));
            carried.done.extend(more.done);
        }
        for d in &carried.done {
            self.count(d);
            if self.last.len() == 50 {
                self.last.pop_front();
            }
            self.last.push_back(d.clone());
        }
        carried.done
    }

    /// Counts and logs one action carried out.
    fn count(&mut self, d: &Done) {
        let (action, outcome, ms) = (&d.action, d.lines(), d.elapsed_ms);
        if d.evicted().is_some() {
            self.evictions += 1;
        }
        let quiet = d.steps.iter().all(|s| {
            matches!(
                s,
                Step::Unchanged { .. } | Step::ObservedOnly { .. } | Step::Skipped { .. }
            )
        });
        if !d.ok() {
            self.errors += 1;
            tracing::warn!(rule = %action.rule, reason = %action.reason, ?outcome, elapsed_ms = ms, "{} failed", action.kind);
        } else if quiet {
            tracing::debug!(rule = %action.rule, reason = %action.reason, ?outcome, "{}", action.kind);
        } else {
            tracing::info!(rule = %action.rule, reason = %action.reason, ?outcome, elapsed_ms = ms, "{}", action.kind);
        }
    }

    /// The answer to `keeper status`.
    pub fn status(&self) -> serde_json::Value {
        let a = &self.state.applied;
        let workloads: Vec<_> = self
            .policy
            .workloads
            .iter()
            .map(|w| {
                let p = self.placements.get(&w.name);
                serde_json::json!({
                    "name": w.name,
                    "rank": w.rank,
                    "present": p.is_some(),
                    "cgroups": p.map(|p| p.cgroups.clone()).unwrap_or_default(),
                    "pids": p.map(|p| p.pids.clone()).unwrap_or_default(),
                    "frozen": a.frozen.contains_key(&w.name),
                    "throttled": a.knobs.get(&w.name).is_some_and(|k| !k.is_empty()),
                })
            })
            .collect();
        serde_json::json!({
            "ok": true,
            "mode": if self.act.dry_run() { "dry-run" } else { "enforcing" },
            "policy": self.source.name(),
            "trading_cores": self.policy.host.trading_cores.to_string(),
            "housekeeping_cores": self.policy.host.housekeeping_cores.to_string(),
            "trading_cores_owner": a.trading,
            "interaction": self.interaction,
            "workloads": workloads,
            "frozen": a.frozen.keys().collect::<Vec<_>>(),
            "throttled": a.knobs.iter().filter(|(_, k)| !k.is_empty()).map(|(w, _)| w).collect::<Vec<_>>(),
            "gpu": self.gpu_readout,
            "gpu_checkpointed": a.gpu_checkpointed.keys().collect::<Vec<_>>(),
            "handoff": self.state.handoff,
            "evictions": self.evictions,
            "errors": self.errors,
            "undo_pending": self.act.undo_pending(),
            "pending": self.pending(),
            "last_actions": self.last.iter().rev().take(20).collect::<Vec<_>>(),
        })
    }
}

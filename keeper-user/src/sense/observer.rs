//! One tick's observations: where each workload is, the host's and each workload's PSI (a
//! trigger that just fired counts), the GPU (read on a thread of its own, a readout reused
//! for [`GPU_READ_EVERY`]), the
//! interaction flag, the intruders and the trading cores' latency. The last full observation is
//! kept: intruder events are decided on it, nothing is read before an eviction.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    gpu_reader::{GPU_WAIT, GpuReader, Read},
    host,
};
use crate::{
    decide::{GpuObs, Intruder, Observations},
    device::{
        cgroupfs::CgroupFs,
        gpu::{Gpu, GpuReadout},
        placement::{self, Placement},
    },
    policy::Policy,
};

/// How long a GPU readout is reused.
pub const GPU_READ_EVERY: Duration = Duration::from_millis(200);

/// The observer's memory between ticks.
pub struct Observer {
    /// The PSI file the memory rules read (`--memory-psi`; default the host's).
    pub memory_psi: PathBuf,
    /// A PSI trigger fired: stalls above this share (%) in its last window, and when.
    pub pressure_hint: Option<(f64, Instant)>,
    /// The same, from a trigger on a workload's own `memory.pressure`, by workload.
    pub workload_hints: HashMap<String, (f64, Instant)>,
    /// Where each workload was found at the last observation.
    pub placements: BTreeMap<String, Placement>,
    /// The last GPU readout, processes mapped to workloads (`None`: no GPU or unreadable).
    pub gpu_readout: Option<GpuReadout>,
    gpu_read_at: Option<Instant>,
    gpu_error: Option<String>,
    /// The error is that NVML has not answered (said once however long it lasts).
    gpu_hung: bool,
    /// The thread that reads the GPU (started at the first observation with one).
    gpu_reader: Option<GpuReader>,
    /// The last full observation, without its intruders.
    last: Option<Observations>,
}

/// What an observation reads besides the host.
pub struct Reading<'a> {
    pub policy: &'a Policy,
    pub cg: &'a CgroupFs,
    pub gpu: Option<&'a Arc<Gpu>>,
    pub interaction: bool,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            memory_psi: "/proc/pressure/memory".into(),
            pressure_hint: None,
            workload_hints: HashMap::new(),
            placements: BTreeMap::new(),
            gpu_readout: None,
            gpu_read_at: None,
            gpu_error: None,
            gpu_hung: false,
            gpu_reader: None,
            last: None,
        }
    }
}

/// A trigger fires when stalls *exceed* its share: counted as just above it (PSI's own
/// resolution, 0.01 %), so that a rule whose threshold is that share acts.
fn above(pct: f64) -> f64 {
    pct + 0.01
}

/// A trigger's share stands in for avg10 (which lags a spike by seconds) for 2 s after it
/// fired; a stall that goes on fires it again each window.
fn fresh(at: Instant) -> bool {
    at.elapsed() < Duration::from_secs(2)
}

impl Observer {
    /// The last full observation, if any.
    pub fn last(&self) -> Option<&Observations> {
        self.last.as_ref()
    }

    /// The eviction path: the last full observation with these intruders. Reading the host
    /// (placements, PSI, the GPU) takes milliseconds, and an intruder must not wait for it;
    /// the next tick reads it again.
    pub fn with_intruders(&mut self, r: &Reading, intruders: Vec<Intruder>) -> Observations {
        match &self.last {
            Some(last) => Observations {
                intruders,
                ..last.clone()
            },
            None => self.observe(r, intruders, None),
        }
    }

    /// Gathers the observations of this instant (intruders and latency come from the sensor).
    pub fn observe(
        &mut self,
        r: &Reading,
        intruders: Vec<Intruder>,
        trading_p99_ns: Option<u64>,
    ) -> Observations {
        self.placements = placement::place_workloads(r.policy, r.cg);
        let obs = Observations {
            loadavg: host::loadavg(),
            cpu_pressure: host::read_psi("/proc/pressure/cpu".as_ref()),
            memory_pressure: self.memory_pressure(),
            gpu: self.observe_gpu(r.gpu),
            interaction: r.interaction,
            workloads: self
                .placements
                .iter()
                .map(|(n, p)| {
                    let mut o = host::observe_workload(p, r.cg);
                    if r.policy.workload(n).is_some_and(|w| w.owns_trading_cores) {
                        o.vcpus = crate::device::vcpus::of_placement(p, r.cg);
                    }
                    if let Some((pct, _)) = self.workload_hints.get(n).filter(|h| fresh(h.1)) {
                        o.memory_pressure.some_avg10 =
                            o.memory_pressure.some_avg10.max(above(*pct));
                    }
                    (n.clone(), o)
                })
                .collect(),
            intruders,
            trading_p99_wakeup_ns: trading_p99_ns,
            irqs_on_trading_cores: irqs_on(r.policy),
        };
        self.last = Some(Observations {
            intruders: vec![],
            irqs_on_trading_cores: vec![],
            ..obs.clone()
        });
        obs
    }

    /// The host's memory PSI; avg10 lags a spike by seconds, so a trigger that just fired
    /// says the stall share of its last window was above its threshold.
    fn memory_pressure(&self) -> crate::decide::Psi {
        let mut psi = host::read_psi(&self.memory_psi);
        if let Some((pct, at)) = self.pressure_hint
            && fresh(at)
        {
            psi.some_avg10 = psi.some_avg10.max(above(pct));
        }
        psi
    }

    /// The GPU's power draw at the last readout, in W.
    pub fn gpu_power_w(&self) -> Option<f64> {
        self.gpu_readout
            .as_ref()
            .and_then(|r| r.power_draw_mw)
            .map(|mw| mw as f64 / 1000.0)
    }

    /// Reads the GPU (if any) and maps its processes to workloads, off the loop (see
    /// [`GpuReader`]). A failing readout is said once (until it changes) and leaves the GPU
    /// rules still. A readout younger than [`GPU_READ_EVERY`] is reused, and so is the last
    /// one while the next is awaited.
    fn observe_gpu(&mut self, gpu: Option<&Arc<Gpu>>) -> Option<GpuObs> {
        let gpu = gpu?;
        let fresh = self
            .gpu_read_at
            .is_some_and(|at| at.elapsed() < GPU_READ_EVERY);
        if !self.gpu_reader.as_ref().is_some_and(|r| r.reads(gpu)) {
            self.gpu_reader = GpuReader::start(gpu.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no thread to read the GPU"))
                .ok();
        }
        let read = match &mut self.gpu_reader {
            _ if fresh => Read::Pending,
            Some(reader) => reader.read(GPU_WAIT),
            None => Read::Hung(Duration::ZERO),
        };
        match read {
            Read::Pending => {
                let r = self.gpu_readout.as_mut()?;
                r.assign(|pid| placement::owner_of(pid, &self.placements));
                Some(super::gpu::observation(r))
            }
            Read::Fresh(Ok(mut r)) => {
                self.gpu_read_at = Some(Instant::now());
                r.assign(|pid| placement::owner_of(pid, &self.placements));
                let o = super::gpu::observation(&r);
                self.gpu_hung = false;
                if self.gpu_error.take().is_some() {
                    tracing::info!(gpu = %r.name, "GPU readable again: GPU rules active");
                }
                self.gpu_readout = Some(r);
                Some(o)
            }
            Read::Fresh(Err(e)) => {
                self.gpu_read_at = Some(Instant::now());
                self.gpu_unreadable(e.to_string(), false)
            }
            Read::Hung(for_) => self.gpu_unreadable(
                format!(
                    "the GPU ({}) has not answered a readout for {:.1} s (NVML hangs)",
                    gpu.name,
                    for_.as_secs_f64()
                ),
                true,
            ),
        }
    }

    /// No readout: said once per error (a hang once, however long it lasts).
    fn gpu_unreadable(&mut self, msg: String, hung: bool) -> Option<GpuObs> {
        let said = match hung {
            true => self.gpu_hung,
            false => self.gpu_error.as_deref() == Some(msg.as_str()),
        };
        if !said {
            tracing::warn!("{msg}; GPU rules inactive until it reads again");
        }
        self.gpu_hung = hung;
        self.gpu_error = Some(msg);
        self.gpu_readout = None;
        None
    }
}

/// With `host.irq_guard`: the IRQs allowed on a trading core now.
fn irqs_on(policy: &crate::policy::Policy) -> Vec<crate::decide::IrqObs> {
    if !policy.host.irq_guard {
        return vec![];
    }
    let trading = &policy.host.trading_cores;
    crate::device::irq::list()
        .into_iter()
        .filter(|i| !i.affinity.intersection(trading).is_empty())
        .map(|i| crate::decide::IrqObs {
            irq: i.number,
            name: i.name,
        })
        .collect()
}

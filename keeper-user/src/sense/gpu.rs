//! The GPU as the engine sees it: a readout of [`crate::device::gpu`] turned into [`GpuObs`].

use crate::{decide::GpuObs, device::gpu::GpuReadout};

/// The engine's view: temperature, utilization, and workloads → distinct pids on the GPU.
pub fn observation(r: &GpuReadout) -> GpuObs {
    GpuObs {
        temperature_c: r.temperature_c as f64,
        utilization_pct: r.utilization_pct as f64,
        users: r
            .users()
            .into_iter()
            .map(|(w, s)| (w, s.len() as u32))
            .collect(),
    }
}

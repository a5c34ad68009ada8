//! `keeper gpu`: the live GPU readout through NVML (model, temperature, power draw and limits,
//! utilization, clock offset, the processes on the GPU and their workloads). Exit 1 with one
//! line when there is no GPU (no library, no driver, no device, a driver too old).

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use super::Format;
use crate::{
    device::{
        cgroupfs::CgroupFs,
        gpu::{Gpu, GpuReadout, library, watts},
        placement,
    },
    policy::PolicySource,
};

#[derive(Debug, clap::Args)]
pub struct GpuArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// NVML library to load (default: $KEEPER_NVML_LIB, else the system's libnvidia-ml.so.1).
    #[arg(long)]
    pub nvml_lib: Option<PathBuf>,
    /// Policy whose workloads name the GPU's processes (default: the embedded
    /// policies/hive.yaml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

pub fn run(args: &GpuArgs) -> anyhow::Result<ExitCode> {
    let lib = library(args.nvml_lib.as_deref());
    let gpu = match Gpu::open(&lib) {
        Ok(g) => g,
        Err(e) if e.is_no_gpu() => {
            match args.format {
                Format::Text => println!("{e}"),
                Format::Json => {
                    println!(
                        "{}",
                        serde_json::json!({"gpu": null, "no_gpu": e.to_string()})
                    )
                }
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let mut r = gpu.readout()?;
    let source = PolicySource {
        file: args.policy.clone(),
        trading_cores: None,
        protect: vec![],
    };
    match (source.load(), CgroupFs::discover()) {
        (Ok(policy), Ok(cg)) => {
            let placements = placement::place_workloads(&policy, &cg);
            r.assign(|pid| placement::owner_of(pid, &placements));
        }
        (Err(e), _) => tracing::warn!("workloads not named: policy {}: {e}", source.name()),
        (_, Err(e)) => tracing::warn!("workloads not named: {e}"),
    }
    match args.format {
        Format::Text => print!("{}", render_text(&r)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes(b: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = b as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// The readout for people.
pub fn render_text(r: &GpuReadout) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "GPU {} of {}: {} ({})",
        r.index, r.device_count, r.name, r.uuid
    );
    let _ = writeln!(
        o,
        "  driver        {} (NVML from {})",
        r.driver_version, r.library
    );
    let _ = writeln!(o, "  temperature   {} °C", r.temperature_c);
    let _ = writeln!(
        o,
        "  utilization   {} % (memory {} %)",
        r.utilization_pct, r.memory_utilization_pct
    );
    if let (Some(used), Some(total)) = (r.memory_used_bytes, r.memory_total_bytes) {
        let _ = writeln!(
            o,
            "  VRAM          {} of {} used",
            bytes(used),
            bytes(total)
        );
    }
    if let Some(p) = r.power_draw_mw {
        let _ = writeln!(o, "  power draw    {} W", watts(p));
    }
    match &r.power {
        Some(p) => {
            let _ = writeln!(
                o,
                "  power limit   {} W (default {} W, enforced {} W, constraints {}–{} W)",
                watts(p.limit_mw),
                watts(p.default_mw),
                watts(p.enforced_mw),
                watts(p.min_mw),
                watts(p.max_mw)
            );
        }
        None => {
            let _ = writeln!(
                o,
                "  power limit   not managed on this GPU (eco mode cannot act)"
            );
        }
    }
    match r.clock_offset_mhz {
        Some(v) => {
            let _ = writeln!(o, "  clock offset  {v} MHz");
        }
        None => {
            let _ = writeln!(
                o,
                "  clock offset  unavailable (eco mode's undervolt is skipped)"
            );
        }
    }
    let _ = writeln!(o, "  processes     {}", r.processes.len());
    for p in &r.processes {
        let mem = p.used_memory_bytes.map(bytes).unwrap_or_else(|| "?".into());
        let who = p.workload.as_deref().unwrap_or("(no workload)");
        let _ = writeln!(o, "    pid {:<8} {:<9} {:>9}  {who}", p.pid, p.kind, mem);
    }
    o
}

//! The GPU sensor: NVML through nvml-wrapper, loaded from a library path (the system's
//! `libnvidia-ml.so.1`, `--nvml-lib` or `KEEPER_NVML_LIB`; the tests load the fake in
//! fake-nvml/). A readout has the temperature, power (draw, limit, default, enforced,
//! constraints), utilization, the clock offset where the GPU exposes one, and the processes on
//! the GPU (compute and graphics), which the daemon maps to workloads by pid → cgroup.
//!
//! No library, no driver, no device, or a driver too old for the NVML functions used: "no
//! GPU" ([`GpuError::is_no_gpu`]). The keeper says so once and the GPU rules stay still.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use nvml_wrapper::{
    Device, Nvml, enum_wrappers::device::TemperatureSensor, enums::device::UsedGpuMemory,
    error::NvmlError, struct_wrappers::device::ProcessInfo,
};
use serde::{Deserialize, Serialize};

/// Environment variable naming the NVML library (the `--nvml-lib` flag wins).
pub const LIB_ENV: &str = "KEEPER_NVML_LIB";
/// The system's NVML, as the NVIDIA driver installs it.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// The NVML library to load: the flag, else `$KEEPER_NVML_LIB`, else the system's.
pub fn library(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(LIB_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIB))
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU: the NVML library {} cannot be loaded: {reason}", lib.display())]
    NoLibrary { lib: PathBuf, reason: String },
    #[error("no GPU: NVML ({}) does not start: {source}", lib.display())]
    NoDriver { lib: PathBuf, source: NvmlError },
    #[error("no GPU: NVML ({}) reports no device", lib.display())]
    NoDevice { lib: PathBuf },
    #[error("no GPU: driver {driver} is too old for the keeper: it lacks {call} ({})", lib.display())]
    OldDriver {
        lib: PathBuf,
        driver: String,
        call: &'static str,
    },
    #[error("GPU {index} ({}): {call}: {source}", lib.display())]
    Call {
        lib: PathBuf,
        index: u32,
        call: &'static str,
        source: NvmlError,
    },
    #[error("no GPU: the NVML library is not loaded: {source}")]
    Untrusted { source: super::trust::TrustError },
    #[error("GPU {index}: no power management here (NVML: not supported); power limit left as is")]
    NoPowerManagement { index: u32 },
    #[error("GPU power limit {want_mw} mW not confirmed: the GPU enforces {enforced_mw} mW")]
    NotConfirmed { want_mw: u32, enforced_mw: u32 },
}

impl GpuError {
    /// The GPU is absent (or unusable): GPU rules inactive, everything else keeps working.
    pub fn is_no_gpu(&self) -> bool {
        matches!(
            self,
            GpuError::NoLibrary { .. }
                | GpuError::NoDriver { .. }
                | GpuError::NoDevice { .. }
                | GpuError::OldDriver { .. }
                | GpuError::Untrusted { .. }
        )
    }
}

/// An open NVML session on the host's GPU (device 0: the one RTX 3090 of the seed).
pub struct Gpu {
    nvml: Nvml,
    pub lib: PathBuf,
    pub index: u32,
    pub device_count: u32,
    pub driver: String,
    pub name: String,
    pub uuid: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpu({} {} via {})",
            self.name,
            self.uuid,
            self.lib.display()
        )
    }
}

/// One process with a context on the GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `compute` (CUDA) or `graphics`.
    pub kind: std::borrow::Cow<'static, str>,
    /// VRAM it holds; `None` where the driver does not say.
    pub used_memory_bytes: Option<u64>,
    /// The workload it belongs to (pid → cgroup → policy match).
    pub workload: Option<String>,
}

/// Power management limits, milliwatts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerLimits {
    pub limit_mw: u32,
    pub default_mw: u32,
    pub enforced_mw: u32,
    pub min_mw: u32,
    pub max_mw: u32,
}

/// What `keeper gpu` prints and the daemon observes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuReadout {
    pub library: String,
    pub driver_version: String,
    pub index: u32,
    pub device_count: u32,
    pub name: String,
    pub uuid: String,
    pub temperature_c: u32,
    pub utilization_pct: u32,
    pub memory_utilization_pct: u32,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_draw_mw: Option<u32>,
    /// `None`: the GPU has no power management.
    pub power: Option<PowerLimits>,
    /// GPC clock offset in MHz; `None`: this GPU exposes none (the undervolt is unavailable).
    pub clock_offset_mhz: Option<i32>,
    pub processes: Vec<GpuProcess>,
}

impl GpuReadout {
    /// Names the workload of each process (`owner`: pid → workload).
    pub fn assign(&mut self, owner: impl Fn(u32) -> Option<String>) {
        for p in &mut self.processes {
            p.workload = owner(p.pid);
        }
    }

    /// Workloads → distinct pids on the GPU (processes [`Self::assign`]ed to a workload).
    pub fn users(&self) -> BTreeMap<String, BTreeSet<u32>> {
        let mut pids: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for p in &self.processes {
            if let Some(w) = &p.workload {
                pids.entry(w.clone()).or_default().insert(p.pid);
            }
        }
        pids
    }

    /// Pids of `workload`'s processes on the GPU.
    pub fn pids_of(&self, workload: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .processes
            .iter()
            .filter(|p| p.workload.as_deref() == Some(workload))
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Gpu {
    /// Loads NVML from `lib`, takes device 0 and reads it once: every NVML function the keeper
    /// uses must answer (a driver lacking one is "too old", i.e. no GPU).
    /// A path with a `/` must be a file only root can change ([`super::trust`]): the keeper
    /// loads it as root, and a journal hands it to the next keeper. A bare name
    /// (`libnvidia-ml.so.1`) is the dynamic loader's search of the system's directories.
    pub fn open(lib: &Path) -> Result<Gpu, GpuError> {
        if lib.components().count() > 1 {
            super::trust::trusted_file(lib, false)
                .map_err(|source| GpuError::Untrusted { source })?;
        }
        let nvml = Nvml::builder()
            .lib_path(lib.as_os_str())
            .init()
            .map_err(|e| match e {
                NvmlError::LibloadingError(e) => GpuError::NoLibrary {
                    lib: lib.to_path_buf(),
                    reason: e.to_string(),
                },
                NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => {
                    GpuError::OldDriver {
                        lib: lib.to_path_buf(),
                        driver: "unknown".into(),
                        call: "nvmlInit_v2",
                    }
                }
                source => GpuError::NoDriver {
                    lib: lib.to_path_buf(),
                    source,
                },
            })?;
        let driver = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        let mut gpu = Gpu {
            nvml,
            lib: lib.to_path_buf(),
            index: 0,
            device_count: 0,
            driver,
            name: String::new(),
            uuid: String::new(),
        };
        gpu.device_count = gpu.call("nvmlDeviceGetCount_v2", gpu.nvml.device_count())?;
        if gpu.device_count == 0 {
            return Err(GpuError::NoDevice {
                lib: lib.to_path_buf(),
            });
        }
        let d = gpu.device()?;
        let name = gpu.call("nvmlDeviceGetName", d.name())?;
        let uuid = gpu.call("nvmlDeviceGetUUID", d.uuid())?;
        gpu.name = name;
        gpu.uuid = uuid;
        gpu.readout()?;
        Ok(gpu)
    }

    /// Maps an NVML result: a missing function means an old driver.
    pub(crate) fn call<T>(
        &self,
        call: &'static str,
        r: Result<T, NvmlError>,
    ) -> Result<T, GpuError> {
        r.map_err(|source| match source {
            NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => GpuError::OldDriver {
                lib: self.lib.clone(),
                driver: self.driver.clone(),
                call,
            },
            source => GpuError::Call {
                lib: self.lib.clone(),
                index: self.index,
                call,
                source,
            },
        })
    }

    /// Like [`Gpu::call`], with "not supported by this GPU" as `None`.
    pub(crate) fn optional<T>(
        &self,
        call: &'static str,
        r: Result<T, NvmlError>,
    ) -> Result<Option<T>, GpuError> {
        match r {
            Err(NvmlError::NotSupported) => Ok(None),
            r => self.call(call, r).map(Some),
        }
    }

    pub(crate) fn device(&self) -> Result<Device<'_>, GpuError> {
        self.call(
            "nvmlDeviceGetHandleByIndex_v2",
            self.nvml.device_by_index(self.index),
        )
    }

    /// The power limits, or `None` without power management.
    pub fn power_limits(&self) -> Result<Option<PowerLimits>, GpuError> {
        let d = self.device()?;
        let Some(limit_mw) = self.optional(
            "nvmlDeviceGetPowerManagementLimit",
            d.power_management_limit(),
        )?
        else {
            return Ok(None);
        };
        let default_mw = self.call(
            "nvmlDeviceGetPowerManagementDefaultLimit",
            d.power_management_limit_default(),
        )?;
        let c = self.call(
            "nvmlDeviceGetPowerManagementLimitConstraints",
            d.power_management_limit_constraints(),
        )?;
        let enforced_mw = self.call("nvmlDeviceGetEnforcedPowerLimit", d.enforced_power_limit())?;
        Ok(Some(PowerLimits {
            limit_mw,
            default_mw,
            enforced_mw,
            min_mw: c.min_limit,
            max_mw: c.max_limit,
        }))
    }

    /// The GPC clock offset (MHz), or `None` where the GPU exposes none.
    pub fn clock_offset(&self) -> Result<Option<i32>, GpuError> {
        let d = self.device()?;
        match d.gpc_clock_vf_offset() {
            // Consumer boards without an unlocked V/F curve say "not supported" or refuse.
            Err(NvmlError::NotSupported | NvmlError::NoPermission | NvmlError::InvalidArg) => {
                Ok(None)
            }
            r => self.call("nvmlDeviceGetGpcClkVfOffset", r).map(Some),
        }
    }

    /// Reads everything `keeper gpu` shows (processes not yet assigned to workloads).
    pub fn readout(&self) -> Result<GpuReadout, GpuError> {
        let d = self.device()?;
        let temperature_c = self.call(
            "nvmlDeviceGetTemperature",
            d.temperature(TemperatureSensor::Gpu),
        )?;
        let util = self.call("nvmlDeviceGetUtilizationRates", d.utilization_rates())?;
        let memory = self.optional("nvmlDeviceGetMemoryInfo_v2", d.memory_info())?;
        let power_draw_mw = self.optional("nvmlDeviceGetPowerUsage", d.power_usage())?;
        let mut processes = Vec::new();
        let compute = self.call(
            "nvmlDeviceGetComputeRunningProcesses_v3",
            d.running_compute_processes(),
        )?;
        let graphics = self.call(
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            d.running_graphics_processes(),
        )?;
        for (kind, list) in [("compute", compute), ("graphics", graphics)] {
            processes.extend(list.into_iter().map(|p: ProcessInfo| GpuProcess {
                pid: p.pid,
                kind: kind.into(),
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                workload: None,
            }));
        }
        Ok(GpuReadout {
            library: self.lib.display().to_string(),
            driver_version: self.driver.clone(),
            index: self.index,
            device_count: self.device_count,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            temperature_c,
            utilization_pct: util.gpu,
            memory_utilization_pct: util.memory,
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            power_draw_mw,
            power: self.power_limits()?,
            clock_offset_mhz: self.clock_offset()?,
            processes,
        })
    }
}

/// Milliwatts as watts for messages.
pub fn watts(mw: u32) -> String {
    let watts = mw as f64 / 1000.0;
    if watts.fract() == 0.0 {
        format!("{watts:.0}")
    } else {
        format!("{watts:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_default_library() {
        assert_eq!(
            library(Some(Path::new("/x/lib.so"))),
            Path::new("/x/lib.so")
        );
    }

    #[test]
    fn a_missing_library_is_no_gpu() {
        let e = Gpu::open(Path::new("/nonexistent/libnvidia-ml.so.1")).unwrap_err();
        assert!(e.is_no_gpu(), "{e}");
        assert!(e.to_string().starts_with("no GPU: "), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/libnvidia-ml.so.1"),
            "{e}"
        );
    }

    #[test]
    fn users_count_distinct_pids_per_workload() {
        let p = |pid, kind: &'static str| GpuProcess {
            pid,
            kind: kind.into(),
            used_memory_bytes: None,
            workload: None,
        };
        let mut r = GpuReadout {
            library: String::new(),
            driver_version: String::new(),
            index: 0,
            device_count: 1,
            name: String::new(),
            uuid: String::new(),
            temperature_c: 70,
            utilization_pct: 90,
            memory_utilization_pct: 0,
            memory_used_bytes: None,
            memory_total_bytes: None,
            power_draw_mw: None,
            power: None,
            clock_offset_mhz: None,
            processes: vec![
                p(10, "compute"),
                p(10, "graphics"),
                p(11, "compute"),
                p(12, "compute"),
            ],
        };
        r.assign(|pid| (pid < 12).then(|| "muse".to_string()));
        let users = r.users();
        assert_eq!(users.get("muse").map(|s| s.len()), Some(2));
        assert_eq!(users.len(), 1);
        assert_eq!(r.pids_of("muse"), [10, 11]);
    }
}

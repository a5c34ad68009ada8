//! The fake GPU's state: a JSON file named by `FAKE_NVML_STATE`, read on every call (tests
//! change it between calls) and written back by the setters (tests read what was set).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Environment variable naming the state file.
pub const STATE_ENV: &str = "FAKE_NVML_STATE";

/// The whole fake driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    /// What `nvmlInit_v2` answers: `ok`, or an error name (`driver_not_loaded`,
    /// `no_permission`, `unknown`, ...; see [`crate::code`]).
    pub init: String,
    pub driver_version: String,
    /// NVML functions this "driver" lacks: they answer NVML_ERROR_FUNCTION_NOT_FOUND, the way
    /// an old driver without them fails.
    pub missing: Vec<String>,
    pub devices: Vec<Device>,
    /// Each device query takes this long (ms): a driver that hangs, a GPU fallen off the bus.
    pub hang_ms: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            init: "ok".into(),
            driver_version: "550.54.14-fake".into(),
            missing: vec![],
            devices: vec![Device::default()],
            hang_ms: 0,
        }
    }
}

/// One GPU. Powers in milliwatts, as NVML counts them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub uuid: String,
    pub temperature_c: u32,
    pub power_usage_mw: u32,
    /// The power management limit (what `nvmlDeviceSetPowerManagementLimit` writes).
    pub power_limit_mw: u32,
    pub default_limit_mw: u32,
    pub min_limit_mw: u32,
    pub max_limit_mw: u32,
    /// The enforced limit when something else caps it; default: `power_limit_mw`.
    pub enforced_limit_mw: Option<u32>,
    pub utilization_gpu: u32,
    pub utilization_memory: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// GPC clock offset (MHz); `None`: the GPU exposes none (NVML_ERROR_NOT_SUPPORTED).
    pub clock_offset_mhz: Option<i32>,
    /// Allowed clock offsets (MHz), inclusive.
    pub clock_offset_range: (i32, i32),
    pub compute_processes: Vec<Process>,
    pub graphics_processes: Vec<Process>,
    /// Error name every setter answers (`no_permission` for a non-root caller, ...).
    pub set_error: Option<String>,
}

impl Default for Device {
    /// An RTX 3090 Founders Edition as its datasheet gives it (350 W default, 100–400 W).
    fn default() -> Self {
        Self {
            name: "NVIDIA GeForce RTX 3090 (fake)".into(),
            uuid: "GPU-00000000-fake-0000-0000-000000000000".into(),
            temperature_c: 40,
            power_usage_mw: 30_000,
            power_limit_mw: 350_000,
            default_limit_mw: 350_000,
            min_limit_mw: 100_000,
            max_limit_mw: 400_000,
            enforced_limit_mw: None,
            utilization_gpu: 0,
            utilization_memory: 0,
            memory_total_bytes: 24 << 30,
            memory_used_bytes: 300 << 20,
            clock_offset_mhz: Some(0),
            clock_offset_range: (-1000, 1000),
            compute_processes: vec![],
            graphics_processes: vec![],
            set_error: None,
        }
    }
}

/// A process with a context on the GPU.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Process {
    pub pid: u32,
    pub used_memory_bytes: u64,
}

/// Why the state could not be read or written (reported on stderr, answered as
/// NVML_ERROR_UNKNOWN: a bad state file must look like a broken driver, not crash the caller).
#[derive(Debug)]
pub struct StateError(pub String);

pub fn path() -> Result<PathBuf, StateError> {
    std::env::var_os(STATE_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| StateError(format!("{STATE_ENV} is not set")))
}

pub fn load() -> Result<State, StateError> {
    let p = path()?;
    let text = fs::read_to_string(&p).map_err(|e| StateError(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| StateError(format!("{}: {e}", p.display())))
}

/// Writes `state` atomically (temporary file, then rename), so a reader never sees half.
pub fn save(state: &State) -> Result<(), StateError> {
    let p = path()?;
    write_atomic(&p, state)
}

pub fn write_atomic(p: &Path, state: &State) -> Result<(), StateError> {
    let text = serde_json::to_string_pretty(state).map_err(|e| StateError(e.to_string()))?;
    let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, text).map_err(|e| StateError(format!("{}: {e}", tmp.display())))?;
    fs::rename(&tmp, p).map_err(|e| StateError(format!("{}: {e}", p.display())))
}

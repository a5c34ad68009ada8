//! GPU actuators: the power limit (a share of the default limit, clamped to the GPU's
//! constraints, confirmed by reading the enforced limit back), the clock offset (eco mode's
//! undervolt, where the GPU exposes one), and `cuda-checkpoint` for the handoff (a process's GPU
//! state to host memory and back). Each change is journaled before it is made and undone at
//! exit or after a crash; `--dry-run` changes nothing.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use super::{ActError, Actuators, Effect, journal::Entry, process::Proc};
use crate::{
    device::gpu::{Gpu, GpuError, PowerLimits, watts},
    policy::Percent,
};

/// NVIDIA's checkpoint utility, looked up on PATH unless `--cuda-checkpoint` names it.
pub const CHECKPOINT_TOOL: &str = "cuda-checkpoint";
/// Longest wait for one `cuda-checkpoint --toggle` (it copies VRAM to host memory and back).
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// The GPU side of the actuators.
pub struct GpuHands {
    /// Shared by the loop's readouts and the slow hands (NVML is thread-safe).
    pub gpu: Option<Arc<Gpu>>,
    /// `cuda-checkpoint`, when found.
    pub tool: Option<PathBuf>,
    pub timeout: Duration,
    /// Processes whose GPU state the keeper checkpointed, by workload: (pid, start time).
    pub checkpointed: BTreeMap<String, Vec<(u32, u64)>>,
    journaled_limit: bool,
    journaled_offset: bool,
}

impl Default for GpuHands {
    fn default() -> Self {
        Self {
            gpu: None,
            tool: None,
            timeout: CHECKPOINT_TIMEOUT,
            checkpointed: BTreeMap::new(),
            journaled_limit: false,
            journaled_offset: false,
        }
    }
}

impl GpuHands {
    /// After `restore_all`: the journal is empty and every checkpoint was toggled back.
    pub(crate) fn journal_cleared(&mut self) {
        self.journaled_limit = false;
        self.journaled_offset = false;
        self.checkpointed.clear();
    }
}

/// `cuda-checkpoint`: the given path (when it is an executable file), else the one on PATH.
pub fn find_checkpoint_tool(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return trusted_executable(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .find_map(|d| trusted_executable(&d.join(CHECKPOINT_TOOL)))
}

/// `p`'s absolute path when it is an executable file that only root (or the keeper's own user)
/// can change: the keeper runs it as root, and journals its path for a later keeper.
fn trusted_executable(p: &Path) -> Option<PathBuf> {
    crate::device::trust::trusted_file(p, true).ok()
}

/// The limit for `percent` of the default, clamped to the constraints, with a note if clamped.
pub fn power_limit_for(percent: Percent, p: &PowerLimits) -> (u32, Option<String>) {
    let want = percent.of(p.default_mw as u64).min(u32::MAX as u64) as u32;
    if want < p.min_mw {
        let note = format!(
            "{} W raised to the minimum {} W",
            watts(want),
            watts(p.min_mw)
        );
        (p.min_mw, Some(note))
    } else if want > p.max_mw {
        let note = format!(
            "{} W lowered to the maximum {} W",
            watts(want),
            watts(p.max_mw)
        );
        (p.max_mw, Some(note))
    } else {
        (want, None)
    }
}

/// Sets the power limit and reads the enforced limit back.
fn apply_power_limit(gpu: &Gpu, mw: u32) -> Result<(), GpuError> {
    let mut d = gpu.device()?;
    gpu.call(
        "nvmlDeviceSetPowerManagementLimit",
        d.set_power_management_limit(mw),
    )?;
    let enforced_mw = gpu.call("nvmlDeviceGetEnforcedPowerLimit", d.enforced_power_limit())?;
    if enforced_mw != mw {
        return Err(GpuError::NotConfirmed {
            want_mw: mw,
            enforced_mw,
        });
    }
    Ok(())
}

/// Sets the clock offset and reads it back.
fn apply_clock_offset(gpu: &Gpu, mhz: i32) -> Result<(), GpuError> {
    let d = gpu.device()?;
    gpu.call(
        "nvmlDeviceSetGpcClkVfOffset",
        d.set_gpc_clock_vf_offset(mhz),
    )?;
    let got = gpu.call("nvmlDeviceGetGpcClkVfOffset", d.gpc_clock_vf_offset())?;
    if got != mhz {
        return Err(GpuError::Call {
            lib: gpu.lib.clone(),
            index: gpu.index,
            call: "nvmlDeviceGetGpcClkVfOffset",
            source: nvml_wrapper::error::NvmlError::Unknown,
        });
    }
    Ok(())
}

/// What cuda-checkpoint says of a process (`--get-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaState {
    Running,
    Locked,
    Checkpointed,
    Failed,
}

/// Brings `pid` to `want` (`Running` or `Checkpointed`): asks its state first and toggles only
/// from the other one, never blindly (a replayed toggle of a process whose checkpoint failed
/// would checkpoint a running process). `Some(took)` when it toggled, `None` when it was so.
pub fn bring_to(
    tool: &Path,
    pid: u32,
    want: CudaState,
    timeout: Duration,
) -> Result<Option<Duration>, ActError> {
    let now = state(tool, pid, timeout)?;
    if now == want {
        return Ok(None);
    }
    let from = match want {
        CudaState::Running => CudaState::Checkpointed,
        _ => CudaState::Running,
    };
    if now != from {
        return Err(ActError::Checkpoint {
            pid,
            message: format!("{} says it is {now:?}: left as it is", tool.display()),
        });
    }
    toggle(tool, pid, timeout).map(Some)
}

/// `tool --get-state --pid PID`.
pub fn state(tool: &Path, pid: u32, timeout: Duration) -> Result<CudaState, ActError> {
    let (_, out) = run_tool(tool, "--get-state", pid, timeout)?;
    let word = out.trim().to_ascii_lowercase();
    match word.as_str() {
        w if w.contains("checkpointed") => Ok(CudaState::Checkpointed),
        w if w.contains("running") => Ok(CudaState::Running),
        w if w.contains("locked") => Ok(CudaState::Locked),
        w if w.contains("failed") => Ok(CudaState::Failed),
        _ => Err(ActError::Checkpoint {
            pid,
            message: format!("{} --get-state said `{word}`", tool.display()),
        }),
    }
}

/// Runs `tool --toggle --pid PID` with a time limit; returns how long it took.
pub fn toggle(tool: &Path, pid: u32, timeout: Duration) -> Result<Duration, ActError> {
    run_tool(tool, "--toggle", pid, timeout).map(|(took, _)| took)
}

/// Runs `tool VERB --pid PID` with a time limit; how long it took and what it printed.
fn run_tool(
    tool: &Path,
    verb: &str,
    pid: u32,
    timeout: Duration,
) -> Result<(Duration, String), ActError> {
    let started = Instant::now();
    let err = |message: String| ActError::Checkpoint { pid, message };
    let mut cmd = Command::new(tool);
    // SAFETY: only sched_setscheduler between fork and exec. The keeper runs SCHED_FIFO; a
    // copy of gigabytes of VRAM must not run at real-time priority on the housekeeping cores.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            Ok(())
        });
    }
    let child = cmd
        .args([verb, "--pid", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("{}: {e}", tool.display())))?;
    let child_pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        crate::device::run_at_normal_priority();
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(err(format!("{}: {e}", tool.display()))),
        Err(_) => {
            // SAFETY: the child is not reaped before its waiting thread returns.
            unsafe { libc::kill(child_pid as i32, libc::SIGKILL) };
            return Err(err(format!(
                "{} {verb} did not finish within {timeout:?}; killed",
                tool.display()
            )));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let text = if text.is_empty() { stdout } else { text };
        return Err(err(format!(
            "{} {verb} exited with {}: {text}",
            tool.display(),
            out.status
        )));
    }
    Ok((started.elapsed(), stdout))
}

/// `ms` of a toggle, "0 ms" when none was needed.
fn ms_or_zero(d: Option<Duration>) -> String {
    ms(d.unwrap_or_default())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Actuators {
    /// Gives the actuators the GPU (or none) and the checkpoint tool (or none).
    pub fn set_gpu(&mut self, gpu: Option<Gpu>, tool: Option<PathBuf>) {
        self.gpu.gpu = gpu.map(Arc::new);
        self.gpu.tool = tool;
    }

    pub fn gpu(&self) -> Option<&Gpu> {
        self.gpu.gpu.as_deref()
    }

    /// The GPU, shared with the thread that reads it (sense/gpu_reader.rs).
    pub fn gpu_shared(&self) -> Option<&Arc<Gpu>> {
        self.gpu.gpu.as_ref()
    }

    /// Sets the power limit to `percent` of the default, clamped, confirmed by read-back.
    pub fn set_gpu_power_limit(&mut self, percent: Percent) -> Result<Effect, ActError> {
        let Some(gpu) = &self.gpu.gpu else {
            return Ok(Effect::Unchanged("no GPU: power limit not set".into()));
        };
        let limits = gpu
            .power_limits()?
            .ok_or(GpuError::NoPowerManagement { index: gpu.index })?;
        let (mw, clamped) = power_limit_for(percent, &limits);
        let clamped = clamped.map(|c| format!(" ({c})")).unwrap_or_default();
        let what = format!(
            "GPU power limit {} W ({percent} of the default {} W){clamped}",
            watts(mw),
            watts(limits.default_mw)
        );
        if limits.limit_mw == mw && limits.enforced_mw == mw {
            return Ok(Effect::Unchanged(format!("{what}: already so")));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("set {what}")));
        }
        if !self.gpu.journaled_limit {
            self.journal().record(&Entry::GpuPowerLimit {
                lib: gpu.lib.clone(),
                uuid: gpu.uuid.clone(),
                original_mw: limits.limit_mw,
            })?;
            self.gpu.journaled_limit = true;
        }
        apply_power_limit(gpu, mw)?;
        super::fault::at_kind("gpu_power_limit", super::fault::Step::Applied);
        Ok(Effect::Done(format!(
            "{what}, was {} W; enforced limit read back",
            watts(limits.limit_mw)
        )))
    }

    /// Sets the GPU clock offset, where the GPU exposes one; otherwise says it is unavailable.
    pub fn set_gpu_clock_offset(&mut self, mhz: i32) -> Result<Effect, ActError> {
        let Some(gpu) = &self.gpu.gpu else {
            return Ok(Effect::Unchanged("no GPU: clock offset not set".into()));
        };
        let Some(current) = gpu.clock_offset()? else {
            return Ok(Effect::Unchanged(format!(
                "GPU clock offset unavailable on {}: the {mhz} MHz step is skipped",
                gpu.name
            )));
        };
        let what = format!("GPU clock offset {mhz} MHz");
        if current == mhz {
            return Ok(Effect::Unchanged(format!("{what}: already so")));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("set {what}")));
        }
        if !self.gpu.journaled_offset {
            self.journal().record(&Entry::GpuClockOffset {
                lib: gpu.lib.clone(),
                uuid: gpu.uuid.clone(),
                original_mhz: current,
            })?;
            self.gpu.journaled_offset = true;
        }
        apply_clock_offset(gpu, mhz)?;
        super::fault::at_kind("gpu_clock_offset", super::fault::Step::Applied);
        Ok(Effect::Done(format!(
            "{what}, was {current} MHz; read back"
        )))
    }

    /// Handoff step: checkpoints the GPU state of `workload`'s processes on the GPU (`pids`)
    /// with cuda-checkpoint; all or none (a failure toggles the done ones back). Without the
    /// tool, says that the VRAM stays held.
    pub fn gpu_checkpoint(&mut self, workload: &str, pids: &[u32]) -> Result<Effect, ActError> {
        if pids.is_empty() {
            return Ok(Effect::Unchanged(format!(
                "{workload} has no process on the GPU: nothing to checkpoint"
            )));
        }
        for pid in pids {
            self.check_scope_pid(*pid)?;
        }
        let Some(tool) = self.gpu.tool.clone() else {
            return Ok(Effect::Unchanged(format!(
                "{CHECKPOINT_TOOL} not found: {workload}'s VRAM stays held (pids {}) while it is frozen",
                pid_list(pids)
            )));
        };
        if self.dry_run {
            return Ok(Effect::WouldDo(format!(
                "{} --toggle pids {} of {workload}",
                tool.display(),
                pid_list(pids)
            )));
        }
        let mut done: Vec<(u32, u64)> = Vec::new();
        let mut notes = Vec::new();
        for &pid in pids {
            let step = match Proc::open(pid, None) {
                Ok(p) => {
                    // Recorded in a statement of its own: the journal's lock is let go before
                    // the tool runs (up to 30 s), never held over it (the loop and the
                    // eviction thread record through the same lock).
                    let recorded = self.journal().record(&Entry::GpuCheckpoint {
                        pid,
                        start: p.start,
                        tool: tool.clone(),
                    });
                    (recorded.map_err(ActError::from))
                        .and_then(|()| {
                            bring_to(&tool, pid, CudaState::Checkpointed, self.gpu.timeout)
                        })
                        .map(|took| (p.start, took))
                }
                Err(ActError::Vanished { .. }) => continue,
                Err(e) => Err(e),
            };
            match step {
                Ok((start, took)) => {
                    super::fault::at_kind("gpu_checkpoint", super::fault::Step::Applied);
                    done.push((pid, start));
                    notes.push(match took {
                        Some(took) => format!("pid {pid} in {}", ms(took)),
                        None => format!("pid {pid} was checkpointed already"),
                    });
                }
                Err(e) => {
                    let undone = self.toggle_back(&tool, &done);
                    return Err(ActError::Checkpoint {
                        pid,
                        message: format!("{e}; rolled back: {undone}"),
                    });
                }
            }
        }
        if done.is_empty() {
            return Ok(Effect::Unchanged(format!(
                "{workload}'s GPU processes are gone: nothing to checkpoint"
            )));
        }
        self.gpu.checkpointed.insert(workload.to_string(), done);
        Ok(Effect::Done(format!(
            "checkpointed the GPU state of {workload} ({}): its VRAM is in host memory",
            notes.join(", ")
        )))
    }

    /// Toggles checkpointed processes back (a rollback); says what happened.
    fn toggle_back(&mut self, tool: &Path, done: &[(u32, u64)]) -> String {
        if done.is_empty() {
            return "nothing was checkpointed yet".into();
        }
        let mut out = Vec::new();
        for &(pid, start) in done.iter().rev() {
            match bring_to(tool, pid, CudaState::Running, self.gpu.timeout) {
                Ok(took) => {
                    let _ = self.journal().record(&Entry::GpuRestored { pid, start });
                    out.push(format!("pid {pid} restored in {}", ms_or_zero(took)));
                }
                Err(e) => out.push(format!("pid {pid} NOT restored: {e}")),
            }
        }
        out.join(", ")
    }

    /// Handoff over: restores the GPU state checkpointed for `workload` (after its thaw).
    pub fn gpu_restore(&mut self, workload: &str) -> Result<Effect, ActError> {
        if self.dry_run {
            return Ok(Effect::WouldDo(format!(
                "restore the GPU state of {workload} if it was checkpointed"
            )));
        }
        let Some(list) = self.gpu.checkpointed.remove(workload) else {
            return Ok(Effect::Unchanged(format!(
                "no GPU state of {workload} was checkpointed: nothing to restore"
            )));
        };
        let Some(tool) = self.gpu.tool.clone() else {
            return Ok(Effect::Unchanged(format!(
                "{CHECKPOINT_TOOL} is gone: {workload}'s GPU state cannot be restored"
            )));
        };
        let mut left = Vec::new();
        let mut notes = Vec::new();
        let mut first_err = None;
        for (pid, start) in list {
            match Proc::open(pid, Some(start)) {
                Ok(_) => {}
                Err(ActError::Vanished { .. }) => {
                    notes.push(format!("pid {pid} gone"));
                    continue;
                }
                Err(e) => {
                    left.push((pid, start));
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            match bring_to(&tool, pid, CudaState::Running, self.gpu.timeout) {
                Ok(took) => {
                    self.journal().record(&Entry::GpuRestored { pid, start })?;
                    notes.push(format!("pid {pid} in {}", ms_or_zero(took)));
                }
                Err(e) => {
                    left.push((pid, start));
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            self.gpu.checkpointed.insert(workload.to_string(), left);
            return Err(e);
        }
        Ok(Effect::Done(format!(
            "restored the GPU state of {workload} ({})",
            notes.join(", ")
        )))
    }
}

/// Journal replay: the power limit back to `original_mw` on the GPU `uuid`.
pub fn restore_power_limit(lib: &Path, uuid: &str, original_mw: u32) -> Result<String, ActError> {
    let gpu = Gpu::open(lib)?;
    if gpu.uuid != uuid {
        return Ok(format!(
            "GPU {uuid} not found through {} (found {}): power limit left",
            lib.display(),
            gpu.uuid
        ));
    }
    apply_power_limit(&gpu, original_mw)?;
    Ok(format!("GPU power limit back to {} W", watts(original_mw)))
}

/// Journal replay: the clock offset back to `original_mhz`.
pub fn restore_clock_offset(lib: &Path, uuid: &str, original_mhz: i32) -> Result<String, ActError> {
    let gpu = Gpu::open(lib)?;
    if gpu.uuid != uuid {
        return Ok(format!("GPU {uuid} not found: clock offset left"));
    }
    apply_clock_offset(&gpu, original_mhz)?;
    Ok(format!("GPU clock offset back to {original_mhz} MHz"))
}

/// Journal replay: a process checkpointed by an earlier keeper gets its GPU state back.
pub fn restore_checkpoint(pid: u32, start: u64, tool: &Path) -> Result<Option<String>, ActError> {
    // The journal names the tool: run it only if it is still root's alone.
    let tool =
        crate::device::trust::trusted_file(tool, true).map_err(|why| ActError::Checkpoint {
            pid,
            message: format!("the journal's tool is not run: {why}"),
        })?;
    let tool = tool.as_path();
    match Proc::open(pid, Some(start)) {
        Ok(_) => match bring_to(tool, pid, CudaState::Running, CHECKPOINT_TIMEOUT)? {
            Some(took) => Ok(Some(format!(
                "restored the GPU state of pid {pid} in {}",
                ms(took)
            ))),
            // Its checkpoint never happened (or was undone): nothing to restore.
            None => Ok(None),
        },
        Err(ActError::Vanished { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "gpu_tests.rs"]
mod tests;

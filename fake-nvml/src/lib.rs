//! A fake `libnvidia-ml.so`: the NVML C functions The Keeper uses, answering from a JSON state
//! file (`FAKE_NVML_STATE`, see [`state`]) instead of a GPU. Tests point nvml-wrapper at
//! `target/<profile>/libnvidia_ml_fake.so`, so the real wrapper code runs against it.
//!
//! Behaviour follows NVML's documentation: calls before `nvmlInit_v2` answer
//! NVML_ERROR_UNINITIALIZED, buffers too small NVML_ERROR_INSUFFICIENT_SIZE, a power limit
//! outside the constraints NVML_ERROR_INVALID_ARGUMENT. Functions named in the state's
//! `missing` list answer NVML_ERROR_FUNCTION_NOT_FOUND (an old driver). Only the functions
//! below exist; nvml-wrapper resolves symbols lazily, so any other call fails with
//! "failed to load symbol" in the caller, as on a driver without it.
//!
//! Every function is `unsafe extern "C"`: the caller passes pointers NVML-style (valid, or
//! null where NVML allows it); null where a value is needed answers INVALID_ARGUMENT.
#![allow(non_snake_case)]
#![allow(clippy::missing_safety_doc)]

pub mod state;

use std::{
    ffi::{c_char, c_int, c_uint, c_ulonglong, c_void},
    sync::atomic::{AtomicU32, Ordering},
};

use state::{Device, Process, State};

pub type Ret = c_uint;
pub const SUCCESS: Ret = 0;
pub const ERROR_UNINITIALIZED: Ret = 1;
pub const ERROR_INVALID_ARGUMENT: Ret = 2;
pub const ERROR_NOT_SUPPORTED: Ret = 3;
pub const ERROR_NO_PERMISSION: Ret = 4;
pub const ERROR_NOT_FOUND: Ret = 6;
pub const ERROR_INSUFFICIENT_SIZE: Ret = 7;
pub const ERROR_DRIVER_NOT_LOADED: Ret = 9;
pub const ERROR_FUNCTION_NOT_FOUND: Ret = 13;
pub const ERROR_GPU_IS_LOST: Ret = 15;
pub const ERROR_UNKNOWN: Ret = 999;

/// The return code for an error name used in the state file.
pub fn code(name: &str) -> Ret {
    match name {
        "ok" | "success" => SUCCESS,
        "uninitialized" => ERROR_UNINITIALIZED,
        "invalid_argument" => ERROR_INVALID_ARGUMENT,
        "not_supported" => ERROR_NOT_SUPPORTED,
        "no_permission" => ERROR_NO_PERMISSION,
        "not_found" => ERROR_NOT_FOUND,
        "driver_not_loaded" => ERROR_DRIVER_NOT_LOADED,
        "function_not_found" => ERROR_FUNCTION_NOT_FOUND,
        "gpu_is_lost" => ERROR_GPU_IS_LOST,
        _ => ERROR_UNKNOWN,
    }
}

/// nvmlInit_v2 calls not yet matched by nvmlShutdown.
static INITS: AtomicU32 = AtomicU32::new(0);

/// Loads the state for `function`: initialized, not missing, state readable.
fn enter(function: &str) -> Result<State, Ret> {
    if INITS.load(Ordering::SeqCst) == 0 {
        return Err(ERROR_UNINITIALIZED);
    }
    let s = loaded()?;
    if s.missing.iter().any(|m| m == function) {
        return Err(ERROR_FUNCTION_NOT_FOUND);
    }
    Ok(s)
}

fn loaded() -> Result<State, Ret> {
    state::load().map_err(|e| {
        eprintln!("fake-nvml: {}", e.0);
        ERROR_UNKNOWN
    })
}

fn index_of(s: &State, device: *mut c_void) -> Result<usize, Ret> {
    let i = (device as usize).wrapping_sub(1);
    if i < s.devices.len() {
        Ok(i)
    } else {
        Err(ERROR_INVALID_ARGUMENT)
    }
}

/// Runs `f` on the device behind `handle`, for `function`.
fn with_device(
    function: &str,
    handle: *mut c_void,
    f: impl FnOnce(&Device) -> Result<(), Ret>,
) -> Ret {
    let r = enter(function).and_then(|s| {
        let i = index_of(&s, handle)?;
        std::thread::sleep(std::time::Duration::from_millis(s.hang_ms));
        f(&s.devices[i])
    });
    r.err().unwrap_or(SUCCESS)
}

/// Changes the device behind `handle` and writes the state back.
fn update_device(
    function: &str,
    handle: *mut c_void,
    f: impl FnOnce(&mut Device) -> Result<(), Ret>,
) -> Ret {
    let r = enter(function).and_then(|mut s| {
        let i = index_of(&s, handle)?;
        if let Some(e) = &s.devices[i].set_error {
            return Err(code(e));
        }
        f(&mut s.devices[i])?;
        state::save(&s).map_err(|e| {
            eprintln!("fake-nvml: {}", e.0);
            ERROR_UNKNOWN
        })
    });
    r.err().unwrap_or(SUCCESS)
}

unsafe fn put<T>(out: *mut T, v: T) -> Result<(), Ret> {
    if out.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and the caller passes a valid pointer (NVML's contract).
    unsafe { out.write(v) };
    Ok(())
}

unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), Ret> {
    if buf.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    if s.len() + 1 > len as usize {
        return Err(ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` holds `len` bytes (the caller's contract) and we write s.len() + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> Ret {
    let s = match loaded() {
        Ok(s) => s,
        // No state file: no driver.
        Err(_) => return ERROR_DRIVER_NOT_LOADED,
    };
    match code(&s.init) {
        SUCCESS => {
            INITS.fetch_add(1, Ordering::SeqCst);
            SUCCESS
        }
        e => e,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    unsafe { nvmlInit_v2() }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> Ret {
    match INITS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => SUCCESS,
        Err(_) => ERROR_UNINITIALIZED,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let s: &'static [u8] = match result {
        SUCCESS => b"Success\0",
        ERROR_UNINITIALIZED => b"Uninitialized\0",
        ERROR_INVALID_ARGUMENT => b"Invalid Argument\0",
        ERROR_NOT_SUPPORTED => b"Not Supported\0",
        ERROR_NO_PERMISSION => b"Insufficient Permissions\0",
        ERROR_NOT_FOUND => b"Not Found\0",
        ERROR_INSUFFICIENT_SIZE => b"Insufficient Size\0",
        ERROR_DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        ERROR_FUNCTION_NOT_FOUND => b"Function Not Found\0",
        ERROR_GPU_IS_LOST => b"GPU is lost\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    let r = enter("nvmlSystemGetDriverVersion")
        .and_then(|s| unsafe { put_str(buf, len, &s.driver_version) });
    r.err().unwrap_or(SUCCESS)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    let r = enter("nvmlDeviceGetCount_v2")
        .and_then(|s| unsafe { put(count, s.devices.len() as c_uint) });
    r.err().unwrap_or(SUCCESS)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut *mut c_void,
) -> Ret {
    let r = enter("nvmlDeviceGetHandleByIndex_v2").and_then(|s| {
        if (index as usize) < s.devices.len() {
            unsafe { put(device, (index as usize + 1) as *mut c_void) }
        } else {
            Err(ERROR_INVALID_ARGUMENT)
        }
    });
    r.err().unwrap_or(SUCCESS)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(d: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_device("nvmlDeviceGetName", d, |g| unsafe {
        put_str(buf, len, &g.name)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(d: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_device("nvmlDeviceGetUUID", d, |g| unsafe {
        put_str(buf, len, &g.uuid)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    d: *mut c_void,
    sensor: c_uint,
    temp: *mut c_uint,
) -> Ret {
    with_device("nvmlDeviceGetTemperature", d, |g| {
        // NVML_TEMPERATURE_GPU is the only sensor.
        if sensor != 0 {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        unsafe { put(temp, g.temperature_c) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(d: *mut c_void, mw: *mut c_uint) -> Ret {
    with_device("nvmlDeviceGetPowerUsage", d, |g| unsafe {
        put(mw, g.power_usage_mw)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(d: *mut c_void, mw: *mut c_uint) -> Ret {
    with_device("nvmlDeviceGetPowerManagementLimit", d, |g| unsafe {
        put(mw, g.power_limit_mw)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    d: *mut c_void,
    mw: *mut c_uint,
) -> Ret {
    with_device("nvmlDeviceGetPowerManagementDefaultLimit", d, |g| unsafe {
        put(mw, g.default_limit_mw)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    d: *mut c_void,
    min: *mut c_uint,
    max: *mut c_uint,
) -> Ret {
    with_device(
        "nvmlDeviceGetPowerManagementLimitConstraints",
        d,
        |g| unsafe {
            put(min, g.min_limit_mw)?;
            put(max, g.max_limit_mw)
        },
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(d: *mut c_void, mw: *mut c_uint) -> Ret {
    with_device("nvmlDeviceGetEnforcedPowerLimit", d, |g| unsafe {
        put(mw, g.enforced_limit_mw.unwrap_or(g.power_limit_mw))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceSetPowerManagementLimit(d: *mut c_void, mw: c_uint) -> Ret {
    update_device("nvmlDeviceSetPowerManagementLimit", d, |g| {
        if mw < g.min_limit_mw || mw > g.max_limit_mw {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        g.power_limit_mw = mw;
        Ok(())
    })
}

/// nvmlUtilization_t.
#[repr(C)]
pub struct Utilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(d: *mut c_void, u: *mut Utilization) -> Ret {
    with_device("nvmlDeviceGetUtilizationRates", d, |g| unsafe {
        put(
            u,
            Utilization {
                gpu: g.utilization_gpu,
                memory: g.utilization_memory,
            },
        )
    })
}

/// nvmlMemory_v2_t.
#[repr(C)]
pub struct MemoryV2 {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(d: *mut c_void, m: *mut MemoryV2) -> Ret {
    with_device("nvmlDeviceGetMemoryInfo_v2", d, |g| {
        if m.is_null() {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null; the caller set `version` in its struct.
        let version = unsafe { (*m).version };
        unsafe {
            put(
                m,
                MemoryV2 {
                    version,
                    total: g.memory_total_bytes,
                    reserved: 0,
                    free: g.memory_total_bytes.saturating_sub(g.memory_used_bytes),
                    used: g.memory_used_bytes,
                },
            )
        }
    })
}

/// nvmlProcessInfo_t (the v2 layout, used by the `_v3` process functions).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: c_ulonglong,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// NVML's two-call protocol: `*count` in = capacity of `infos`, out = processes there are.
unsafe fn processes(
    list: &[Process],
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Result<(), Ret> {
    if count.is_null() {
        return Err(ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, valid per the caller's contract.
    let capacity = unsafe { *count } as usize;
    unsafe { *count = list.len() as c_uint };
    if list.is_empty() {
        return Ok(());
    }
    if infos.is_null() || capacity < list.len() {
        return Err(ERROR_INSUFFICIENT_SIZE);
    }
    for (i, p) in list.iter().enumerate() {
        let info = ProcessInfo {
            pid: p.pid,
            used_gpu_memory: p.used_memory_bytes,
            // NVML_VALUE_NOT_AVAILABLE: no MIG.
            gpu_instance_id: u32::MAX,
            compute_instance_id: u32::MAX,
        };
        // SAFETY: i < list.len() <= capacity elements.
        unsafe { infos.add(i).write(info) };
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    d: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    with_device("nvmlDeviceGetComputeRunningProcesses_v3", d, |g| unsafe {
        processes(&g.compute_processes, count, infos)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    d: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    with_device("nvmlDeviceGetGraphicsRunningProcesses_v3", d, |g| unsafe {
        processes(&g.graphics_processes, count, infos)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpcClkVfOffset(d: *mut c_void, mhz: *mut c_int) -> Ret {
    with_device("nvmlDeviceGetGpcClkVfOffset", d, |g| {
        match g.clock_offset_mhz {
            Some(v) => unsafe { put(mhz, v) },
            None => Err(ERROR_NOT_SUPPORTED),
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceSetGpcClkVfOffset(d: *mut c_void, mhz: c_int) -> Ret {
    update_device("nvmlDeviceSetGpcClkVfOffset", d, |g| {
        if g.clock_offset_mhz.is_none() {
            return Err(ERROR_NOT_SUPPORTED);
        }
        let (lo, hi) = g.clock_offset_range;
        if mhz < lo || mhz > hi {
            return Err(ERROR_INVALID_ARGUMENT);
        }
        g.clock_offset_mhz = Some(mhz);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_lists_follow_nvmls_two_call_protocol() {
        let list = [
            Process {
                pid: 7,
                used_memory_bytes: 1,
            },
            Process {
                pid: 8,
                used_memory_bytes: 2,
            },
        ];
        let mut count = 0;
        let r = unsafe { processes(&list, &mut count, std::ptr::null_mut()) };
        assert_eq!((r, count), (Err(ERROR_INSUFFICIENT_SIZE), 2));
        let mut buf = [ProcessInfo {
            pid: 0,
            used_gpu_memory: 0,
            gpu_instance_id: 0,
            compute_instance_id: 0,
        }; 4];
        count = 4;
        assert_eq!(
            unsafe { processes(&list, &mut count, buf.as_mut_ptr()) },
            Ok(())
        );
        assert_eq!((count, buf[1].pid, buf[1].used_gpu_memory), (2, 8, 2));
        count = 0;
        assert_eq!(
            unsafe { processes(&[], &mut count, std::ptr::null_mut()) },
            Ok(())
        );
        assert_eq!(count, 0);
    }

    #[test]
    fn strings_need_room_for_their_nul() {
        let mut buf = [1 as c_char; 4];
        assert_eq!(
            unsafe { put_str(buf.as_mut_ptr(), 4, "abcd") },
            Err(ERROR_INSUFFICIENT_SIZE)
        );
        assert_eq!(unsafe { put_str(buf.as_mut_ptr(), 4, "abc") }, Ok(()));
        assert_eq!(buf[3], 0);
        assert_eq!(code("no_permission"), ERROR_NO_PERMISSION);
        assert_eq!(code("whatever"), ERROR_UNKNOWN);
    }
}

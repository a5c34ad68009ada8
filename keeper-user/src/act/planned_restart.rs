//! `rules.gpu_mutex`'s planned restart, for a VM that is not running (the design's fallback
//! where hot-unplug cannot be used): the VM that has the GPU is let go of it ([`Release`]:
//! the holder hibernated, so that the give-back resumes it where it was; a borrower shut
//! down, since it was not running before the lend), the device's key (`hostpci0`) leaves its
//! Proxmox configuration and enters the other's, and that one is started. A step that fails
//! takes the done ones back in reverse (the key put back, the stopped VM started again), so a
//! failed move leaves both VMs as they were.

use std::time::{Duration, Instant};

use super::ActError;
use crate::device::proxmox::{Client, ProxmoxError};

/// How long a take-back waits for a hibernation still being saved before it starts the VM.
const SAVE_WAIT: Duration = Duration::from_secs(60);

/// How the VM that has the GPU lets it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The holder, for a lend: hibernated (its memory saved), resumed at the give-back.
    Hibernate,
    /// A borrower, at the give-back: shut down (ACPI, stopped by force after the deadline),
    /// as it was before the lend started it. Before, it was hibernated: the exit left it
    /// suspended (`lock: suspended`, its state on disk) where it had been stopped.
    ShutDown,
}

/// One step done, to be taken back if a later one fails.
enum Done {
    Hibernated(u32),
    ShutDown(u32),
    Removed(u32),
    Added(u32),
}

/// Moves `key: value` from VM `from`'s configuration to VM `to`'s, restarting as needed.
/// Returns what was done, in words.
pub fn move_config(
    api: &Client,
    (from, to): (u32, u32),
    (key, value): (&str, &str),
    (release, deadline): (Release, Duration),
) -> Result<String, ActError> {
    let mut done = Vec::new();
    match steps(
        api,
        (from, to),
        (key, value),
        (release, deadline),
        &mut done,
    ) {
        Ok(()) => Ok(format!(
            "vm {from}'s {key} moved to vm {to} through {}: {}",
            api.url(),
            words(&done, key)
        )),
        Err(e) => {
            let back = take_back(api, &done, (key, value));
            Err(ActError::Service {
                what: format!("moving {key} from vm {from} to vm {to}"),
                message: format!("{e}; {back}"),
            })
        }
    }
}

fn steps(
    api: &Client,
    (from, to): (u32, u32),
    (key, value): (&str, &str),
    (release, deadline): (Release, Duration),
    done: &mut Vec<Done>,
) -> Result<(), ActError> {
    if api.status(from)?.status == "running" {
        match release {
            Release::Hibernate => {
                api.hibernate(from)?;
                done.push(Done::Hibernated(from));
                super::fault::at_kind("vm_stopped", super::fault::Step::Applied);
            }
            Release::ShutDown => {
                api.shutdown(from, deadline.as_secs().max(1))?;
                done.push(Done::ShutDown(from));
            }
        }
        // A shutdown's own timeout runs in PVE's task: its end is waited for a while more.
        let wait = match release {
            Release::Hibernate => deadline,
            Release::ShutDown => deadline * 2,
        };
        wait_stopped(api, from, wait)?;
    }
    if api.config_value(from, key)?.is_some() {
        api.set_config(from, key, None)?;
        done.push(Done::Removed(from));
    }
    api.set_config(to, key, Some(value))?;
    done.push(Done::Added(to));
    if api.status(to)?.status != "running" {
        api.start(to)?;
    }
    Ok(())
}

/// Waits until PVE has saved the hibernated VM (stopped, no `suspending` lock).
fn wait_stopped(api: &Client, vmid: u32, deadline: Duration) -> Result<(), ActError> {
    let end = Instant::now() + deadline;
    loop {
        let s = api.status(vmid)?;
        if s.status != "running" && s.lock.as_deref() != Some("suspending") {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(ActError::Service {
                what: format!("vm {vmid}"),
                message: format!("not stopped within {deadline:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The done steps taken back, newest first; what that came to, in words.
fn take_back(api: &Client, done: &[Done], (key, value): (&str, &str)) -> String {
    let mut failed: Vec<String> = Vec::new();
    for d in done.iter().rev() {
        let said = |e: ProxmoxError| e.to_string();
        let r = match d {
            Done::Added(vm) => api.set_config(*vm, key, None).map_err(said),
            Done::Removed(vm) => api.set_config(*vm, key, Some(value)).map_err(said),
            // A save still being written refuses a start: waited for first.
            Done::Hibernated(vm) | Done::ShutDown(vm) => (wait_stopped(api, *vm, SAVE_WAIT)
                .map_err(|e| e.to_string()))
            .and_then(|()| api.start(*vm).map(drop).map_err(said)),
        };
        if let Err(e) = r {
            failed.push(e);
        }
    }
    match (done.is_empty(), failed.is_empty()) {
        (true, _) => "nothing was changed".to_string(),
        (false, true) => format!("taken back: {}", words(done, key)),
        (false, false) => format!("taking back failed too: {}", failed.join("; ")),
    }
}

fn words(done: &[Done], key: &str) -> String {
    (done.iter())
        .map(|d| match d {
            Done::Hibernated(vm) => format!("vm {vm} hibernated"),
            Done::ShutDown(vm) => format!("vm {vm} shut down"),
            Done::Removed(vm) => format!("{key} out of vm {vm}'s configuration"),
            Done::Added(vm) => format!("{key} into vm {vm}'s configuration"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Undo of a planned-restart lend: the key back in the holder's configuration (the borrower
/// hibernated first, the holder started), unless the holder has it already.
pub(super) fn restore(
    api_file: &std::path::Path,
    (holder, borrower): (u32, u32),
    (key, value): (&str, &str),
) -> Result<Option<String>, ActError> {
    let api = Client::from_file(api_file)?;
    if api.config_value(holder, key)?.is_some() {
        return Ok(None);
    }
    move_config(
        &api,
        (borrower, holder),
        (key, value),
        (Release::ShutDown, Duration::from_secs(60)),
    )
    .map(Some)
}

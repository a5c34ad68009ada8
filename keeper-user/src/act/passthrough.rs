//! `rules.gpu_mutex`'s moves: the passthrough GPU unplugged from one VM (QMP `device_del`; the
//! guest ejects it, which can take a while) and plugged into the other (`device_add` with the
//! policy's properties). When the plug fails the device is plugged back where it was. A VM
//! that is not running gets it by a planned restart instead ([`super::planned_restart`]). A
//! lend is journaled before it is made: the exit, or the next keeper's replay, gives the GPU
//! back to its holder.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    ActError, Actuators, Effect,
    journal::Entry,
    planned_restart::{Release, move_config},
};
use crate::device::qmp::{self, Qmp};

/// The two ends of a move.
pub struct Ends {
    pub from_vmid: u32,
    pub to_vmid: u32,
    /// A return to the holder (nothing to journal: that is where the GPU belongs).
    pub back: bool,
    /// The device's value in the Proxmox configurations (`gpu_mutex.config`), for a move to
    /// a VM that is not running.
    pub config: Option<String>,
}

impl Actuators {
    /// Moves `device` from one VM to the other within `deadline` per step.
    pub fn move_gpu(
        &mut self,
        ends: &Ends,
        device: &BTreeMap<String, String>,
        deadline: Duration,
    ) -> Result<Effect, ActError> {
        let id = device.get("id").map_or("", String::as_str);
        let (from, to) = (ends.from_vmid, ends.to_vmid);
        let what = format!("the GPU ({id}) from vm {from} to vm {to}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("move {what}")));
        }
        let (from_sock, to_sock) = (self.socket(from), self.socket(to));
        if !to_sock.exists() {
            return self.restart_move(ends, id, deadline, &what);
        }
        if !ends.back {
            self.journal().record(&Entry::GpuLent {
                holder: from_sock.clone(),
                borrower: to_sock.clone(),
                device: device.clone(),
            })?;
        }
        let unplugged = unplug(&from_sock, id, deadline)?;
        let plugged = plug(&to_sock, device, deadline);
        super::fault::at_kind("gpu_lent", super::fault::Step::Applied);
        if let Err(e) = plugged {
            let back = match unplugged {
                true => match plug(&from_sock, device, deadline) {
                    Ok(()) => format!("plugged back into vm {from}"),
                    Err(b) => format!("and plugging it back into vm {from} failed too: {b}"),
                },
                false => format!("vm {from} did not have it"),
            };
            return Err(ActError::Service {
                what: format!("moving {what}"),
                message: format!("{e}; {back}"),
            });
        }
        Ok(Effect::Done(format!("moved {what}")))
    }

    /// The planned restart, to a VM that is not running: through the Proxmox API, with the
    /// device's configuration value.
    fn restart_move(
        &mut self,
        ends: &Ends,
        id: &str,
        deadline: Duration,
        what: &str,
    ) -> Result<Effect, ActError> {
        let (Some(value), Some(api)) = (&ends.config, &self.proxmox) else {
            return Err(ActError::Service {
                what: format!("moving {what}"),
                message: format!(
                    "vm {} is not running; starting it with the GPU needs `rules.gpu_mutex.config` and `keeper run --proxmox`",
                    ends.to_vmid
                ),
            });
        };
        let ids = (ends.from_vmid, ends.to_vmid);
        // The holder's hibernation journaled before it is asked: one that times out (or a
        // keeper killed meanwhile) leaves the VM to the exit's or the next keeper's undo,
        // which waits for the save and starts it (its lend's undo finds the key still there
        // and does nothing).
        let lend = !ends.back;
        if lend && api.client.status(ids.0)?.status == "running" {
            let file = api.file.clone();
            self.journal().record(&Entry::VmStopped {
                vmid: ids.0,
                api: file,
            })?;
        }
        if lend {
            self.journal().record(&Entry::GpuConfigLent {
                api: api.file.clone(),
                holder: ids.0,
                borrower: ids.1,
                key: id.to_string(),
                value: value.clone(),
            })?;
        }
        let release = match lend {
            true => Release::Hibernate,
            false => Release::ShutDown,
        };
        let moved = move_config(&api.client, ids, (id, value), (release, deadline));
        // The holder running again (given the GPU back, or a failed lend taken back): its
        // hibernation needs no undo.
        let holder = if lend { ids.0 } else { ids.1 };
        let running = || {
            api.client
                .status(holder)
                .is_ok_and(|s| s.status == "running")
        };
        if (moved.is_ok() && !lend) || (moved.is_err() && lend && running()) {
            self.journal().record(&Entry::VmStarted { vmid: holder })?;
        }
        let done = moved?;
        super::fault::at_kind("gpu_config_lent", super::fault::Step::Applied);
        Ok(Effect::Done(done))
    }

    fn socket(&self, vmid: u32) -> PathBuf {
        qmp::socket_of(&self.qmp_dir, vmid)
    }
}

/// `device_del` of `id` and its eject awaited; `false` when the VM is not running or has no
/// such device (nothing to unplug).
fn unplug(socket: &Path, id: &str, deadline: Duration) -> Result<bool, ActError> {
    if !socket.exists() {
        return Ok(false);
    }
    let mut q = Qmp::connect(socket)?;
    if !q.has_device(id)? {
        return Ok(false);
    }
    q.execute("device_del", Some(serde_json::json!({ "id": id })))?;
    wait(&mut q, id, false, deadline)?;
    Ok(true)
}

/// `device_add` with the policy's properties, and the device seen in the machine.
fn plug(
    socket: &Path,
    device: &BTreeMap<String, String>,
    deadline: Duration,
) -> Result<(), ActError> {
    let id = device.get("id").map_or("", String::as_str);
    let mut q = Qmp::connect(socket)?;
    if q.has_device(id)? {
        return Ok(());
    }
    let props: serde_json::Map<String, serde_json::Value> = (device.iter())
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    q.execute("device_add", Some(serde_json::Value::Object(props)))?;
    wait(&mut q, id, true, deadline)
}

/// Polls until the machine has (or no longer has) the device, at most `deadline`.
fn wait(q: &mut Qmp, id: &str, present: bool, deadline: Duration) -> Result<(), ActError> {
    let end = Instant::now() + deadline;
    while q.has_device(id)? != present {
        if Instant::now() >= end {
            let state = if present { "plugged" } else { "ejected" };
            return Err(ActError::Service {
                what: format!("device {id}"),
                message: format!("not {state} within {deadline:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Undo of a lend: the GPU back with its holder, unless it is there already (given back since,
/// or the lend never went through).
pub(super) fn restore_lend(
    holder: &Path,
    borrower: &Path,
    device: &BTreeMap<String, String>,
) -> Result<Option<String>, ActError> {
    let id = device.get("id").map_or("", String::as_str);
    let deadline = Duration::from_secs(30);
    if !holder.exists() {
        // The holder is down: its next start takes the device from its configuration, which
        // a hot-plug lend never changed, if the borrower has given it up. Before, the entry
        // was dropped and the device stayed with the borrower for good.
        if !borrower.exists() || !unplug(borrower, id, deadline)? {
            return Ok(None);
        }
        return Ok(Some(format!(
            "the GPU ({id}) taken from {}: its holder {} is down and takes it at its next start",
            borrower.display(),
            holder.display()
        )));
    }
    if Qmp::connect(holder)?.has_device(id)? {
        return Ok(None);
    }
    unplug(borrower, id, deadline)?;
    plug(holder, device, deadline)?;
    Ok(Some(format!(
        "the GPU ({id}) back with {}",
        holder.display()
    )))
}

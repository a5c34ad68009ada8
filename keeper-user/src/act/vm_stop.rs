//! The memory ladder's last step: stopping a VM by hibernating it through the Proxmox API (its
//! RAM is saved to disk and its memory goes back to the host), and starting it again, which
//! resumes it where it was. Journaled before the call, so that a keeper that exits or crashes
//! starts it again; a refused call closes its journal entry, so nothing is left half-applied;
//! a call that got no answer keeps it (PVE may be hibernating the VM all the same).
//! Only a VM the keeper stopped is ever started by it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{ActError, Actuators, Effect, journal::Entry};
use crate::device::proxmox::Client;

/// The Proxmox API as the actuators use it: the client and the `--proxmox` file it came from
/// (journaled, so that a later keeper can start a VM this one stopped).
pub struct ProxmoxHands {
    pub file: PathBuf,
    pub client: Client,
}

impl Actuators {
    /// Hibernates VM `vmid`. `cgroups`: the workload's, for the scope check.
    pub fn stop_vm(&mut self, vmid: u32, cgroups: &[String]) -> Result<Effect, ActError> {
        self.check_scope_vm(vmid, cgroups)?;
        let Some(api) = &self.proxmox else {
            return Err(ActError::NoApi { vmid });
        };
        let status = api.client.status(vmid)?;
        if status.status != "running" {
            return Ok(Effect::Unchanged(format!(
                "VM {vmid} is {} already: left as it is",
                status.status
            )));
        }
        let what = format!(
            "VM {vmid} hibernated through {} (node {}){}",
            api.client.url(),
            api.client.node(),
            status
                .maxmem
                .map(|m| format!(": {} MiB back to the host once saved", m >> 20))
                .unwrap_or_default()
        );
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        let file = api.file.clone();
        self.journal()
            .record(&Entry::VmStopped { vmid, api: file })?;
        let hibernated = api.client.hibernate(vmid);
        super::fault::at_kind("vm_stopped", super::fault::Step::Applied);
        match hibernated {
            Ok(upid) => {
                self.vms_stopped.insert(vmid);
                Ok(Effect::Done(format!("{what} (task {upid})")))
            }
            // No answer: the node may be saving the VM. It counts as stopped by the keeper
            // (started again when the ladder comes down, at exit, or by the next keeper).
            Err(e) if e.may_have_acted() => {
                self.vms_stopped.insert(vmid);
                Err(e.into())
            }
            Err(e) => {
                self.journal().record(&Entry::VmStarted { vmid })?;
                Err(e.into())
            }
        }
    }

    /// Starts a VM this keeper stopped. A refusal (PVE still saving it) fails the action, and
    /// the engine asks again on the next tick.
    pub fn start_vm(&mut self, vmid: u32) -> Result<Effect, ActError> {
        if !self.vms_stopped.contains(&vmid) {
            return Ok(Effect::Unchanged(format!(
                "VM {vmid} was not stopped by the keeper: left as it is"
            )));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("start VM {vmid}")));
        }
        let Some(api) = &self.proxmox else {
            return Err(ActError::NoApi { vmid });
        };
        match api.client.start(vmid) {
            Ok(upid) => {
                self.vms_stopped.remove(&vmid);
                self.journal().record(&Entry::VmStarted { vmid })?;
                Ok(Effect::Done(format!(
                    "VM {vmid} started again, from its saved state (task {upid})"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a VM none of whose cgroups (`cgroups`: its workload's) is inside the scope.
    pub(super) fn check_scope_vm(&self, vmid: u32, cgroups: &[String]) -> Result<(), ActError> {
        if self.scope.is_some() && !cgroups.iter().any(|c| self.check_scope_cgroup(c).is_ok()) {
            return Err(ActError::OutOfScope {
                what: format!("VM {vmid}"),
                scope: format!("/{}", self.scope.as_deref().unwrap_or("")),
            });
        }
        Ok(())
    }
}

/// How long a restore waits for a hibernation still being written (lock `suspending`).
const SUSPENDING_WAIT: Duration = Duration::from_secs(60);

/// Starts a VM an earlier keeper stopped and did not start again (after a crash, at exit),
/// waiting for a hibernation still being written.
pub(super) fn restore(vmid: u32, file: &Path) -> Result<Option<String>, ActError> {
    let api = Client::from_file(file)?;
    let since = Instant::now();
    let status = loop {
        let status = api.status(vmid)?;
        if status.lock.as_deref() != Some("suspending") || since.elapsed() > SUSPENDING_WAIT {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if status.status == "running" && status.lock.as_deref() != Some("suspending") {
        return Ok(None);
    }
    let upid = api.start(vmid)?;
    Ok(Some(format!(
        "VM {vmid} started again through {} (task {upid})",
        api.url()
    )))
}

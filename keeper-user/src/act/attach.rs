//! The devices the actuators may hold, opened at start from what `keeper run` was told: the
//! GPU (NVML) with cuda-checkpoint, and the Proxmox API. Each says in one line what it found.

use std::path::Path;

use super::{Actuators, gpu::find_checkpoint_tool};
use crate::{
    device::gpu::{self as gpu_dev, Gpu},
    policy::Policy,
};

impl Actuators {
    /// Opens the GPU for the daemon and finds cuda-checkpoint; says in one line what it found.
    /// No GPU: the GPU rules stay inactive and everything else keeps working.
    pub fn attach_gpu(&mut self, lib: Option<&Path>, tool: Option<&Path>) {
        let lib = gpu_dev::library(lib);
        let gpu = match Gpu::open(&lib) {
            Ok(g) => g,
            Err(e) if e.is_no_gpu() => {
                tracing::info!("{e}; GPU rules inactive, everything else keeps working");
                return;
            }
            Err(e) => {
                tracing::warn!("{e}; GPU rules inactive, everything else keeps working");
                return;
            }
        };
        let found = find_checkpoint_tool(tool);
        if let (Some(t), None) = (tool, &found) {
            tracing::warn!(path = %t.display(), "--cuda-checkpoint is not an executable file");
        }
        let handoff = match &found {
            Some(t) => format!("handoff releases VRAM with {}", t.display()),
            None => "cuda-checkpoint not found: a handoff freezes the holder, its VRAM stays held"
                .into(),
        };
        tracing::info!(
            gpu = %gpu.name,
            uuid = %gpu.uuid,
            driver = %gpu.driver,
            library = %gpu.lib.display(),
            "GPU found: GPU rules active; {handoff}"
        );
        self.set_gpu(Some(gpu), found);
    }

    /// Opens the Proxmox API (`--proxmox`) for the memory ladder's last step: a bad file is an
    /// error; a policy that may stop VMs without one is said once at start.
    pub fn attach_proxmox(
        &mut self,
        file: Option<&Path>,
        policy: &Policy,
    ) -> Result<(), crate::device::proxmox::ProxmoxError> {
        let stops = policy
            .rules
            .memory
            .as_ref()
            .is_some_and(|m| m.stop_vm_above.is_some());
        match file {
            Some(file) => {
                let client = crate::device::proxmox::Client::from_file(file)?;
                // Journaled with each stop: absolute, so that a keeper started elsewhere finds it.
                let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
                tracing::info!(url = %client.url(), node = client.node(), "Proxmox API set up: VMs can be stopped (hibernated) by `rules.memory.stop_vm_above`");
                self.proxmox = Some(super::vm_stop::ProxmoxHands { file, client });
            }
            None if stops => tracing::warn!(
                "`rules.memory.stop_vm_above` is set but there is no --proxmox: the ladder's last step (stopping a VM) will fail and be reported; the other steps work"
            ),
            None => {}
        }
        Ok(())
    }
}

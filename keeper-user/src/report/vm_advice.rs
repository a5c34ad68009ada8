//! `keeper check --host` on a VM that owns the trading cores: how many vCPUs it has (its
//! running QEMU's vCPU threads in `qemu.slice/<vmid>.scope`, else its Proxmox configuration,
//! `/etc/pve/qemu-server/<vmid>.conf`), and what more vCPUs than trading CPUs come to: the
//! vCPUs share CPUs, and those sharing one stay at SCHED_OTHER (two real-time vCPUs on one
//! CPU starve each other, and the guest livelocks).

use std::{collections::BTreeSet, path::Path};

use crate::{
    device::{cgroupfs::CgroupFs, pve_config::config_vcpus, vcpus::vcpu_threads},
    policy::Policy,
};

/// Where a VM's vCPU count was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuSource {
    /// Its running QEMU's vCPU threads.
    Running,
    /// Its Proxmox configuration file.
    Config(String),
}

/// VM `vmid`'s vCPUs, and where that was read (`None`: not running, no configuration).
pub fn vm_vcpus(cg: &CgroupFs, pve: &Path, vmid: u32) -> Option<(usize, VcpuSource)> {
    let running: BTreeSet<usize> = (cg.procs(&format!("qemu.slice/{vmid}.scope")).ok())
        .into_iter()
        .flatten()
        .flat_map(vcpu_threads)
        .filter_map(|(_, vcpu)| vcpu)
        .collect();
    if !running.is_empty() {
        return Some((running.len(), VcpuSource::Running));
    }
    let file = pve.join(format!("qemu-server/{vmid}.conf"));
    let text = std::fs::read_to_string(&file).ok()?;
    Some((
        config_vcpus(&text),
        VcpuSource::Config(file.display().to_string()),
    ))
}

/// The advice for the owner of the trading cores, if it is a VM with more vCPUs than trading
/// CPUs.
pub fn vcpu_advice(policy: &Policy, cg: &CgroupFs, pve: &Path) -> Option<String> {
    let owner = policy.workloads.iter().find(|w| w.owns_trading_cores)?;
    let vmid = owner.matcher.vmid?;
    let (vcpus, source) = vm_vcpus(cg, pve, vmid)?;
    let cpus = policy.host.trading_cores.iter().count();
    (vcpus > cpus).then(|| {
        let from = match source {
            VcpuSource::Running => "running".to_string(),
            VcpuSource::Config(f) => format!("by {f}"),
        };
        format!(
            "VM {vmid} ({}) has {vcpus} vCPUs ({from}) for {cpus} trading CPUs ({}): its vCPUs share CPUs, and those sharing one stay at SCHED_OTHER (vcpu_priority applies to a vCPU alone on its CPU; two real-time vCPUs on one CPU starve each other); give it {vcpus} trading CPUs, or the VM {cpus} vCPUs",
            owner.name, policy.host.trading_cores
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_vcpus_than_trading_cpus_is_said_from_the_configuration() {
        let dir = std::env::temp_dir().join(format!("keeper-vm-advice-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pve/qemu-server")).unwrap();
        std::fs::write(
            dir.join("pve/qemu-server/200.conf"),
            "cores: 4\nsockets: 1\n",
        )
        .unwrap();
        let yaml = "version: 1\nhost: { trading_cores: \"1\", housekeeping_cores: \"0\" }\n\
             workloads:\n  - { name: banker, rank: 1, match: { vmid: 200 }, owns_trading_cores: true }\n";
        let facts = crate::policy::HostFacts {
            online_cpus: None,
            for_this_host: false,
        };
        let policy = crate::policy::load(yaml.as_bytes(), &facts).unwrap().policy;
        let cg = CgroupFs::at(dir.join("no-cgroups"));
        let said = vcpu_advice(&policy, &cg, &dir.join("pve")).unwrap();
        assert!(said.contains("VM 200 (banker) has 4 vCPUs"), "{said}");
        assert!(said.contains("for 1 trading CPUs (1)"), "{said}");
        std::fs::write(dir.join("pve/qemu-server/200.conf"), "cores: 1\n").unwrap();
        assert_eq!(vcpu_advice(&policy, &cg, &dir.join("pve")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

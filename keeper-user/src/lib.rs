//! The Keeper: a deterministic resource enforcer for one Proxmox host.
//!
//! The data's trip, one folder per stage:
//! - [`sense`]: eBPF programs and kernel files turned into observations;
//! - [`policy`]: the YAML policy, its checks and its schema;
//! - [`decide`]: the pure engine, (policy, observations, clock) → actions;
//! - [`act`]: actuators that change the host, journaled so every change can be undone;
//! - [`proxmox`]: the Proxmox VE API client (persistent balloon settings, hibernating a VM);
//! - [`daemon`]: `keeper run`, the loop that joins them, and its control socket;
//! - [`cli`]: the `keeper` subcommands.
//!
//! Shared vocabulary: [`cpulist`] (CPU lists such as `1,3-5`) and [`cgroupfs`] (cgroup v2 paths
//! and ids).

pub mod act;
pub mod cgroupfs;
pub mod cli;
pub mod cpulist;
pub mod daemon;
pub mod decide;
pub mod policy;
pub mod proxmox;
pub mod report;
pub mod sense;

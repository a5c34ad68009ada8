//! The Keeper: a deterministic resource enforcer for one Proxmox host.
//!
//! The data's trip, one folder per stage:
//! - [`device`]: clients of the host's devices that both sensing and acting use: cgroupfs,
//!   /proc, QMP, the NVML handle, the Proxmox VE API, and where each workload lives;
//! - [`sense`]: eBPF programs and kernel files turned into observations;
//! - [`policy`]: the YAML policy, its checks, its schema and where it is read from;
//! - [`decide`]: the pure engine, (policy, state, observations, clock) → actions, and what
//!   follows an action's outcome;
//! - [`simulate`]: `keeper simulate`, scenarios replayed through the engine;
//! - [`act`]: actuators that change the host, journaled so every change can be undone;
//! - [`enforcer`]: one pass, observe → decide → act, with the engine's state, the actuators
//!   and what was done (what the daemon's loop calls on each wake-up);
//! - [`report`]: the run record, its renderings and the Prometheus metrics;
//! - [`interface`]: the control socket's requests and answers, typed, and both its ends;
//! - [`daemon`]: `keeper run`, the loop that joins them;
//! - [`cli`]: the `keeper` subcommands.
//!
//! Shared vocabulary: [`cpulist`] (CPU lists such as `1,3-5`).
//!
//! Layers, lowest first (a module imports only from layers below it; `tests::layers` checks):
//! cpulist → policy → decide → device → sense, act, simulate → enforcer → report → interface →
//! daemon → cli.
pub mod act;
pub mod cli;
pub mod cpulist;
pub mod daemon;
pub mod decide;
pub mod device;
pub mod enforcer;
pub mod interface;
pub mod policy;
pub mod report;
pub mod sense;
pub mod simulate;

#[cfg(test)]
mod layers;

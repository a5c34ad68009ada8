//! Sensors: thin adapters that turn kernel state into observations.
//!
//! - [`tracefs`]: tracepoint formats (field offsets for the eBPF programs);
//! - [`ebpf`]: the embedded eBPF object;
//! - [`btf`]: kernel struct offsets from BTF (a task's flags, for the programs);
//! - [`sched`]: the scheduler sensor (run-queue latency and intruders on the trading cores);
//! - [`latency`]: log2 histograms and their percentiles;
//! - [`procfs`]: what /proc says about a task (kernel thread or not, run time);
//! - [`gpu`]: the GPU through NVML (temperature, power, utilization, processes).

pub mod btf;
pub mod ebpf;
pub mod gpu;
pub mod latency;
pub mod memory;
pub mod procfs;
pub mod psi;
pub mod sched;
pub mod tracefs;
pub mod vms;

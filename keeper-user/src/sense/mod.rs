//! Sensors: thin adapters that turn kernel state into observations.
//!
//! - [`tracefs`]: tracepoint formats (field offsets for the eBPF programs);
//! - [`ebpf`]: the embedded eBPF object;
//! - [`btf`]: kernel struct offsets from BTF (a task's flags, for the programs);
//! - [`sched`]: the scheduler sensor (run-queue latency and intruders on the trading cores);
//! - [`latency`]: log2 histograms and their percentiles;
//! - [`host`]: load average, PSI, whether a workload runs;
//! - [`psi`] and [`pressure`]: PSI triggers, on the host and on each workload;
//! - [`memory`]: reclaim stalls and OOM kills (eBPF);
//! - [`noise`]: IRQ and softirq time on the trading cores, by name (eBPF);
//! - [`gpu`]: a GPU readout turned into the engine's observation;
//! - [`vms`]: the VMs on this host through their QMP sockets;
//! - [`observer`]: one tick's observations gathered from all of the above.

pub mod btf;
pub mod ebpf;
pub mod gpu;
pub mod gpu_reader;
pub mod host;
pub mod latency;
pub mod memory;
pub mod noise;
pub mod observer;
pub mod pressure;
pub mod psi;
pub mod sched;
pub mod stays;
pub mod tracefs;
pub mod vms;

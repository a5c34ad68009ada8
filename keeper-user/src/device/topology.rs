//! What the running kernel was booted with and how its CPUs pair up: the kernel command line
//! (/proc/cmdline, parameters before `--`) and each CPU's SMT siblings
//! (`/sys/devices/system/cpu/cpuN/topology/thread_siblings_list`).

use std::{collections::BTreeMap, path::Path};

use crate::cpulist::CpuList;

/// The kernel's boot parameters and the SMT siblings of the CPUs asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootFacts {
    /// `name` → value (`""` for a bare flag), parameters only (not init's arguments).
    pub params: BTreeMap<String, String>,
    /// CPU → the CPUs sharing its physical core (itself included).
    pub siblings: BTreeMap<u32, CpuList>,
}

impl BootFacts {
    /// Reads /proc/cmdline and the siblings of `cpus`; what cannot be read is left out.
    pub fn read(cpus: &CpuList) -> Self {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        BootFacts {
            params: parse_cmdline(&cmdline),
            siblings: siblings(cpus, Path::new(SYSFS_CPU)),
        }
    }
}

/// Where the kernel lists its CPUs.
pub const SYSFS_CPU: &str = "/sys/devices/system/cpu";

/// The SMT siblings of each of `cpus` (itself included), read under `sysfs_cpu`; what cannot be
/// read is left out.
pub fn siblings(cpus: &CpuList, sysfs_cpu: &Path) -> BTreeMap<u32, CpuList> {
    cpus.iter()
        .filter_map(|c| {
            let path = sysfs_cpu.join(format!("cpu{c}/topology/thread_siblings_list"));
            let text = std::fs::read_to_string(path).ok()?;
            Some((c, text.trim().parse().ok()?))
        })
        .collect()
}

/// The kernel's parameters of a command line (those after `--` are init's).
pub fn parse_cmdline(cmdline: &str) -> BTreeMap<String, String> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w.to_string(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_stop_at_init_arguments() {
        let p = parse_cmdline("quiet nohz_full=1-3 isolcpus=managed_irq,domain,1-3 -- --addr x=1");
        assert_eq!(p.get("nohz_full").map(String::as_str), Some("1-3"));
        assert_eq!(p.get("quiet").map(String::as_str), Some(""));
        assert!(!p.contains_key("--addr") && !p.contains_key("x"));
    }
}

//! Interrupt lines: their names (`/proc/interrupts`) and the CPUs each may fire on
//! (`/proc/irq/<n>/smp_affinity_list`, and where it does: `effective_affinity_list`).
//! A managed IRQ (the kernel spreads a multi-queue device's vectors itself) refuses a new
//! affinity (EPERM on 6.x, EIO before).

use std::{io, path::PathBuf};

use crate::cpulist::CpuList;

/// One interrupt line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Irq {
    pub number: u32,
    /// The device's action name(s) (`virtio2-input.0`, `nvme0q1`), or the chip's line.
    pub name: String,
    /// The CPUs it may fire on.
    pub affinity: CpuList,
}

#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("IRQ {irq} ({name}) is managed by the kernel and cannot be moved: {path}: {source}")]
    Managed {
        irq: u32,
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("IRQ {irq} ({name}): {path}: {source}")]
    Io {
        irq: u32,
        name: String,
        path: PathBuf,
        source: io::Error,
    },
}

fn dir(irq: u32) -> PathBuf {
    PathBuf::from(format!("/proc/irq/{irq}"))
}

/// Every numbered IRQ with its name and affinity (those whose files cannot be read, gone
/// between the two reads, are left out).
pub fn list() -> Vec<Irq> {
    names()
        .into_iter()
        .filter_map(|(number, name)| {
            let affinity = affinity(number).ok()?;
            Some(Irq {
                number,
                name,
                affinity,
            })
        })
        .collect()
}

/// Every numbered IRQ's name, from `/proc/interrupts` alone.
pub fn names() -> std::collections::BTreeMap<u32, String> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let cpus = text
        .lines()
        .next()
        .map_or(0, |l| l.split_whitespace().count());
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let (label, rest) = line.split_once(':')?;
            let number = label.trim().parse().ok()?;
            Some((number, name_of(rest, cpus)))
        })
        .collect()
}

/// The name in a `/proc/interrupts` line after its label: past the per-CPU counts, the chip
/// and the line's hardware number and trigger (`PCI-MSIX-0000:00:03.0   1-edge`).
fn name_of(rest: &str, cpus: usize) -> String {
    let fields: Vec<&str> = rest.split_whitespace().skip(cpus).collect();
    match fields.as_slice() {
        [_chip, _hwirq, name @ ..] if !name.is_empty() => name.join(" "),
        other => other.join(" "),
    }
}

/// Where `irq` may fire.
pub fn affinity(irq: u32) -> io::Result<CpuList> {
    let text = std::fs::read_to_string(dir(irq).join("smp_affinity_list"))?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

/// Where `irq` fires now (`None` where the kernel does not say).
pub fn effective(irq: u32) -> Option<CpuList> {
    let text = std::fs::read_to_string(dir(irq).join("effective_affinity_list")).ok()?;
    text.trim().parse().ok()
}

/// Lets `irq` fire only on `cpus`.
pub fn set_affinity(irq: u32, name: &str, cpus: &CpuList) -> Result<(), IrqError> {
    let path = dir(irq).join("smp_affinity_list");
    std::fs::write(&path, cpus.to_string()).map_err(|source| {
        let (irq, name) = (irq, name.to_string());
        // EPERM (the kernel refuses user affinity for the line, 6.x) or EIO (older kernels):
        // a managed line; root is not what is missing.
        if matches!(source.raw_os_error(), Some(libc::EIO | libc::EPERM)) {
            IrqError::Managed {
                irq,
                name,
                path,
                source,
            }
        } else {
            IrqError::Io {
                irq,
                name,
                path,
                source,
            }
        }
    })
}

/// The name of `irq` (its `/proc/interrupts` line), or `irq N` once it is gone.
pub fn name(irq: u32) -> String {
    list()
        .into_iter()
        .find(|i| i.number == irq)
        .map_or_else(|| format!("irq {irq}"), |i| i.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_after_the_counts_the_chip_and_the_line() {
        let line = "          0      10388 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0";
        assert_eq!(name_of(line, 2), "virtio2-input.0");
        let shared = "  5   3  IO-APIC  11-fasteoi   uhci_hcd:usb1, ehci_hcd:usb2";
        assert_eq!(name_of(shared, 2), "uhci_hcd:usb1, ehci_hcd:usb2");
        assert_eq!(name_of("  1  2  weird", 2), "weird");
    }

    #[test]
    fn the_hosts_lines_are_read_with_their_affinity() {
        // Every host has some numbered IRQ (this VM: virtio, the serial port).
        let all = list();
        assert!(!all.is_empty());
        assert!(
            all.iter()
                .all(|i| !i.affinity.is_empty() && !i.name.is_empty())
        );
    }
}

//! Proxmox's guest configurations (`/etc/pve/qemu-server/<vmid>.conf`,
//! `/etc/pve/lxc/<ctid>.conf`, `key: value` lines; `[snapshot]` sections after the current
//! one), the host's physical cores (`thread_siblings_list`) and its NVIDIA GPUs (PCI vendor
//! 0x10de, a display class), for `keeper init` and `keeper check --host`.

use std::path::Path;

use crate::{
    cpulist::CpuList,
    policy::init::{Guest, GuestKind},
};

/// The value of `key` in the current configuration (before the first `[snapshot]`).
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    (text.lines())
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| Some(l.strip_prefix(key)?.strip_prefix(':')?.trim()))
}

/// The vCPUs a VM configuration starts with: `vcpus` where set, else `sockets` × `cores` (1
/// each by default). A container's `cores` (none: all the host's, said as 0).
pub fn config_vcpus(text: &str) -> usize {
    let n = |key| value(text, key).and_then(|v| v.parse().ok());
    n("vcpus").unwrap_or_else(|| n("sockets").unwrap_or(1) * n("cores").unwrap_or(1))
}

/// One configuration file's guest (`id` from the file's name).
pub fn parse_guest(kind: GuestKind, id: u32, text: &str) -> Guest {
    let name = match kind {
        GuestKind::Vm => value(text, "name"),
        GuestKind::Container => value(text, "hostname"),
    };
    let vcpus = match kind {
        GuestKind::Vm => config_vcpus(text),
        GuestKind::Container => value(text, "cores")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let passthrough = (text.lines())
        .take_while(|l| !l.starts_with('['))
        .filter(|l| l.starts_with("hostpci"))
        .filter_map(|l| Some(l.split_once(':')?.1.trim().split(',').next()?.to_string()))
        .collect();
    Guest {
        kind,
        id,
        name: name.unwrap_or_default().to_string(),
        vcpus,
        memory_mib: value(text, "memory").and_then(|v| v.parse().ok()),
        passthrough,
    }
}

/// The guests configured under `pve` (`qemu-server/*.conf`, `lxc/*.conf`), by kind then id;
/// files that are not `<number>.conf` are left out.
pub fn read_guests(pve: &Path) -> std::io::Result<Vec<Guest>> {
    let mut out = Vec::new();
    for (dir, kind) in [
        ("qemu-server", GuestKind::Vm),
        ("lxc", GuestKind::Container),
    ] {
        let Ok(entries) = std::fs::read_dir(pve.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            let id = (path.file_name().and_then(|n| n.to_str()))
                .and_then(|n| n.strip_suffix(".conf"))
                .and_then(|n| n.parse().ok());
            let Some(id) = id else { continue };
            out.push(parse_guest(kind, id, &std::fs::read_to_string(&path)?));
        }
    }
    out.sort_by_key(|g| (g.kind, g.id));
    Ok(out)
}

/// The online CPUs grouped by physical core (each CPU with its SMT siblings), ordered by
/// their first CPU; a CPU whose siblings cannot be read is a core of its own.
pub fn physical_cores(online: &CpuList, sysfs_cpu: &Path) -> Vec<CpuList> {
    let siblings = super::topology::siblings(online, sysfs_cpu);
    let mut cores: Vec<CpuList> = Vec::new();
    for c in online.iter() {
        if cores.iter().any(|k| k.contains(c)) {
            continue;
        }
        let core = (siblings.get(&c))
            .map(|s| s.intersection(online))
            .filter(|s| s.contains(c))
            .unwrap_or_else(|| CpuList::new([c]));
        cores.push(core);
    }
    cores
}

/// The NVIDIA GPUs on the PCI bus (vendor 0x10de, class 0x03xxxx), by address.
pub fn nvidia_gpus(sysfs_pci: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sysfs_pci) else {
        return vec![];
    };
    let read = |p: &Path, f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| read(p, "vendor").trim() == "0x10de" && read(p, "class").starts_with("0x03"))
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_counts_vcpus_then_sockets_times_cores() {
        assert_eq!(config_vcpus("cores: 4\nsockets: 2\n"), 8);
        assert_eq!(config_vcpus("cores: 4\nvcpus: 3\n"), 3);
        assert_eq!(config_vcpus("name: x\n"), 1);
        assert_eq!(config_vcpus("cores: 2\n[snap]\ncores: 8\n"), 2);
    }

    #[test]
    fn a_vm_and_a_container_are_read_as_proxmox_writes_them() {
        let vm = "boot: order=scsi0\ncores: 4\nhostpci0: 0000:01:00.0,pcie=1,x-vga=1\nmemory: 16384\nname: brain\n\n[before-upgrade]\ncores: 2\nhostpci1: 0000:02:00.0\n";
        let g = parse_guest(GuestKind::Vm, 100, vm);
        assert_eq!(
            (g.name.as_str(), g.vcpus, g.memory_mib),
            ("brain", 4, Some(16384))
        );
        assert_eq!(g.passthrough, ["0000:01:00.0"]);
        let ct = "arch: amd64\ncores: 2\nhostname: lab\nmemory: 2048\nswap: 512\n";
        let g = parse_guest(GuestKind::Container, 101, ct);
        assert_eq!(
            (g.name.as_str(), g.vcpus, g.memory_mib),
            ("lab", 2, Some(2048))
        );
    }

    #[test]
    fn cores_group_their_siblings() {
        let dir = std::env::temp_dir().join(format!("keeper-topo-{}", std::process::id()));
        for (c, s) in [(0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")] {
            let d = dir.join(format!("cpu{c}/topology"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("thread_siblings_list"), format!("{s}\n")).unwrap();
        }
        let cores = physical_cores(&"0-3".parse().unwrap(), &dir);
        let text: Vec<String> = cores.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["0,2", "1,3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

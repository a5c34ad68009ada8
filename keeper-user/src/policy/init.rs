//! `keeper init`: a policy written from what a host has (its Proxmox guests, its physical
//! cores, its GPUs), every choice said in a comment beside it. Pure: the facts come in, the
//! file's text goes out; `cli::init` reads the host and checks the text loads.
//!
//! The choices: the trading VM (`--trading-vm`, else the one VM whose name says bank or
//! trad) gets whole physical cores, one per vCPU, from the highest down; the core of CPU 0
//! and every core left over do housekeeping. With SMT, the first thread of each trading core
//! is listed and `smt: reserve_siblings` keeps the others free. Its vCPUs run SCHED_FIFO 1
//! when each has a core of its own. Every other guest is a workload, ranked by id after it.

use std::fmt::Write as _;

use crate::cpulist::CpuList;

/// A Proxmox guest's kind: its configuration folder and its match key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuestKind {
    Vm,
    Container,
}

/// What a guest's configuration says (`device::pve_config` reads it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    pub kind: GuestKind,
    pub id: u32,
    /// `name` (a VM) or `hostname` (a container); may be empty.
    pub name: String,
    /// A VM's vCPUs; a container's `cores` (0: unlimited).
    pub vcpus: usize,
    pub memory_mib: Option<u64>,
    /// PCI devices passed through (`hostpciN`).
    pub passthrough: Vec<String>,
}

/// The host as `keeper init` found it.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub host_name: String,
    /// Physical cores, each with its SMT threads, ordered by first CPU.
    pub cores: Vec<CpuList>,
    pub guests: Vec<Guest>,
    /// NVIDIA GPUs by PCI address.
    pub gpus: Vec<String>,
    /// Where the guests were read (said in the header).
    pub pve: String,
}

/// The trading VM: `asked` (a VMID), else the only VM whose name says bank or trad.
fn trading_vm(inv: &Inventory, asked: Option<u32>) -> Option<&Guest> {
    let vms = || inv.guests.iter().filter(|g| g.kind == GuestKind::Vm);
    if let Some(id) = asked {
        return vms().find(|g| g.id == id);
    }
    let mut named = vms().filter(|g| {
        let n = g.name.to_ascii_lowercase();
        n.contains("bank") || n.contains("trad")
    });
    match (named.next(), named.next()) {
        (Some(g), None) => Some(g),
        _ => None,
    }
}

/// A workload name from a guest's (letters, digits, `-` and `_`), else `vm<id>`/`ct<id>`.
fn workload_name(g: &Guest, taken: &[String]) -> String {
    let clean: String = (g.name.chars())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_ascii_lowercase();
    let prefix = if g.kind == GuestKind::Vm { "vm" } else { "ct" };
    if clean.is_empty() || taken.contains(&clean) {
        format!("{prefix}{}", g.id)
    } else {
        clean
    }
}

/// Every CPU of `cores`.
fn union(cores: &[CpuList]) -> CpuList {
    CpuList::new(cores.iter().flat_map(CpuList::iter))
}

/// The cores chosen: (trading CPUs, housekeeping CPUs, whether SMT siblings are reserved,
/// the comment that says why).
fn choose_cores(inv: &Inventory, vcpus: usize) -> (CpuList, CpuList, bool, String) {
    let all = union(&inv.cores);
    let spare = inv.cores.len().saturating_sub(1); // the core of CPU 0 stays home
    let n = vcpus.min(spare);
    let chosen = &inv.cores[inv.cores.len() - n..];
    let smt = chosen.iter().any(|c| c.len() > 1);
    let trading = CpuList::new(chosen.iter().filter_map(|c| c.iter().next()));
    let housekeeping = all.difference(&union(chosen));
    let why = if n == 0 {
        "this host has one physical core: none to spare for trading".to_string()
    } else if n < vcpus {
        format!(
            "{vcpus} vCPUs, {spare} physical cores to spare (the core of CPU 0 stays home): {n} \
             trading CPUs, so vCPUs share them and those stay SCHED_OTHER; give the VM {n} vCPUs \
             for one core each"
        )
    } else {
        format!("{vcpus} vCPUs: {n} whole physical cores, one per vCPU, from the highest down")
    };
    (trading, housekeeping, smt, why)
}

/// The policy's text for `inv`, the trading VM `asked` (or guessed by name).
pub fn write(inv: &Inventory, asked: Option<u32>) -> String {
    let mut s = String::new();
    let banker = trading_vm(inv, asked);
    let _ = writeln!(
        s,
        "# Written by `keeper init` from this host: {} physical cores, guests in {}, {} NVIDIA GPU(s).",
        inv.cores.len(),
        inv.pve,
        inv.gpus.len()
    );
    s.push_str(
        "# Each choice is said beside it: read it, edit it, then `keeper check --host FILE`.\n\
         # Ranks: 1 is the most important (never frozen, throttled or ballooned); a lower-ranked\n\
         # workload gives way first. Every field: docs/policy.md.\nversion: 1\n\nhost:\n",
    );
    let _ = writeln!(s, "  name: {}", yaml_word(&inv.host_name));
    let (trading, housekeeping, smt, why) = match banker {
        Some(b) => choose_cores(inv, b.vcpus),
        None => {
            let all = union(&inv.cores);
            let why = "no trading VM (name one with `keeper init --trading-vm VMID`): no \
                       trading cores, nothing evicted"
                .to_string();
            (CpuList::default(), all, false, why)
        }
    };
    let _ = writeln!(s, "  # {why}.");
    let _ = writeln!(s, "  trading_cores: \"{trading}\"");
    let _ = writeln!(
        s,
        "  # The rest: the host, its other guests, the keeper itself."
    );
    let _ = writeln!(s, "  housekeeping_cores: \"{housekeeping}\"");
    if smt {
        s.push_str(
            "  # The trading cores' SMT siblings share their execution units: kept free too.\n  \
             smt: reserve_siblings\n",
        );
    }
    write_gpus(&mut s, inv);
    if inv.guests.is_empty() {
        s.push_str("\n# No guest configured here: the keeper observes only.\nworkloads: []\n");
        return s;
    }
    s.push_str("\nworkloads:\n");
    let mut taken: Vec<String> = Vec::new();
    if let Some(b) = banker {
        write_banker(&mut s, b, trading.len(), &mut taken);
    }
    let others = (inv.guests.iter()).filter(|g| Some(g.id) != banker.map(|b| b.id));
    for (rank, g) in (1 + u32::from(banker.is_some())..).zip(others) {
        write_guest(&mut s, g, rank, &mut taken);
    }
    s
}

fn write_gpus(s: &mut String, inv: &Inventory) {
    if inv.gpus.is_empty() {
        s.push_str("  # No NVIDIA GPU here: the GPU rules stay off.\n");
        return;
    }
    for gpu in &inv.gpus {
        let users: Vec<String> = (inv.guests.iter())
            .filter(|g| {
                g.passthrough
                    .iter()
                    .any(|p| gpu.ends_with(p.as_str()) || p.ends_with(gpu.as_str()))
            })
            .map(|g| format!("VM {}", g.id))
            .collect();
        let with = if users.is_empty() {
            "the host's own (NVML reads it here)".to_string()
        } else {
            format!(
                "passed through to {} (its keeper runs there)",
                users.join(", ")
            )
        };
        let _ = writeln!(s, "  # GPU {gpu}: {with}.");
    }
}

fn write_banker(s: &mut String, b: &Guest, trading_cpus: usize, taken: &mut Vec<String>) {
    let name = workload_name(b, taken);
    taken.push(name.clone());
    let _ = writeln!(
        s,
        "  # VM {} ({}), {} vCPUs: the trading VM, first, on its own cores.",
        b.id, b.name, b.vcpus
    );
    let _ = writeln!(
        s,
        "  - name: {name}\n    rank: 1\n    match: {{ vmid: {} }}",
        b.id
    );
    s.push_str("    owns_trading_cores: true\n");
    if trading_cpus > 0 && b.vcpus <= trading_cpus {
        s.push_str(
            "    # Each vCPU has a core of its own: real-time, put back when it lets them go.\n",
        );
        s.push_str("    vcpu_priority: \"fifo:1\"\n");
    } else {
        s.push_str(
            "    # vCPUs would share cores: no real-time priority (two on one core starve each other).\n",
        );
    }
}

fn write_guest(s: &mut String, g: &Guest, rank: u32, taken: &mut Vec<String>) {
    let name = workload_name(g, taken);
    taken.push(name.clone());
    let (kind, key) = match g.kind {
        GuestKind::Vm => ("VM", "vmid"),
        GuestKind::Container => ("container", "ctid"),
    };
    let memory = g.memory_mib.map_or(String::new(), |m| format!(", {m} MiB"));
    let cpus = match (g.kind, g.vcpus) {
        (GuestKind::Container, 0) => "all CPUs".to_string(),
        (GuestKind::Vm, n) => format!("{n} vCPUs"),
        (GuestKind::Container, n) => format!("{n} cores"),
    };
    let gpu = if g.passthrough.is_empty() {
        ""
    } else {
        ", a PCI device passed through"
    };
    let _ = writeln!(
        s,
        "  # {kind} {} ({}): {cpus}{memory}{gpu}. Rank by id: reorder.",
        g.id, g.name
    );
    let _ = writeln!(
        s,
        "  - name: {name}\n    rank: {rank}\n    match: {{ {key}: {} }}",
        g.id
    );
}

/// A host name as a YAML plain word (else quoted).
fn yaml_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        w.to_string()
    } else {
        format!("{w:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HostFacts, load};

    fn vm(id: u32, name: &str, vcpus: usize, passthrough: &[&str]) -> Guest {
        Guest {
            kind: GuestKind::Vm,
            id,
            name: name.into(),
            vcpus,
            memory_mib: Some(4096),
            passthrough: passthrough.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// `n` cores of `threads` each, numbered as Linux numbers them (siblings `c` and `c + n`).
    fn cores(n: u32, threads: u32) -> Vec<CpuList> {
        (0..n)
            .map(|c| CpuList::new((0..threads).map(|t| c + t * n)))
            .collect()
    }

    fn loads(text: &str, online: &str) -> crate::policy::Policy {
        let facts = HostFacts {
            online_cpus: Some(online.parse().unwrap()),
            for_this_host: true,
        };
        match load(text.as_bytes(), &facts) {
            Ok(l) => l.policy,
            Err(d) => panic!("{text}\n{:?}", d.0),
        }
    }

    fn hive(cores: Vec<CpuList>) -> Inventory {
        let mut lab = vm(101, "lab", 0, &[]);
        lab.kind = GuestKind::Container;
        Inventory {
            host_name: "hive".into(),
            cores,
            guests: vec![
                vm(100, "brain", 8, &["0000:01:00.0"]),
                vm(200, "The Banker", 4, &[]),
                vm(300, "sentinel", 2, &[]),
                lab,
            ],
            gpus: vec!["0000:01:00.0".into()],
            pve: "/etc/pve".into(),
        }
    }

    #[test]
    fn the_banker_gets_whole_cores_one_per_vcpu_from_the_top() {
        let text = write(&hive(cores(8, 2)), None);
        let p = loads(&text, "0-15");
        assert_eq!(p.host.trading_cores.to_string(), "4-7", "{text}");
        assert_eq!(p.host.smt, crate::policy::Smt::ReserveSiblings);
        let banker = p.workloads.iter().find(|w| w.owns_trading_cores).unwrap();
        assert_eq!((banker.name.as_str(), banker.rank), ("the-banker", 1));
        assert_eq!(banker.vcpu_fifo, Some(1));
        let ranks: Vec<(&str, u32)> = p
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.rank))
            .collect();
        assert_eq!(
            ranks,
            [("the-banker", 1), ("brain", 2), ("sentinel", 3), ("lab", 4)]
        );
        assert!(
            text.contains("GPU 0000:01:00.0: passed through to VM 100"),
            "{text}"
        );
    }

    #[test]
    fn too_few_cores_share_them_without_a_real_time_priority() {
        let text = write(&hive(cores(2, 1)), None);
        let p = loads(&text, "0-1");
        assert_eq!(p.host.trading_cores.to_string(), "1");
        assert_eq!(p.host.housekeeping_cores.to_string(), "0");
        let banker = p.workloads.iter().find(|w| w.owns_trading_cores).unwrap();
        assert_eq!(banker.vcpu_fifo, None, "{text}");
        assert!(
            text.contains("4 vCPUs, 1 physical cores to spare"),
            "{text}"
        );
    }

    #[test]
    fn no_trading_vm_observes_and_no_guest_at_all_too() {
        let mut inv = hive(cores(4, 1));
        inv.guests[1].name = "banker-1".into();
        inv.guests[2].name = "banker-2".into(); // two candidates: none guessed
        let p = loads(&write(&inv, None), "0-3");
        assert!(p.host.trading_cores.is_empty());
        assert!(p.workloads.iter().all(|w| !w.owns_trading_cores));
        let p = loads(&write(&inv, Some(300)), "0-3");
        assert_eq!(p.host.trading_cores.to_string(), "2-3");
        inv.guests.clear();
        let p = loads(&write(&inv, None), "0-3");
        assert!(p.workloads.is_empty());
    }
}

//! `keeper init`: a policy written from this host (its Proxmox guests in /etc/pve, its
//! physical cores, its NVIDIA GPUs), each choice commented, checked against this host before it
//! is printed or written (`policy::init` makes the text).

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::{
    cpulist::CpuList,
    device::{pve_config, topology},
    policy::{self, HostFacts, init::Inventory},
};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Proxmox's configuration folder (`qemu-server/*.conf`, `lxc/*.conf` read from it).
    #[arg(long, default_value = "/etc/pve")]
    pub pve: PathBuf,
    /// The trading VM (owns the trading cores); default: the one VM whose name says bank or
    /// trad, else none (no trading cores).
    #[arg(long, value_name = "VMID")]
    pub trading_vm: Option<u32>,
    /// Write the policy here instead of printing it (never over an existing file).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let online = CpuList::online().context("reading the online CPUs")?;
    let guests = pve_config::read_guests(&args.pve)
        .with_context(|| format!("reading the guests in {}", args.pve.display()))?;
    if let Some(id) = args.trading_vm
        && !guests
            .iter()
            .any(|g| g.kind == policy::init::GuestKind::Vm && g.id == id)
    {
        anyhow::bail!(
            "--trading-vm {id}: no {}/qemu-server/{id}.conf",
            args.pve.display()
        );
    }
    let inv = Inventory {
        host_name: (std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default())
            .trim()
            .to_string(),
        cores: pve_config::physical_cores(&online, topology::SYSFS_CPU.as_ref()),
        guests,
        gpus: pve_config::nvidia_gpus("/sys/bus/pci/devices".as_ref()),
        pve: args.pve.display().to_string(),
    };
    let text = policy::init::write(&inv, args.trading_vm);
    let facts = HostFacts {
        online_cpus: Some(online),
        for_this_host: true,
    };
    // What it wrote must load here: a failure is the writer's defect, said with the text.
    if let Err(d) = policy::load(text.as_bytes(), &facts) {
        let said: Vec<String> = d.0.iter().map(|x| x.render("keeper init")).collect();
        anyhow::bail!(
            "the policy written does not load:\n{}\n{text}",
            said.join("\n")
        );
    }
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| {
                    format!("creating {} (never over an existing file)", path.display())
                })?;
            f.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "keeper init: wrote {}; read it, then `keeper check --host {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

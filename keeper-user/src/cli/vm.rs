//! `keeper vm list` and `keeper vm balloon VMID SIZE`: the VMs' balloons, by QMP, or with
//! `--proxmox FILE` through the Proxmox API (a balloon set that way stays in the VM's
//! configuration).

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Format, parse_duration};
use crate::{
    device::{proxmox::Client, qmp::Qmp},
    policy::Amount,
    sense::vms::{self, DEFAULT_QMP_DIR},
};

#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// The VMs (by their QMP sockets): vmid, state, balloon actual, maximum memory.
    List {
        #[arg(long, default_value = DEFAULT_QMP_DIR)]
        qmp_dir: PathBuf,
        /// Ask the Proxmox API instead (the file names URL, node, token file, CA or pin).
        #[arg(long, value_name = "FILE")]
        proxmox: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Set a VM's balloon target: SIZE like 512MiB, 4GiB, or a share of its maximum (50%).
    Balloon {
        vmid: u32,
        #[arg(value_parser = parse_size)]
        size: Amount,
        #[arg(long, default_value = DEFAULT_QMP_DIR)]
        qmp_dir: PathBuf,
        /// Set it through the Proxmox API: `balloon:` in the VM's configuration, kept across
        /// restarts (PVE applies it to the running VM too).
        #[arg(long, value_name = "FILE")]
        proxmox: Option<PathBuf>,
        /// Wait until the guest's balloon reaches the target (within 1 MiB), up to this long.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
}

fn parse_size(s: &str) -> Result<Amount, String> {
    s.parse()
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(cmd: &VmCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::List {
            proxmox: Some(file),
            format,
            ..
        } => api_list(&Client::from_file(file)?, *format),
        VmCommand::List {
            qmp_dir, format, ..
        } => list(qmp_dir, *format),
        VmCommand::Balloon {
            vmid,
            size,
            proxmox: Some(file),
            wait,
            ..
        } => api_balloon(&Client::from_file(file)?, *vmid, *size, *wait),
        VmCommand::Balloon {
            vmid,
            size,
            qmp_dir,
            wait,
            ..
        } => balloon(qmp_dir, *vmid, *size, *wait),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.0} MiB", b as f64 / MIB))
}

fn api_list(api: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let mut list = api.vms()?;
    // The list call has no balloon figures; status/current has them for running VMs.
    for vm in list.iter_mut().filter(|v| v.status == "running") {
        *vm = api.status(vm.vmid)?;
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Text => {
            if list.is_empty() {
                println!("no VMs on node {} ({})", api.node(), api.url());
            } else {
                println!(
                    "{:>6} {:<10} {:>14} {:>12}  NAME",
                    "VMID", "STATE", "BALLOON", "MAX"
                );
            }
            for vm in &list {
                let state = match &vm.lock {
                    Some(lock) => format!("{} ({lock})", vm.status),
                    None => vm.status.clone(),
                };
                println!(
                    "{:>6} {:<10} {:>14} {:>12}  {}",
                    vm.vmid,
                    state,
                    mib(vm.balloon),
                    mib(vm.maxmem),
                    vm.name.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks everything against the VM's status first, so that a refused change sends nothing.
fn api_balloon(
    api: &Client,
    vmid: u32,
    size: Amount,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let status = api.status(vmid)?;
    let max = status
        .maxmem
        .with_context(|| format!("VM {vmid}: the API gave no maxmem; cannot resolve {size}"))?;
    let target = check_target(vmid, size, max)?;
    let mib_target = target / (1 << 20);
    api.set_balloon(vmid, mib_target)?;
    println!(
        "VM {vmid}: balloon: {mib_target} in its configuration on node {} (was {}, max {})",
        api.node(),
        mib(status.balloon),
        mib(Some(max))
    );
    if let Some(limit) = wait {
        wait_for_balloon(vmid, target, limit, || {
            Ok(api.status(vmid)?.balloon.unwrap_or(max))
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls `actual` until the guest's balloon is within 1 MiB of `target`, up to `limit`.
fn wait_for_balloon(
    vmid: u32,
    target: u64,
    limit: Duration,
    mut actual: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let now = actual()?;
        if now.abs_diff(target) <= 1 << 20 {
            println!(
                "VM {vmid}: balloon at {:.0} MiB after {:.2} s",
                now as f64 / MIB,
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "VM {vmid}: balloon at {:.0} MiB, not {:.0} MiB, after {limit:?} (does the guest run a balloon driver?)",
                now as f64 / MIB,
                target as f64 / MIB
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_target(vmid: u32, size: Amount, max: u64) -> anyhow::Result<u64> {
    let target = size.resolve(max);
    if target < 1 << 20 {
        bail!("VM {vmid}: a balloon target below 1 MiB would take all its memory; refused");
    }
    if target > max {
        bail!(
            "VM {vmid}: target {:.0} MiB is above its maximum memory {:.0} MiB",
            target as f64 / MIB,
            max as f64 / MIB
        );
    }
    Ok(target)
}

fn list(dir: &std::path::Path, format: Format) -> anyhow::Result<ExitCode> {
    let ids = vms::discover(dir).with_context(|| format!("reading {}", dir.display()))?;
    let list: Vec<_> = ids.into_iter().map(|id| vms::inspect(dir, id)).collect();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Text => {
            if list.is_empty() {
                println!("no VMs (no <vmid>.qmp sockets in {})", dir.display());
            } else {
                println!(
                    "{:>6} {:<10} {:>14} {:>12}",
                    "VMID", "STATE", "BALLOON", "MAX"
                );
            }
            for vm in &list {
                match &vm.error {
                    Some(e) => println!("{:>6} {:<10} {e}", vm.vmid, "?"),
                    None => println!(
                        "{:>6} {:<10} {:>14} {:>12}",
                        vm.vmid,
                        vm.state.as_deref().unwrap_or("?"),
                        mib(vm.balloon_actual_bytes),
                        mib(vm.max_memory_bytes)
                    ),
                }
            }
        }
    }
    Ok(if list.iter().any(|v| v.error.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn balloon(
    dir: &std::path::Path,
    vmid: u32,
    size: Amount,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let socket = vms::socket_of(dir, vmid);
    let mut q = Qmp::connect(&socket)?;
    let max = q.max_memory()?;
    let target = check_target(vmid, size, max)?;
    let before = q.balloon_actual()?;
    q.set_balloon(target)?;
    drop(q); // one client at a time: let go between polls
    println!(
        "VM {vmid}: balloon target {:.0} MiB (was {:.0} MiB, max {:.0} MiB)",
        target as f64 / MIB,
        before as f64 / MIB,
        max as f64 / MIB
    );
    if let Some(limit) = wait {
        // A new session each time: one client at a time.
        wait_for_balloon(vmid, target, limit, || {
            Ok(Qmp::connect(&socket)?.balloon_actual()?)
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

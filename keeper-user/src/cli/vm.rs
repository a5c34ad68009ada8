//! `keeper vm list` and `keeper vm balloon VMID SIZE`: the VMs' balloons, by QMP.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Format, parse_duration};
use crate::{
    act::qmp::Qmp,
    policy::Amount,
    sense::vms::{self, DEFAULT_QMP_DIR},
};

#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// The VMs (by their QMP sockets): vmid, state, balloon actual, maximum memory.
    List {
        #[arg(long, default_value = DEFAULT_QMP_DIR)]
        qmp_dir: PathBuf,
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
        VmCommand::List { qmp_dir, format } => list(qmp_dir, *format),
        VmCommand::Balloon {
            vmid,
            size,
            qmp_dir,
            wait,
        } => balloon(qmp_dir, *vmid, *size, *wait),
    }
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
            let mib =
                |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.0} MiB", b as f64 / MIB));
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
    let target = size.resolve(max);
    if target == 0 {
        bail!("VM {vmid}: a balloon target of 0 bytes would take all its memory; refused");
    }
    if target > max {
        bail!(
            "VM {vmid}: target {:.0} MiB is above its maximum memory {:.0} MiB",
            target as f64 / MIB,
            max as f64 / MIB
        );
    }
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
        let start = Instant::now();
        loop {
            let actual = Qmp::connect(&socket)?.balloon_actual()?;
            if actual.abs_diff(target) <= 1 << 20 {
                println!(
                    "VM {vmid}: balloon at {:.0} MiB after {:.2} s",
                    actual as f64 / MIB,
                    start.elapsed().as_secs_f64()
                );
                break;
            }
            if start.elapsed() > limit {
                bail!(
                    "VM {vmid}: balloon at {:.0} MiB, not {:.0} MiB, after {:?} (does the guest run a balloon driver?)",
                    actual as f64 / MIB,
                    target as f64 / MIB,
                    limit
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `keeper check FILE...`: parse and check policy files; print `FILE:LINE:COL: ...` findings.
use std::{path::PathBuf, process::ExitCode};

use crate::policy::{Diagnostic, HostFacts, Pos, read_capped};

use crate::{cpulist::CpuList, device::topology::BootFacts, report::host_advice::host_advice};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Check for this host: trading or housekeeping cores that are not online here are errors
    /// (without it, warnings); and say what the kernel's boot parameters and SMT siblings give
    /// the trading cores, with the exact parameters a reboot would add.
    #[arg(long)]
    pub host: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let online = CpuList::online().ok();
    let facts = HostFacts {
        online_cpus: online.clone(),
        for_this_host: args.host,
    };
    let mut failed = false;
    if args.host && online.is_none() {
        eprintln!("keeper: warning: cannot read the online CPUs of this host; CPU checks skipped");
    }
    for path in &args.files {
        let name = path.display().to_string();
        let bytes = match read_capped(path) {
            Ok(b) => b,
            Err(e) => {
                failed = true;
                println!(
                    "{}",
                    Diagnostic::error(Pos { line: 1, col: 1 }, format!("cannot read: {e}"))
                        .render(&name)
                );
                continue;
            }
        };
        match crate::policy::load(&bytes, &facts) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    println!("{}", w.render(&name));
                }
                println!("{name}: ok ({} workloads)", loaded.policy.workloads.len());
                if args.host {
                    boot_advice(&name, &loaded.policy.host);
                }
            }
            Err(diags) => {
                failed = true;
                for d in &diags.0 {
                    println!("{}", d.render(&name));
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--host`: what this host's boot gives the policy's trading cores, and what only a reboot
/// can add (advice, not an error: the exit code stays the policy's).
fn boot_advice(name: &str, host: &crate::policy::Host) {
    let boot = BootFacts::read(&host.trading_cores);
    for finding in host_advice(&host.trading_cores, &host.housekeeping_cores, &boot) {
        println!("{name}: host: {finding}");
    }
}

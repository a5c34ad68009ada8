//! `keeper check FILE...`: parse and check policy files; print `FILE:LINE:COL: ...` findings.
use std::{path::PathBuf, process::ExitCode};

use crate::policy::{Diagnostic, HostFacts, Pos, read_capped};

use crate::cpulist::CpuList;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Check for this host: trading or housekeeping cores that are not online here are errors
    /// (without it, warnings).
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

//! `keeper check FILE...` (placeholder until the policy module lands).
use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(_args: &CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keeper check is not implemented yet")
}

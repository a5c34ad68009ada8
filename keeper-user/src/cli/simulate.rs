//! `keeper simulate` (placeholder until the decide module lands).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

pub fn run(_args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keeper simulate is not implemented yet")
}

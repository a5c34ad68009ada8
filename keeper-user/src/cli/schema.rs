//! `keeper schema` (placeholder until the policy module lands).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {}

pub fn run(_args: &SchemaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keeper schema is not implemented yet")
}

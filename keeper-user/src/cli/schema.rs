//! `keeper schema`: print the JSON Schema of the policy file (for editors' YAML plugins).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {}

pub fn run(_args: &SchemaArgs) -> anyhow::Result<ExitCode> {
    let schema = crate::policy::json_schema();
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}

//! `keeper simulate --policy P --scenario S`: replay a scenario through the engine.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::Format;
use crate::policy::{self, HostFacts};
use crate::simulate::{self, scenario};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Policy file (default: the embedded policies/hive.yaml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Scenario file (docs/simulate.md).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let (name, bytes) = match &args.policy {
        Some(p) => (
            p.display().to_string(),
            policy::read_capped(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        None => (
            "<embedded hive.yaml>".to_string(),
            policy::HIVE_YAML.as_bytes().to_vec(),
        ),
    };
    let loaded = match policy::load(&bytes, &HostFacts::default()) {
        Ok(l) => l,
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{}", d.render(&name));
            }
            return Ok(ExitCode::from(1));
        }
    };
    let sname = args.scenario.display().to_string();
    let sbytes = std::fs::read(&args.scenario).with_context(|| format!("reading {sname}"))?;
    let result = scenario::parse(&sbytes).and_then(|s| simulate::run(&loaded.policy, &s));
    let timeline = match result {
        Ok(t) => t,
        Err(scenario::ScenarioError::Parse(d)) => {
            eprintln!("{}", d.render(&sname));
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("{sname}: error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match args.format {
        Format::Text => print!("{}", timeline.render_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&timeline)?),
    }
    Ok(ExitCode::SUCCESS)
}

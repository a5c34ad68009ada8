//! `keeper report FILE [--format text|json|html] [--output FILE]` renders a run record written
//! by `keeper run --report`; `keeper report --live` asks the running daemon for its record so far.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};

use super::run::DEFAULT_SOCKET;
use crate::{
    interface::{Answer, Record, Request, client},
    report::{self, RunRecord},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Text,
    Json,
    /// One self-contained page with inline SVG charts.
    Html,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A run record written by `keeper run --report FILE`.
    #[arg(required_unless_present = "live", conflicts_with = "live")]
    pub file: Option<PathBuf>,
    /// Ask the running keeper (over its control socket) for the record so far.
    #[arg(long)]
    pub live: bool,
    /// The daemon's control socket (with --live).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let record = match &args.file {
        Some(path) => report::read(path)?,
        None => live(&args.socket)?,
    };
    let mut buf = Vec::new();
    match args.format {
        ReportFormat::Text => report::text::write(&mut buf, &record)?,
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut buf, &record)?;
            buf.push(b'\n');
        }
        ReportFormat::Html => buf.extend_from_slice(report::html::render(&record).as_bytes()),
    }
    match &args.output {
        Some(path) => std::fs::write(path, &buf)
            .with_context(|| format!("writing the report {}", path.display()))?,
        None => std::io::stdout().lock().write_all(&buf)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn live(socket: &std::path::Path) -> anyhow::Result<RunRecord> {
    let answer = client::call::<Record>(socket, &Request::Report).with_context(|| {
        format!(
            "is `keeper run` running? (control socket {})",
            socket.display()
        )
    })?;
    match answer {
        Answer::Granted(r) => Ok(r.record),
        Answer::Refused(r) => bail!("the keeper refused: {}", r.error),
    }
}

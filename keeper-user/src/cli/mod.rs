//! The `keeper` subcommands. Each file holds one command's arguments and its body; `main.rs`
//! only parses and dispatches.

pub mod check;
pub mod control;
pub mod gpu;
pub mod init;
pub mod report;
pub mod run;
pub mod schema;
pub mod simulate;
pub mod top;
pub mod vm;
pub mod watch;

use std::time::Duration;

/// Output format of commands that print a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Parses CPU lists like `1`, `2-3,6`.
pub fn parse_cpus(s: &str) -> Result<crate::cpulist::CpuList, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The runtime of a command that waits on the kernel and sockets (`run`, `watch`): one thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Parses durations like `10s`, `1m30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); try 10s, 1m, 250ms"))
}

//! `keeper`: the binary edge. Parses the command line, sets up logging, dispatches to `cli::*`.
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use keeper::cli;

#[derive(Debug, Parser)]
#[command(
    name = "keeper",
    version,
    about = "The Keeper: eBPF resource enforcer for one Proxmox host"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of `keeper run`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the keeper: enforce the policy (default: the embedded policies/hive.yaml).
    Run(Box<cli::run::RunArgs>),
    /// Ask the running keeper for its state.
    Status(cli::control::SocketArgs),
    /// Tell the running keeper a user interaction starts or stops (EVA's preemption trigger).
    Interaction(cli::control::InteractionArgs),
    /// Make the running keeper re-read its policy (a bad policy keeps the old one).
    Reload(cli::control::SocketArgs),
    /// Render a run record (text, JSON or a self-contained HTML page), or the live one.
    Report(cli::report::ReportArgs),
    /// Watch run-queue latency and intruders on CPUs (a runqlat for the trading cores).
    Watch(cli::watch::WatchArgs),
    /// The VMs' balloons, by QMP: `keeper vm list`, `keeper vm balloon VMID SIZE`.
    #[command(subcommand)]
    Vm(cli::vm::VmCommand),
    /// Check policy files; exit 0 when all are valid, 1 when not.
    Check(cli::check::CheckArgs),
    /// Print the JSON Schema of the policy (for editors).
    Schema(cli::schema::SchemaArgs),
    /// Replay a scenario through the decision engine and print the actions.
    Simulate(cli::simulate::SimulateArgs),
    /// Print the live GPU readout (NVML): temperature, power, utilization, processes.
    Gpu(cli::gpu::GpuArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Status(args) => cli::control::status(args),
        Command::Interaction(args) => cli::control::interaction(args),
        Command::Reload(args) => cli::control::reload(args),
        Command::Report(args) => cli::report::run(args),
        Command::Watch(args) => cli::watch::run(args),
        Command::Vm(cmd) => cli::vm::run(cmd),
        Command::Check(args) => cli::check::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Simulate(args) => cli::simulate::run(args),
        Command::Gpu(args) => cli::gpu::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("keeper: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("KEEPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

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
    /// Log format on stderr: `text`, `json`, or `journald` (text with each line's syslog
    /// priority first, `<4>` for a warning: journald stores it at that priority).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
}

// Parsed once per process: the size of `keeper run`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the keeper: enforce the policy (default: /etc/keeper/policy.yaml).
    Run(Box<cli::run::RunArgs>),
    /// Ask the running keeper for its state.
    Status(cli::control::SocketArgs),
    /// Tell the running keeper a user interaction starts or stops (EVA's preemption trigger).
    Interaction(cli::control::InteractionArgs),
    /// Make the running keeper re-read its policy (a bad policy keeps the old one).
    Reload(cli::control::SocketArgs),
    /// A live view of the running keeper: latency and intruders per trading core, workloads,
    /// pressure, the GPU and the last actions, refreshed every second.
    Top(cli::top::TopArgs),
    /// Render a run record (text, JSON or a self-contained HTML page), or the live one.
    Report(cli::report::ReportArgs),
    /// Watch run-queue latency and intruders on CPUs (a runqlat for the trading cores).
    Watch(cli::watch::WatchArgs),
    /// The VMs' balloons, by QMP: `keeper vm list`, `keeper vm balloon VMID SIZE`.
    #[command(subcommand)]
    Vm(cli::vm::VmCommand),
    /// Write a policy from this host: its Proxmox guests, physical cores and GPUs, each
    /// choice commented (`--output FILE`, else printed).
    Init(cli::init::InitArgs),
    /// Check policy files; exit 0 when all are valid, 1 when not.
    Check(cli::check::CheckArgs),
    /// Print the JSON Schema of the policy (for editors).
    Schema(cli::schema::SchemaArgs),
    /// Replay a scenario through the decision engine and print the actions.
    Simulate(cli::simulate::SimulateArgs),
    /// Print the live GPU readout (NVML): temperature, power, utilization, processes.
    Gpu(cli::gpu::GpuArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (keeper.1), or write one page per command into a folder.
    Man {
        /// Write keeper.1 and keeper-COMMAND.1 here instead of printing keeper.1.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
}

/// `keeper completions SHELL`: the script on stdout (the .deb installs bash, zsh and fish).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "keeper", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `keeper man [--out DIR]`: roff man pages from the same definitions as `--help`.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir)?;
    let write = |name: String, page: clap::Command| -> anyhow::Result<()> {
        let mut file = std::fs::File::create(dir.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).render(&mut file)?;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("keeper-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name))?;
    }
    write("keeper".into(), cmd)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Kill points of a test build (`--features failpoints`); nothing in a shipped binary.
    let _faults = keeper::act::fault::setup();
    let result = match &cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Status(args) => cli::control::status(args),
        Command::Interaction(args) => cli::control::interaction(args),
        Command::Reload(args) => cli::control::reload(args),
        Command::Top(args) => cli::top::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Watch(args) => cli::watch::run(args),
        Command::Vm(cmd) => cli::vm::run(cmd),
        Command::Init(args) => cli::init::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Simulate(args) => cli::simulate::run(args),
        Command::Gpu(args) => cli::gpu::run(args),
        Command::Completions { shell } => completions(*shell),
        Command::Man { out } => man(out.as_deref()),
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
    use std::io::IsTerminal as _;
    if let LogFormat::Journald = format {
        return journald(filter());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
}

/// `KEEPER_LOG` (an `EnvFilter`), else `info`.
fn filter() -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_env("KEEPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// `--log-format journald`: text lines on stderr, each prefixed with its syslog priority (error
/// `<3>`, warn `<4>`, info `<6>`, debug and trace `<7>`), which journald takes as the line's
/// priority (systemd's `SyslogLevelPrefix=`, on by default; sd-daemon(3)); no timestamp (the
/// journal has its own) and no colour. The fields stay in the line, where `journalctl -u keeper`
/// shows them (journald's native fields would hide an action's outcome from its default view:
/// docs/decisions/0036).
fn journald(filter: tracing_subscriber::EnvFilter) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Prioritized(
            tracing_subscriber::fmt::format().without_time(),
        ))
        .init();
}

/// An event format with the syslog priority prefix before the inner format's line.
struct Prioritized<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prioritized<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

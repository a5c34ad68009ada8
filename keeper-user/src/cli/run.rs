//! `keeper run`: the enforcement daemon (see `daemon`).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;

use super::{parse_cpus, parse_duration};
use crate::{
    cpulist::CpuList,
    daemon::{self, DaemonConfig, PolicySource},
};

pub const DEFAULT_SOCKET: &str = "/run/keeper/keeper.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keeper";
/// The policy `keeper run` reads without `--policy`: the package's conffile.
pub const DEFAULT_POLICY: &str = "/etc/keeper/policy.yaml";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy file; default: /etc/keeper/policy.yaml (the package's, which observes only
    /// until it is edited; `keeper init` writes one from this host).
    #[arg(long, default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Trading cores, overriding the policy's (the rest of the online CPUs do housekeeping).
    #[arg(long, value_parser = parse_cpus)]
    pub trading_cores: Option<CpuList>,
    /// A cgroup (relative to the cgroup v2 mount) that owns the trading cores at all times,
    /// overriding the policy's owner. Repeatable: the others are protected too.
    #[arg(long)]
    pub protect: Vec<String>,
    /// Act only on tasks and cgroups inside this cgroup subtree; the rest is observed only.
    #[arg(long)]
    pub scope: Option<String>,
    /// Decide and log, change nothing (and journal nothing).
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this long (e.g. 30s, 2h); default: until SIGINT/SIGTERM.
    #[arg(long = "for", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write the run record (JSON) here on exit.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also allow this uid on the control socket (root always is; the socket is then mode
    /// 0666, each peer's uid checked). Repeatable.
    #[arg(long)]
    pub allow_uid: Vec<u32>,
    /// Also allow the members of this group (a name or a gid) on the control socket: the
    /// socket is then the group's, mode 0660 (the unit's `keeper` group).
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Option<String>,
    /// Where the crash-safety journal lives.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Decision period (actions also run at once on intruder events and control requests).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub tick: Duration,
    /// Serve Prometheus metrics on GET /metrics at this address (a bare port means
    /// 127.0.0.1:PORT). Off by default.
    #[arg(long, value_parser = crate::report::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the VMs' QMP sockets are (`<vmid>.qmp`), for ballooning.
    #[arg(long, default_value = crate::sense::vms::DEFAULT_QMP_DIR)]
    pub qmp_dir: PathBuf,
    /// The memory pressure the memory rules act on: the host's, or a slice's
    /// `memory.pressure` (e.g. /sys/fs/cgroup/qemu.slice/memory.pressure).
    #[arg(long, default_value = "/proc/pressure/memory")]
    pub memory_psi: PathBuf,
    /// NVML library to load (default: $KEEPER_NVML_LIB, else the system's libnvidia-ml.so.1).
    /// Without a GPU the GPU rules stay inactive.
    #[arg(long)]
    pub nvml_lib: Option<PathBuf>,
    /// cuda-checkpoint for the GPU handoff (default: found on PATH; absent: VRAM stays held).
    #[arg(long)]
    pub cuda_checkpoint: Option<PathBuf>,
    /// The Proxmox API (YAML: url, node, token_file, ca_file or fingerprint; docs/vms.md), for
    /// the memory ladder's last step: stopping (hibernating) the lowest-ranked VM.
    #[arg(long, value_name = "FILE")]
    pub proxmox: Option<PathBuf>,
}

/// A group's id: a number as it is, a name through the system's group database (NSS).
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => anyhow::bail!("--allow-group {group}: no such group"),
        Err(e) => anyhow::bail!("--allow-group {group}: {e}"),
    }
}

/// The policy file is there; else what to do about it, said plainly.
fn policy_exists(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let how = if path == std::path::Path::new(DEFAULT_POLICY) {
        "write one from this host with `keeper init --output /etc/keeper/policy.yaml` (then \
         read and edit it), install the package (its policy observes only), or name another \
         with --policy (examples: /usr/share/keeper/policies, policies/ in the source tree)"
    } else {
        "name an existing file with --policy"
    };
    anyhow::bail!("no policy at {}: {how}", path.display())
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let gid = args.allow_group.as_deref().map(group_id).transpose()?;
    policy_exists(&args.policy)?;
    // Before anything else grows the heap: the eBPF loader's one read of the kernel's BTF
    // (the daemon's RSS peak is this read over what the process holds by then).
    crate::sense::ebpf::prepare_loader();
    let cfg = DaemonConfig {
        source: PolicySource {
            file: Some(args.policy.clone()),
            trading_cores: args.trading_cores.clone(),
            protect: args.protect.clone(),
        },
        scope: args.scope.clone(),
        dry_run: args.dry_run,
        duration: args.duration,
        state_dir: args.state_dir.clone(),
        socket: args.socket.clone(),
        access: crate::interface::server::Access::new(&args.allow_uid, gid),
        tick: args.tick,
        metrics: args.metrics,
        qmp_dir: args.qmp_dir.clone(),
        memory_psi: args.memory_psi.clone(),
        nvml_lib: args.nvml_lib.clone(),
        cuda_checkpoint: args.cuda_checkpoint.clone(),
        proxmox: args.proxmox.clone(),
    };
    let rt = super::runtime()?;
    let record = rt.block_on(daemon::run(cfg))?;
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&record)?;
        std::fs::write(path, text)
            .with_context(|| format!("writing the report {}", path.display()))?;
        tracing::info!(report = %path.display(), "run record written");
    }
    Ok(ExitCode::SUCCESS)
}

//! `cargo xtask`: set-up, build, run, test and benchmarks for The Keeper.
//!
//! Every command installs what it needs (Debian packages, nightly's rust-src, bpf-linker)
//! first, idempotently, so that on a fresh machine `cargo xtask run` and `cargo xtask test`
//! are the only two commands an operator types.

mod bench;
mod package;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Packages the tests and benchmarks use.
const TEST_PACKAGES: &[&str] = &[
    "stress-ng",
    "rt-tests",
    "bpftool",
    "bpftrace",
    "qemu-system-x86",
    // The host guest's root file system (vm-test's `host`): built from Debian's packages,
    // booted under a copy-on-write overlay, its second disk an ext4 image made from a folder.
    "mmdebstrap",
    "qemu-utils",
    "e2fsprogs",
    "busybox-static",
    "cpio",
    "kmod",
    // Renders the HTML report in the report test (headless screenshot).
    "chromium",
    // promtool: checks and unit-tests the alerting rules, lints a live /metrics.
    "prometheus",
    // Drives `keeper top` in a real terminal (send-keys, capture-pane).
    "tmux",
    // dockerd, containerd, runc and the docker CLI for the Docker matcher's test, which starts
    // its own engine (tests/tests/docker.rs). On a systemd host the package also enables and starts
    // the system's docker.service; the test does not use it.
    "docker.io",
];

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain if missing and build the eBPF object into target/bpf/keeper.o.
    BuildEbpf,
    /// Build the keeper (release) and run `keeper run` with the embedded default policy.
    Run {
        /// Arguments passed to `keeper run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole suite: rustfmt, clippy (host and eBPF), unit and privileged tests, vm-test.
    Test,
    /// Boot Debian's 6.1 and trixie's 6.12 cloud kernels in QEMU (TCG) with full cgroup v2 and run the guest tests.
    VmTest {
        /// Boot only this guest: `6.1` (tests/vm/guest.sh), `6.12` (tests/vm/current.sh) or
        /// `host` (systemd as PID 1, the .deb, LXC, a 4-vCPU Banker: tests/vm/host.sh).
        #[arg(long, value_parser = ["6.1", "6.12", "host"])]
        only: Option<String>,
    },
    /// Build a Debian package (binary, systemd unit, default policy, docs) in target/deb/.
    Package,
    /// The chaos suite for MINUTES (a keeper killed at random under churn, then checked for
    /// anything left behind); its figures go in docs/BENCHMARKS.md. `cargo xtask test` runs a
    /// 40-second form.
    Chaos {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Replays the run of this seed (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
        /// The crash-consistency harness instead, whole: a keeper built with kill points
        /// killed at each step of each kind of change, at the exit and at a start's replay,
        /// the host compared with its snapshot after each (`cargo xtask test` runs the steps
        /// at the exit only).
        #[arg(long)]
        faults: bool,
    },
    /// Benchmarks; results go in docs/BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::BuildEbpf => build_ebpf(&root).map(|p| println!("{}", p.display())),
        Cmd::Run { args } => {
            setup::ensure_ebpf_toolchain()?;
            run(cargo().args(["build", "--release", "-p", "keeper-user", "--bin", "keeper"]))?;
            let keeper = root.join("target/release/keeper");
            eprintln!(
                "xtask: starting `keeper run {}` (Ctrl-C stops it and undoes what it changed).\n\
                 xtask:   watch it from another shell: {k} top (live view), {k} status, \
                 {k} report --live\n\
                 xtask:   try it safely: --dry-run (decides, changes nothing), --scope CGROUP \
                 (touches nothing outside it), or the demo policy policies/demo.yaml, which \
                 protects a cgroup you create (docs/run.md)",
                args.join(" "),
                k = keeper.display()
            );
            let mut c = Command::new(&keeper);
            c.arg("run");
            // The Hive's policy of the source tree, unless the arguments name one (`keeper
            // run` alone reads /etc/keeper/policy.yaml, the installed package's).
            if !args
                .iter()
                .any(|a| a == "--policy" || a.starts_with("--policy="))
            {
                c.args(["--policy", "policies/hive.yaml"]);
            }
            c.args(&args);
            run(&mut c)
        }
        Cmd::Test => test(),
        Cmd::Package => {
            setup::ensure_ebpf_toolchain()?;
            package::deb(&root).map(|p| println!("{}", p.display()))
        }
        Cmd::VmTest { only } => {
            setup::ensure_ebpf_toolchain()?;
            setup::ensure_apt(TEST_PACKAGES)?;
            vm::run(&root, only.as_deref())
        }
        Cmd::Chaos { faults: true, .. } => {
            setup::ensure_ebpf_toolchain()?;
            setup::ensure_apt(TEST_PACKAGES)?;
            run(cargo().args(["build", "-p", "keeper-user", "--bins"]))?;
            build_faulty_keeper(false)?;
            run(cargo()
                .args(["test", "-p", "integration-test", "--test", "faults", "--"])
                .args(["--nocapture", "--test-threads=1"])
                .env("KEEPER_FAULTS", "all"))
        }
        Cmd::Chaos { minutes, seed, .. } => {
            setup::ensure_ebpf_toolchain()?;
            setup::ensure_apt(TEST_PACKAGES)?;
            run(cargo().args(["build", "-p", "keeper-user", "--bins"]))?;
            let mut c = cargo();
            c.args(["test", "-p", "integration-test", "--test", "chaos", "--"])
                .args(["--nocapture", "--test-threads=1"])
                .env("KEEPER_CHAOS_SECONDS", (minutes * 60.0).to_string());
            if let Some(seed) = seed {
                c.env("KEEPER_CHAOS_SEED", seed.to_string());
            }
            run(&mut c)
        }
        Cmd::Bench { which } => {
            setup::ensure_ebpf_toolchain()?;
            setup::ensure_apt(TEST_PACKAGES)?;
            bench::run(&root, which)
        }
    }
}

/// The keeper with its kill points (`--features failpoints`) for the crash-consistency
/// harness (tests/tests/faults.rs), in a target directory of its own: the shipped build in
/// target/debug never has them.
/// `release`: the guest's build (vm-test's `faults-cgroup-v2`), in target/faults/release.
pub fn build_faulty_keeper(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.arg("build").args(release.then_some("--release"));
    run(c
        .args([
            "-p",
            "keeper-user",
            "--bin",
            "keeper",
            "--features",
            "failpoints",
        ])
        .args(["--target-dir", "target/faults"]))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A command with PATH set so the private bpf-linker is found.
/// Sends each line `from` gives to `to`, on a thread of its own, until either side ends (a
/// child's output read while the caller waits for a line).
pub fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    to: std::sync::mpsc::Sender<String>,
) {
    use std::io::BufRead as _;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    if let Ok(path) = setup::path_with_bpf_linker() {
        c.env("PATH", path);
    }
    c
}

/// Stable cargo (the workspace's host toolchain).
pub fn cargo() -> Command {
    cmd("cargo")
}

pub fn run(c: &mut Command) -> anyhow::Result<()> {
    let status = c
        .status()
        .with_context(|| format!("starting {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// Builds keeper-ebpf on its own (the keeper embeds the same object through its build script).
fn build_ebpf(root: &Path) -> anyhow::Result<PathBuf> {
    setup::ensure_ebpf_toolchain()?;
    run(cmd("cargo")
        .args([
            "+nightly",
            "build",
            "-p",
            "keeper-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        ))?;
    let built = root.join("target/bpfel-unknown-none/release/keeper");
    let dest = root.join("target/bpf/keeper.o");
    std::fs::create_dir_all(root.join("target/bpf"))?;
    std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
    Ok(dest)
}

fn test() -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if setup::is_root() {
        setup::ensure_apt(TEST_PACKAGES)?;
    } else if ci {
        bail!("CI=true: the privileged tests must run, so `cargo xtask test` must run as root");
    } else {
        eprintln!(
            "xtask: NOT ROOT — apt packages are not installed and privileged tests will be SKIPPED (loudly)"
        );
    }
    setup::ensure_ebpf_toolchain()?;
    eprintln!("xtask: rustfmt");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    eprintln!("xtask: clippy (host)");
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "keeper-ebpf",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"]))?;
    eprintln!("xtask: clippy (eBPF, nightly)");
    run(cmd("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "keeper-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        ))?;
    if setup::is_root() {
        // The guest kernel, for the balloon test and vm-test (fetched once, then cached), and
        // the balloon test's guest.
        let k = vm::kernel::ensure()?;
        vm::initramfs::balloon_guest(&k.modules, &vm::initramfs::cached_balloon_guest())?;
    }
    eprintln!("xtask: tests");
    // The end-to-end tests (tests/, the integration-test crate) run keeper-user's binaries,
    // which cargo builds for another package only when asked.
    run(cargo().args(["build", "-p", "keeper-user", "--bins"]))?;
    build_faulty_keeper(false)?;
    // Privileged tests share CPU 1 and the kernel's tracepoints: one at a time.
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "keeper-ebpf",
        "--",
        "--test-threads=1",
    ]))?;
    // The trading-core tests again with the roles swapped (trading CPU 0, housekeeping 1): no
    // test may assume which CPU trades (issue 31).
    eprintln!("xtask: the trading-core tests with the roles swapped (KEEPER_TEST_ROLES=swapped)");
    run(cargo()
        .args(["test", "-p", "integration-test"])
        .args([
            "--test",
            "real_time",
            "--test",
            "eviction_path",
            "--test",
            "banker_vm",
        ])
        .args(["--", "--test-threads=1"])
        .env("KEEPER_TEST_ROLES", "swapped"))?;
    eprintln!("xtask: vm-test (Debian 6.1 and trixie 6.12 cloud kernels in QEMU, full cgroup v2)");
    if setup::is_root() {
        vm::run(&workspace_root(), None)
    } else {
        // Not reached under CI=true (refused above).
        eprintln!("xtask: NOT ROOT — vm-test SKIPPED (it downloads the guest kernel with apt)");
        Ok(())
    }
}

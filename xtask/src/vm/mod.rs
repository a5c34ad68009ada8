//! `cargo xtask vm-test`: the other kernels, with full cgroup v2. Boots Debian's 6.1 cloud
//! kernel in QEMU (TCG; KVM hangs on these machines) with an initramfs carrying the keeper,
//! and runs tests/vm/guest.sh there: the same eBPF object loads, the trading core becomes a
//! cpuset partition, cpu.max and memory.high take effect, freeze/thaw, restore after `kill -9`.
//! Then trixie's 6.12 runs tests/vm/current.sh: the keeper inside the GPU VM, the kernel-work
//! guards, a remote partition and its repair, and the hardware watchdog on an emulated
//! i6300esb; and boots once more on an SMT topology for tests/vm/smt.sh (the sibling advice,
//! `host.smt: reserve_siblings`).

pub mod host;
pub mod initramfs;
pub mod kernel;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cargo;

/// The checks guest.sh must report as passed (by the first word after PASS).
const CHECKS: &[&str] = &[
    "ebpf-loads",
    "arrivals-from-the-task",
    "noise-measured",
    "irq-named",
    "irq-guard",
    "partition",
    "cpu.max+memory.high",
    "freeze",
    "thaw",
    "oom-and-reclaim",
    "memory-high-held",
    "frozen-before-oom",
    "ladder-undone",
    "protected-untouched",
    "still-applied-after-kill9",
    "restore-after-kill9",
    "own-mask-kept-mid-run",
    "own-mask-kept",
    "psi-trigger",
    "protected-pressure",
    "repin-refused-by-cpuset",
    "rt-intruder-demoted",
];

/// The second guest's checks (Debian trixie's 6.12 kernel: the keeper inside the GPU VM on the
/// fake NVML library, a remote cpuset partition, an emulated i6300esb).
const CURRENT_CHECKS: &[&str] = &[
    "ebpf-loads-6.12",
    "brain-vm-thermal-guard",
    "brain-vm-undone",
    "kernel-work-guarded-6.12",
    "kernel-work-undone-6.12",
    "remote-partition",
    "partition-repaired",
    "remote-partition-undone",
    "rt-intruder-demoted-6.12",
    "faults-cgroup-v2",
    "watchdog-armed",
    "watchdog-fed",
    "watchdog-disarmed",
    "watchdog-reset",
];

/// The third boot's checks (6.12 on an SMT topology: two physical cores of two threads).
const SMT_CHECKS: &[&str] = &["smt-advice", "smt-sibling-reserved", "smt-undone"];

/// How a guest boots: its CPUs (QEMU's `-smp`) and the script /init runs (`None`: the one
/// its initramfs was built for).
struct Guest<'a> {
    smp: &'a str,
    script: Option<&'a str>,
    /// `name=value` words for the kernel command line (/init's environment).
    vars: &'a str,
    /// How long the guest may take to say `VMTEST DONE`.
    timeout: Duration,
    /// QEMU's `-accel`. Single-threaded TCG for the checks: multi-threaded TCG on a busy
    /// 2-CPU host stalled guests (RCU stalls, soft lockups) and was no faster here. The bench
    /// takes multi-threaded TCG on an otherwise idle host: one host thread per vCPU, so that
    /// what runs on the guest's CPU 0 does not take CPU 1's emulation time.
    accel: &'a str,
}

const PLAIN: Guest = Guest {
    smp: "2",
    script: None,
    vars: "",
    timeout: TIMEOUT,
    accel: "tcg,thread=single",
};

const TIMEOUT: Duration = Duration::from_secs(300);

/// The keeper built with `--features failpoints` (release, in target/faults), copied as
/// `keeper-faulty` so that the guest has both.
fn faulty_keeper(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    crate::build_faulty_keeper(true)?;
    let faulty = root.join("target/faults/release/keeper-faulty");
    std::fs::copy(root.join("target/faults/release/keeper"), &faulty)?;
    Ok(faulty)
}

/// Every guest, or the one `only` names (`6.1`, `6.12` or `host`).
pub fn run(root: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bins"]))?;
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let bins = ["keeper", "keeper-probe"].map(|b| root.join("target/release").join(b));
    if only == Some("host") {
        return run_host(root, started);
    }
    if only != Some("6.12") {
        let kernel = kernel::ensure()?;
        let initrd = work.join("initramfs.gz");
        initramfs::build(root, &bins, &initrd)?;
        boot(&kernel, &initrd, &PLAIN, &[], None)?.verdict(CHECKS, &kernel.release)?;
    }
    if only == Some("6.1") {
        return Ok(());
    }
    // The hardware watchdog on an emulated i6300esb, whose firing QEMU turns into a reset
    // (and -no-reboot into QEMU's exit); QMP says which action the watchdog took.
    let current = kernel::ensure_suite(kernel::Suite::Trixie)?;
    let current_initrd = work.join("current-initramfs.gz");
    // The keeper inside the GPU VM runs there too, on the fake NVML library.
    crate::run(cargo().args(["build", "--release", "-p", "fake-nvml"]))?;
    let mut with_gpu = bins.to_vec();
    with_gpu.push(root.join("target/release/libnvidia_ml_fake.so"));
    // The keeper with its kill points, for the crash-consistency check (faults-cgroup-v2).
    with_gpu.push(faulty_keeper(root)?);
    initramfs::build_current(root, &with_gpu, &current.modules, &current_initrd)?;
    let qmp = work.join("watchdog.qmp");
    let _ = std::fs::remove_file(&qmp);
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
    let extra = [
        "-device",
        "i6300esb",
        "-action",
        "watchdog=reset",
        "-qmp",
        &qmp_arg,
    ];
    boot(&current, &current_initrd, &PLAIN, &extra, Some(&qmp))?
        .verdict(CURRENT_CHECKS, &current.release)?;
    let smt = Guest {
        smp: "4,sockets=1,cores=2,threads=2",
        script: Some("smt.sh"),
        ..PLAIN
    };
    boot(&current, &current_initrd, &smt, &[], None)?.verdict(SMT_CHECKS, &current.release)?;
    // The real host: systemd as PID 1, the .deb, LXC, the 4-vCPU Banker (issue 31).
    let deb = crate::package::deb(root)?;
    host::run(root, &current, &deb)?;
    eprintln!(
        "xtask: vm-test: all checks passed in {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The host guest (trixie's 6.12 kernel, systemd, the `.deb`): tests/vm/host.sh.
fn run_host(root: &Path, started: Instant) -> anyhow::Result<()> {
    let current = kernel::ensure_suite(kernel::Suite::Trixie)?;
    let deb = crate::package::deb(root)?;
    host::run(root, &current, &deb)?;
    eprintln!(
        "xtask: vm-test: all checks passed in {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask bench isolation --guest`: the 6.1 guest (full cgroup v2: the partition path)
/// runs tests/vm/bench.sh with `rounds` rounds of `secs` seconds; its `BENCH` lines.
pub fn bench(root: &Path, rounds: usize, secs: u64) -> anyhow::Result<Vec<String>> {
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let bins = ["keeper", "keeper-probe"].map(|b| root.join("target/release").join(b));
    let kernel = kernel::ensure()?;
    let initrd = work.join("bench-initramfs.gz");
    initramfs::build(root, &bins, &initrd)?;
    let log = std::env::var_os("KEEPER_BENCH_LOG").map_or("", |_| " bench_log=1");
    let vars = format!("bench_rounds={rounds} bench_secs={secs}{log}");
    let guest = Guest {
        script: Some("bench.sh"),
        vars: &vars,
        // Booting, then per round four measures and two keepers' starts under TCG.
        timeout: Duration::from_secs(120 + rounds as u64 * (4 * secs + 180)),
        accel: "tcg,thread=multi",
        ..PLAIN
    };
    let b = boot(&kernel, &initrd, &guest, &[], None)?;
    Ok(b.bench)
}

/// What a guest reported.
struct Boot {
    passed: Vec<String>,
    failed: Vec<String>,
    /// Its `BENCH` lines (without the word).
    bench: Vec<String>,
    elapsed: f64,
}

impl Boot {
    /// Every check passed, or an error naming the ones that did not.
    fn verdict(&self, checks: &[&str], release: &str) -> anyhow::Result<()> {
        let missing: Vec<&str> = (checks.iter().copied())
            .filter(|c| !self.passed.iter().any(|p| p == c))
            .collect();
        if !self.failed.is_empty() || !missing.is_empty() {
            bail!(
                "vm-test ({release}): failed: {:?}; not passed: {missing:?}",
                self.failed
            );
        }
        eprintln!(
            "xtask: vm-test: all {} checks passed on {release} in {:.1} s (guest)",
            checks.len(),
            self.elapsed
        );
        Ok(())
    }
}

/// Boots `kernel` with `initrd` (TCG, `guest`'s CPUs and script, 1 GiB, `extra` QEMU arguments) and reads the
/// guest's `VMTEST` lines until `VMTEST DONE`. A guest that said `VMTEST RESET-EXPECTED N`
/// (seconds of watchdog timeout) must then be reset by its watchdog: QEMU exits (-no-reboot)
/// within 2N + 30 s, after a WATCHDOG event on `qmp`.
fn boot(
    kernel: &kernel::Kernel,
    initrd: &Path,
    guest: &Guest,
    extra: &[&str],
    qmp: Option<&Path>,
) -> anyhow::Result<Boot> {
    eprintln!(
        "xtask: vm-test: booting {} (TCG, -smp {}, 1 GiB{})",
        kernel.release,
        guest.smp,
        guest.script.map_or(String::new(), |s| format!(", {s}"))
    );
    let append = match guest.script {
        Some(s) => format!(
            "console=ttyS0 quiet panic=-1 vmtest_script={s} {}",
            guest.vars
        ),
        None => "console=ttyS0 quiet panic=-1".to_string(),
    };
    let boot = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            guest.accel,
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            guest.smp,
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(extra)
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt package qemu-system-x86)")?;
    let out = qemu.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    crate::forward_lines(out, tx.clone());
    if let Some(qmp) = qmp {
        qmp_events(qmp.to_path_buf(), tx);
    }
    let mut b = Boot {
        passed: vec![],
        failed: vec![],
        bench: vec![],
        elapsed: 0.0,
    };
    let mut done = None;
    let mut reset: Option<(Instant, u64)> = None;
    while done.is_none() {
        let left = guest.timeout.saturating_sub(boot.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("guest| {line}");
                if let Some(rest) = line.strip_prefix("VMTEST PASS ") {
                    b.passed
                        .push(rest.split_whitespace().next().unwrap_or("").to_string());
                } else if let Some((_, rest)) = line.split_once("BENCH ") {
                    // The first line may follow the console's escape sequences.
                    b.bench.push(rest.to_string());
                } else if let Some(rest) = line.strip_prefix("VMTEST FAIL ") {
                    b.failed.push(rest.to_string());
                } else if let Some(n) = line.strip_prefix("VMTEST RESET-EXPECTED ") {
                    reset = Some((Instant::now(), n.trim().parse().unwrap_or(0)));
                } else if let Some(n) = line.strip_prefix("VMTEST DONE ") {
                    done = Some(n.trim().to_string());
                }
            }
            Err(_) => break, // timeout, or the guest is gone
        }
    }
    if let Some((since, timeout_s)) = reset.filter(|_| done.is_some()) {
        b.watch_reset(&mut qemu, &rx, since, timeout_s);
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    b.elapsed = boot.elapsed().as_secs_f64();
    if done.is_none() {
        bail!(
            "vm-test: the guest did not finish within {:?} ({:.1} s); see its console above",
            guest.timeout,
            b.elapsed
        );
    }
    Ok(b)
}

impl Boot {
    /// After the guest stopped feeding its watchdog: QEMU must exit (the reset, under
    /// -no-reboot) within 2 × timeout + 30 s (the i6300esb counts two stages), after QMP's
    /// WATCHDOG event.
    fn watch_reset(
        &mut self,
        qemu: &mut std::process::Child,
        rx: &mpsc::Receiver<String>,
        since: Instant,
        timeout_s: u64,
    ) {
        let limit = Duration::from_secs(2 * timeout_s + 30);
        let mut event = None;
        while since.elapsed() < limit {
            for line in rx.try_iter() {
                println!("guest| {line}");
                if line.starts_with("QMP ") && line.contains("WATCHDOG") {
                    event = Some(line);
                }
            }
            if let Ok(Some(status)) = qemu.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                event = event.or_else(|| rx.try_iter().find(|l| l.contains("WATCHDOG")));
                let secs = since.elapsed().as_secs_f64();
                match &event {
                    Some(e) if e.contains("\"reset\"") => {
                        self.passed.push("watchdog-reset".to_string())
                    }
                    _ => self.failed.push(format!(
                        "watchdog-reset: QEMU exited ({status}) {secs:.1} s after the keeper stopped, without a WATCHDOG reset event ({event:?})"
                    )),
                }
                if event.is_some() {
                    println!(
                        "xtask: vm-test: the watchdog reset the guest {secs:.1} s after the keeper stopped (timeout {timeout_s} s)"
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.failed.push(format!(
            "watchdog-reset: the guest was still up {:.0} s after the keeper stopped (timeout {timeout_s} s)",
            limit.as_secs_f64()
        ));
    }
}

/// Connects to QEMU's QMP socket (once it exists), enters command mode, and sends each
/// event line on `tx` as `QMP <line>`.
fn qmp_events(path: std::path::PathBuf, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        use std::io::Write as _;
        let start = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    let _ = tx.send(format!("QMP connect failed: {e}"));
                    return;
                }
            }
        };
        let Ok(mut w) = stream.try_clone() else {
            return;
        };
        let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if line.contains("\"event\"") && tx.send(format!("QMP {line}")).is_err() {
                return;
            }
        }
    });
}

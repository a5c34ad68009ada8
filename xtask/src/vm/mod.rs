//! `cargo xtask vm-test`: the second kernel, with full cgroup v2. Boots Debian's 6.1 cloud
//! kernel in QEMU (TCG; KVM hangs on these machines) with an initramfs carrying the keeper,
//! and runs tests/vm/guest.sh there: the same eBPF object loads, the trading core becomes a
//! cpuset partition, cpu.max and memory.high take effect, freeze/thaw, restore after `kill -9`.

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
    "psi-trigger",
    "protected-pressure",
];

const TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let kernel = kernel::ensure()?;
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bins"]))?;
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("initramfs.gz");
    let bins = ["keeper", "keeper-probe"].map(|b| root.join("target/release").join(b));
    initramfs::build(root, &bins, &initrd)?;
    eprintln!(
        "xtask: vm-test: booting {} (TCG, 2 CPUs, 1 GiB); prepared in {:.1} s",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    let boot = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        // Single-threaded TCG: multi-threaded TCG on a busy 2-CPU host stalled guests (RCU
        // stalls, soft lockups) and was no faster here.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt package qemu-system-x86)")?;
    let out = qemu.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut passed: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut done = None;
    while done.is_none() {
        let left = TIMEOUT.saturating_sub(boot.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("guest| {line}");
                if let Some(rest) = line.strip_prefix("VMTEST PASS ") {
                    passed.push(rest.split_whitespace().next().unwrap_or("").to_string());
                } else if let Some(rest) = line.strip_prefix("VMTEST FAIL ") {
                    failed.push(rest.to_string());
                } else if let Some(n) = line.strip_prefix("VMTEST DONE ") {
                    done = Some(n.trim().to_string());
                }
            }
            Err(_) => break, // timeout, or the guest is gone
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let elapsed = boot.elapsed().as_secs_f64();
    if done.is_none() {
        bail!(
            "vm-test: the guest did not finish within {TIMEOUT:?} ({elapsed:.1} s); see its console above"
        );
    }
    let missing: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|c| !passed.iter().any(|p| p == c))
        .collect();
    if !failed.is_empty() || !missing.is_empty() {
        bail!("vm-test: failed: {failed:?}; not passed: {missing:?}");
    }
    eprintln!(
        "xtask: vm-test: all {} checks passed on {} in {elapsed:.1} s (guest), {:.1} s in all",
        CHECKS.len(),
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! `cargo xtask bench balloon`: how fast memory comes back from an idle guest.
//!
//! A 2 GiB guest (the 6.1 cloud kernel with virtio_balloon, nothing else running) is asked to
//! give back 1 GiB: by the keeper (`keeper vm balloon 100 1GiB`, one QMP command), and at
//! Proxmox's own auto-ballooning pace (one 100 MiB step every 10 s), on the same guest. Then
//! the keeper's memory rule end to end: the pressure it reads rises, and the time to the first
//! balloon action and to 1 GiB reclaimed is measured.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, median};
use crate::{cargo, vm::kernel};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

struct Guest {
    _qemu: ChildGuard,
    dir: PathBuf,
}

fn keeper(root: &Path) -> PathBuf {
    root.join("target/release/keeper")
}

fn actual(root: &Path, dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new(keeper(root))
        .args(["vm", "list", "--format", "json", "--qmp-dir"])
        .arg(dir)
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    v[0]["balloon_actual_bytes"].as_u64().context("no balloon")
}

fn set(root: &Path, dir: &Path, bytes: u64) -> anyhow::Result<()> {
    crate::run(
        Command::new(keeper(root))
            .args([
                "vm",
                "balloon",
                "100",
                &format!("{}MiB", bytes / MIB),
                "--qmp-dir",
            ])
            .arg(dir)
            .stdout(Stdio::null()),
    )
}

/// Waits until the balloon's actual is within 1 MiB of `bytes`; the time it took.
fn wait_actual(root: &Path, dir: &Path, bytes: u64, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if actual(root, dir)?.abs_diff(bytes) <= MIB {
            return Ok(start.elapsed());
        }
        sleep(Duration::from_millis(20));
    }
    bail!(
        "the balloon did not reach {} MiB within {limit:?}",
        bytes / MIB
    )
}

fn boot(root: &Path) -> anyhow::Result<Guest> {
    let k = kernel::ensure()?;
    let dir = std::env::temp_dir().join(format!("keeper-bench-balloon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("guest.gz");
    crate::vm::initramfs::balloon_guest(&k.modules, &initrd)?;
    let console = dir.join("console.log");
    let qemu: Child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1",
            "-device",
            "virtio-balloon-pci",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{}/100.qmp,server=on,wait=off", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let guest = Guest {
        _qemu: ChildGuard(Some(qemu)),
        dir,
    };
    let start = Instant::now();
    while !std::fs::read_to_string(&console).is_ok_and(|c| c.contains("BALLOON READY")) {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("the guest did not load virtio_balloon within 90 s");
        }
        sleep(Duration::from_millis(100));
    }
    let _ = root;
    Ok(guest)
}

pub fn run(root: &Path, reps: usize) -> anyhow::Result<()> {
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bin", "keeper"]))?;
    let g = boot(root)?;
    let dir = &g.dir;
    wait_actual(root, dir, 2 * GIB, Duration::from_secs(10))?;

    // The keeper: one QMP command for the whole 1 GiB.
    let mut keeper_s = Vec::new();
    for i in 0..reps.max(1) {
        eprintln!("bench: keeper reclaim {}/{}", i + 1, reps.max(1));
        let t0 = Instant::now();
        set(root, dir, GIB)?;
        wait_actual(root, dir, GIB, Duration::from_secs(60))?;
        keeper_s.push(t0.elapsed().as_secs_f64());
        set(root, dir, 2 * GIB)?;
        wait_actual(root, dir, 2 * GIB, Duration::from_secs(60))?;
    }

    // Proxmox's pace: 100 MiB every 10 s, same guest.
    eprintln!("bench: Proxmox pace (100 MiB per 10 s), ~100 s");
    let t0 = Instant::now();
    let mut target = 2 * GIB;
    while target > GIB {
        target -= 100 * MIB;
        let target_now = target.max(GIB);
        set(root, dir, target_now)?;
        if target_now > GIB {
            sleep(Duration::from_secs(10));
        }
    }
    wait_actual(root, dir, GIB, Duration::from_secs(60))?;
    let proxmox_s = t0.elapsed().as_secs_f64();
    set(root, dir, 2 * GIB)?;
    wait_actual(root, dir, 2 * GIB, Duration::from_secs(60))?;

    // The memory rule end to end: pressure rises → first balloon action → 1 GiB reclaimed.
    eprintln!("bench: pressure → balloon through keeper run");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\n\
         host: { name: bench, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }\n\
         workloads:\n  - { name: vm100, rank: 2, match: { vmid: 100 } }\n\
         rules:\n  memory: { balloon_above: 10, balloon_target: 50%, balloon_floor: 512M, release_after: 1s }\n",
    )?;
    let psi = dir.join("memory.pressure");
    let write_psi = |some: f64| {
        std::fs::write(
            &psi,
            format!(
                "some avg10={some:.2} avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            ),
        )
    };
    write_psi(0.0)?;
    // The VM's cgroup must exist for the workload to be present: Proxmox's layout, made here.
    let mount = PathBuf::from("/sys/fs/cgroup/unified");
    let mount = if mount.join("cgroup.procs").exists() {
        mount
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let scope_rel = format!("keeper-bench-balloon-{}", std::process::id());
    let vmcg = mount.join(&scope_rel).join("qemu.slice/100.scope");
    std::fs::create_dir_all(&vmcg)?;
    let policy_text = std::fs::read_to_string(&policy)?.replace(
        "{ vmid: 100 }",
        &format!("{{ vmid: 100, cgroup: {scope_rel}/qemu.slice/100.scope }}"),
    );
    std::fs::write(&policy, policy_text)?;
    let daemon = Command::new(keeper(root))
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--scope", &scope_rel, "--qmp-dir"])
        .arg(dir)
        .arg("--memory-psi")
        .arg(&psi)
        .arg("--socket")
        .arg(dir.join("keeper.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let guard = ChildGuard(Some(daemon));
    sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    write_psi(30.0)?;
    let mut first = None;
    while t0.elapsed() < Duration::from_secs(30) {
        let a = actual(root, dir)?;
        if first.is_none() && a < 2 * GIB - MIB {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if a.abs_diff(GIB) <= MIB {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let rule_s = t0.elapsed().as_secs_f64();
    drop(guard);
    let _ = std::fs::remove_dir(&vmcg);
    let _ = std::fs::remove_dir(mount.join(&scope_rel).join("qemu.slice"));
    let _ = std::fs::remove_dir(mount.join(&scope_rel));
    let first = first.context("the memory rule never ballooned the guest")?;

    let k = median(&keeper_s).unwrap_or(0.0);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nReclaiming 1 GiB from an idle 2 GiB guest (6.1 cloud kernel, virtio_balloon, TCG)\n"
    )?;
    writeln!(
        out,
        "| way | time to 1 GiB reclaimed (s) | vs keeper |\n|---|---|---|"
    )?;
    writeln!(
        out,
        "| keeper (`keeper vm balloon 100 1GiB`), median of {} | {k:.2} | 1.00× |",
        keeper_s.len()
    )?;
    writeln!(
        out,
        "| Proxmox pace (100 MiB per 10 s), same guest | {proxmox_s:.1} | {:.0}× |",
        proxmox_s / k.max(1e-3)
    )?;
    writeln!(
        out,
        "\n| keeper run, memory rule (`balloon_above: 10`, tick 1 s) | s |\n|---|---|"
    )?;
    writeln!(
        out,
        "| pressure written → first balloon action seen by query-balloon | {first:.2} |"
    )?;
    writeln!(out, "| pressure written → 1 GiB reclaimed | {rule_s:.2} |")?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

//! What runs against the trading core in the isolation bench: the background load (8 hogs and
//! a process churn), the adversaries, the trading probe itself, and an independent sampler of
//! the load's share of CPU 1 (from /proc, not from the keeper).

use std::{
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::Duration,
};

use super::rig::{Scope, spawn_in};

/// A load process, killed (SIGKILL) and reaped on drop: it holds nothing, and a shell loop
/// waits out a SIGINT while its child runs.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The trading loop: 1 ms period, 300 µs of CPU work per tick.
pub const PERIOD_US: u64 = 1000;
pub const WORK_US: u64 = 300;

/// What runs in the `load` cgroup during one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// 8 long hogs and a shell churning `/bin/true`, started by the bench.
    Hogs,
    /// 8 shells each respawning a 50 ms hog, all their lives.
    Churn,
    /// One spinner that renamed itself `kworker/1:9`, moved onto CPU 1.
    Kworker,
    /// One spinner that pins itself back onto CPU 1 every millisecond.
    Repin,
    /// 4 shells forking `/bin/true` as fast as they can.
    ForkStorm,
    /// A reader of a file with O_DIRECT (`dd iflag=direct`, 4 KiB at a time) on `cpus`:
    /// every read is a disk interrupt, where the disk's IRQ fires (CPU 1 on this VM).
    DiskIo,
    /// A SCHED_FIFO 99 spinner (`chrt -f 99`) on `cpus`.
    RealTime,
    /// stress-ng's affinity stressor: 2 workers that pin themselves to random CPUs without end.
    AffinityStress,
    /// Every adversary at once: the hogs, the kworker-named spinner, the re-pinner, the fork
    /// storm, the SCHED_FIFO 99 spinner on CPU 1 and the affinity stressor.
    Everything,
}

impl Load {
    /// The processes of this load on `cpus` for `secs`.
    pub fn start(
        self,
        scope: &Scope,
        probe: &str,
        cpus: &[usize],
        secs: u64,
    ) -> anyhow::Result<Vec<Killed>> {
        let load = scope.dir.join("load");
        let s = secs.to_string();
        let shell = |body: String| -> anyhow::Result<Killed> {
            let script = format!(
                "end=$(($(date +%s)+{secs})); while [ $(date +%s) -lt $end ]; do {body}; done"
            );
            Ok(Killed(spawn_in(&load, cpus, "/bin/sh", &["-c", &script])?))
        };
        let mut out = Vec::new();
        match self {
            Load::Hogs => {
                for i in 0..8 {
                    let name = format!("kb_hog{i}");
                    out.push(guard(spawn_in(&load, cpus, probe, &["spin", &s, &name])?));
                }
                out.push(shell("/bin/true".into())?);
            }
            Load::Churn => {
                for i in 0..8 {
                    out.push(shell(format!("{probe} spin 0.05 kb_churn{i}"))?);
                }
            }
            Load::Kworker => {
                // Named on CPU 0, then moved onto the trading core under that name.
                let c = spawn_in(&load, &[0], probe, &["spin", &s, "kworker/1:9"])?;
                sleep(Duration::from_millis(100));
                let _ = std::process::Command::new("taskset")
                    .args(["-p", "-c", "1", &c.id().to_string()])
                    .output();
                out.push(guard(c));
            }
            Load::Repin => {
                out.push(guard(spawn_in(
                    &load,
                    cpus,
                    probe,
                    &["repin", &s, "1", "kb_repin"],
                )?));
            }
            Load::ForkStorm => {
                for _ in 0..4 {
                    out.push(shell("/bin/true".into())?);
                }
            }
            Load::DiskIo => {
                let file = disk_file();
                out.push(shell(format!(
                    "dd if={} of=/dev/null bs=4k iflag=direct 2>/dev/null",
                    file.display()
                ))?);
            }
            // Killed by pid (the guard); `SECS` bounds it should the bench die. Started on CPU
            // 0, it takes SCHED_FIFO 99 first and then pins itself to the last of `cpus` (CPU
            // 1): it arrives there real-time. Spawned on CPU 1 and made real-time by `chrt`
            // after, it was evicted while still the bench's SCHED_OTHER child, then turned
            // FIFO 99 on CPU 0, and the rows measured a spinner that never reached CPU 1.
            Load::RealTime => {
                let cpu = cpus.last().copied().unwrap_or(1).to_string();
                out.push(guard(spawn_in(
                    &load,
                    &[0],
                    probe,
                    &["rtspin", &s, &cpu, "99", "kb_fifo99"],
                )?));
            }
            Load::AffinityStress => {
                out.push(guard(spawn_in(
                    &load,
                    cpus,
                    "stress-ng",
                    &[
                        "--affinity",
                        "2",
                        "--affinity-rand",
                        "--timeout",
                        &s,
                        "--quiet",
                    ],
                )?));
            }
            Load::Everything => {
                let each: [(Load, &[usize]); 6] = [
                    (Load::Hogs, &[0, 1]),
                    (Load::Kworker, &[0]),
                    (Load::Repin, &[1]),
                    (Load::ForkStorm, &[0, 1]),
                    (Load::RealTime, &[1]),
                    (Load::AffinityStress, &[0, 1]),
                ];
                for (l, on) in each {
                    out.extend(l.start(scope, probe, on, secs)?);
                }
            }
        }
        Ok(out)
    }
}

/// A 16 MiB file on the root disk for [`Load::DiskIo`], written around the page cache once.
fn disk_file() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(format!("/var/tmp/keeper-bench-io-{}", std::process::id()));
    if !path.exists() {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=16", "oflag=direct"])
            .arg(format!("of={}", path.display()))
            .output();
    }
    path
}

/// Removes [`disk_file`]'s file (the bench's end).
pub fn remove_disk_file() {
    let _ = std::fs::remove_file(format!("/var/tmp/keeper-bench-io-{}", std::process::id()));
}

/// Interrupts of each numbered IRQ on CPU 1 so far (`/proc/interrupts`' second column).
pub fn cpu1_interrupts() -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (label, rest) = l.split_once(':')?;
            label.trim().parse::<u32>().ok()?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let count = fields.get(1)?.parse().ok()?;
            let name = fields.last().copied().unwrap_or("?");
            Some((format!("{}: {name}", label.trim()), count))
        })
        .collect()
}

fn guard(c: Child) -> Killed {
    Killed(c)
}

/// Fresh intruders: every 50 ms, a new 30 ms spinner allowed on `cpus`, born in the `load`
/// cgroup of a spawner kept on CPU 0 (so the spawner itself is never evicted, and each newcomer
/// begins with the trading core in its affinity when `cpus` has it).
pub fn newcomers(scope: &Scope, probe: &str, cpus: &[usize], secs: u64) -> anyhow::Result<Killed> {
    let mut args = vec!["newcomers".to_string(), secs.to_string(), "50".into()];
    args.extend(cpus.iter().map(usize::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(guard(spawn_in(
        &scope.dir.join("load"),
        &[0],
        probe,
        &args,
    )?))
}

/// Samples, every 500 µs from CPU 0, whether any task of the `load` cgroup is runnable on CPU
/// 1 (`R` and /proc/TID/stat's `processor` field): the load's share of the trading core,
/// measured apart from the keeper. An upper bound: a runnable task may be waiting there.
pub struct ShareSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, u64)>,
}

impl ShareSampler {
    pub fn start(scope: &Scope) -> ShareSampler {
        let threads = scope.dir.join("load").join("cgroup.threads");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            pin_to_cpu0();
            let (mut on, mut all) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                let tids = std::fs::read_to_string(&threads).unwrap_or_default();
                all += 1;
                on += u64::from(tids.lines().any(on_cpu1));
                sleep(Duration::from_micros(500));
            }
            (on, all)
        });
        ShareSampler { stop, handle }
    }

    /// The share (0..=1) over the sampling.
    pub fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let (on, all) = self.handle.join().unwrap_or((0, 0));
        on as f64 / all.max(1) as f64
    }
}

fn on_cpu1(tid: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{}/stat", tid.trim())) else {
        return false;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); `processor` is field 39.
    f.first() == Some(&"R") && f.get(36) == Some(&"1")
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The trading probe on CPU 1 in the Banker's cgroup for `secs`: each tick's response (µs).
pub fn trading_probe(scope: &Scope, probe: &str, secs: u64) -> anyhow::Result<Vec<f64>> {
    let out = std::env::temp_dir().join(format!("keeper-bench-ticks-{}", std::process::id()));
    let args = [
        "ticks".to_string(),
        secs.to_string(),
        PERIOD_US.to_string(),
        WORK_US.to_string(),
        out.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let status = spawn_in(&scope.dir.join("banker"), &[1], probe, &args)?.wait()?;
    anyhow::ensure!(status.success(), "the trading probe failed: {status}");
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(text.lines().filter_map(|l| l.parse().ok()).collect())
}

//! The isolation bench's rig: its scope cgroup, processes started in it, the keeper daemon
//! on the bench policy, and /proc readings of a pid.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::Context as _;

use crate::bench::ChildGuard;

/// The bench's scope cgroup, killed and removed on drop.
pub struct Scope {
    pub dir: PathBuf,
    pub rel: String,
}

impl Scope {
    pub fn new() -> anyhow::Result<Scope> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mount = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let m = left.split_whitespace().nth(4)?;
                (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(m))
            })
            .context("no cgroup2 mount")?;
        let rel = format!("keeper-bench-{}", std::process::id());
        let dir = mount.join(&rel);
        for sub in ["banker", "eva", "muse", "load"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Scope { dir, rel })
    }
    pub fn frozen(&self, sub: &str) -> bool {
        std::fs::read_to_string(self.dir.join(sub).join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for sub in ["banker", "eva", "muse", "load", ""] {
            let d = self.dir.join(sub);
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        for sub in ["banker", "eva", "muse", "load", ""] {
            for _ in 0..100 {
                if std::fs::remove_dir(self.dir.join(sub)).is_ok() || !self.dir.join(sub).exists() {
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Starts `program args` in `cgroup` with CPU affinity `cpus`.
pub fn spawn_in(
    cgroup: &Path,
    cpus: &[usize],
    program: &str,
    args: &[&str],
) -> anyhow::Result<Child> {
    let procs = cgroup.join("cgroup.procs");
    let cpus = cpus.to_vec();
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only write(2) and sched_setaffinity between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            std::fs::write(&procs, b"0")?;
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// The bench's policy; `irq_guard`: with `host.irq_guard: true` (every movable IRQ off CPU 1
/// while the keeper runs, put back at its exit).
pub fn policy(scope: &Scope, dir: &Path, irq_guard: bool) -> anyhow::Result<PathBuf> {
    let s = &scope.rel;
    let path = dir.join(match irq_guard {
        true => "bench-policy-irq-guard.yaml",
        false => "bench-policy.yaml",
    });
    std::fs::write(
        &path,
        format!(
            "version: 1\n\
             host: {{ name: bench, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\", irq_guard: {irq_guard} }}\n\
             workloads:\n\
             \x20 - {{ name: banker, rank: 1, match: {{ cgroup: {s}/banker }}, owns_trading_cores: true }}\n\
             \x20 - name: eva\n\
             \x20   rank: 2\n\
             \x20   match: {{ cgroup: {s}/eva }}\n\
             \x20   preempt: {{ on: interaction, deadline: 200ms, targets: [muse], release_after: 0s }}\n\
             \x20 - {{ name: muse, rank: 3, match: {{ cgroup: {s}/muse }} }}\n\
             \x20 - {{ name: load, rank: 4, match: {{ cgroup: {s}/load }} }}\n\
             rules:\n\
             \x20 intruders: {{ repeat: 3, within: 10s, then: stop }}\n"
        ),
    )?;
    Ok(path)
}

pub fn control(socket: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(request.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// CPU time (ns) the process's threads have run, from each one's `schedstat` (exact; the
/// `stat` line's utime and stime are in 10 ms ticks, too coarse for an idle daemon over 10 s).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The keeper daemon, started on the bench policy and scope, and stopped (SIGINT) on drop.
pub struct Daemon {
    guard: ChildGuard,
    pub pid: u32,
    pub socket: PathBuf,
    report: PathBuf,
}

impl Daemon {
    pub fn start(
        keeper: &Path,
        policy: &Path,
        scope: &Scope,
        work: &Path,
        round: usize,
    ) -> anyhow::Result<Daemon> {
        let socket = work.join("keeper.sock");
        let report = work.join(format!("run-{round}.json"));
        let mut child = Command::new(keeper)
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .args(["--scope", &scope.rel])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let stderr = child.stderr.take().context("stderr")?;
        let guard = ChildGuard(Some(child));
        let mut lines = BufReader::new(stderr).lines();
        // Ready once its first pass is done (the trading cores held, the eviction thread's
        // filter set): the conditions measure a keeper at work, not its start-up.
        for line in lines.by_ref() {
            if line?.contains("first pass done") {
                break;
            }
        }
        // Keep draining its log (kept in $KEEPER_BENCH_LOG/keeper-ROUND.log when set).
        let keep = std::env::var_os("KEEPER_BENCH_LOG")
            .map(|d| Path::new(&d).join(format!("keeper-{round}-{pid}.log")));
        std::thread::spawn(move || {
            let mut file = keep.and_then(|p| std::fs::File::create(p).ok());
            for line in lines.map_while(Result::ok) {
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        Ok(Daemon {
            guard,
            pid,
            socket,
            report,
        })
    }

    /// Stops it and returns its run record.
    pub fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        if let Some(mut c) = self.guard.0.take() {
            // SAFETY: kill on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            c.wait()?;
        }
        Ok(serde_json::from_slice(&std::fs::read(&self.report)?)?)
    }
}

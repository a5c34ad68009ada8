//! `cargo xtask bench isolation`: does the keeper hold the trading core (CPU 1) clear?
//!
//! Protected probe: cyclictest (SCHED_OTHER, 1 ms) pinned to CPU 1 in the Banker's cgroup.
//! Antagonists: 8 CPU hogs, a shell churning short-lived processes, and a newcomer (a fresh
//! 30 ms spinner) every 50 ms, all inside the bench's own scope cgroup. Three conditions in one run: unprotected, static isolation (antagonists
//! pinned to CPU 0), keeper enforcing. Then, with the keeper running: intruder eviction latency
//! (from its run record), EVA preemption (`interaction start` → Muse's cgroup frozen) round
//! trips over the control socket, and the daemon's RSS and idle CPU.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, quantile};
use crate::cargo;

/// The bench's scope cgroup, killed and removed on drop.
struct Scope {
    dir: PathBuf,
    rel: String,
}

impl Scope {
    fn new() -> anyhow::Result<Scope> {
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
    fn frozen(&self, sub: &str) -> bool {
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
fn spawn_in(cgroup: &Path, cpus: &[usize], program: &str, args: &[&str]) -> anyhow::Result<Child> {
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

/// 8 hogs and a churn of short-lived processes in `load`, on `cpus`.
fn antagonists(
    scope: &Scope,
    probe: &str,
    cpus: &[usize],
    secs: u64,
) -> anyhow::Result<Vec<ChildGuard>> {
    let load = scope.dir.join("load");
    let mut out = Vec::new();
    for i in 0..8 {
        out.push(ChildGuard(Some(spawn_in(
            &load,
            cpus,
            probe,
            &["spin", &secs.to_string(), &format!("kb_hog{i}")],
        )?)));
    }
    let churn =
        format!("end=$(($(date +%s)+{secs})); while [ $(date +%s) -lt $end ]; do /bin/true; done");
    out.push(ChildGuard(Some(spawn_in(
        &load,
        cpus,
        "/bin/sh",
        &["-c", &churn],
    )?)));
    Ok(out)
}

/// Fresh intruders: every 50 ms, a new 30 ms spinner on `cpus` in `load`, started from outside
/// the scope so each one begins with the trading core in its affinity (a child of an evicted
/// process would inherit the housekeeping affinity and never be an intruder).
fn newcomers(
    scope: &Scope,
    probe: &str,
    cpus: &[usize],
    secs: u64,
) -> std::thread::JoinHandle<usize> {
    let (load, probe, cpus) = (scope.dir.join("load"), probe.to_string(), cpus.to_vec());
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut started = 0;
        let mut running: Vec<Child> = Vec::new();
        while Instant::now() < end {
            if let Ok(c) = spawn_in(
                &load,
                &cpus,
                &probe,
                &["spin", "0.03", &format!("kb_new{started}")],
            ) {
                running.push(c);
                started += 1;
            }
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            sleep(Duration::from_millis(50));
        }
        for mut c in running {
            let _ = c.wait();
        }
        started
    })
}

struct Latency {
    label: &'static str,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    samples: u64,
}

/// cyclictest on CPU 1 in the Banker's cgroup for `secs`; percentiles from its histogram.
fn cyclictest(scope: &Scope, label: &'static str, secs: u64) -> anyhow::Result<Latency> {
    let hist = std::env::temp_dir().join(format!("keeper-bench-hist-{}", std::process::id()));
    let mut child = spawn_in(
        &scope.dir.join("banker"),
        &[1],
        "cyclictest",
        &[
            "-t1",
            "-a1",
            "-i1000",
            "--policy=other",
            "-p0",
            "-m",
            "-q",
            &format!("-D{secs}"),
            "-h",
            "20000",
            &format!("--histfile={}", hist.display()),
        ],
    )?;
    let status = child.wait()?;
    if !status.success() {
        bail!("cyclictest failed: {status}");
    }
    let text = std::fs::read_to_string(&hist)?;
    let _ = std::fs::remove_file(&hist);
    let mut counts: Vec<(f64, u64)> = Vec::new();
    let mut max = 0.0;
    let mut overflows = 0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# Max Latencies:") {
            max = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("# Histogram Overflows:") {
            overflows = v.trim().parse().unwrap_or(0);
        } else if !line.starts_with('#') {
            let mut it = line.split_whitespace();
            if let (Some(us), Some(n)) = (it.next(), it.next())
                && let (Ok(us), Ok(n)) = (us.parse::<f64>(), n.parse::<u64>())
                && n > 0
            {
                counts.push((us, n));
            }
        }
    }
    let total: u64 = counts.iter().map(|c| c.1).sum::<u64>() + overflows;
    let q = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (us, n) in &counts {
            seen += n;
            if seen >= rank {
                return *us;
            }
        }
        max
    };
    Ok(Latency {
        label,
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max,
        samples: total,
    })
}

fn policy(scope: &Scope, dir: &Path) -> anyhow::Result<PathBuf> {
    let s = &scope.rel;
    let path = dir.join("bench-policy.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\n\
             host: {{ name: bench, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }}\n\
             workloads:\n\
             \x20 - {{ name: banker, rank: 1, match: {{ cgroup: {s}/banker }}, owns_trading_cores: true }}\n\
             \x20 - name: eva\n\
             \x20   rank: 2\n\
             \x20   match: {{ cgroup: {s}/eva }}\n\
             \x20   preempt: {{ on: interaction, deadline: 200ms, targets: [muse], release_after: 0s }}\n\
             \x20 - {{ name: muse, rank: 3, match: {{ cgroup: {s}/muse }} }}\n\
             \x20 - {{ name: load, rank: 4, match: {{ cgroup: {s}/load }} }}\n"
        ),
    )?;
    Ok(path)
}

fn control(socket: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(request.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

fn proc_stat_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = text
        .rsplit_once(')')
        .map(|r| r.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    rest.get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + rest
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The keeper daemon, started on the bench policy and scope, and stopped (SIGINT) on drop.
struct Daemon {
    guard: ChildGuard,
    pid: u32,
    socket: PathBuf,
    report: PathBuf,
}

impl Daemon {
    fn start(
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
        for line in lines.by_ref() {
            if line?.contains("keeper running") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {}); // keep draining its log
        Ok(Daemon {
            guard,
            pid,
            socket,
            report,
        })
    }

    /// Stops it and returns its run record.
    fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        if let Some(mut c) = self.guard.0.take() {
            // SAFETY: kill on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            c.wait()?;
        }
        Ok(serde_json::from_slice(&std::fs::read(&self.report)?)?)
    }
}

/// One condition: antagonists (and newcomers) on `cpus`, cyclictest on CPU 1.
fn condition(
    scope: &Scope,
    probe: &str,
    cpus: &[usize],
    label: &'static str,
    secs: u64,
) -> anyhow::Result<(Latency, usize)> {
    let load = antagonists(scope, probe, cpus, secs + 2)?;
    let fresh = newcomers(scope, probe, cpus, secs);
    sleep(Duration::from_millis(500));
    let row = cyclictest(scope, label, secs)?;
    drop(load);
    let started = fresh
        .join()
        .map_err(|_| anyhow::anyhow!("newcomer thread panicked"))?;
    Ok((row, started))
}

const UNPROTECTED: &str = "unprotected (antagonists on CPUs 0-1)";
const STATIC: &str = "static isolation (antagonists taskset to CPU 0)";
const KEEPER: &str = "keeper enforcing (antagonists on CPUs 0-1)";
/// Not one of the three conditions: the keeper attached while the antagonists keep to CPU 0,
/// which splits the keeper's cost into sensing (this row) and intrusions until eviction.
const WATCHING: &str = "keeper attached, antagonists taskset to CPU 0 (sensing cost)";

pub fn run(root: &Path, secs: u64, rounds: usize, preemptions: usize) -> anyhow::Result<()> {
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bins"]))?;
    let keeper = root.join("target/release/keeper");
    let probe = root.join("target/release/keeper-probe");
    let probe = probe.to_str().context("path")?;
    let scope = Scope::new()?;
    let work = std::env::temp_dir().join(format!("keeper-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let policy = policy(&scope, &work)?;
    let rounds = rounds.max(1);
    let mut rows: Vec<Latency> = Vec::new();
    let mut eviction_us: Vec<f64> = Vec::new();
    let (mut evictions, mut newcomers) = (0, 0);
    let mut daemon = None;
    for round in 1..=rounds {
        eprintln!("bench: round {round}/{rounds}: unprotected");
        rows.push(condition(&scope, probe, &[0, 1], UNPROTECTED, secs)?.0);
        eprintln!("bench: round {round}/{rounds}: static isolation");
        rows.push(condition(&scope, probe, &[0], STATIC, secs)?.0);
        let d = Daemon::start(&keeper, &policy, &scope, &work, round)?;
        eprintln!("bench: round {round}/{rounds}: keeper watching, antagonists on CPU 0");
        rows.push(condition(&scope, probe, &[0], WATCHING, secs)?.0);
        eprintln!("bench: round {round}/{rounds}: keeper enforcing");
        let (row, started) = condition(&scope, probe, &[0, 1], KEEPER, secs)?;
        rows.push(row);
        newcomers += started;
        if round < rounds {
            let record = d.stop()?;
            evictions += record["evictions"].as_u64().unwrap_or(0);
            eviction_us.extend(samples(&record));
        } else {
            daemon = Some(d); // kept for the preemption and footprint measures
        }
    }
    let daemon = daemon.context("no keeper round")?;
    let (pid, socket) = (daemon.pid, daemon.socket.clone());

    // EVA preemption: interaction start → Muse frozen (the reply comes after cgroup.events says so).
    let _muse = ChildGuard(Some(spawn_in(
        &scope.dir.join("muse"),
        &[0],
        probe,
        &["spin", "600", "kb_muse"],
    )?));
    let _eva = ChildGuard(Some(spawn_in(
        &scope.dir.join("eva"),
        &[0],
        probe,
        &["sleep", "600000", "1000"],
    )?));
    sleep(Duration::from_millis(500));
    let mut preempt_ms = Vec::new();
    for _ in 0..preemptions {
        let t0 = Instant::now();
        let answer = control(&socket, r#"{"command":"interaction","state":"start"}"#)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if answer["ok"] != true || !scope.frozen("muse") {
            bail!("interaction start did not freeze muse: {answer}");
        }
        preempt_ms.push(ms);
        control(&socket, r#"{"command":"interaction","state":"stop"}"#)?;
        let t = Instant::now();
        while scope.frozen("muse") {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("muse not thawed 5 s after interaction stop");
            }
            sleep(Duration::from_millis(5));
        }
    }

    // Footprint: idle (no antagonists) for 10 s.
    drop(_muse);
    drop(_eva);
    sleep(Duration::from_secs(1));
    let ticks0 = proc_stat_ticks(pid);
    let t0 = Instant::now();
    sleep(Duration::from_secs(10));
    let ticks = proc_stat_ticks(pid) - ticks0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_cpu_pct = 100.0 * ticks as f64 / hz / t0.elapsed().as_secs_f64();
    let rss_kib = status_kib(pid, "VmRSS:");
    let hwm_kib = status_kib(pid, "VmHWM:");
    let record = daemon.stop()?;
    evictions += record["evictions"].as_u64().unwrap_or(0);
    eviction_us.extend(samples(&record));
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "\nIsolation of the trading core (CPU 1), cyclictest SCHED_OTHER 1 ms; {rounds} rounds of the \
         three conditions, {secs} s each; medians over the rounds (max: the largest)\n"
    );
    println!("| condition | samples | p50 µs | p99 µs | p99.9 µs | max µs | p99 vs static |");
    println!("|---|---|---|---|---|---|---|");
    let of = |label: &str| rows.iter().filter(|r| r.label == label).collect::<Vec<_>>();
    let med = |rs: &[&Latency], f: fn(&Latency) -> f64| {
        super::median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let static_p99 = med(&of(STATIC), |r| r.p99).max(1.0);
    for label in [UNPROTECTED, STATIC, KEEPER, WATCHING] {
        let rs = of(label);
        println!(
            "| {label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            rs.iter().map(|r| r.samples).sum::<u64>(),
            med(&rs, |r| r.p50),
            med(&rs, |r| r.p99),
            med(&rs, |r| r.p999),
            rs.iter().map(|r| r.max).fold(0.0, f64::max),
            med(&rs, |r| r.p99) / static_p99
        );
    }
    let per_round: Vec<String> = of(KEEPER)
        .iter()
        .zip(of(STATIC))
        .map(|(k, s)| format!("{:.2}×", k.p99 / s.p99.max(1.0)))
        .collect();
    println!(
        "\nkeeper p99 / static p99 per round: {}",
        per_round.join(", ")
    );
    let eq = |q| quantile(&eviction_us, q).map_or("-".into(), |v| format!("{:.2}", v / 1000.0));
    println!("\n| measure | count | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| intruder eviction, first run on CPU 1 → affinity moved (ms) | {} | {} | {} | {} | p99 ≤ 10 ms |",
        eviction_us.len(),
        eq(0.5),
        eq(0.99),
        eq(1.0)
    );
    let pq = |q| quantile(&preempt_ms, q).map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "| EVA preemption, `interaction start` → Muse frozen (ms) | {} | {} | {} | {} | p99 ≤ 20 ms |",
        preempt_ms.len(),
        pq(0.5),
        pq(0.99),
        pq(1.0)
    );
    println!("\n| daemon footprint | value | target |\n|---|---|---|");
    println!(
        "| RSS while idle | {:.1} MiB (peak {:.1} MiB) | ≤ 25 MiB |",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!("| CPU while idle (10 s) | {idle_cpu_pct:.2} % of one core | ≤ 0.5 % |");
    println!(
        "| evictions during the enforcing runs | {evictions} ({newcomers} newcomers started) | |"
    );
    if std::env::var_os("KEEPER_BENCH_SAMPLES").is_some() {
        println!("\neviction samples (µs): {eviction_us:?}");
    }
    Ok(())
}

/// The eviction latency samples (µs) of a run record.
fn samples(record: &serde_json::Value) -> Vec<f64> {
    record["eviction_latency"]["samples_us"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default()
}

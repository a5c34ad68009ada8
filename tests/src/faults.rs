//! The crash-consistency harness's machinery (issue 30): the host's state as a snapshot taken
//! from the kernel's side, and one injection (a keeper built with `--features failpoints`
//! killed with SIGKILL at a named point, then a fresh keeper's replay and exit).
//!
//! The snapshot holds what a keeper may change: every thread's CPU affinity, scheduling
//! policy and stopped state; the control files of every cgroup under the test's scope and
//! whether it is frozen; every interrupt line's affinity; the unbound workqueues' mask; and
//! what the scenario adds (the Proxmox stub's VMs, a command's processes). Threads are
//! compared when they exist on both sides (by thread id and start time): tasks come and go.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{rig::Rig, sched_of};

/// The keeper built with its kill points (`cargo build -p keeper-user --bin keeper --features
/// failpoints --target-dir target/faults`, which `cargo xtask test` runs).
pub const FAULTY_KEEPER: &str = concat!(env!("KEEPER_BIN_DIR"), "/../faults/debug/keeper");

/// Control files a keeper writes, read in each cgroup of the scope.
const CONTROL_FILES: &[&str] = &[
    "cgroup.freeze",
    "cgroup.subtree_control",
    "cgroup.type",
    "cpu.max",
    "cpu.weight",
    "cpu.idle",
    "memory.high",
    "memory.max",
    "memory.low",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpus.partition",
];

const WORKQUEUES: &str = "/sys/devices/virtual/workqueue/cpumask";

/// The host's state, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<String, String>);

impl Snapshot {
    /// Threads, the cgroups under `scope`, interrupt lines, the workqueue mask, and `extra`.
    pub fn take(scope: &Path, extra: BTreeMap<String, String>) -> Snapshot {
        let mut s = extra;
        threads(&mut s);
        cgroups(scope, &mut s);
        for irq in numbered("/proc/irq") {
            if let Ok(v) = std::fs::read_to_string(format!("/proc/irq/{irq}/smp_affinity_list")) {
                s.insert(format!("irq {irq}"), v.trim().to_string());
            }
        }
        if let Ok(v) = std::fs::read_to_string(WORKQUEUES) {
            s.insert("workqueue cpumask".into(), v.trim().to_string());
        }
        Snapshot(s)
    }

    /// What differs from `before`: values changed, and names gone that should not be (all but
    /// threads, which may end).
    pub fn differences(&self, before: &Snapshot) -> Vec<String> {
        let mut out = vec![];
        for (k, was) in &before.0 {
            match self.0.get(k) {
                Some(now) if now != was => out.push(format!("{k}: {was} → {now}")),
                None if !k.starts_with("thread ") => out.push(format!("{k}: {was} → (gone)")),
                _ => {}
            }
        }
        for (k, now) in &self.0 {
            if !before.0.contains_key(k) && !k.starts_with("thread ") {
                out.push(format!("{k}: (none) → {now}"));
            }
        }
        out
    }
}

/// The numbered entries of a directory (pids, IRQs).
fn numbered(dir: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn threads(s: &mut BTreeMap<String, String>) {
    for pid in numbered("/proc") {
        for tid in numbered(&format!("/proc/{pid}/task")) {
            let dir = format!("/proc/{pid}/task/{tid}");
            let Some(stat) = std::fs::read_to_string(format!("{dir}/stat"))
                .ok()
                .and_then(|t| keeper::device::procfs::parse_stat(&t))
            else {
                continue;
            };
            let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
            let Some(cpus) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            else {
                continue;
            };
            let (policy, priority) = sched_of(tid);
            let stopped = if stat.state == 'T' { ", stopped" } else { "" };
            s.insert(
                format!("thread {tid}@{} ({})", stat.start, stat.comm),
                format!("CPUs {}, policy {policy}/{priority}{stopped}", cpus.trim()),
            );
        }
    }
}

fn cgroups(dir: &Path, s: &mut BTreeMap<String, String>) {
    for file in CONTROL_FILES {
        if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
            s.insert(
                format!("{}", dir.join(file).display()),
                v.trim().to_string(),
            );
        }
    }
    if let Ok(events) = std::fs::read_to_string(dir.join("cgroup.events")) {
        let frozen = events.lines().any(|l| l == "frozen 1");
        s.insert(format!("{} frozen", dir.display()), frozen.to_string());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            cgroups(&e.path(), s);
        }
    }
}

/// How a faulty keeper ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Killed at the point (SIGKILL, its log names the point).
    AtPoint,
    /// It never reached the point: a clean exit at SIGTERM.
    NotReached,
}

/// A keeper of the faulty build on `rig`, killed at `point` when it gets there.
pub struct Faulty {
    child: Child,
    log: PathBuf,
    point: String,
}

impl Faulty {
    pub fn start(rig: &Rig, extra: &[String], env: &[(String, String)], point: &str) -> Faulty {
        let log = rig.dir.join(format!("faulty-{point}.log"));
        let child = Command::new(FAULTY_KEEPER)
            .arg("run")
            .args(rig_args(rig))
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("FAILPOINTS", format!("{point}=return"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{FAULTY_KEEPER}: {e} (built by `cargo xtask test`)"));
        Faulty {
            child,
            log,
            point: point.to_string(),
        }
    }

    /// Waits until it answers on its socket (true) or has ended (false).
    pub fn wait_running(&mut self, rig: &Rig, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.log().contains("keeper running")
                && std::os::unix::net::UnixStream::connect(rig.socket()).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{}: neither running nor ended: {}", self.point, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits `settle` for the kill; then asks it to stop (SIGTERM), which reaches the points
    /// of the exit's undo. How it ended.
    pub fn end(mut self, settle: Duration) -> Ended {
        let start = Instant::now();
        let mut termed = false;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log();
                return match status.signal() {
                    Some(libc::SIGKILL) => {
                        assert!(
                            log.contains(&format!("failpoint {}: SIGKILL", self.point)),
                            "killed, not by its point: {log}"
                        );
                        Ended::AtPoint
                    }
                    _ if status.success() => {
                        let tail: Vec<&str> = log.lines().rev().take(25).collect();
                        eprintln!("{}: not reached; the keeper's last lines:", self.point);
                        for l in tail.iter().rev() {
                            eprintln!("  {l}");
                        }
                        Ended::NotReached
                    }
                    _ => panic!("{}: the keeper ended {status}: {log}", self.point),
                };
            }
            if !termed && start.elapsed() > settle {
                // SAFETY: a signal to our own child, by pid.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
                termed = true;
            }
            assert!(
                start.elapsed() < settle + Duration::from_secs(60),
                "{}: no exit 60 s after SIGTERM: {}",
                self.point,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--policy --scope --socket --state-dir` of the rig.
pub fn rig_args(rig: &Rig) -> Vec<String> {
    let at = |p: PathBuf| p.display().to_string();
    vec![
        "--policy".into(),
        at(rig.dir.join("policy.yaml")),
        "--scope".into(),
        rig.scope.rel.clone(),
        "--socket".into(),
        at(rig.socket()),
        "--state-dir".into(),
        at(rig.dir.join("state")),
    ]
}

/// The journal's lines now.
pub fn journal(rig: &Rig) -> String {
    std::fs::read_to_string(rig.dir.join("state/journal.jsonl")).unwrap_or_default()
}

/// The tally the harness prints.
#[derive(Debug, Default)]
pub struct Tally {
    pub points: usize,
    pub reached: usize,
    pub unreached: Vec<String>,
    pub left: Vec<String>,
}

impl Tally {
    pub fn report(&self, ran: Duration) -> String {
        let mut s = format!(
            "faults: {} injection points, {} reached (a SIGKILL there, then a fresh keeper's replay and exit) in {:.0} s; ",
            self.points,
            self.reached,
            ran.as_secs_f64()
        );
        if self.left.is_empty() {
            s.push_str("every one returned the host to its snapshot");
        } else {
            let _ = write!(s, "{} left the host changed", self.left.len());
        }
        if !self.unreached.is_empty() {
            let _ = write!(s, "; not reached: {}", self.unreached.join(", "));
        }
        s
    }
}

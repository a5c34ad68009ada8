//! The end-to-end tests' support tree, written once: the privilege gate, cgroups the test
//! creates and always removes, pinned child processes, `keeper watch` runs, the keeper run as
//! a child (`rig`), the fake GPU (`gpu`, `gpu_rig`), QEMU guests and a QMP proxy, a Proxmox
//! API stub, interrupt lines, and the chaos suite's checks. The tests are the files of
//! tests/tests/, one binary each.

pub mod chaos;
pub mod faults;
pub mod gpu;
pub mod gpu_rig;
pub mod irqs;
pub mod pve_stub;
pub mod qemu;
pub mod qmp_proxy;
pub mod rig;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// keeper-user's binaries (build.rs: `cargo build -p keeper-user --bins` puts them there).
pub const KEEPER: &str = concat!(env!("KEEPER_BIN_DIR"), "/keeper");
pub const PROBE: &str = concat!(env!("KEEPER_BIN_DIR"), "/keeper-probe");
/// Which of this host's first two CPUs the trading-core tests protect: CPU 1, or CPU 0 with
/// `KEEPER_TEST_ROLES=swapped` (`cargo xtask test` runs tests/tests/real_time.rs and
/// eviction_path.rs both ways, so that no test assumes which CPU trades).
pub fn trading_cpu() -> u32 {
    u32::from(std::env::var("KEEPER_TEST_ROLES").as_deref() != Ok("swapped"))
}

/// The other one: the housekeeping CPU.
pub fn housekeeping_cpu() -> u32 {
    1 - trading_cpu()
}

/// [`trading_cpu`] as a CPU list (`"1"`).
pub fn trading() -> &'static str {
    ["0", "1"][trading_cpu() as usize]
}

/// [`housekeeping_cpu`] as a CPU list (`"0"`).
pub fn housekeeping() -> &'static str {
    ["0", "1"][housekeeping_cpu() as usize]
}

/// The Hive's policy in the source tree (`keeper run` alone reads /etc/keeper/policy.yaml).
pub const HIVE_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/hive.yaml");

/// True when this test can run. Otherwise says why, loudly; under CI=true it fails instead.
pub fn privileged(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else if cgroup2_mount().is_none() {
        Some("no cgroup2 mount".to_string())
    } else if !std::path::Path::new("/sys/devices/system/cpu/cpu1").exists() {
        Some("this host has no CPU 1 (the trading core of the tests)".to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true: privileged test {test} must run but cannot: {why}");
            }
            eprintln!("\n!!! SKIPPED privileged test {test}: {why} !!!\n");
            false
        }
    }
}

/// The cgroup v2 mount (/sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mountpoint = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mountpoint))
    })
}

/// A cgroup this test created; killed and removed on drop, even when the test fails.
pub struct TestCgroup {
    pub rel: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let rel = format!("keeper-test-{}-{tag}", std::process::id());
        let dir = cgroup2_mount().expect("cgroup2 mount").join(&rel);
        std::fs::create_dir_all(&dir).expect("create test cgroup");
        Self { rel, dir }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Thaw (a frozen task cannot die), kill everything in the subtree, then remove the
        // subtree depth first.
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if remove_tree(&self.dir) || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

/// Removes a cgroup and its descendants (children first). True when it is gone.
fn remove_tree(dir: &std::path::Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok()
}

/// Starts `program args` pinned to `cpu`, inside `cgroup` when given.
pub fn spawn_pinned(
    program: &str,
    args: &[&str],
    cpu: usize,
    cgroup: Option<&TestCgroup>,
) -> Child {
    spawn_on(program, args, &[cpu], cgroup)
}

/// Starts `program args` allowed on `cpus`, inside `cgroup` when given.
pub fn spawn_on(
    program: &str,
    args: &[&str],
    cpus: &[usize],
    cgroup: Option<&TestCgroup>,
) -> Child {
    let procs = cgroup.map(|c| c.dir.join("cgroup.procs"));
    let cpus = cpus.to_vec();
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (sched_setaffinity, open/write/close) after fork.
    unsafe {
        cmd.pre_exec(move || {
            // Join the cgroup first, so the child never runs on `cpus` outside it.
            if let Some(p) = &procs {
                std::fs::write(p, b"0")?;
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Fork from the housekeeping CPU, so the child does not run on the trading CPU before it
    // joined its cgroup (with the roles swapped, CPU 0 trades: forked there, a newcomer was
    // journaled with CPU 0 alone as its own).
    let saved = thread_affinity();
    set_thread_affinity(&[housekeeping_cpu() as usize]);
    let child = cmd.spawn().expect("spawn pinned child");
    // SAFETY: restoring this thread's own mask.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &saved) };
    child
}

fn thread_affinity() -> libc::cpu_set_t {
    // SAFETY: valid out-pointer of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        set
    }
}

pub fn set_thread_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// Waits for a child and returns its CPU time (user + system), from wait4's rusage.
pub fn wait_cpu_time(child: Child) -> Duration {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(rc, child.id() as i32, "wait4");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A running `keeper watch`; SIGINT then SIGKILL on drop.
pub struct Watch {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Watch {
    /// Starts `keeper watch ARGS --format json` and waits until it says it is watching.
    pub fn start(args: &[&str]) -> Watch {
        let mut child = Command::new(KEEPER)
            .arg("watch")
            .args(args)
            .args(["--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keeper watch");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut w = Watch {
            child: Some(child),
            stderr: rx,
            log: vec![],
        };
        let start = Instant::now();
        while !w.log.iter().any(|l| l.contains("watching")) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "keeper watch never got ready: {:#?}",
                w.log
            );
            match w.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => w.log.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("keeper watch exited: {:#?}", w.log)
                }
            }
        }
        w
    }

    /// Waits for `--for` to end it; returns the JSON report.
    pub fn finish(mut self) -> serde_json::Value {
        let child = self.child.take().expect("child");
        let out = child.wait_with_output().expect("wait keeper watch");
        self.log.extend(self.stderr.try_iter());
        assert!(
            out.status.success(),
            "keeper watch failed: {:?}\n{:#?}",
            out.status,
            self.log
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_millis(500));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Names of loaded BPF programs (bpftool prog list).
pub fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "list", "-j"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The thread of `pid` named `name`.
pub fn tid_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
}

/// A process's state letter in /proc/<pid>/stat (`T` when stopped; `?` when gone).
pub fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s[i + 1..].split_whitespace().next())
        .and_then(|f| f.chars().next())
        .unwrap_or('?')
}

/// The share of `span` in which `pid` was seen running on `cpu`, sampled from outside the
/// keeper (`/proc/PID/stat`'s state and `processor`, every 0.5 ms, from CPU 0).
pub fn share_on_cpu(pid: u32, cpu: u32, span: Duration) -> f64 {
    share_of_any_on_cpu(&|| vec![pid], cpu, span)
}

/// The share of `span` in which any thread of the processes `pids` names (asked again at each
/// sample: a stressor forks) was seen running on `cpu`, sampled as [`share_on_cpu`] does.
pub fn share_of_any_on_cpu(pids: &dyn Fn() -> Vec<u32>, cpu: u32, span: Duration) -> f64 {
    set_thread_affinity(&[0]);
    let end = std::time::Instant::now() + span;
    let (mut on, mut all) = (0u64, 0u64);
    let running_on = |stat: &str| {
        keeper::device::procfs::parse_stat(stat)
            .is_some_and(|s| s.state == 'R' && s.processor == Some(cpu))
    };
    while std::time::Instant::now() < end {
        let seen = pids().into_iter().any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| running_on(&s))
                })
        });
        all += 1;
        on += u64::from(seen);
        std::thread::sleep(Duration::from_micros(500));
    }
    on as f64 / all.max(1) as f64
}

/// A thread's scheduling policy (`SCHED_OTHER` 0, `SCHED_FIFO` 1, `SCHED_RR` 2, deadline 6) and
/// real-time priority.
pub fn sched_of(tid: u32) -> (i32, i32) {
    // SAFETY: plain syscalls on a thread id with a valid out-param.
    unsafe {
        let policy = libc::sched_getscheduler(tid as i32);
        let mut p = libc::sched_param { sched_priority: 0 };
        libc::sched_getparam(tid as i32, &mut p);
        (policy, p.sched_priority)
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// CPU time (user + system, seconds) process `pid` has used so far, from /proc/PID/stat: what
/// it costs, measured from outside it.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = keeper::device::procfs::task_stat(pid).map_or(0, |s| s.cpu_ticks);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

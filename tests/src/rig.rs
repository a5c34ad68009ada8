//! The `keeper run` test rig: a scope cgroup with banker/eva/muse workload cgroups, a policy
//! naming them, and the daemon started on them with its log captured.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{KEEPER, PROBE, TestCgroup, spawn_pinned};

/// The scope and its workload cgroups, plus a policy naming them.
pub struct Rig {
    pub scope: TestCgroup,
    pub dir: PathBuf,
}

impl Rig {
    pub fn new(tag: &str) -> Rig {
        Rig::with_rules(tag, "")
    }

    /// A rig whose policy also has `rules` (YAML lines under `rules:`, indented by 2).
    pub fn with_rules(tag: &str, rules: &str) -> Rig {
        Rig::with(tag, &|_| String::new(), rules)
    }

    /// A rig whose policy also has the workloads `extra(scope)` returns (YAML list items,
    /// indented by 2) and `rules`.
    pub fn with(tag: &str, extra: &dyn Fn(&str) -> String, rules: &str) -> Rig {
        let scope = TestCgroup::new(tag);
        for w in ["banker", "eva", "muse"] {
            std::fs::create_dir_all(scope.dir.join(w)).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("keeper-daemon-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = &scope.rel;
        std::fs::write(
            dir.join("policy.yaml"),
            format!(
                "version: 1\n\
                 host: {{ name: test, time_zone: UTC, trading_cores: \"{t}\", housekeeping_cores: \"{h}\" }}\n\
                 workloads:\n\
                 \x20 - {{ name: banker, rank: 1, match: {{ cgroup: {s}/banker }}, owns_trading_cores: true }}\n\
                 \x20 - name: eva\n\
                 \x20   rank: 2\n\
                 \x20   match: {{ cgroup: {s}/eva }}\n\
                 \x20   preempt: {{ on: interaction, deadline: 200ms, targets: [muse], release_after: 1s }}\n\
                 \x20 - {{ name: muse, rank: 3, match: {{ cgroup: {s}/muse }} }}\n\
                 {}{}",
                extra(s),
                if rules.is_empty() { String::new() } else { format!("rules:\n{rules}") },
                t = crate::trading(),
                h = crate::housekeeping(),
            ),
        )
        .unwrap();
        Rig { scope, dir }
    }

    /// Adds `keys` (YAML, e.g. `irq_guard: true`) to the policy's `host:` line.
    pub fn with_host(&self, keys: &str) {
        self.edit_policy(
            "housekeeping_cores: \"0\" }",
            &format!("housekeeping_cores: \"0\", {keys} }}"),
        );
    }

    /// Replaces the first `from` of the policy's text with `to`.
    pub fn edit_policy(&self, from: &str, to: &str) {
        let policy = self.dir.join("policy.yaml");
        let text = std::fs::read_to_string(&policy).unwrap();
        assert!(text.contains(from), "`{from}` is not in the rig's policy");
        std::fs::write(&policy, text.replacen(from, to, 1)).unwrap();
    }

    pub fn cg(&self, w: &str) -> PathBuf {
        self.scope.dir.join(w)
    }
    /// Cgroup `w` of the scope (created if it is not one of the rig's), to spawn into; the
    /// scope removes it, so the caller forgets it once its tasks are in.
    pub fn workload(&self, w: &str) -> TestCgroup {
        std::fs::create_dir_all(self.cg(w)).unwrap();
        TestCgroup {
            rel: self.rel(w),
            dir: self.cg(w),
        }
    }
    /// A rig whose keeper froze muse for an interaction: a spinner in muse and a sleeper in
    /// eva (returned: the caller ends them), `interaction start` answered, muse frozen.
    pub fn with_muse_frozen(tag: &str) -> (Rig, Daemon, [Child; 2]) {
        let rig = Rig::new(tag);
        let (muse, eva) = (rig.workload("muse"), rig.workload("eva"));
        let worker = spawn_pinned(PROBE, &["spin", "60", "kt_muse"], 0, Some(&muse));
        let assistant = spawn_pinned(PROBE, &["sleep", "3000", "10000"], 0, Some(&eva));
        std::mem::forget(muse);
        std::mem::forget(eva);
        let keeper = rig.keeper(&[]);
        let answer = rig.control(&["interaction", "start"]);
        assert_eq!(answer["ok"], true, "{answer:#}");
        assert!(
            rig.frozen("muse"),
            "muse not frozen after `interaction start`: {answer:#}"
        );
        (rig, keeper, [worker, assistant])
    }
    pub fn rel(&self, w: &str) -> String {
        format!("{}/{w}", self.scope.rel)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("keeper.sock")
    }
    pub fn frozen(&self, w: &str) -> bool {
        cgroup_frozen(&self.cg(w))
    }

    /// Starts `keeper run` with this rig's policy, scope, socket and state dir.
    pub fn keeper(&self, extra: &[&str]) -> Daemon {
        self.keeper_with_env(extra, &[])
    }

    /// Same, with extra environment variables.
    pub fn keeper_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let policy = self.dir.join("policy.yaml");
        let socket = self.socket();
        let state = self.dir.join("state");
        let mut args = vec![
            "--policy",
            policy.to_str().unwrap(),
            "--scope",
            &self.scope.rel,
            "--socket",
            socket.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args, env)
    }

    pub fn control(&self, args: &[&str]) -> serde_json::Value {
        control_at(&self.socket(), args)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Daemon {
    child: Option<Child>,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

impl Daemon {
    /// `keeper run ARGS` with extra environment variables, its log collected; returns once it
    /// says "keeper running".
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(KEEPER)
            .envs(env.iter().copied())
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon {
            child: Some(child),
            log: rx,
            lines: vec![],
        };
        d.wait_for("keeper running", Duration::from_secs(30));
        d
    }

    pub fn wait_for(&mut self, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.lines.iter().any(|l| l.contains(text)) {
            assert!(
                start.elapsed() < limit,
                "no `{text}` from keeper run: {:#?}",
                self.lines
            );
            match self.log.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => self.lines.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("keeper run exited: {:#?}", self.lines)
                }
            }
        }
    }

    /// Sends `signal` and lets it act for `settle`: whether the keeper still runs then.
    pub fn signal(&mut self, signal: i32, settle: Duration) -> bool {
        let c = self.child.as_mut().unwrap();
        unsafe { libc::kill(c.id() as i32, signal) };
        std::thread::sleep(settle);
        self.lines.extend(self.log.try_iter());
        c.try_wait().is_ok_and(|s| s.is_none())
    }

    /// The keeper's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for `--for` to end it; returns its log.
    pub fn finish(mut self) -> Vec<String> {
        let status = self.child.take().unwrap().wait().unwrap();
        self.lines.extend(self.log.try_iter());
        assert!(
            status.success(),
            "keeper run failed ({status}): {:#?}",
            self.lines
        );
        std::mem::take(&mut self.lines)
    }

    /// SIGTERM, then waits; returns its log.
    pub fn stop(self) -> Vec<String> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, then waits for a clean exit; returns its log.
    pub fn stop_with(mut self, signal: i32) -> Vec<String> {
        let mut c = self.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, signal) };
        let status = c.wait().unwrap();
        self.lines.extend(self.log.try_iter());
        assert!(status.success(), "{status}: {:#?}", self.lines);
        std::mem::take(&mut self.lines)
    }

    /// SIGKILL, then waits; returns its log.
    pub fn kill9(mut self) -> Vec<String> {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        self.drain();
        std::mem::take(&mut self.lines)
    }

    /// Takes in what the keeper logged so far (all of it once it has exited).
    pub fn drain(&mut self) {
        let exited = self.child.is_none();
        loop {
            match self
                .log
                .recv_timeout(Duration::from_millis(if exited { 500 } else { 0 }))
            {
                Ok(l) => self.lines.push(l),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(500));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `keeper ARGS --socket SOCKET`, its JSON answer.
pub fn control_at(socket: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(KEEPER)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Whether a cgroup's `cgroup.events` says `frozen 1`.
pub fn cgroup_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap()
        .lines()
        .any(|l| l == "frozen 1")
}

pub fn affinity(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn eventually(limit: Duration, f: impl FnMut() -> bool) -> bool {
    within(limit, f).is_some()
}

/// How long `f` took to become true, polled every 10 ms; `None` if not within `limit`.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Writes a PSI file (`--memory-psi`) with these `some` and `full` avg10 shares.
pub fn write_psi(file: &Path, some: f64, full: f64) {
    std::fs::write(
        file,
        format!(
            "some avg10={some:.2} avg60=0.00 avg300=0.00 total=0\nfull avg10={full:.2} avg60=0.00 avg300=0.00 total=0\n"
        ),
    )
    .unwrap();
}

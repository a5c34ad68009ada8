//! The `keeper run` test rig: a scope cgroup with banker/eva/muse workload cgroups, a policy
//! naming them, and the daemon started on them with its log captured.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{KEEPER, TestCgroup};

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
                 host: {{ name: test, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }}\n\
                 workloads:\n\
                 \x20 - {{ name: banker, rank: 1, match: {{ cgroup: {s}/banker }}, owns_trading_cores: true }}\n\
                 \x20 - name: eva\n\
                 \x20   rank: 2\n\
                 \x20   match: {{ cgroup: {s}/eva }}\n\
                 \x20   preempt: {{ on: interaction, deadline: 200ms, targets: [muse], release_after: 1s }}\n\
                 \x20 - {{ name: muse, rank: 3, match: {{ cgroup: {s}/muse }} }}\n\
                 {}{}",
                extra(s),
                if rules.is_empty() { String::new() } else { format!("rules:\n{rules}") }
            ),
        )
        .unwrap();
        Rig { scope, dir }
    }

    pub fn cg(&self, w: &str) -> PathBuf {
        self.scope.dir.join(w)
    }
    pub fn rel(&self, w: &str) -> String {
        format!("{}/{w}", self.scope.rel)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("keeper.sock")
    }
    pub fn frozen(&self, w: &str) -> bool {
        std::fs::read_to_string(self.cg(w).join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1")
    }

    /// Starts `keeper run` with this rig's policy, scope, socket and state dir.
    pub fn keeper(&self, extra: &[&str]) -> Daemon {
        self.keeper_with_env(extra, &[])
    }

    /// Same, with extra environment variables.
    pub fn keeper_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(KEEPER)
            .envs(env.iter().copied())
            .arg("run")
            .arg("--policy")
            .arg(self.dir.join("policy.yaml"))
            .args(["--scope", &self.scope.rel])
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(extra)
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

    pub fn control(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(KEEPER)
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
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

    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
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

pub fn affinity(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

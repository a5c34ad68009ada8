//! Privileged: a real Docker engine (Debian's docker.io) and `keeper run` matching its
//! containers by name and by label. The engine runs in a mount namespace of its own where
//! /sys/fs/cgroup is the test's scope cgroup (a cgroup v2 subtree): dockerd and runc see a
//! cgroup v2 host and create container cgroups only there, so on a hybrid host no v1 hierarchy
//! is touched. Its image is a busybox root filesystem made offline with `docker import`; the
//! containers have no network. The engine, its containers and their cgroups live in the scope,
//! which is killed and removed even when the test fails.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use integration_test::{rig::*, *};

/// dockerd, its socket and its directories; stopped (by pid) and removed on drop.
struct Engine {
    dockerd: Child,
    dir: PathBuf,
}

impl Engine {
    /// Starts dockerd with its cgroup root at `scope` (a cgroup the test created), itself in
    /// `scope/engine`, its data in a temp dir; returns once it answers.
    fn start(scope: &Path, dir: &Path) -> Engine {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("exec")).unwrap();
        let engine_cg = scope.join("engine");
        std::fs::create_dir_all(&engine_cg).unwrap();
        let d = dir.display();
        // Into its cgroup first (the host's path), then the cgroup root becomes the scope.
        let script = format!(
            "echo $$ > {engine}/cgroup.procs && mount --bind {scope} /sys/fs/cgroup && \
             exec dockerd --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent=/docker \
             --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
             --storage-driver=vfs --data-root {d}/data --exec-root {d}/exec \
             -H unix://{d}/docker.sock --pidfile {d}/docker.pid",
            engine = engine_cg.display(),
            scope = scope.display(),
        );
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let dockerd = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux)");
        let engine = Engine {
            dockerd,
            dir: dir.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(20), || {
            engine
                .docker(&["version", "--format", "{{.Server.APIVersion}}"])
                .status
                .success()
        });
        assert!(up, "dockerd did not answer: {}", engine.log());
        engine
    }

    fn socket(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS` against this engine.
    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("docker (docker.io)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// An image of busybox-static's /bin/busybox and a few of its applets, imported offline.
    fn import_busybox(&self, tag: &str) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for applet in ["sh", "sleep", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        self.ok(&["import", tar.to_str().unwrap(), tag]);
    }

    /// A running container's main pid.
    fn pid(&self, name: &str) -> u32 {
        self.ok(&["inspect", "-f", "{{.State.Pid}}", name])
            .parse()
            .unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers first (their cgroups go with them), then the engine by its pid; the
        // scope's cgroup.kill takes whatever is left (shims included: they are in it).
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        unsafe { libc::kill(self.dockerd.id() as i32, libc::SIGTERM) };
        let gone = eventually(Duration::from_secs(10), || {
            matches!(self.dockerd.try_wait(), Ok(Some(_)))
        });
        if !gone {
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tools the test needs; missing ones fail it under CI=true, else skip it loudly.
fn tools(test: &str) -> bool {
    let missing: Vec<&str> = ["dockerd", "docker", "containerd", "runc", "unshare"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .chain((!Path::new("/bin/busybox").exists()).then_some("/bin/busybox"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt: docker.io, busybox-static)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true: privileged test {test} must run but cannot: {why}");
    }
    eprintln!("\n!!! SKIPPED privileged test {test}: {why} !!!\n");
    false
}

/// A container's progress counter (its shell writes 1, 2, 3, … to /tmp/n every 50 ms).
fn counter(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the counter stands still for half a second.
fn still(pid: u32) -> bool {
    let before = counter(pid);
    std::thread::sleep(Duration::from_millis(500));
    counter(pid) == before
}

#[test]
fn docker_containers_are_found_by_name_and_label_frozen_thawed_and_limited() {
    let test = "docker_containers_are_found_by_name_and_label_frozen_thawed_and_limited";
    if !privileged(test) || !tools(test) {
        return;
    }
    let extra = |_: &str| {
        "  - { name: scraper, rank: 4, match: { docker: { name: kt-scraper } } }\n\
         \x20 - { name: workers, rank: 5, class: micro, match: { docker: { label: keeper.test=worker } } }\n"
            .to_string()
    };
    let rig = Rig::with("docker", &extra, "");
    let policy = rig.dir.join("policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("targets: [muse]", "targets: [muse, scraper, workers]"),
    )
    .unwrap();
    let engine = Engine::start(&rig.scope.dir, &rig.dir.join("engine"));
    engine.import_busybox("keeper-busybox:test");
    let looping = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done";
    for (name, label) in [
        ("kt-scraper", "keeper.test=scraper"),
        ("kt-worker", "keeper.test=worker"),
    ] {
        engine.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "--label",
            label,
            "keeper-busybox:test",
            "sh",
            "-c",
            looping,
        ]);
    }
    let (scraper, worker) = (engine.pid("kt-scraper"), engine.pid("kt-worker"));
    // The engine made the containers' cgroups in the scope, nowhere else.
    let scraper_cg = task_cgroup(scraper);
    let worker_cg = task_cgroup(worker);
    for cg in [&scraper_cg, &worker_cg] {
        assert!(
            cg.starts_with(&format!("{}/docker/", rig.scope.rel)),
            "{cg} is not in the scope"
        );
    }
    assert!(eventually(Duration::from_secs(5), || counter(scraper) > 0
        && counter(worker) > 0));

    let keeper = rig.keeper_with_env(&[], &[("DOCKER_HOST", &engine.socket())]);
    let status = rig.control(&["status"]);
    assert_eq!(status["ok"], true, "{status:#}");
    // Found by the engine's answer: name → scraper, label → workers, each in its cgroup.
    let in_scope = |cg: &str| {
        let rel = cg.strip_prefix(&format!("{}/", rig.scope.rel)).unwrap();
        rig.scope.dir.join(rel)
    };
    let frozen_cg = |cg: &str| cgroup_frozen(&in_scope(cg));
    rig.control(&["interaction", "start"]);
    assert!(
        eventually(Duration::from_secs(3), || frozen_cg(&scraper_cg)
            && frozen_cg(&worker_cg)),
        "containers not frozen"
    );
    assert!(
        still(scraper) && still(worker),
        "a frozen container still runs"
    );
    let status = rig.control(&["status"]);
    let frozen = status["frozen"].as_array().unwrap();
    for w in ["muse", "scraper", "workers"] {
        assert!(frozen.iter().any(|f| f == w), "{w} not frozen: {status:#}");
    }
    rig.control(&["interaction", "stop"]);
    assert!(
        eventually(Duration::from_secs(5), || !frozen_cg(&scraper_cg)
            && !frozen_cg(&worker_cg)),
        "containers not thawed"
    );
    assert!(
        !still(scraper) && !still(worker),
        "a thawed container does not run"
    );

    // The class's limits on the container's cgroup (micro: cpu_weight 50, put back at exit)
    // where this hierarchy has the cpu controller; else the keeper says it lacks it there.
    let weight = in_scope(&worker_cg).join("cpu.weight");
    let limited = weight.exists();
    if limited {
        assert!(eventually(Duration::from_secs(3), || {
            std::fs::read_to_string(&weight).is_ok_and(|w| w.trim() == "50")
        }));
    }
    let log = keeper.stop();
    let shown = [
        "device::docker",
        "first_look",
        "cpu controller",
        "freeze",
        "thaw",
    ];
    for l in log.iter().filter(|l| shown.iter().any(|s| l.contains(s))) {
        eprintln!("keeper: {l}");
    }
    let first_look = format!("workers (rank 5): here: cgroup /{worker_cg}");
    assert!(
        log.iter().any(|l| l.contains(&first_look)),
        "no `{first_look}` in {log:#?}"
    );
    if limited {
        assert_ne!(std::fs::read_to_string(&weight).unwrap().trim(), "50");
    } else {
        let said = format!(
            "cgroup /{worker_cg} has no cpu.weight: the cpu controller is not available here"
        );
        assert!(
            log.iter().any(|l| l.contains(&said)),
            "no `{said}` in {log:#?}"
        );
    }
    // Nothing of the engine's outside the scope: every container task is in it.
    for pid in [scraper, worker] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || task_cgroup(pid).starts_with(&rig.scope.rel)
        );
    }
    drop(engine);
}

#[test]
fn without_an_engine_the_keeper_says_so_once_and_keeps_working() {
    let test = "without_an_engine_the_keeper_says_so_once_and_keeps_working";
    if !privileged(test) {
        return;
    }
    let extra = |_: &str| {
        "  - { name: scraper, rank: 4, match: { docker: { name: kt-none } } }\n".to_string()
    };
    let rig = Rig::with("docker-none", &extra, "");
    let socket = format!("unix://{}/no-engine.sock", rig.dir.display());
    let keeper = rig.keeper_with_env(&["--for", "3s"], &[("DOCKER_HOST", &socket)]);
    // The loop goes on: interactions still freeze what they target.
    rig.control(&["interaction", "start"]);
    assert!(rig.frozen("muse"));
    // The watcher, spawned from the loop (SCHED_FIFO 1), runs at normal priority.
    let watcher = tid_named(keeper.pid(), "keeper-docker").map(sched_of);
    let log = keeper.finish();
    assert_eq!(
        watcher,
        Some((libc::SCHED_OTHER, 0)),
        "the Docker watcher thread's class (it inherited the loop's real-time priority)"
    );
    let said: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("gives no containers"))
        .collect();
    assert_eq!(said.len(), 1, "{log:#?}");
    assert!(said[0].contains("no-engine.sock"), "{said:?}");
    let first_look = "scraper (rank 4): not here: no running Docker container with name kt-none";
    assert!(
        log.iter().any(|l| l.contains(first_look)),
        "no `{first_look}` in {log:#?}"
    );
}

/// A task's cgroup v2 path, relative to the mount.
fn task_cgroup(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_matches('/')
        .to_string()
}

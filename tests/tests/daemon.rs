//! Privileged end-to-end tests of `keeper run` on the real kernel: intruder eviction, freeze →
//! thaw through the control socket, restore after `kill -9`, survival of vanished pids, and the
//! control socket's refusals. Everything runs inside a scope cgroup the test creates.

use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    time::Duration,
};

use integration_test::{rig::*, *};

#[test]
fn an_intruder_is_evicted_counted_and_put_back_at_exit() {
    if !privileged("an_intruder_is_evicted_counted_and_put_back_at_exit") {
        return;
    }
    let rig = Rig::new("evict");
    let report = rig.dir.join("report.json");
    let keeper = rig.keeper(&["--for", "3s", "--report", report.to_str().unwrap()]);
    // A hog that arrives on the trading core after the keeper started.
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let hog = spawn_pinned(PROBE, &["spin", "5", "kt_evict"], 1, Some(&muse));
    std::mem::forget(muse); // the rig's scope removes it
    let pid = hog.id();
    assert!(
        eventually(Duration::from_secs(2), || affinity(pid) == "0"),
        "not evicted: {}",
        affinity(pid)
    );
    let status = rig.control(&["status"]);
    assert!(status["evictions"].as_u64().unwrap() >= 1, "{status:#}");
    let log = keeper.finish();
    // The first look: what the policy found here, what this host allows, what it will do.
    for want in [
        format!("banker (rank 1): here: cgroup /{}", rig.rel("banker")),
        "this host: cpuset v2 ".to_string(),
        "trading cores 1 for banker while it is active: ".to_string(),
        format!("scope /{}: nothing outside it is touched", rig.rel("")),
    ] {
        let want = want.replace("//", "/").replace("/:", ":");
        assert!(
            log.iter().any(|l| l.contains(&want)),
            "no `{want}` in {log:#?}"
        );
    }
    // At exit the keeper puts back what it changed.
    assert_eq!(affinity(pid), "1");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(record["evictions"].as_u64().unwrap() >= 1);
    assert!(
        record["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "evict_intruder" && a["detail"]["pid"] == pid),
        "{record:#}"
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(hog);
}

#[test]
fn interaction_freezes_muse_and_kill_9_then_restart_thaws_it() {
    if !privileged("interaction_freezes_muse_and_kill_9_then_restart_thaws_it") {
        return;
    }
    let (rig, keeper, children) = Rig::with_muse_frozen("freeze");
    assert!(!rig.frozen("eva"));
    let status = rig.control(&["status"]);
    assert_eq!(status["frozen"], serde_json::json!(["muse"]), "{status:#}");

    // Crash while muse is frozen: it stays frozen...
    keeper.kill9();
    assert!(rig.frozen("muse"));
    // ...until the next keeper starts and restores everything from its journal.
    let keeper = rig.keeper(&["--for", "1s"]);
    assert!(!rig.frozen("muse"), "restart did not thaw muse");
    let log = keeper.finish();
    assert!(
        log.iter()
            .any(|l| l.contains("undid a change left by an earlier keeper run")),
        "{log:#?}"
    );

    // A clean round trip: start → frozen, stop (+ release_after 1 s) → thawed.
    let keeper = rig.keeper(&[]);
    rig.control(&["interaction", "start"]);
    assert!(rig.frozen("muse"));
    rig.control(&["interaction", "stop"]);
    assert!(
        eventually(Duration::from_secs(5), || !rig.frozen("muse")),
        "muse not thawed after stop"
    );
    drop(keeper);
    for c in children {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_cpu_time(c);
    }
}

#[test]
fn vanished_pids_are_logged_not_fatal() {
    if !privileged("vanished_pids_are_logged_not_fatal") {
        return;
    }
    let rig = Rig::new("churn");
    let keeper = rig.keeper(&["--for", "3s"]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // Short-lived intruders on the trading core: many exit before the keeper acts on them
    // (an outcome, "exited before its eviction", not an error).
    for _ in 0..100 {
        let c = spawn_pinned(PROBE, &["sleep", "1", "100"], 1, Some(&muse));
        wait_cpu_time(c);
    }
    std::mem::forget(muse);
    let status = rig.control(&["status"]);
    assert_eq!(status["ok"], true);
    let log = keeper.finish();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
}

/// `--allow-uid` and `--allow-group` open the socket to whom they name, and only to them.
/// Before, the socket was always 0600 (the unit's folder 0700): an allowed uid could not even
/// connect, so `--allow-uid` was useless; there was no group. Clients run through setpriv with
/// uids and groups no account has (nothing is added to this host's users or groups).
#[test]
fn allowed_uids_and_the_allowed_group_reach_the_socket_and_nobody_else() {
    if !privileged("allowed_uids_and_the_allowed_group_reach_the_socket_and_nobody_else") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rig = Rig::new("sockgroup");
    std::fs::set_permissions(&rig.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status_as = |uid: u32, groups: &str| {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg(format!("--groups={groups}"))
            .args([KEEPER, "status", "--socket"])
            .arg(rig.socket())
            .output()
            .expect("setpriv (util-linux)");
        let answer: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (answer.is_some_and(|a| a["ok"] == true), said)
    };
    // A group: the socket root:4242, 0660; a member gets in, others do not.
    let keeper = rig.keeper(&["--for", "8s", "--allow-group", "4242"]);
    let meta = std::fs::metadata(rig.socket()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 4242));
    assert!(
        status_as(65534, "4242").0,
        "a member of group 4242 was refused"
    );
    let (ok, said) = status_as(65534, "65534");
    assert!(!ok && said.contains("Permission denied"), "{said}");
    keeper.stop();
    // A uid: the socket 0666, the peer's uid checked inside.
    let keeper = rig.keeper(&["--for", "8s", "--allow-uid", "65533"]);
    let meta = std::fs::metadata(rig.socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o666);
    assert!(status_as(65533, "65533").0, "the allowed uid was refused");
    assert!(!status_as(65534, "65534").0, "uid 65534 was let in");
    keeper.stop();
    // An unknown group name is a located error at the start, not a socket open to all.
    let out = Command::new(KEEPER)
        .args(["run", "--for", "1s", "--allow-group", "no-such-group-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--allow-group no-such-group-here: no such group"),
        "{said}"
    );
}

#[test]
fn the_control_socket_refuses_non_root_peers() {
    if !privileged("the_control_socket_refuses_non_root_peers") {
        return;
    }
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let rig = Rig::new("sock");
    std::fs::set_permissions(&rig.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let keeper = rig.keeper(&["--for", "5s"]);
    let mode = std::fs::metadata(rig.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let as_nobody = || {
        Command::new(KEEPER)
            .args(["status", "--socket"])
            .arg(rig.socket())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The file mode keeps nobody out...
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // ...and with the mode opened, the peer credentials still do.
    std::fs::set_permissions(rig.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("uid 65534 is not allowed"),
        "{answer}"
    );
    // Bad requests get a located error, and the keeper keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(rig.socket()).unwrap();
    use std::io::Write;
    s.write_all(b"{\"command\":\"freeze-everything\"}\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert!(
        reply.contains("unknown command `freeze-everything`"),
        "{reply}"
    );
    assert_eq!(rig.control(&["status"])["ok"], true);
    drop(keeper);
}

#[test]
fn a_second_keeper_on_the_same_state_dir_changes_nothing() {
    if !privileged("a_second_keeper_on_the_same_state_dir_changes_nothing") {
        return;
    }
    let rig = Rig::new("second");
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let worker = spawn_pinned(PROBE, &["spin", "30", "kt_second"], 0, Some(&muse));
    std::mem::forget(muse);
    let first = rig.keeper(&[]);
    assert_eq!(rig.control(&["interaction", "start"])["ok"], true);
    assert!(rig.frozen("muse"));
    // The same state directory, another socket: refused before the journal is read.
    let state = rig.dir.join("state");
    let policy = rig.dir.join("policy.yaml");
    let out = Command::new(KEEPER)
        .args(["run", "--for", "1s", "--policy"])
        .arg(&policy)
        .args(["--scope", &rig.scope.rel, "--socket"])
        .arg(rig.dir.join("second.sock"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another keeper (pid ") && stderr.contains("changed nothing"),
        "{stderr}"
    );
    assert!(
        rig.frozen("muse"),
        "the second keeper thawed muse: {stderr}"
    );
    let status = rig.control(&["status"]);
    assert_eq!(status["frozen"], serde_json::json!(["muse"]), "{status:#}");
    first.stop();
    assert!(!rig.frozen("muse"));
    unsafe { libc::kill(worker.id() as i32, libc::SIGKILL) };
    wait_cpu_time(worker);
}

#[test]
fn a_task_named_like_a_kernel_thread_is_evicted() {
    if !privileged("a_task_named_like_a_kernel_thread_is_evicted") {
        return;
    }
    let rig = Rig::new("kworker");
    let keeper = rig.keeper(&["--for", "4s"]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // The name a per-CPU kernel thread of CPU 1 would have (the kernel's flags say
    // otherwise), taken on CPU 0; then it moves to the trading core under that name.
    let spoof = spawn_pinned(PROBE, &["spin", "6", "kworker/1:9"], 0, Some(&muse));
    std::mem::forget(muse);
    let pid = spoof.id();
    assert!(eventually(Duration::from_secs(2), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "kworker/1:9")
    }));
    let moved = Command::new("taskset")
        .args(["-p", "-c", "1", &pid.to_string()])
        .output()
        .unwrap();
    assert!(moved.status.success(), "{moved:?}");
    assert!(
        eventually(Duration::from_secs(2), || affinity(pid) == "0"),
        "a task named kworker/1:9 kept the trading core: {}",
        affinity(pid)
    );
    let log = keeper.finish();
    assert!(
        log.iter()
            .any(|l| l.contains("kworker/1:9") && l.contains("evict")),
        "{log:#?}"
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(spoof);
}

#[test]
fn a_self_re_pinning_task_is_evicted_at_each_return_then_stopped() {
    if !privileged("a_self_re_pinning_task_is_evicted_at_each_return_then_stopped") {
        return;
    }
    let rig = Rig::with_rules(
        "repin",
        "  intruders: { repeat: 3, within: 10s, then: stop }\n",
    );
    let keeper = rig.keeper(&[]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // It pins itself back onto CPU 1 every millisecond, for 12 s.
    let hog = spawn_pinned(PROBE, &["repin", "12", "1", "kt_repin"], 1, Some(&muse));
    std::mem::forget(muse);
    let pid = hog.id();
    let share = share_on_cpu(pid, 1, Duration::from_secs(10));
    let status = rig.control(&["status"]);
    let evictions = status["evictions"].as_u64().unwrap();
    eprintln!(
        "re-pinning spinner: {:.2} % of CPU 1 over 10 s, {evictions} evictions, state {}",
        share * 100.0,
        proc_state(pid)
    );
    assert!(evictions >= 3, "evicted at each return: {status:#}");
    assert_eq!(proc_state(pid), 'T', "not stopped: {status:#}");
    assert!(
        share <= 0.05,
        "the re-pinning spinner held {:.1} % of the trading core",
        share * 100.0
    );
    let log = keeper.stop();
    assert!(
        log.iter().any(|l| l.contains("stop intruder kt_repin")),
        "{log:#?}"
    );
    // Undone at exit: it runs again.
    assert!(
        eventually(Duration::from_secs(2), || proc_state(pid) != 'T'),
        "still stopped after the keeper exited"
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(hog);
}

#[test]
fn idle_metrics_connections_cannot_use_up_the_keepers_descriptors() {
    if !privileged("idle_metrics_connections_cannot_use_up_the_keepers_descriptors") {
        return;
    }
    let rig = Rig::new("metrics-fds");
    let addr = format!("127.0.0.1:{}", 20000 + std::process::id() % 20000);
    let keeper = rig.keeper(&["--for", "8s", "--metrics", &addr]);
    let pid = keeper.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // The metrics listener is bound just after "keeper running".
    assert!(eventually(Duration::from_secs(3), || {
        std::net::TcpStream::connect(&addr).is_ok()
    }));
    std::thread::sleep(Duration::from_millis(200));
    let before = fds();
    // 200 peers that connect and never send a request.
    let idle: Vec<_> = (0..200)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    assert!(
        during <= before + 16 + 2,
        "{during} descriptors with 200 idle peers (was {before})"
    );
    drop(idle);
    // Served again once the idle ones are gone.
    let scraped = eventually(Duration::from_secs(6), || {
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("keeper_")
    });
    assert!(scraped, "no /metrics after the idle peers left");
    keeper.finish();
}

#[test]
fn tasks_already_in_the_scope_are_kept_off_the_trading_cores_then_put_back() {
    if !privileged("tasks_already_in_the_scope_are_kept_off_the_trading_cores_then_put_back") {
        return;
    }
    let rig = Rig::new("inherit");
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let banker = TestCgroup {
        rel: rig.rel("banker"),
        dir: rig.cg("banker"),
    };
    // A parent allowed on both CPUs that starts a child later, and the Banker's own process.
    let parent = spawn_on(
        "/bin/sh",
        &["-c", &format!("sleep 2; {PROBE} sleep 3000 1000")],
        &[0, 1],
        Some(&muse),
    );
    let trader = spawn_on(PROBE, &["sleep", "6000", "1000"], &[0, 1], Some(&banker));
    std::mem::forget(muse);
    std::mem::forget(banker);
    let (pid, trader_pid) = (parent.id(), trader.id());
    assert_eq!(affinity(pid), "0-1");
    let keeper = rig.keeper(&[]);
    // No cpuset partition on this host: the affinity does it. The Banker keeps both CPUs.
    assert!(
        eventually(Duration::from_secs(2), || affinity(pid) == "0"),
        "not kept off the trading core: {}",
        affinity(pid)
    );
    assert_eq!(affinity(trader_pid), "0-1");
    // The child it starts now is born on the housekeeping core.
    let children = format!("/proc/{pid}/task/{pid}/children");
    let mut child = None;
    assert!(eventually(Duration::from_secs(4), || {
        child = std::fs::read_to_string(&children)
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
        child.is_some()
    }));
    let child = child.unwrap();
    assert_eq!(
        affinity(child),
        "0",
        "the child was not born off the trading core"
    );
    keeper.stop();
    assert_eq!(affinity(pid), "0-1", "not put back at exit");
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    for c in [parent, trader] {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_cpu_time(c);
    }
}

#[test]
fn a_fork_storm_onto_the_trading_core_leaves_the_keeper_responsive() {
    if !privileged("a_fork_storm_onto_the_trading_core_leaves_the_keeper_responsive") {
        return;
    }
    let rig = Rig::new("storm");
    let keeper = rig.keeper(&["--for", "8s"]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // Four shells on CPU 0, each starting short tasks pinned to CPU 1 as fast as it can.
    let storm =
        "end=$(($(date +%s)+5)); while [ $(date +%s) -lt $end ]; do taskset -c 1 /bin/true; done";
    let shells: Vec<_> = (0..4)
        .map(|_| spawn_pinned("/bin/sh", &["-c", storm], 0, Some(&muse)))
        .collect();
    std::mem::forget(muse);
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let t = std::time::Instant::now();
        let status = rig.control(&["status"]);
        slowest = slowest.max(t.elapsed());
        assert_eq!(status["ok"], true, "{status:#}");
        std::thread::sleep(Duration::from_millis(400));
    }
    eprintln!("slowest `keeper status` during the storm: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "status took {slowest:?}");
    for s in shells {
        wait_cpu_time(s);
    }
    let log = keeper.finish();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("evict intruder")),
        "nothing evicted: {log:#?}"
    );
}

#[test]
fn a_task_put_back_on_the_trading_core_is_evicted_again_at_once() {
    if !privileged("a_task_put_back_on_the_trading_core_is_evicted_again_at_once") {
        return;
    }
    let rig = Rig::new("putback");
    let keeper = rig.keeper(&["--for", "6s"]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let hog = spawn_pinned(PROBE, &["spin", "8", "kt_putback"], 1, Some(&muse));
    std::mem::forget(muse);
    let pid = hog.id();
    for round in 0..3 {
        assert!(
            eventually(Duration::from_millis(500), || affinity(pid) == "0"),
            "round {round}: not evicted within 500 ms (the 10 s cooldown?): {}",
            affinity(pid)
        );
        // Someone else pins it back onto the trading core.
        let out = Command::new("taskset")
            .args(["-p", "-c", "1", &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    assert!(eventually(Duration::from_millis(500), || affinity(pid) == "0"));
    keeper.finish();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(hog);
}

#[test]
fn every_thread_of_a_multi_threaded_intruder_is_evicted_and_put_back() {
    if !privileged("every_thread_of_a_multi_threaded_intruder_is_evicted_and_put_back") {
        return;
    }
    let rig = Rig::new("threads");
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // Four threads on CPU 1 before the keeper starts, each a task of its own; only one
    // leads its process (pidfd_open refuses the others without PIDFD_THREAD).
    let hog = spawn_pinned(PROBE, &["threads", "8", "3"], 1, Some(&muse));
    std::mem::forget(muse);
    let pid = hog.id();
    let threads = || -> Vec<(u32, String)> {
        let dir = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        dir.flatten()
            .map(|e| {
                let tid: u32 = e.file_name().to_str().unwrap().parse().unwrap();
                (tid, affinity(tid))
            })
            .collect()
    };
    assert!(eventually(Duration::from_secs(1), || threads().len() == 4));
    let report = rig.dir.join("report.json");
    let keeper = rig.keeper(&["--for", "3s", "--report", report.to_str().unwrap()]);
    assert!(
        eventually(Duration::from_secs(2), || threads()
            .iter()
            .all(|(_, a)| a == "0")),
        "threads left on the trading core: {:?}",
        threads()
    );
    keeper.finish();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(
        threads().iter().all(|(_, a)| a == "1"),
        "not put back at exit: {:?}\n{:#}",
        threads(),
        record["restored_at_exit"]
    );
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(hog);
}

/// `--log-format journald` (the unit's): each line starts with its syslog priority, which
/// journald stores as the line's (`journalctl -p warning`); before, the unit logged JSON and
/// journald stored every line at info. The fields stay in the line (the journal's default
/// view shows them), with no timestamp and no colour.
#[test]
fn journald_lines_carry_their_priority() {
    if !privileged("journald_lines_carry_their_priority") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keeper-journald-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let extra =
        move |_: &str| format!("  - {{ name: lab, rank: 4, match: {{ pid_file: {d} }} }}\n");
    let rig = Rig::with("journald", &extra, "");
    let out = Command::new(KEEPER)
        .args(["run", "--log-format", "journald", "--for", "2s", "--policy"])
        .arg(rig.dir.join("policy.yaml"))
        .args(["--scope", &rig.scope.rel, "--socket"])
        .arg(rig.socket())
        .arg("--state-dir")
        .arg(rig.dir.join("state"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().all(|l| ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| l.starts_with(p))),
        "a line without its priority: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<4>")
            && l.contains("lab.match.pid_file")
            && l.contains("a directory")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("keeper running") && l.contains("mode=")),
        "an info line with its fields: {lines:#?}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the journal: {text}"
    );
}

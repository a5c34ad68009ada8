//! Nothing slow holds the fast path: while a VM call hangs (a QMP socket that accepts and never
//! answers, retried every tick), newcomers on the trading core are evicted as fast as without
//! the hang, the systemd watchdog keeps being fed, and each hung call ends at its deadline
//! with a clear error in the run record.

use std::{
    os::unix::net::{UnixDatagram, UnixListener},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use integration_test::{
    TestCgroup, privileged,
    rig::{Rig, within, write_psi},
    spawn_pinned,
};

/// Starts a CPU hog pinned to the trading core (CPU 1) in `cg`; returns how long until the
/// keeper moved it off (its allowed CPUs no longer "1").
fn time_to_eviction(cg: &TestCgroup) -> Duration {
    let t = Instant::now();
    let mut hog = spawn_pinned("/bin/sh", &["-c", "while :; do :; done"], 1, Some(cg));
    let status = format!("/proc/{}/status", hog.id());
    let moved = within(Duration::from_secs(10), || {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && !l.ends_with("\t1"))
    });
    let _ = hog.kill();
    let _ = hog.wait();
    moved.map_or(Duration::from_secs(10), |_| t.elapsed())
}

fn times(cg: &TestCgroup, n: usize) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let d = time_to_eviction(cg);
            std::thread::sleep(Duration::from_millis(50));
            d
        })
        .collect();
    v.sort();
    v
}

/// A QMP socket that accepts and never answers (connections kept open); counts the accepts.
fn hanging_qmp(path: &Path) -> Arc<Mutex<usize>> {
    let listener = UnixListener::bind(path).unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
            *count.lock().unwrap() += 1;
        }
    });
    accepted
}

/// A systemd notify socket: the instants of each `WATCHDOG=1`.
fn notify_socket(path: &Path) -> Arc<Mutex<Vec<Instant>>> {
    let sock = UnixDatagram::bind(path).unwrap();
    let kicks = Arc::new(Mutex::new(Vec::new()));
    let k = Arc::clone(&kicks);
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                k.lock().unwrap().push(Instant::now());
            }
        }
    });
    kicks
}

#[test]
fn a_hanging_vm_call_holds_neither_evictions_nor_the_watchdog() {
    if !privileged("a_hanging_vm_call_holds_neither_evictions_nor_the_watchdog") {
        return;
    }
    let rig = Rig::with(
        "slowhands",
        &|s| format!("  - {{ name: vm102, rank: 5, match: {{ vmid: 102, cgroup: {s}/vm102 }} }}\n"),
        "  memory: { balloon_above: 10, balloon_target: 50%, release_after: 1s }\n",
    );
    let vm = TestCgroup {
        rel: rig.rel("vm102"),
        dir: rig.cg("vm102"),
    };
    std::fs::create_dir_all(&vm.dir).unwrap();
    let mut sleeper = spawn_pinned("/bin/sleep", &["60"], 0, Some(&vm));
    let qmp_dir = rig.dir.join("qemu-server");
    std::fs::create_dir_all(&qmp_dir).unwrap();
    let accepted = hanging_qmp(&qmp_dir.join("102.qmp"));
    let pressure = rig.dir.join("memory.pressure");
    write_psi(&pressure, 0.0, 0.0);
    let report = rig.dir.join("record.json");
    let notify = rig.dir.join("notify.sock");
    let kicks = notify_socket(&notify);
    let args = [
        "--for",
        "40s",
        "--tick",
        "200ms",
        "--qmp-dir",
        qmp_dir.to_str().unwrap(),
        "--memory-psi",
        pressure.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    let env = [
        ("NOTIFY_SOCKET", notify.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let mut keeper = rig.keeper_with_env(&args, &env);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let calm = times(&muse, 15);

    // The ladder balloons vm102: its QMP socket takes the call and never answers.
    write_psi(&pressure, 30.0, 30.0);
    within(Duration::from_secs(5), || *accepted.lock().unwrap() > 0)
        .expect("the keeper never called the VM's QMP socket");
    let hang_started = Instant::now();
    let hung = times(&muse, 15);
    let hang_window = hang_started.elapsed();
    keeper.wait_for("no answer within 3s", Duration::from_secs(10));
    write_psi(&pressure, 0.0, 0.0);

    let gaps: Vec<Duration> = {
        let k = kicks.lock().unwrap();
        k.windows(2)
            .filter(|w| w[1] > hang_started)
            .map(|w| w[1] - w[0])
            .collect()
    };
    let median = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "time to eviction, calm: median {:?} max {:?}; during the hang ({:?}, {} QMP calls): median {:?} max {:?}; watchdog gaps during the hang: max {:?} ({} kicks)",
        median(&calm),
        calm.last().unwrap(),
        hang_window,
        accepted.lock().unwrap(),
        median(&hung),
        hung.last().unwrap(),
        gaps.iter().max(),
        gaps.len()
    );
    // Held behind a 3 s QMP read, an eviction would take seconds.
    assert!(
        *hung.last().unwrap() < Duration::from_millis(500),
        "{hung:?}"
    );
    assert!(
        median(&hung) <= median(&calm) * 3 + Duration::from_millis(10),
        "calm {calm:?} hung {hung:?}"
    );
    assert!(gaps.len() >= 5, "the watchdog was not fed: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "the watchdog waited: {gaps:?}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    std::mem::forget(muse);
    std::mem::forget(vm);
    let log = keeper.stop();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let failed: Vec<_> = record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "balloon" && a["ok"] == false)
        .collect();
    assert!(!failed.is_empty(), "{record:#}");
    let outcome = failed[0]["outcome"][0].as_str().unwrap();
    assert!(
        outcome.contains("no answer within 3s") && outcome.contains("102.qmp"),
        "{outcome}"
    );
}

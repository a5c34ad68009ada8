//! Journal replay: failed undos kept and retried, the oldest value last.

use super::*;
use affinity::Who;

/// A retry of the pending undos, started and then collected once its thread is done (the loop
/// collects it at a later tick and never waits for it).
fn retried(act: &mut Actuators) -> Vec<String> {
    assert!(
        act.retry_undo().unwrap().is_empty(),
        "a retry starts, it does not finish"
    );
    loop {
        let done = act.retry_undo().unwrap();
        if act.retrying.is_none() {
            return done;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_failed_undo_stays_in_the_journal_until_it_succeeds() {
    let dir = std::env::temp_dir().join(format!("keeper-undo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let target = dir.join("cpu.max");
    // A directory where the file should be: the write fails (EISDIR), as a busy QMP
    // socket or an unreachable API would.
    std::fs::create_dir_all(&target).unwrap();
    let mut journal = Journal::open(&dir.join("state")).unwrap();
    let fine = dir.join("memory.high");
    std::fs::write(&fine, "1M").unwrap();
    let bad = Entry::File {
        path: target.clone(),
        original: "max 100000".into(),
    };
    journal.record(&bad).unwrap();
    journal
        .record(&Entry::File {
            path: fine.clone(),
            original: "max".into(),
        })
        .unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    let done = act.restore_all().unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(std::fs::read_to_string(&fine).unwrap(), "max");
    assert_eq!(act.undo_pending(), std::slice::from_ref(&bad));
    assert_eq!(act.journal().entries().unwrap(), std::slice::from_ref(&bad));
    // Still failing: kept. Then the path becomes writable: undone and out of the journal.
    assert!(retried(&mut act).is_empty());
    assert_eq!(act.journal().entries().unwrap(), [bad]);
    std::fs::remove_dir(&target).unwrap();
    std::fs::write(&target, "50000 100000").unwrap();
    act.retry = Backoff::default();
    assert_eq!(retried(&mut act).len(), 1);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "max 100000");
    assert!(act.undo_pending().is_empty());
    assert!(act.journal().entries().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pending_undo_of_something_changed_again_waits_for_the_exit() {
    let dir = std::env::temp_dir().join(format!("keeper-undo2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let w = dir.join("w");
    std::fs::create_dir_all(w.join("cpu.max")).unwrap(); // the undo fails (EISDIR)
    let mut journal = Journal::open(&dir.join("state")).unwrap();
    let pending = Entry::File {
        path: w.join("cpu.max"),
        original: "max 100000".into(),
    };
    journal.record(&pending).unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    act.restore_all().unwrap();
    assert_eq!(act.undo_pending(), std::slice::from_ref(&pending));
    // The file is writable again, and this run throttles it.
    std::fs::remove_dir(w.join("cpu.max")).unwrap();
    std::fs::write(w.join("cpu.max"), "max 100000").unwrap();
    act.write_file("w", "cpu.max", "50000 100000").unwrap();
    act.retry = Backoff::default();
    assert!(retried(&mut act).is_empty());
    assert_eq!(
        std::fs::read_to_string(w.join("cpu.max")).unwrap(),
        "50000 100000"
    );
    assert_eq!(act.undo_pending(), std::slice::from_ref(&pending));
    // At exit both are undone, the oldest value last.
    act.restore_all().unwrap();
    assert_eq!(
        std::fs::read_to_string(w.join("cpu.max")).unwrap(),
        "max 100000"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn our_own_cgroup_is_readable() {
    assert!(task_cgroup(std::process::id()).is_some());
}

#[test]
fn an_eviction_acts_only_on_the_task_its_event_was_about() {
    let (dir, mut act, mut child) = actuators_and_a_sleeper("reuse");
    let pid = child.id();
    let allowed = || crate::device::procfs::task_stat(pid).map(|_| affinity_of(pid));
    let before = allowed();
    let to: CpuList = "0".parse().unwrap();
    let start = process::start_time(pid).unwrap();
    let now = crate::device::clock::monotonic_ns();
    let who = |seen_ns, start| Who {
        seen_ns: Some(seen_ns),
        start,
    };
    // The event was about an older task with this number (one seen before this one
    // started): left alone, whether /proc or the programs said who it was.
    for e in [
        act.evict(pid, who(0, None), "", &to).unwrap(),
        act.evict(pid, who(0, Some(start - 1)), "", &to).unwrap(),
    ] {
        assert!(e.to_string().contains("exited before its eviction"), "{e}");
    }
    assert_eq!(allowed(), before);
    assert!(act.journal().entries().unwrap().is_empty());
    // A kernel thread (pid 2, kthreadd) read from /proc: never evicted.
    let e = act.evict(2, who(now, None), "", &to).unwrap();
    assert!(e.to_string().contains("kernel thread"), "{e}");
    // The task of the event, as the programs read it a moment ago: evicted, and when.
    let e = act.evict(pid, who(now, Some(start)), "", &to).unwrap();
    assert!(
        matches!(e, Effect::Done(_)) || before == Some("0".into()),
        "{e}"
    );
    assert_eq!(allowed(), Some("0".into()));
    assert!(act.first_move_ns.take().is_some_and(|t| t >= now));
    act.restore_all().unwrap();
    assert_eq!(allowed(), before);
    // The eviction thread's way: the arriving thread moved first, by number, journaled; the
    // eviction that follows knows it moved and says so (it moves the other threads).
    let now = crate::device::clock::monotonic_ns();
    let first = act.evict_arrival(pid, start, now, None, &to).unwrap();
    assert!(first || before == Some("0".into()));
    assert_eq!(allowed(), Some("0".into()));
    let e = act.evict(pid, who(now, Some(start)), "", &to).unwrap();
    assert!(!first || e.to_string().contains("(1 threads)"), "{e}");
    assert!(act.moved_on_arrival.is_none());
    act.restore_all().unwrap();
    assert_eq!(allowed(), before);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The eviction thread's first move journals the CPUs the programs read from the task
/// (`task_struct.cpus_mask`), without asking the kernel again, and the exit puts those back.
#[test]
fn an_arrivals_cpus_read_by_the_programs_are_what_its_eviction_journals() {
    let (dir, mut act, mut child) = actuators_and_a_sleeper("known");
    let pid = child.id();
    let start = process::start_time(pid).unwrap();
    let now = crate::device::clock::monotonic_ns();
    // As if the programs had read it pinned to CPU 1 (it is not: the kernel would say more).
    let read: CpuList = "1".parse().unwrap();
    let to: CpuList = "0".parse().unwrap();
    assert!(act.evict_arrival(pid, start, now, Some(read), &to).unwrap());
    assert_eq!(affinity_of(pid), "0");
    let journaled = act.journal().entries().unwrap();
    assert!(
        matches!(&journaled[..], [Entry::Affinity { pid: p, original, .. }] if *p == pid && original == "1"),
        "{journaled:?}"
    );
    act.restore_all().unwrap();
    assert_eq!(affinity_of(pid), "1");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Actuators on a fresh state directory `keeper-<name>-<pid>` (returned, to be removed), and a
/// child sleeping 5 s to act on.
fn actuators_and_a_sleeper(name: &str) -> (std::path::PathBuf, Actuators, std::process::Child) {
    let dir = std::env::temp_dir().join(format!("keeper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = Journal::open(&dir.join("state")).unwrap();
    let act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    let child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    (dir, act, child)
}

fn affinity_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_retried_undo_that_hangs_does_not_hold_the_caller() {
    let dir = std::env::temp_dir().join(format!("keeper-undo3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A VM whose QMP socket accepts and never answers (its undo fails at QMP's timeout).
    let socket = dir.join("100.qmp");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut journal = Journal::open(&dir.join("state")).unwrap();
    let hung = Entry::Balloon {
        socket: socket.clone(),
        original: 1 << 30,
    };
    journal.record(&hung).unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    assert!(act.restore_all().unwrap().is_empty());
    assert_eq!(act.undo_pending(), std::slice::from_ref(&hung));
    act.retry = Backoff::default();
    // The retry starts and returns; its thread is still waiting on QEMU.
    assert!(act.retry_undo().unwrap().is_empty());
    let out = act.retrying.as_ref().expect("a retry is out");
    assert!(!out.thread.is_finished(), "the caller waited for the undo");
    // Asked again meanwhile: nothing new starts, nothing is waited for.
    assert!(act.retry_undo().unwrap().is_empty());
    // It comes to nothing: still pending, still in the journal.
    while act.retrying.is_some() {
        assert!(act.retry_undo().unwrap().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(act.undo_pending(), std::slice::from_ref(&hung));
    assert_eq!(act.journal().entries().unwrap(), [hung]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A QMP server for one VM whose balloon holds `actual` bytes of `base` (any other command
/// answered with an empty return), on `socket`, for as long as the test runs.
fn fake_qmp(socket: &std::path::Path, base: u64, actual: u64) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut w = conn.try_clone().unwrap();
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
            for line in BufReader::new(conn).lines().map_while(Result::ok) {
                let answer = if line.contains("query-balloon") {
                    format!("{{\"return\": {{\"actual\": {actual}}}}}\n")
                } else if line.contains("query-memory-size-summary") {
                    format!("{{\"return\": {{\"base-memory\": {base}}}}}\n")
                } else {
                    "{\"return\": {}}\n".to_string()
                };
                let _ = w.write_all(answer.as_bytes());
            }
        }
    });
}

/// Before the fix the VM was marked journaled before its line was written: after a failed
/// write (a full disk), the next balloon change went ahead unjournaled and was never undone.
#[test]
fn a_balloon_whose_journal_line_failed_is_journaled_at_the_next_change() {
    let dir = std::env::temp_dir().join(format!("keeper-balloon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let gib = 1u64 << 30;
    fake_qmp(&dir.join("300.qmp"), 8 * gib, 8 * gib);
    let journal = Journal::open(&dir.join("state")).unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    act.qmp_dir = dir.clone();
    let half = crate::policy::Amount::Percent(crate::policy::Percent::new(50.0));
    let file = act.journal().break_writes();
    assert!(
        act.balloon(300, half, &[]).is_err(),
        "no journal line, no change"
    );
    act.journal().mend(file);
    assert!(act.balloon(300, half, &[]).is_ok());
    let balloons = (act.journal().entries().unwrap().into_iter())
        .filter(|e| matches!(e, Entry::Balloon { original, .. } if *original == 8 * gib))
        .count();
    assert_eq!(balloons, 1, "the change went ahead unjournaled");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A real-time class is given back after every CPU mask and file (the exit's undo): given
/// back first, a SCHED_FIFO 99 spinner still on the housekeeping cores starved the rest of
/// the undo (the keeper's own thread among them).
#[test]
fn real_time_classes_come_back_last_in_the_undo() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // SCHED_FIFO needs CAP_SYS_NICE: the privileged run covers it
    }
    let dir = std::env::temp_dir().join(format!("keeper-undo-order-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cpuset.cpus");
    std::fs::write(&file, "0").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let start = process::Proc::open_thread(tid, None).unwrap().start;
    let mut journal = Journal::open(&dir.join("state")).unwrap();
    journal
        .record(&Entry::File {
            path: file.clone(),
            original: "0-1".into(),
        })
        .unwrap();
    // Journaled after the file (a demotion, then a narrowing by another action).
    journal
        .record(&Entry::Scheduler {
            pid: tid,
            start,
            policy: libc::SCHED_FIFO,
            priority: 1,
            deadline: None,
        })
        .unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    let done = act.restore_all().unwrap();
    done_tx.send(()).unwrap();
    helper.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done[1].contains("back to its scheduling class SCHED_FIFO 1"),
        "{done:?}"
    );
}

/// A `start_on` command runs only once its journal line is written: spawned first (its pid
/// names it), it waits at a gate. Before, a journal that refused the line (or a keeper killed
/// there: `service_command.armed` in the fault harness) left the command running, named by
/// no journal, never stopped.
#[test]
fn a_command_whose_journal_line_failed_never_runs() {
    let dir = std::env::temp_dir().join(format!("keeper-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let journal = Journal::open(&dir.join("state")).unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    let ran = dir.join("ran");
    let argv = ["touch", ran.to_str().unwrap()].map(String::from).to_vec();
    let service = crate::policy::Service::Command(argv);
    let file = act.journal().break_writes();
    let deadline = std::time::Duration::from_secs(2);
    assert!(act.start_service("eva", &service, deadline).is_err());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!ran.exists(), "the command ran with no journal line");
    act.journal().mend(file);
    // Journaled, it runs (and, a `touch`, ends at once: the start's error says so).
    let _ = act.start_service("eva", &service, deadline);
    assert!(
        (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            ran.exists()
        }),
        "the command never ran once journaled"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A freeze the kernel does not carry out at once (a task in uninterruptible sleep holds it
/// back; here a cgroup directory whose `cgroup.events` never says `frozen 1`) does not hold
/// the loop: the write is made, the call returns within milliseconds, and later looks (no
/// wait) give it up past 2 s, take it back and hand the action back failed. Before, the loop
/// waited up to 2 s per cgroup, on every retry.
#[test]
fn a_freeze_not_seen_at_once_is_confirmed_later_and_given_up_past_its_timeout() {
    let dir = std::env::temp_dir().join(format!("keeper-slow-freeze-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cg = dir.join("muse");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cgroup.freeze"), "0").unwrap();
    std::fs::write(cg.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let journal = Journal::open(&dir.join("state")).unwrap();
    let mut act = Actuators::new(CgroupFs::at(&dir), journal, false, None);
    let t = std::time::Instant::now();
    let effect = act.freeze("muse").unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        matches!(&effect, Effect::Done(d) if d.contains("not seen within")),
        "{effect:?}"
    );
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.freeze")).unwrap(),
        "1"
    );
    let action = crate::decide::Action {
        kind: crate::decide::ActionKind::Freeze {
            workload: "muse".into(),
        },
        rule: crate::decide::RuleId("eva.preempt".into()),
        reason: "test".into(),
    };
    act.unconfirmed_are(&action);
    assert!(act.confirm_freezes().is_empty(), "given up before its time");
    std::thread::sleep(cgroup::FREEZE_TIMEOUT + std::time::Duration::from_millis(100));
    let failed = act.confirm_freezes();
    assert_eq!(failed.len(), 1);
    assert!(matches!(
        failed[0].1,
        ActError::FreezeTimeout { want: 1, .. }
    ));
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.freeze")).unwrap(),
        "0",
        "not taken back"
    );
    assert!(act.confirm_freezes().is_empty(), "said twice");
    // A thaw written while the freeze is unconfirmed replaces it: no failure for the freeze
    // (which would have the engine freeze again after the preemption ended).
    act.freeze("muse").unwrap();
    act.unconfirmed_are(&action);
    std::fs::write(cg.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    assert!(matches!(act.thaw("muse").unwrap(), Effect::Done(d) if d.contains("confirmed in")));
    std::thread::sleep(cgroup::FREEZE_TIMEOUT + std::time::Duration::from_millis(100));
    assert!(
        act.confirm_freezes().is_empty(),
        "the thawed cgroup's freeze came back failed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

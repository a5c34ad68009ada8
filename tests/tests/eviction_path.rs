//! Privileged end-to-end tests of the eviction path on the real kernel: newcomers forked onto
//! the trading core by an unprotected parent are evicted at their arrival, before they have
//! run a millisecond there, with nothing read from /proc before the move (issue 13).

use std::time::Duration;

use integration_test::{rig::*, *};

/// One evicted task's run time on CPU 1 is bounded by its eviction latency: the record's
/// samples run from the task's first instant there (its arrival's or fork's event) to its move.
#[test]
fn forks_of_an_unprotected_parent_are_evicted_before_running_a_millisecond() {
    if !privileged("forks_of_an_unprotected_parent_are_evicted_before_running_a_millisecond") {
        return;
    }
    let rig = Rig::new("forks");
    let report = rig.dir.join("report.json");
    let keeper = rig.keeper(&["--for", "4s", "--report", report.to_str().unwrap()]);
    newcomers_in_muse(&rig, "2");
    keeper.finish();
    let record = record(&report);
    let samples: Vec<f64> = record["eviction_latency"]["samples_us"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert!(
        samples.len() >= 20,
        "{} evictions: {record:#}",
        samples.len()
    );
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "{} newcomers evicted; latency (µs) median {median:.0}, max {:.0}",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    // The median, not every one: this VM stalls now and then; a newcomer reported only by the
    // 2 ms sampler or at its switch-out would put the median over a millisecond.
    assert!(
        median < 1000.0,
        "median eviction latency {median:.0} µs: {sorted:?}"
    );
    // Each was reported before it ran (an arrival or a fork), not after a slice.
    let evictions: Vec<&serde_json::Value> = record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            let done = |l: &serde_json::Value| l.as_str().is_some_and(|l| l.starts_with("done"));
            a["kind"] == "evict_intruder"
                && a["outcome"].as_array().is_some_and(|o| o.iter().any(done))
        })
        .collect();
    let late = evictions
        .iter()
        .filter(|a| !a["reason"].as_str().unwrap_or("").contains("ran 0us"))
        .count();
    assert!(
        late * 10 <= evictions.len(),
        "{late} of {} evictions came after the newcomer ran: {evictions:#?}",
        evictions.len()
    );
    // And they were moved by the eviction thread, as they came out of the kernel, not by the
    // loop (only the first ones, before the cgroup is known to its filter, go the loop's way).
    let mut carried: Vec<f64> = (evictions.iter())
        .filter_map(|a| a["elapsed_ms"].as_f64())
        .collect();
    carried.sort_by(f64::total_cmp);
    eprintln!(
        "carrying an eviction out took (ms) median {:.3}, max {:.3}",
        carried[carried.len() / 2],
        carried[carried.len() - 1]
    );
    let on_arrival = evictions
        .iter()
        .filter(|a| {
            a["reason"]
                .as_str()
                .unwrap_or("")
                .contains("evicted on arrival")
        })
        .count();
    assert!(
        on_arrival * 10 >= evictions.len() * 8,
        "{on_arrival} of {} evictions made on arrival: {evictions:#?}",
        evictions.len()
    );
}

/// Newcomers for `secs` seconds: a parent kept on CPU 0 starts, every 50 ms, a 30 ms spinner
/// allowed on CPU 1 only, born in the parent's cgroup, the rig's `muse` (a service's workers).
fn newcomers_in_muse(rig: &Rig, secs: &str) {
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let spawner = spawn_pinned(
        PROBE,
        &["newcomers", secs, "50", trading()],
        housekeeping_cpu() as usize,
        Some(&muse),
    );
    std::mem::forget(muse); // the rig's scope removes it
    wait_cpu_time(spawner);
}

/// The run record a keeper wrote at its exit.
fn record(report: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

/// The reasons of `record`'s evictions whose task's name starts with `who` (`comm[` for a
/// name, `comm[pid]` for one task).
fn evictions_of<'a>(record: &'a serde_json::Value, who: &str) -> Vec<&'a str> {
    (record["actions"].as_array().unwrap().iter())
        .filter(|a| a["kind"] == "evict_intruder")
        .filter_map(|a| a["reason"].as_str())
        .filter(|r| r.starts_with(who))
        .collect()
}

/// A launcher's child first runs on the trading core in the launcher's cgroup (outside the
/// scope: observed only), then moves itself into a workload of the scope and runs there:
/// after a sleep (news at its next switch-in, in another cgroup than it was seen in) or at
/// once, still running (news at the move: `keeper_joined`). Either way it is evicted on
/// arrival by the eviction thread, not found later by the sampler or at its switch-out by
/// the loop (the defect: the programs reported a pid once, whatever cgroup it had then).
#[test]
fn a_task_that_joins_the_scope_after_its_first_run_is_evicted_on_arrival() {
    if !privileged("a_task_that_joins_the_scope_after_its_first_run_is_evicted_on_arrival") {
        return;
    }
    let rig = Rig::new("joins");
    let report = rig.dir.join("report.json");
    let mut keeper = rig.keeper(&["--for", "5s", "--report", report.to_str().unwrap()]);
    keeper.wait_for("first pass done", Duration::from_secs(10));
    let procs = rig.cg("muse").join("cgroup.procs");
    // On CPU 1 in this test's cgroup first (a switch-in there: seen), then into the scope's
    // muse, then a spinner.
    let launchers: Vec<(&str, u32)> = [("after a sleep", "sleep 0.05; "), ("running", "")]
        .into_iter()
        .map(|(how, pause)| {
            let script = format!(
                "sleep 0.2; echo $$ > {}; {pause}exec {PROBE} spin 1 kb_joiner",
                procs.display()
            );
            let launcher = spawn_pinned("/bin/sh", &["-c", &script], trading_cpu() as usize, None);
            let pid = launcher.id();
            wait_cpu_time(launcher);
            (how, pid)
        })
        .collect();
    keeper.finish();
    let record = record(&report);
    for (how, pid) in launchers {
        let evictions = evictions_of(&record, &format!("sh[{pid}]"))
            .into_iter()
            .chain(evictions_of(&record, &format!("kb_joiner[{pid}]")))
            .collect::<Vec<_>>();
        assert!(!evictions.is_empty(), "{how}: never evicted: {record:#}");
        assert!(
            evictions[0].contains("evicted on arrival"),
            "{how}: its first eviction was not made on arrival: {evictions:#?}"
        );
    }
}

/// The eviction thread waits on the trading core while a workload owns it, and is no
/// intruder there: its time is the keeper's, and it is never reported or evicted.
#[test]
fn the_eviction_thread_waits_on_the_trading_core_and_is_no_intruder() {
    if !privileged("the_eviction_thread_waits_on_the_trading_core_and_is_no_intruder") {
        return;
    }
    let rig = Rig::new("sentry");
    let report = rig.dir.join("report.json");
    let mut keeper = rig.keeper(&["--for", "3s", "--report", report.to_str().unwrap()]);
    keeper.wait_for("first pass done", Duration::from_secs(10));
    let keeper_pid = keeper.pid();
    let tid = tid_named(keeper_pid, "keeper-evict").expect("no keeper-evict thread");
    assert_eq!(
        affinity(tid),
        trading(),
        "the eviction thread waits elsewhere"
    );
    newcomers_in_muse(&rig, "1");
    keeper.finish();
    let record = record(&report);
    let own = |v: &serde_json::Value| {
        v["tgid"].as_u64() == Some(u64::from(keeper_pid))
            || v["pid"].as_u64() == Some(u64::from(tid))
    };
    let intruders = record["intruders"].as_array().cloned().unwrap_or_default();
    let itself: Vec<_> = intruders.iter().filter(|v| own(v)).collect();
    assert!(itself.is_empty(), "the keeper reported itself: {itself:#?}");
    for who in [
        format!("keeper[{keeper_pid}]"),
        format!("keeper-evict[{tid}]"),
    ] {
        let evicted = evictions_of(&record, &who);
        assert!(
            evicted.is_empty(),
            "the keeper evicted itself: {evicted:#?}"
        );
    }
    let on_trading = (record["cpus"].as_array().unwrap().iter())
        .find(|c| c["cpu"] == trading_cpu())
        .expect("the trading CPU in the record");
    assert!(
        on_trading["keeper_ns"].as_u64().is_some_and(|ns| ns > 0),
        "the eviction thread's time on the trading CPU was not counted as the keeper's: {on_trading:#}"
    );
    assert!(
        record["evictions"].as_u64().is_some_and(|n| n >= 5),
        "too few evictions to have woken the thread: {}",
        record["evictions"]
    );
}

/// The eviction path writes the journal's line after the move, the record of the move kept
/// before it in `<state dir>/journal.pending` (a shared mapping). A keeper killed between the
/// move and the line leaves that record armed: the next keeper journals it, and puts the task
/// back at exit as if the line had been written.
#[test]
fn a_move_whose_journal_line_was_cut_off_by_a_kill_is_put_back_by_the_next_keeper() {
    if !privileged("a_move_whose_journal_line_was_cut_off_by_a_kill_is_put_back_by_the_next_keeper")
    {
        return;
    }
    let rig = Rig::new("pending");
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // The task as the killed keeper left it: moved to the housekeeping CPU from its own 0-1.
    let task = spawn_on(
        PROBE,
        &["sleep", "6000", "1000"],
        &[housekeeping_cpu() as usize],
        Some(&muse),
    );
    std::mem::forget(muse);
    let pid = task.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let start: u64 = after_comm.split(' ').nth(19).unwrap().parse().unwrap();
    // The record's layout (keeper-user/src/act/pending.rs): armed, pid, start, 256 CPU bits.
    let mut record = Vec::new();
    for word in [
        u64::from_le_bytes(*b"KPENDING"),
        pid.into(),
        start,
        0b11,
        0,
        0,
        0,
    ] {
        record.extend_from_slice(&word.to_ne_bytes());
    }
    std::fs::create_dir_all(rig.dir.join("state")).unwrap();
    std::fs::write(rig.dir.join("state/journal.pending"), &record).unwrap();
    let keeper = rig.keeper(&[]);
    // This keeper keeps the task off the trading CPU too (its journal line says the
    // housekeeping CPU: no news).
    assert!(eventually(Duration::from_secs(2), || affinity(pid) == housekeeping()));
    let log = keeper.stop();
    assert!(
        log.iter().any(|l| l.contains("journaled now")),
        "the record was not read: {log:#?}"
    );
    assert_eq!(affinity(pid), "0-1", "not put back to its own CPUs at exit");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_cpu_time(task);
}

/// The eviction thread journals a newcomer's CPUs as the programs read them from the task
/// (`task_struct.cpus_mask`, with no `sched_getaffinity` before the move): what the keeper puts
/// back at its exit is what each task had, CPU 1 alone or both.
#[test]
fn evicted_newcomers_get_their_own_cpus_back_at_exit() {
    if !privileged("evicted_newcomers_get_their_own_cpus_back_at_exit") {
        return;
    }
    let rig = Rig::new("own-cpus");
    let mut keeper = rig.keeper(&[]);
    keeper.wait_for("first pass done", Duration::from_secs(10));
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let pinned = spawn_on(
        PROBE,
        &["spin", "30", "own_pinned"],
        &[trading_cpu() as usize],
        Some(&muse),
    );
    let both = spawn_on(PROBE, &["spin", "30", "own_both"], &[0, 1], Some(&muse));
    std::mem::forget(muse);
    let (p, b) = (pinned.id(), both.id());
    assert!(
        eventually(Duration::from_secs(3), || affinity(p) == housekeeping()
            && affinity(b) == housekeeping()),
        "not evicted: {} / {}",
        affinity(p),
        affinity(b)
    );
    let log = keeper.stop();
    let (own_p, own_b) = (affinity(p), affinity(b));
    for t in [p, b] {
        unsafe { libc::kill(t as i32, libc::SIGKILL) };
    }
    wait_cpu_time(pinned);
    wait_cpu_time(both);
    assert_eq!(
        own_p,
        trading(),
        "the pinned newcomer's CPUs were not put back"
    );
    assert_eq!(own_b, "0-1", "the other newcomer's CPUs were not put back");
    assert!(
        !log.iter()
            .any(|l| l.contains("no task_struct.cpus_mask offset")),
        "the programs did not read the newcomers' CPUs: {log:#?}"
    );
}

/// Without cpuset v2 the keeper moves tasks one by one: a child forked during the run by a
/// moved task inherits the housekeeping-only CPUs, and the exit gave back only the journaled
/// parent its CPUs (the child stayed on CPU 0 for good). A child forked before the run and
/// pinned by its own choice keeps its CPUs.
#[test]
fn a_child_forked_during_the_run_by_a_moved_task_gets_its_cpus_back_at_the_exit() {
    if !privileged("a_child_forked_during_the_run_by_a_moved_task_gets_its_cpus_back") {
        return;
    }
    let rig = Rig::new("forked");
    let banker = rig.workload("banker");
    let mut owner = spawn_pinned(
        PROBE,
        &["sleep", "1000", "50000"],
        trading_cpu() as usize,
        Some(&banker),
    );
    let strays = rig.workload("strays");
    // A parent on both cores that forks a long-lived child 3 s into the run, and an older
    // sibling that pinned itself to CPU 0 before the run.
    let script = format!(
        "taskset -c {} {PROBE} sleep 1000 50000 & sleep 3; {PROBE} sleep 1000 50000 & wait",
        housekeeping()
    );
    let mut parent = spawn_on("sh", &["-c", &script], &[0, 1], Some(&strays));
    std::thread::sleep(Duration::from_millis(300));
    let older = children_of(parent.id());
    let keeper = rig.keeper(&["--for", "5s"]);
    assert!(
        eventually(Duration::from_secs(3), || affinity(parent.id())
            == housekeeping()),
        "the parent was not moved off the trading core"
    );
    keeper.finish();
    let children = children_of(parent.id());
    let young: Vec<u32> = children
        .iter()
        .copied()
        .filter(|c| !older.contains(c))
        .collect();
    let old: Vec<u32> = children
        .iter()
        .copied()
        .filter(|c| older.contains(c))
        .collect();
    let cpus = |pids: &[u32]| pids.iter().map(|p| affinity(*p)).collect::<Vec<_>>();
    let (young_cpus, old_cpus, parent_cpus) = (cpus(&young), cpus(&old), affinity(parent.id()));
    for c in [&mut parent, &mut owner] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(parent_cpus, "0-1");
    assert_eq!(young_cpus, ["0-1"], "the child forked during the run");
    assert_eq!(
        old_cpus,
        [housekeeping()],
        "the child that pinned itself before the run"
    );
    std::mem::forget((banker, strays));
}

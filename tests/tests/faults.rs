//! The crash-consistency harness (issue 30; `cargo xtask chaos --faults`): for each kind of
//! action a keeper journals, a keeper built with its kill points (`--features failpoints`) is
//! killed with SIGKILL at each step of the change (`KIND.armed`, `.recorded`, `.applied`, and
//! the undo's `.undoing` and `.undone`, at the exit and at a start's replay), then a fresh
//! keeper (the shipped build) starts, replays the journal and exits. The host's state taken
//! from the kernel's side before the faulty keeper (`faults::Snapshot`: every thread's CPUs,
//! class and stopped state, the scope's cgroup files and freezes, interrupt lines, the
//! workqueue mask, the Proxmox stub's VMs, a command's processes) must equal the one after,
//! and the journal must be empty.
//!
//! Each scenario is a rig whose conditions make the keeper take that action (or take it at its
//! start): the eviction of waking residents, a freeze for an interaction, a `start_on`
//! command, interrupt lines and the workqueue mask (`host.irq_guard`, `workqueue_guard`), a
//! real-time resident demoted, the Banker VM's vCPU made SCHED_FIFO, a VM hibernated under
//! memory pressure (the Proxmox stub). Throttling and partitions need cgroup v2 controllers,
//! which this host's hybrid hierarchy lacks: the 6.12 guest (vm-test) carries them.
//!
//! `KEEPER_FAULTS=all` runs every point (the long form; `cargo xtask chaos --faults`); the
//! default (CI) runs the steps of the change itself (`armed`, `recorded`, `applied`) and the
//! exit's undo steps.

use std::time::{Duration, Instant};

use integration_test::faults::{Ended, Faulty, Snapshot, Tally, journal};
use keeper::act::fault::{self, Step};

#[path = "faults/stages.rs"]
mod stages;

use stages::Stage;

/// Builds a stage.
type Build = fn() -> Stage;

/// Runs `stage`'s points (`all`: the long form's too); adds to `tally`.
fn run_stage(stage: &Stage, all: bool, tally: &mut Tally) {
    for (kind, kind_steps) in &stage.points {
        for step in kind_steps {
            let undo = matches!(step, Step::Undoing | Step::Undone);
            inject(stage, kind, *step, false, tally);
            if undo && all {
                inject(stage, kind, *step, true, tally);
            }
        }
    }
}

/// One injection: the faulty keeper killed at `KIND.STEP` (`at_replay`: in the undo of a start's
/// replay, after an earlier keeper was killed with the change made), then the shipped keeper's
/// start and exit; the host checked against its snapshot.
fn inject(stage: &Stage, kind: &str, step: Step, at_replay: bool, tally: &mut Tally) {
    let point = fault::point(kind, step);
    let label = format!(
        "{} {point}{}",
        stage.name,
        if at_replay {
            " (at a start's replay)"
        } else {
            ""
        }
    );
    let rig = &stage.rig;
    (stage.calm)();
    let before = Snapshot::take(&rig.scope.dir, (stage.extra)());
    tally.points += 1;
    let reached = if at_replay {
        // A first keeper leaves the change journaled; the faulty one dies undoing it at start.
        let applied = fault::point(kind, Step::Applied);
        let first = run_faulty(stage, &applied);
        (stage.calm)();
        first == Ended::AtPoint && {
            let mut k = Faulty::start(rig, &stage.args, &stage.env, &point);
            let running = k.wait_running(rig, Duration::from_secs(30));
            !running && k.end(Duration::ZERO) == Ended::AtPoint
        }
    } else {
        run_faulty(stage, &point) == Ended::AtPoint
    };
    (stage.calm)();
    let args: Vec<&str> = stage.args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = (stage.env.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let clean = rig.keeper_with_env(&args, &env);
    let log = clean.stop();
    let after = Snapshot::take(&rig.scope.dir, (stage.extra)());
    let mut left = after.differences(&before);
    let journal = journal(rig);
    if !journal.trim().is_empty() {
        left.push(format!("journal not empty: {journal}"));
    }
    eprintln!(
        "faults: {label}: {}{}",
        if reached {
            "killed there"
        } else {
            "NOT REACHED"
        },
        if left.is_empty() {
            ", host as before".to_string()
        } else {
            format!(", LEFT: {left:#?}")
        }
    );
    if !left.is_empty() {
        eprintln!("the replaying keeper's log: {log:#?}");
        tally.left.push(format!("{label}: {left:?}"));
    }
    if reached {
        tally.reached += 1;
    } else {
        tally.unreached.push(label);
    }
}

/// A faulty keeper on the stage, its action triggered, until it is killed at `point` or, past
/// the stage's settle time, stops at SIGTERM.
fn run_faulty(stage: &Stage, point: &str) -> Ended {
    let rig = &stage.rig;
    let mut k = Faulty::start(rig, &stage.args, &stage.env, point);
    if k.wait_running(rig, Duration::from_secs(30)) {
        (stage.trigger)(rig, point.split('.').next().unwrap_or_default());
    }
    k.end(stage.settle)
}

#[test]
fn a_keeper_killed_at_any_step_of_any_change_leaves_the_host_as_it_found_it() {
    if !integration_test::privileged("a_keeper_killed_at_any_step_of_any_change") {
        return;
    }
    if !std::path::Path::new(integration_test::faults::FAULTY_KEEPER).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: {} is missing (`cargo xtask test` builds it)",
            integration_test::faults::FAULTY_KEEPER
        );
        eprintln!(
            "\n!!! SKIPPED: no faulty keeper build (`cargo build -p keeper-user --bin keeper --features failpoints --target-dir target/faults`) !!!\n"
        );
        return;
    }
    let all = std::env::var("KEEPER_FAULTS").is_ok_and(|v| v == "all");
    let only = std::env::var("KEEPER_FAULTS_ONLY").ok();
    let started = Instant::now();
    let mut tally = Tally::default();
    let stages: [(&str, Build); 13] = [
        ("evict", stages::evict),
        ("freeze", stages::freeze),
        ("start_on", stages::start_on),
        ("start_unit", stages::start_unit),
        ("then_stop", stages::then_stop),
        ("irq", stages::irqs),
        ("real_time", stages::real_time),
        ("vcpu_priority", stages::vcpu),
        ("vm_stop", stages::vm_stop),
        ("balloon", stages::balloon),
        ("gpu", stages::gpu),
        ("gpu_config_lent", stages::gpu_config_lent),
        ("gpu_lent", stages::gpu_lent),
    ];
    for (name, build) in stages {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let stage = build();
        run_stage(&stage, all, &mut tally);
    }
    let report = tally.report(started.elapsed());
    eprintln!("{report}");
    assert!(tally.left.is_empty(), "{report}:\n{:#?}", tally.left);
    assert!(tally.unreached.is_empty(), "{report}");
}

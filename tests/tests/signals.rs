//! Privileged tests of the signals a daemon's users send (issue 30): SIGHUP reloads the policy
//! (before: the keeper died with status 129 and left Muse frozen), every other catchable
//! signal that would end it is ignored but SIGTERM, SIGINT and SIGQUIT, which undo everything
//! first.

use std::time::Duration;

use integration_test::{rig::*, *};

fn end(children: [std::process::Child; 2]) {
    for c in children {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_cpu_time(c);
    }
}

/// SIGHUP (`systemctl reload`, a closed terminal) reads the policy again and keeps the freeze;
/// a broken policy is refused and the keeper goes on with the one it has.
#[test]
fn sighup_reloads_the_policy_and_keeps_the_freeze() {
    if !privileged("sighup_reloads_the_policy_and_keeps_the_freeze") {
        return;
    }
    let (rig, mut keeper, children) = Rig::with_muse_frozen("sighup");
    assert!(
        keeper.signal(libc::SIGHUP, Duration::from_secs(1)),
        "SIGHUP ended the keeper: {:#?}",
        keeper.lines
    );
    assert!(rig.frozen("muse"), "muse thawed by SIGHUP");
    assert!(
        (keeper.lines.iter()).any(|l| l.contains("SIGHUP: policy reloaded")),
        "{:#?}",
        keeper.lines
    );
    let policy = rig.dir.join("policy.yaml");
    let good = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, "workloads: [oops\n").unwrap();
    assert!(keeper.signal(libc::SIGHUP, Duration::from_secs(1)));
    assert!(
        (keeper.lines.iter()).any(|l| l.contains("SIGHUP: the policy was not reloaded")),
        "{:#?}",
        keeper.lines
    );
    assert!(rig.frozen("muse"));
    std::fs::write(&policy, good).unwrap();
    let status = rig.control(&["status"]);
    assert_eq!(status["frozen"], serde_json::json!(["muse"]), "{status:#}");
    let log = keeper.stop();
    assert!(!rig.frozen("muse"), "SIGTERM did not thaw muse: {log:#?}");
    end(children);
}

/// Signals whose default action ends a process (SIGUSR1, SIGUSR2, SIGALRM, SIGIO, SIGPWR, ...)
/// are logged and ignored; SIGQUIT and SIGINT stop the keeper with its undo (before: SIGQUIT
/// dumped core and left muse frozen).
#[test]
fn other_signals_are_ignored_and_sigquit_sigint_undo_everything() {
    if !privileged("other_signals_are_ignored_and_sigquit_sigint_undo_everything") {
        return;
    }
    for stop in [libc::SIGQUIT, libc::SIGINT] {
        let (rig, mut keeper, children) = Rig::with_muse_frozen("signals");
        for sig in [
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGPWR,
            libc::SIGXCPU,
            libc::SIGXFSZ,
        ] {
            assert!(
                keeper.signal(sig, Duration::from_millis(200)),
                "signal {sig} ended the keeper: {:#?}",
                keeper.lines
            );
            assert!(rig.frozen("muse"), "signal {sig} thawed muse");
        }
        assert!(
            (keeper.lines.iter()).any(|l| l.contains("SIGUSR1 ignored")),
            "{:#?}",
            keeper.lines
        );
        let log = keeper.stop_with(stop);
        assert!(
            !rig.frozen("muse"),
            "signal {stop} left muse frozen: {log:#?}"
        );
        end(children);
    }
}

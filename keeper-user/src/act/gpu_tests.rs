//! Unit tests of the GPU actuators (power limit, checkpoint tool, the journal around them).

use super::*;
use std::os::unix::fs::PermissionsExt;

fn limits() -> PowerLimits {
    PowerLimits {
        limit_mw: 350_000,
        default_mw: 350_000,
        enforced_mw: 350_000,
        min_mw: 100_000,
        max_mw: 400_000,
    }
}

#[test]
fn the_power_limit_is_a_share_of_the_default_clamped_to_the_constraints() {
    assert_eq!(
        power_limit_for(Percent::new(60.0), &limits()),
        (210_000, None)
    );
    let (mw, note) = power_limit_for(Percent::new(20.0), &limits());
    assert_eq!(mw, 100_000);
    assert_eq!(note.unwrap(), "70 W raised to the minimum 100 W");
    let big = PowerLimits {
        default_mw: 450_000,
        ..limits()
    };
    let (mw, note) = power_limit_for(Percent::new(100.0), &big);
    assert_eq!(mw, 400_000);
    assert_eq!(note.unwrap(), "450 W lowered to the maximum 400 W");
}

#[test]
fn a_missing_tool_is_not_found() {
    assert_eq!(
        find_checkpoint_tool(Some(Path::new("/nonexistent/cc"))),
        None
    );
}

#[test]
fn a_failing_or_hanging_tool_is_an_error_with_its_pid() {
    let e = toggle(Path::new("/bin/false"), 42, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("pid 42"), "{e}");
    let dir = std::env::temp_dir().join(format!("keeper-cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let slow = dir.join("slow");
    std::fs::write(&slow, "#!/bin/sh\nsleep 5\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let e = toggle(&slow, 7, Duration::from_millis(200)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("did not finish"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replayed_restore_never_checkpoints_a_running_process() {
    let dir = std::env::temp_dir().join(format!("keeper-cc-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join("cuda-checkpoint");
    let d = dir.display();
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{d}/log'\nst='{d}/state'\n\
             if [ \"$1\" = --get-state ]; then cat \"$st\" 2>/dev/null || echo running; exit 0; fi\n\
             if [ \"$(cat \"$st\" 2>/dev/null)\" = checkpointed ]; then echo running > \"$st\"; else echo checkpointed > \"$st\"; fi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = std::process::id();
    let start = super::super::process::start_time(me).unwrap();
    // The journal says "checkpointed" but the checkpoint had failed: the process runs.
    assert_eq!(restore_checkpoint(me, start, &tool).unwrap(), None);
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    assert!(
        !log.contains("--toggle"),
        "toggled a running process: {log}"
    );
    // Really checkpointed: restored by one toggle.
    std::fs::write(dir.join("state"), "checkpointed\n").unwrap();
    assert!(restore_checkpoint(me, start, &tool).unwrap().is_some());
    assert_eq!(
        state(&tool, me, Duration::from_secs(5)).unwrap(),
        CudaState::Running
    );
    // A state it cannot leave: an error, no toggle.
    std::fs::write(dir.join("state"), "locked\n").unwrap();
    let e = bring_to(&tool, me, CudaState::Running, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("Locked: left as it is"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Before the fix the journal's lock was held for the whole `cuda-checkpoint --toggle` (a
/// temporary guard of the expression that ran it): the eviction thread's records waited.
#[test]
fn the_journal_is_free_while_the_checkpoint_tool_runs() {
    let dir = std::env::temp_dir().join(format!("keeper-cc-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join(CHECKPOINT_TOOL);
    let d = dir.display();
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nst='{d}/state'\n\
             if [ \"$1\" = --get-state ]; then cat \"$st\" 2>/dev/null || echo running; exit 0; fi\n\
             sleep 1; echo checkpointed > \"$st\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let journal = super::super::journal::Journal::open(&dir.join("state-dir")).unwrap();
    let mut act = Actuators::new(
        crate::device::cgroupfs::CgroupFs::at(&dir),
        journal,
        false,
        None,
    );
    act.gpu.tool = Some(tool);
    let fast = act.split_fast();
    let me = std::process::id();
    let worker = std::thread::spawn(move || act.gpu_checkpoint("muse", &[me]).map(|_| ()));
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    drop(fast.journal());
    let waited = asked.elapsed();
    worker.join().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        waited < Duration::from_millis(200),
        "the journal's lock was held for {waited:?} while the tool ran"
    );
}

#[test]
fn a_tool_others_can_change_is_not_trusted() {
    let dir = std::env::temp_dir().join(format!("keeper-cc-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join(CHECKPOINT_TOOL);
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        find_checkpoint_tool(Some(&tool)),
        Some(tool.canonicalize().unwrap())
    );
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(find_checkpoint_tool(Some(&tool)), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

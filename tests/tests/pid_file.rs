//! A pid file named by the policy can neither hang the keeper nor point it elsewhere (issue
//! 30): before the fix a root-owned FIFO (mode 0600) as a workload's `pid_file` blocked the
//! start on its read; `--for` and SIGTERM did nothing, only SIGKILL ended it.

use std::time::{Duration, Instant};

use integration_test::{rig::*, *};

#[test]
fn a_fifo_as_pid_file_neither_blocks_the_start_nor_the_exit() {
    if !privileged("a_fifo_as_pid_file_neither_blocks_the_start_nor_the_exit") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keeper-pidfifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("lab.pid");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.display().to_string();
    let extra =
        move |_: &str| format!("  - {{ name: lab, rank: 4, match: {{ pid_file: {f} }} }}\n");
    let rig = Rig::with("pidfifo", &extra, "");
    let started = Instant::now();
    // Before the fix this never returned: no "keeper running" within 30 s.
    let keeper = rig.keeper(&["--for", "3s"]);
    let log = keeper.finish();
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        took < Duration::from_secs(15),
        "start and `--for 3s` took {took:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("lab.match.pid_file") && l.contains("a FIFO")),
        "{log:#?}"
    );
}

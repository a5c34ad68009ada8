//! The control socket under a hostile or careless local user (root: the socket is 0600): a
//! keeper out of descriptors does not spin on its accept loop, and answers again once they are
//! given back.

use std::{os::unix::net::UnixStream, time::Duration};

use integration_test::{rig::*, *};

/// The soft limit of open files of `pid`.
fn soft_nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace()
        .nth(3)
        .expect("a soft limit")
        .to_string()
}

/// Before the fix, a failed accept (EMFILE) was retried at once: the loop's thread spun at
/// 100 % of a housekeeping core for as long as the descriptors were used up.
#[test]
fn a_keeper_out_of_descriptors_does_not_spin_on_its_control_socket() {
    if !privileged("a_keeper_out_of_descriptors_does_not_spin_on_its_control_socket") {
        return;
    }
    let rig = Rig::new("accept");
    let keeper = rig.keeper(&[]);
    let pid = keeper.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for a few more descriptors only (the soft limit: raising a hard limit again needs
    // CAP_SYS_RESOURCE, which root in a container may lack): held connections use them up.
    let soft = soft_nofile(pid);
    let limit = format!("--nofile={}:", open + 4);
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    let held: Vec<UnixStream> = (0..16)
        .filter_map(|_| UnixStream::connect(rig.socket()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let share = (cpu_seconds(pid) - before) / 2.0;
    drop(held);
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .unwrap();
    assert!(st.success());
    let status = rig.control(&["status"]);
    let log = keeper.stop();
    assert!(
        share < 0.2,
        "the keeper used {:.0} % of a CPU while out of descriptors: {log:#?}",
        share * 100.0
    );
    assert!(status["ok"].as_bool().unwrap_or(false), "{status:#}");
    assert!(
        log.iter()
            .any(|l| l.contains("control socket: accept failed")),
        "{log:#?}"
    );
}

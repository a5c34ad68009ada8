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

/// A FUSE mount whose server never answers: every lookup below it waits for good (as on a
/// hung NFS server or a stuck FUSE daemon). The connection is closed before the unmount, so
/// whatever still waits gets an error and returns.
struct HungFuse {
    dir: std::path::PathBuf,
    server: std::sync::Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>,
}

impl HungFuse {
    fn mount(dir: &std::path::Path) -> HungFuse {
        use std::os::fd::{AsRawFd, OwnedFd};
        std::fs::create_dir_all(dir).unwrap();
        let server: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse")
            .into();
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            server.as_raw_fd()
        );
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, target, kind, data) = (
            c("keeper-hung"),
            c(dir.to_str().unwrap()),
            c("fuse"),
            c(&opts),
        );
        // SAFETY: mount(2) with valid NUL-terminated strings; the data is FUSE's option string.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount fuse: {}", std::io::Error::last_os_error());
        HungFuse {
            dir: dir.to_path_buf(),
            server: std::sync::Arc::new(std::sync::Mutex::new(Some(server))),
        }
    }

    /// Closes the connection after `after`, so that a test whose keeper waits on it fails
    /// instead of hanging.
    fn abort_after(&self, after: Duration) {
        let server = self.server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            drop(server.lock().unwrap().take());
        });
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        drop(self.server.lock().unwrap().take()); // aborts the connection: waiters get ENOTCONN
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A pid file on a file system that never answers (a hung NFS or FUSE mount): the open itself
/// waits, `O_NONBLOCK` or not. Before the fix the read was made on the loop: the start never
/// came (no "keeper running"), `--for` and SIGTERM did nothing (here: 41 s, until the test
/// closed the mount's connection). Now the files are read by a thread of their own: the
/// keeper starts, says the read hangs, finds the workload of another pid file read after the
/// hung one (a fresh reader takes it), and `--for` ends it.
#[test]
fn a_pid_file_on_a_hung_mount_neither_blocks_the_start_nor_the_exit() {
    if !privileged("a_pid_file_on_a_hung_mount_neither_blocks_the_start_nor_the_exit") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keeper-pidhung-{}", std::process::id()));
    let hung = HungFuse::mount(&dir);
    hung.abort_after(Duration::from_secs(40));
    let mut live = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let live_file = std::env::temp_dir().join(format!("keeper-pidlive-{}.pid", std::process::id()));
    std::fs::write(&live_file, format!("{}\n", live.id())).unwrap();
    let (f, l) = (
        hung.dir.join("lab.pid").display().to_string(),
        live_file.display().to_string(),
    );
    let extra = move |_: &str| {
        format!(
            "  - {{ name: lab, rank: 4, match: {{ pid_file: {f} }} }}\n  - {{ name: live, rank: 5, match: {{ pid_file: {l} }} }}\n"
        )
    };
    let rig = Rig::with("pidhung", &extra, "");
    let started = Instant::now();
    let keeper = rig.keeper(&["--for", "5s"]);
    let mut placed = None;
    while started.elapsed() < Duration::from_secs(4) && placed.is_none() {
        let status = rig.control(&["status"]);
        placed = status["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == "live"))
            .and_then(|w| w["pids"].as_array().filter(|p| !p.is_empty()).cloned());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = keeper.finish();
    let took = started.elapsed();
    drop(hung);
    let _ = live.kill();
    let _ = live.wait();
    let _ = std::fs::remove_file(&live_file);
    assert!(
        took < Duration::from_secs(15),
        "start and `--for 5s` took {took:?}"
    );
    assert_eq!(
        placed,
        Some(vec![serde_json::json!(live.id())]),
        "the other pid file's workload was not found: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("lab.match.pid_file") && l.contains("has not come back")),
        "{log:#?}"
    );
}

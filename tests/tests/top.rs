//! `keeper top` against a live `keeper run`: the terminal view under tmux at 80×24 (keys to
//! sort, pause and quit), the plain refresh without a terminal, and a clear word when no
//! keeper is there or it stops.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use integration_test::{rig::*, *};

/// A tmux server of the test's own (its socket name), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `keeper top --socket SOCKET` in a detached 80×24 session named `top`.
    fn start(socket: &Path) -> Tmux {
        let tmux = Tmux {
            socket: format!("keeper-top-test-{}", std::process::id()),
        };
        let command = format!("{KEEPER} top --socket {}", socket.display());
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "top",
            &command,
        ]);
        assert!(out.status.success(), "tmux: {out:?}");
        // The pane stays after top exits, so that its last screen can be read.
        tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux (cargo xtask test installs it)")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }

    /// Waits until the screen shows every one of `texts`; returns it.
    fn wait_for(&self, texts: &[&str], limit: Duration) -> String {
        let mut screen = String::new();
        let shown = eventually(limit, || {
            screen = self.screen();
            texts.iter().all(|t| screen.contains(t))
        });
        assert!(shown, "not all of {texts:?} on screen:\n{screen}");
        screen
    }

    /// Whether top's process is gone (the pane is dead).
    fn exited(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "top", "#{pane_dead}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_a_live_keeper_in_80_by_24_and_answers_its_keys() {
    if !privileged("top_shows_a_live_keeper_in_80_by_24_and_answers_its_keys") {
        return;
    }
    let rig = Rig::new("top");
    let keeper = rig.keeper(&["--for", "40s"]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    let tmux = Tmux::start(&rig.socket());
    let screen = tmux.wait_for(
        &[
            "keeper top · enforcing",
            "trading 1 → banker",
            "CPU 1",
            "banker",
            "muse",
            "live",
        ],
        Duration::from_secs(10),
    );
    // An intruder arrives: evicted, and the view says so among the last actions.
    let hog = spawn_pinned(PROBE, &["spin", "20", "kt_top_hog"], 1, Some(&muse));
    std::mem::forget(muse); // the rig's scope removes it
    let pid = hog.id().to_string();
    let screen_after = tmux.wait_for(&["evict", &pid], Duration::from_secs(10));
    for s in [&screen, &screen_after] {
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.len() <= 24, "{s}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{s}");
    }
    // Rank order first; `s` sorts by state, then by name.
    let order = |screen: &str| {
        let at = |w: &str| screen.find(&format!("\n{w} ")).unwrap_or(usize::MAX);
        (at("banker"), at("eva"), at("muse"))
    };
    let (b, e, m) = order(&screen_after);
    assert!(b < e && e < m, "{screen_after}");
    tmux.keys("s");
    tmux.wait_for(&["sort (state)"], Duration::from_secs(3));
    tmux.keys("s");
    tmux.wait_for(&["sort (name)"], Duration::from_secs(3));
    // `p` holds the screen still; `p` again lets it go on.
    tmux.keys("p");
    let paused = tmux.wait_for(&["PAUSED"], Duration::from_secs(3));
    let up = |s: &str| {
        let line = s.lines().next()?;
        line.split(" · up ")
            .nth(1)?
            .split(' ')
            .next()
            .map(str::to_string)
    };
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(up(&tmux.screen()), up(&paused), "the paused screen moved");
    tmux.keys("p");
    tmux.wait_for(&["live"], Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(4), || up(&tmux.screen()) != up(&paused)),
        "the screen did not go on after the pause"
    );
    tmux.keys("q");
    assert!(
        eventually(Duration::from_secs(3), || tmux.exited()),
        "q did not quit:\n{}",
        tmux.screen()
    );
    drop(hog);
    drop(keeper);
}

#[test]
fn top_without_a_terminal_prints_plain_refreshes_and_says_when_the_keeper_stops() {
    if !privileged("top_without_a_terminal_prints_plain_refreshes_and_says_when_the_keeper_stops") {
        return;
    }
    let rig = Rig::new("topplain");
    let keeper = rig.keeper(&["--for", "30s"]);
    let socket = rig.socket();
    let out = Command::new(KEEPER)
        .args(["top", "--frames", "3", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.matches("keeper top · enforcing").count(), 3, "{text}");
    for want in [
        "CPU 1",
        "banker",
        "eva",
        "muse",
        "Last actions",
        "pressure cpu",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
    assert!(
        !text.contains('\x1b'),
        "escape sequences without a terminal:\n{text}"
    );
    // Left running, it ends with the keeper, saying so.
    let top = Command::new(KEEPER)
        .args(["top", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    keeper.stop();
    let out = top.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("keeper top: "), "{err}");
}

#[test]
fn top_without_a_keeper_names_the_socket() {
    let socket = std::env::temp_dir().join(format!("keeper-top-none-{}.sock", std::process::id()));
    let out = Command::new(KEEPER)
        .args(["top", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("is `keeper run` running?"), "{err}");
}

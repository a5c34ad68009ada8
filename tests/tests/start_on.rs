//! `start_on` through the enforcer (observe → decide → act) with a real command: EVA's
//! preemption freezes Muse, then starts what EVA needs; when it ends, that command is stopped
//! before Muse thaws. The command itself writes Muse's state (`/proc/PID/stat`) when it starts
//! and when it is told to stop, so the order is seen from the outside. A keeper that dies with
//! the command running leaves it to the next keeper's replay of the journal, which stops it.
//! A unit goes through `systemctl`: no systemd runs on these machines (nor in the test
//! guests), so a stand-in `systemctl` first on PATH records what it is asked and keeps the
//! unit's state, the way `is-active` reads it. No root needed: workloads are child processes
//! matched by pid file, frozen with SIGSTOP.

use std::{path::Path, time::Duration};

use integration_test::{
    gpu_rig::{Kid, load_policy, policy_text},
    rig::eventually,
};
use keeper::{
    act::{Actuators, execute::Done, journal::Journal},
    device::cgroupfs::CgroupFs,
    enforcer::Enforcer,
    policy::PolicySource,
};

/// A scratch directory: pid files, the policy, the journal.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("keeper-start-on-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Actuators on the directory's journal; no cgroups (the workloads are matched by pid file).
fn actuators(dir: &Path) -> Actuators {
    let journal = Journal::open(&dir.join("state")).unwrap();
    Actuators::new(CgroupFs::at(dir.join("no-cgroups")), journal, false, None)
}

/// A command that says Muse's state (`T`: stopped, frozen) as it starts and as it stops: a
/// script written in `dir`, run as `[sh, SCRIPT]`; it ends by itself after 30 s, so a failed
/// test leaves nothing running for long.
fn witness(dir: &Path, log: &Path, muse: u32) -> String {
    let script = dir.join("witness.sh");
    let state = format!("$(cut -d' ' -f3 /proc/{muse}/stat)");
    let log = log.display();
    std::fs::write(
        &script,
        format!(
            "echo start {state} > {log}\n\
             stopping() {{ echo stop {state} >> {log}; exit 0; }}\n\
             trap stopping TERM\n\
             i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done\n"
        ),
    )
    .unwrap();
    format!("[sh, {}]", script.display())
}

fn enforcer(dir: &Path, command: &str) -> Enforcer {
    enforcer_with(dir, &format!("command: {command}"))
}

/// EVA preempts Muse (1 s of hysteresis) and starts `service` (`command: …` or `unit: …`).
fn enforcer_with(dir: &Path, service: &str) -> Enforcer {
    let file = dir.join("policy.yaml");
    let extra = format!(
        ", preempt: {{ on: interaction, deadline: 200ms, targets: [muse], release_after: 1s }}, \
         start_on: {{ {service}, deadline: 5s }}"
    );
    let text = policy_text(dir, &extra, "");
    std::fs::write(&file, &text).unwrap();
    let source = PolicySource {
        file: Some(file),
        trading_cores: None,
        protect: vec![],
    };
    Enforcer::new(source, load_policy(&text), actuators(dir))
}

fn names(done: &[Done]) -> Vec<String> {
    done.iter().map(|d| d.action.kind.to_string()).collect()
}

/// EVA and Muse as child processes, and an enforcer whose `start_on` is the witness command
/// (its log returned).
fn witnessed(dir: &Path) -> (Kid, Kid, std::path::PathBuf, Enforcer) {
    let (eva, muse) = (Kid::new(dir, "eva"), Kid::new(dir, "muse"));
    let log = dir.join("witness.log");
    let k = enforcer(dir, &witness(dir, &log, muse.pid()));
    (eva, muse, log, k)
}

/// The interaction ends; past the preemption's hysteresis (1 s) the keeper acts.
fn end_interaction(k: &mut Enforcer) -> Vec<Done> {
    assert!(interact(k, false).is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    interact(k, false)
}

fn interact(k: &mut Enforcer, on: bool) -> Vec<Done> {
    k.interaction = on;
    let obs = k.observe(vec![], None);
    k.tick(&obs)
}

#[test]
fn the_preemption_starts_the_command_after_freezing_and_stops_it_before_thawing() {
    let dir = Dir::new("order");
    let (_eva, muse, log, mut k) = witnessed(&dir.0);
    let done = interact(&mut k, true);
    let started = names(&done);
    assert_eq!(started.len(), 2, "{done:#?}");
    assert_eq!(started[0], "freeze muse");
    assert!(started[1].starts_with("start command `sh /"), "{started:?}");
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(2), || read() == "start T\n"),
        "{:?}",
        read()
    );
    // The interaction ends; after the hysteresis (1 s) the command stops, then Muse thaws.
    let done = end_interaction(&mut k);
    let ended = names(&done);
    assert!(ended[0].starts_with("stop command `sh /"), "{ended:?}");
    assert_eq!(ended[1], "thaw muse");
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    assert_eq!(
        read(),
        "start T\nstop T\n",
        "the command stopped while Muse was frozen"
    );
    assert_ne!(
        integration_test::proc_state(muse.pid()),
        'T',
        "Muse runs again"
    );
    // The exit finds no command left to stop.
    let left = k.act.restore_all().unwrap();
    assert!(!left.iter().any(|r| r.contains("command")), "{left:?}");
}

#[test]
fn a_command_left_running_by_a_dead_keeper_is_stopped_by_the_next_one() {
    let dir = Dir::new("crash");
    let (_eva, muse, log, mut k) = witnessed(&dir.0);
    let done = interact(&mut k, true);
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    let pid: u32 = (done[1].steps[0].to_string())
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .expect("the start names its pid");
    // The keeper dies: nothing is undone (its journal's lock goes with it), its child keeps
    // running.
    drop(k);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // The next keeper on the same state directory replays the journal: the command stops
    // (told with SIGTERM: its trap writes), and Muse is set running again.
    let mut next = actuators(&dir.0);
    let restored = next.restore_all().unwrap();
    assert!(
        restored
            .iter()
            .any(|r| r == &format!("the command started as pid {pid} stopped")),
        "{restored:#?}"
    );
    let gone = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z"))
    };
    assert!(eventually(Duration::from_secs(2), || gone(pid)));
    assert!(std::fs::read_to_string(&log).unwrap().ends_with("stop T\n"));
    assert_ne!(integration_test::proc_state(muse.pid()), 'T');
}

/// A stand-in `systemctl` in `dir/bin`, first on PATH: each call appended to
/// `dir/systemctl.log`; `start` and `stop` set the unit's state, `is-active` reads it.
fn stand_in_systemctl(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let (log, units) = (dir.join("systemctl.log"), dir.join("units"));
    std::fs::create_dir_all(&units).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {log}\n\
         case $1 in\n\
         start) touch {units}/$2 ;;\n\
         stop) rm -f {units}/$2 ;;\n\
         is-active) test -e {units}/$3 ;;\n\
         esac\n",
        log = log.display(),
        units = units.display()
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let old = std::env::var("PATH").unwrap_or_default();
    // SAFETY: the other tests of this file only add to what PATH finds (`sh`).
    unsafe { std::env::set_var("PATH", format!("{}:{old}", bin.display())) };
}

#[test]
fn a_unit_is_started_and_stopped_with_systemctl_and_stopped_after_a_crash() {
    let dir = Dir::new("unit");
    stand_in_systemctl(&dir.0);
    let (_eva, _muse) = (Kid::new(&dir.0, "eva"), Kid::new(&dir.0, "muse"));
    let calls = || std::fs::read_to_string(dir.0.join("systemctl.log")).unwrap_or_default();
    let mut k = enforcer_with(&dir.0, "unit: llama3.service");
    let done = interact(&mut k, true);
    assert_eq!(
        names(&done),
        ["freeze muse", "start unit llama3.service for eva"]
    );
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    let asked = "is-active --quiet llama3.service\n";
    assert_eq!(calls(), format!("{asked}start llama3.service\n"));
    let done = end_interaction(&mut k);
    assert_eq!(
        names(&done),
        ["stop unit llama3.service of eva", "thaw muse"]
    );
    assert_eq!(
        calls(),
        format!("{asked}start llama3.service\nstop llama3.service\n")
    );
    // Started again, then the keeper dies: the next one stops the unit (it is active).
    interact(&mut k, true);
    drop(k);
    let restored = actuators(&dir.0).restore_all().unwrap();
    assert!(
        restored.iter().any(|r| r == "unit llama3.service stopped"),
        "{restored:#?}"
    );
    // Stopped once (each start journaled the unit; the second look finds it inactive).
    let log = calls();
    let stop_after_crash = "is-active --quiet llama3.service\nstart llama3.service\nis-active --quiet llama3.service\nstop llama3.service\n";
    assert!(log.contains(stop_after_crash), "{log}");
    assert_eq!(log.matches("stop").count(), 2, "{log}");
    // A unit that is not active is left alone.
    let again = actuators(&dir.0).restore_all().unwrap();
    assert!(!again.iter().any(|r| r.contains("llama3")), "{again:#?}");
    assert_eq!(calls().matches("stop").count(), 2);
}

/// A unit that was active before the preemption (started by hand, enabled at boot) is not the
/// keeper's: it is neither journaled nor stopped, at the interaction's end or after a crash.
/// Before the fix the keeper stopped it when the interaction ended.
#[test]
fn a_unit_already_active_is_left_running() {
    let dir = Dir::new("unit-active");
    stand_in_systemctl(&dir.0);
    std::fs::write(dir.0.join("units/ollama.service"), "").unwrap();
    let (_eva, _muse) = (Kid::new(&dir.0, "eva"), Kid::new(&dir.0, "muse"));
    let calls = || std::fs::read_to_string(dir.0.join("systemctl.log")).unwrap_or_default();
    let mut k = enforcer_with(&dir.0, "unit: ollama.service");
    let done = interact(&mut k, true);
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    let done = end_interaction(&mut k);
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    interact(&mut k, true);
    drop(k);
    let restored = actuators(&dir.0).restore_all().unwrap();
    assert!(
        !restored.iter().any(|r| r.contains("ollama")),
        "{restored:#?}"
    );
    let log = calls();
    assert!(
        !log.contains("stop"),
        "the keeper stopped a unit it did not start: {log}"
    );
    assert!(!log.contains("start ollama"), "{log}");
    assert!(dir.0.join("units/ollama.service").exists());
}

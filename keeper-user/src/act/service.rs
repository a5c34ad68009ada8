//! `start_on`'s services: a systemd unit (`systemctl start|stop`, within the deadline), or a
//! command the keeper runs in a process group of its own (SIGTERM to the group, SIGKILL past
//! the deadline). Journaled: this keeper's exit, or the next one's replay after a crash,
//! stops what was started. A unit is journaled before its start; a command as soon as it
//! has a pid, before it runs: it waits at a gate ([`GATE`]) until its line is written.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use super::{ActError, Actuators, Effect, journal::Entry};
use crate::{device::procfs, policy::Service};

/// A command that ends within this long of its start (or its deadline, if shorter) failed to
/// start (a wrong path, a port in use): its exit is the start's error.
const SETTLE: Duration = Duration::from_millis(200);

/// The gate a command passes before it runs (`sh -c GATE keeper-start-on ARGV...`): a line on
/// stdin, written once the command's journal line is, and the shell becomes the command. A
/// keeper killed before (or a journal that refused the line) closes stdin: the shell ends
/// without running it. An unknown command is the shell's exit 127, "ended at once".
const GATE: &str = r#"read -r _ && exec "$@" </dev/null"#;

impl Actuators {
    /// Starts `workload`'s service.
    pub fn start_service(
        &mut self,
        workload: &str,
        service: &Service,
        deadline: Duration,
    ) -> Result<Effect, ActError> {
        let what = format!("{service} for {workload}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("start {what}")));
        }
        match service {
            // Active before the keeper would start it (started by hand, or enabled at boot):
            // not the keeper's to stop, now or at the exit.
            Service::Unit(unit) if unit_active(unit) => {
                self.units_kept.insert(unit.clone());
                Ok(Effect::Unchanged(format!(
                    "{what}: the unit was active already; left running, and never stopped by the keeper"
                )))
            }
            Service::Unit(unit) => {
                self.units_kept.remove(unit);
                self.journal()
                    .record(&Entry::ServiceUnit { unit: unit.clone() })?;
                systemctl("start", unit, deadline)?;
                super::fault::at_kind("service_unit", super::fault::Step::Applied);
                Ok(Effect::Done(format!("started {what}")))
            }
            Service::Command(argv) => self.start_command(workload, argv, deadline, &what),
        }
    }

    fn start_command(
        &mut self,
        workload: &str,
        argv: &[String],
        deadline: Duration,
        what: &str,
    ) -> Result<Effect, ActError> {
        if let Some(c) = self.services.get_mut(workload)
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(Effect::Unchanged(format!("{what} runs (pid {})", c.id())));
        }
        let failed = |message: String| ActError::Service {
            what: what.to_string(),
            message,
        };
        // Through the gate: the command runs only once its journal line is written (a keeper
        // killed in between leaves nothing running that no journal names).
        let mut child = Command::new("/bin/sh")
            .args(["-c", GATE, "keeper-start-on"])
            .args(argv)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(format!("/bin/sh (the gate of {}): {e}", argv[0])))?;
        let pid = child.id();
        let start = procfs::task_stat(pid).map_or(0, |s| s.start);
        super::fault::at_kind("service_command", super::fault::Step::Armed);
        let mut gate = child.stdin.take();
        self.journal()
            .record(&Entry::ServiceCommand { pid, start })?;
        // Opened: the line lets the gate exec the command (same pid, same start).
        let opened = gate.as_mut().map(|g| g.write_all(b"\n"));
        drop(gate);
        if let Some(Err(e)) = opened {
            return Err(failed(format!("opening the gate: {e}")));
        }
        super::fault::at_kind("service_command", super::fault::Step::Applied);
        if let Some(status) = wait_until(&mut child, SETTLE.min(deadline)) {
            return Err(failed(format!("ended at once ({status})")));
        }
        self.services.insert(workload.to_string(), child);
        Ok(Effect::Done(format!("started {what} (pid {pid})")))
    }

    /// Stops `workload`'s service.
    pub fn stop_service(
        &mut self,
        workload: &str,
        service: &Service,
        deadline: Duration,
    ) -> Result<Effect, ActError> {
        let what = format!("{service} of {workload}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("stop {what}")));
        }
        match service {
            Service::Unit(unit) if self.units_kept.contains(unit) => Ok(Effect::Unchanged(
                format!("{what}: active before the keeper would have started it; left running"),
            )),
            Service::Unit(unit) => {
                systemctl("stop", unit, deadline)?;
                Ok(Effect::Done(format!("stopped {what}")))
            }
            Service::Command(_) => {
                let Some(mut child) = self.services.remove(workload) else {
                    return Ok(Effect::Unchanged(format!("{what} is not running")));
                };
                let pid = child.id();
                match stop_group(pid, deadline, |d| wait_until(&mut child, d)) {
                    Some(status) => Ok(Effect::Done(format!(
                        "stopped {what} (pid {pid}: {status})"
                    ))),
                    None => Ok(Effect::Done(format!(
                        "stopped {what} (pid {pid}: killed, SIGTERM unanswered within {deadline:?})"
                    ))),
                }
            }
        }
    }
}

/// `systemctl VERB UNIT`, killed past `deadline`.
fn systemctl(verb: &str, unit: &str, deadline: Duration) -> Result<(), ActError> {
    let failed = |message: String| ActError::Service {
        what: format!("unit {unit}"),
        message,
    };
    let mut child = Command::new("systemctl")
        .args([verb, unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(format!("systemctl {verb}: {e}")))?;
    match wait_until(&mut child, deadline) {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(failed(format!("systemctl {verb}: {s}"))),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(failed(format!(
                "systemctl {verb} took longer than {deadline:?}"
            )))
        }
    }
}

/// The child's exit status, if it ends within `d`.
fn wait_until(child: &mut Child, d: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + d;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// SIGTERM to the process group `pgid`, then SIGKILL when `wait` (for up to the deadline)
/// saw no exit. The leader's exit status, when it ended by itself.
fn stop_group(
    pgid: u32,
    deadline: Duration,
    mut wait: impl FnMut(Duration) -> Option<ExitStatus>,
) -> Option<ExitStatus> {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
    unsafe { libc::kill(-(pgid as i32), libc::SIGTERM) };
    if let Some(status) = wait(deadline) {
        // What the leader left in its group goes too.
        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
        return Some(status);
    }
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    wait(Duration::from_secs(1));
    None
}

/// Undo of a command's entry: its process group stopped, if its leader is still the task
/// that was started (a reused pid is left alone). Not this keeper's child any more (a replay
/// after a crash), so its end is read from /proc.
pub(super) fn restore_command(pid: u32, start: u64) -> Result<Option<String>, ActError> {
    let alive = || procfs::task_stat(pid).is_some_and(|s| s.start == start && s.state != 'Z');
    if !alive() {
        return Ok(None);
    }
    let ended = stop_group(pid, Duration::from_secs(5), |d| {
        let end = Instant::now() + d;
        while alive() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        (!alive()).then(ExitStatus::default)
    });
    let how = if ended.is_some() { "stopped" } else { "killed" };
    Ok(Some(format!("the command started as pid {pid} {how}")))
}

/// Whether systemd says `unit` is active (`systemctl is-active --quiet`).
fn unit_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Undo of a unit's entry: stopped, if it is active.
pub(super) fn restore_unit(unit: &str) -> Result<Option<String>, ActError> {
    if !unit_active(unit) {
        return Ok(None);
    }
    systemctl("stop", unit, Duration::from_secs(30))?;
    Ok(Some(format!("unit {unit} stopped")))
}

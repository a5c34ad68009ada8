//! Ballooning a VM through its QMP socket: the target resolved against the VM's memory, never
//! below the floor, journaled (the guest memory it had) before the change, confirmed by
//! `query-balloon` answering, undone on exit or after a crash.

use std::path::Path;

use super::{ActError, Actuators, Effect, journal::Entry};
use crate::{
    device::qmp::{self, Qmp},
    policy::Amount,
};

const MIB: f64 = 1024.0 * 1024.0;

impl Actuators {
    /// Sets VM `vmid`'s balloon so that the guest keeps `target` (`100%`: all of its memory),
    /// and never less than the floor. `cgroups`: the workload's, for the scope check.
    pub fn balloon(
        &mut self,
        vmid: u32,
        target: Amount,
        cgroups: &[String],
    ) -> Result<Effect, ActError> {
        self.check_scope_vm(vmid, cgroups)?;
        let socket = qmp::socket_of(&self.qmp_dir, vmid);
        if target == Amount::Percent(crate::policy::Percent::new(100.0)) && !socket.exists() {
            // Stopped (hibernated by the ladder's last step, or by hand): nothing to give back.
            return Ok(Effect::Unchanged(format!(
                "VM {vmid} has no QMP socket (not running): nothing to give back"
            )));
        }
        let mut q = Qmp::connect(&socket)?;
        let max = q.max_memory()?;
        let floor = self.balloon_floor.resolve(max).min(max);
        let want = target.resolve(max).clamp(floor, max);
        let actual = q.balloon_actual()?;
        let what = format!(
            "VM {vmid} balloon {:.0} MiB → {:.0} MiB (of {:.0} MiB, floor {:.0} MiB)",
            actual as f64 / MIB,
            want as f64 / MIB,
            max as f64 / MIB,
            floor as f64 / MIB
        );
        if actual.abs_diff(want) < 1 << 20 {
            return Ok(Effect::Unchanged(what));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        // Marked journaled only once the line is written: a failed write is tried again.
        if !self.balloons_journaled.contains(&socket) {
            self.journal().record(&Entry::Balloon {
                socket: socket.clone(),
                original: actual,
            })?;
            self.balloons_journaled.insert(socket.clone());
        }
        q.set_balloon(want)?;
        super::fault::at_kind("balloon", super::fault::Step::Applied);
        Ok(Effect::Done(what))
    }
}

/// Gives a VM back the memory it had before the keeper ballooned it.
pub(super) fn restore(socket: &Path, original: u64) -> Result<Option<String>, ActError> {
    if !socket.exists() {
        return Ok(None); // the VM is gone
    }
    Qmp::connect(socket)?.set_balloon(original)?;
    Ok(Some(format!(
        "{} balloon back to {:.0} MiB",
        socket.display(),
        original as f64 / MIB
    )))
}

//! Interrupt affinity, journaled: `host.irq_guard` moves a line off the trading cores, and
//! tells a running irqbalance to leave them alone; the exit (or the next start) puts each
//! line back where it was allowed before and lifts the ban.

use std::path::Path;

use super::{ActError, Actuators, Effect, journal::Entry};
use crate::{
    cpulist::CpuList,
    device::{
        irq::{self, IrqError},
        irqbalance,
    },
};

impl Actuators {
    /// Tells a running irqbalance to leave `cpus` out of its balancing, journaled first (the
    /// exit lifts the ban). No irqbalance running: nothing to tell.
    pub fn keep_irqbalance_off(&mut self, cpus: &CpuList) -> Result<Effect, ActError> {
        let dir = Path::new(irqbalance::SOCKET_DIR);
        let Some(socket) = irqbalance::socket_in(dir) else {
            return Ok(Effect::Unchanged("irqbalance is not running".into()));
        };
        let what = format!("irqbalance ({}) leaves CPUs {cpus} alone", socket.display());
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        self.journal().record(&Entry::IrqbalanceBan {
            dir: dir.to_path_buf(),
        })?;
        irqbalance::ban(&socket, cpus).map_err(|source| ActError::Io {
            path: socket.clone(),
            source,
        })?;
        super::fault::at_kind("irqbalance_ban", super::fault::Step::Applied);
        Ok(Effect::Done(what))
    }

    /// Lets `irq` fire only on `to`, journaling where it was allowed before (once per run: a
    /// line put back by a driver or irqbalance is moved again without a new record). A managed
    /// line refuses (EPERM or EIO): [`IrqError::Managed`], read as "skipped" by the engine.
    pub fn move_irq(&mut self, number: u32, name: &str, to: &CpuList) -> Result<Effect, ActError> {
        let what = format!("IRQ {number} ({name}) to CPUs {to}");
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("move {what}")));
        }
        let original = irq::affinity(number).map_err(|source| IrqError::Io {
            irq: number,
            name: name.to_string(),
            path: format!("/proc/irq/{number}/smp_affinity_list").into(),
            source,
        })?;
        if original == *to {
            return Ok(Effect::Unchanged(what));
        }
        // Marked journaled only once the line is written: a failed write is tried again.
        if !self.irqs_journaled.contains(&number) {
            self.journal().record(&Entry::IrqAffinity {
                irq: number,
                original: original.to_string(),
            })?;
            self.irqs_journaled.insert(number);
        }
        if let Err(e) = irq::set_affinity(number, name, to) {
            if matches!(e, IrqError::Managed { .. }) {
                // Said once: the engine does not ask for this line again.
                let cores = CpuList::online()
                    .map(|all| all.difference(to).to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    irq = number,
                    name,
                    "{e}; it stays where the kernel puts it (at boot, `isolcpus=managed_irq,{cores}` keeps managed lines off the trading cores)"
                );
            }
            return Err(e.into());
        }
        super::fault::at_kind("irq_affinity", super::fault::Step::Applied);
        // x86 moves a line at its next interrupt: until then it may still fire where it did.
        let fires = match irq::effective(number) {
            Some(e) if !e.difference(to).is_empty() => {
                format!(" (fires on CPUs {e} until its next interrupt)")
            }
            _ => String::new(),
        };
        Ok(Effect::Done(format!(
            "moved IRQ {number} ({name}) from CPUs {original} to {to}{fires}"
        )))
    }
}

/// Journal replay: `irq` allowed on `original` again. A line gone since (its device removed) or
/// managed (the move never happened) needs nothing.
pub fn restore(number: u32, original: &str) -> Result<Option<String>, ActError> {
    let Ok(cpus) = original.parse::<CpuList>() else {
        return Ok(None);
    };
    if irq::affinity(number).is_err() {
        return Ok(None);
    }
    match irq::set_affinity(number, &irq::name(number), &cpus) {
        Ok(()) => Ok(Some(format!("IRQ {number} back on CPUs {cpus}"))),
        Err(IrqError::Managed { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Journal replay: the irqbalance running now (if any) balances every CPU again. One that
/// restarted since holds no ban of ours, and one not running needs nothing.
pub fn lift_irqbalance_ban(dir: &Path) -> Result<Option<String>, ActError> {
    let Some(socket) = irqbalance::socket_in(dir) else {
        return Ok(None);
    };
    irqbalance::unban(&socket).map_err(|source| ActError::Io {
        path: socket.clone(),
        source,
    })?;
    Ok(Some(format!(
        "irqbalance ({}) balances every CPU again",
        socket.display()
    )))
}

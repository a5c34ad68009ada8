//! cgroup v2 actuators: control files with their originals journaled, freeze/thaw confirmed
//! through `cgroup.events`, and the trading cores given to one cgroup as a cpuset partition.

use std::{
    fs, io,
    path::Path,
    time::{Duration, Instant},
};

use super::{ActError, Actuators, Effect, journal::Entry, normalize};
use crate::{cpulist::CpuList, decide::PartitionState};

/// How long a freeze or thaw may take before it is reported as failed.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the loop waits to see a freeze or thaw in `cgroup.events` (a few hundred µs
/// usually). Past it (a task in uninterruptible sleep holds the freeze back), later ticks
/// look again without waiting ([`Actuators::confirm_freezes`]); before, the loop waited up to
/// [`FREEZE_TIMEOUT`] for each cgroup.
pub const CONFIRM_ON_LOOP: Duration = Duration::from_millis(10);

/// Between two looks at `cgroup.events` while the loop waits (EVA's preemption round trip was
/// 0.45 ms p50, 0.5–0.7 ms p99 with 200 µs).
const CONFIRM_POLL: Duration = Duration::from_micros(50);

/// A freeze or thaw written, not yet seen: the action that asked it (told its failure if it
/// times out).
pub(super) struct Unconfirmed {
    rel: String,
    want: u8,
    since: Instant,
    action: Option<crate::decide::Action>,
}

/// Controller a control file belongs to (`cpu.max` → `cpu`).
fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

impl Actuators {
    /// Reads a control file of a cgroup.
    pub fn read_file(&self, rel: &str, file: &str) -> Result<String, ActError> {
        let path = self.cg.dir(rel)?.join(file);
        fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| self.file_error(rel, file, &path, source))
    }

    fn file_error(&self, rel: &str, file: &str, path: &Path, source: io::Error) -> ActError {
        if source.kind() == io::ErrorKind::NotFound {
            if self.cg.dir(rel).is_ok_and(|d| d.is_dir()) {
                ActError::Missing {
                    cgroup: format!("/{}", normalize(rel)),
                    file: file.to_string(),
                    controller: controller_of(file).to_string(),
                }
            } else {
                ActError::CgroupGone {
                    cgroup: format!("/{}", normalize(rel)),
                }
            }
        } else {
            ActError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// Writes a control file, journaling its original value the first time.
    pub fn write_file(&mut self, rel: &str, file: &str, value: &str) -> Result<Effect, ActError> {
        self.check_scope_cgroup(rel)?;
        let path = self.cg.dir(rel)?.join(file);
        let current = self.read_file(rel, file)?;
        let what = format!("/{}/{file} = {value}", normalize(rel));
        if current == value {
            return Ok(Effect::Unchanged(what));
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(what));
        }
        if !self.originals.contains_key(&path) {
            let original = original_for_restore(file, &current);
            self.journal().record(&Entry::File {
                path: path.clone(),
                original: original.clone(),
            })?;
            self.originals.insert(path.clone(), original);
        }
        fs::write(&path, write_form(value))
            .map_err(|source| self.file_error(rel, file, &path, source))?;
        super::fault::at_kind("file", super::fault::Step::Applied);
        Ok(Effect::Done(what))
    }

    /// Puts a control file back to the value it had before this keeper wrote it; a file the
    /// keeper never wrote is left alone (an administrator's value stays).
    pub fn restore_file(&mut self, rel: &str, file: &str) -> Result<Effect, ActError> {
        let path = self.cg.dir(rel)?.join(file);
        match self.originals.get(&path).cloned() {
            Some(original) => self.write_file(rel, file, &original),
            None => Ok(Effect::Unchanged(format!(
                "/{}/{file}: never changed by the keeper, left alone",
                normalize(rel)
            ))),
        }
    }

    /// Sets a cgroup's `cpuset.cpus` (an empty list: its parent's), enabling the cpuset
    /// controller in its ancestors first.
    pub fn restrict_cpus(&mut self, rel: &str, cpus: &str) -> Result<Effect, ActError> {
        self.check_scope_cgroup(rel)?;
        let rel = normalize(rel);
        self.require_cpuset("cpuset.cpus")?;
        if !self.dry_run {
            self.enable_cpuset_above(&rel)?;
        }
        self.write_file(&rel, "cpuset.cpus", cpus)
    }

    /// Gives cgroup `rel` its parent's CPUs again (an empty `cpuset.cpus`). 6.1 refuses an
    /// empty list while the cgroup has tasks (ENOSPC): it gets the parent's effective CPUs
    /// written out then, the same set.
    pub fn widen_cpus(&mut self, rel: &str) -> Result<Effect, ActError> {
        match self.write_file(rel, "cpuset.cpus", "") {
            Err(ActError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
                let rel = normalize(rel);
                let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
                let cpus = self.read_file(parent, "cpuset.cpus.effective")?;
                self.write_file(&rel, "cpuset.cpus", &cpus)
            }
            r => r,
        }
    }

    /// Freezes a cgroup and waits until `cgroup.events` says `frozen 1`.
    pub fn freeze(&mut self, rel: &str) -> Result<Effect, ActError> {
        self.set_frozen(rel, true)
    }

    /// Thaws a cgroup and waits until `cgroup.events` says `frozen 0`.
    pub fn thaw(&mut self, rel: &str) -> Result<Effect, ActError> {
        self.set_frozen(rel, false)
    }

    fn set_frozen(&mut self, rel: &str, frozen: bool) -> Result<Effect, ActError> {
        self.check_scope_cgroup(rel)?;
        let verb = if frozen { "freeze" } else { "thaw" };
        let want = u8::from(frozen);
        let dir = self.cg.dir(rel)?;
        if !dir.is_dir() {
            return Err(ActError::CgroupGone {
                cgroup: format!("/{}", normalize(rel)),
            });
        }
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("{verb} /{}", normalize(rel))));
        }
        if frozen {
            self.journal().record(&Entry::Freeze {
                cgroup: dir.clone(),
            })?;
        }
        let file = dir.join("cgroup.freeze");
        // A newer freeze or thaw of the cgroup replaces one still unconfirmed: a thaw written
        // meanwhile is not the freeze's failure (nor taken back by it).
        self.unconfirmed.retain(|u| u.rel != rel);
        let start = Instant::now();
        fs::write(&file, want.to_string())
            .map_err(|source| self.file_error(rel, "cgroup.freeze", &file, source))?;
        if frozen {
            super::fault::at_kind("freeze", super::fault::Step::Applied);
        }
        loop {
            if self.events_frozen(rel)? == want {
                return Ok(Effect::Done(format!(
                    "{verb} /{} (confirmed in {:.1} ms)",
                    normalize(rel),
                    start.elapsed().as_secs_f64() * 1000.0
                )));
            }
            if start.elapsed() > CONFIRM_ON_LOOP {
                self.unconfirmed.push(Unconfirmed {
                    rel: rel.to_string(),
                    want,
                    since: start,
                    action: None,
                });
                return Ok(Effect::Done(format!(
                    "{verb} /{} (not seen within {} ms: looked at again on the next ticks, {})",
                    normalize(rel),
                    CONFIRM_ON_LOOP.as_millis(),
                    if frozen {
                        "taken back past 2 s"
                    } else {
                        "failed past 2 s"
                    }
                )));
            }
            // Short: the keeper's loop may share a CPU with the task it freezes (the
            // housekeeping core), which freezes only once it runs; each look costs a read.
            std::thread::sleep(CONFIRM_POLL);
        }
    }

    /// The freezes and thaws just written and not yet seen are `action`'s.
    pub(crate) fn unconfirmed_are(&mut self, action: &crate::decide::Action) {
        for u in self.unconfirmed.iter_mut().filter(|u| u.action.is_none()) {
            u.action = Some(action.clone());
        }
    }

    /// Looks at each unconfirmed freeze and thaw once (no wait): seen, it is said; past
    /// [`FREEZE_TIMEOUT`], a freeze is taken back (the cgroup is never left half frozen while
    /// the engine takes it for running) and its action comes back failed, which the engine
    /// hears like any other and asks again.
    pub fn confirm_freezes(&mut self) -> Vec<(crate::decide::Action, ActError, Duration)> {
        let mut failed = vec![];
        let pending = std::mem::take(&mut self.unconfirmed);
        for u in pending {
            let waited = u.since.elapsed();
            match self.events_frozen(&u.rel) {
                Ok(now) if now == u.want => {
                    let rel = normalize(&u.rel);
                    tracing::info!(cgroup = %rel, want = u.want, "freeze state confirmed in {:.0} ms", waited.as_secs_f64() * 1000.0);
                    continue;
                }
                Err(_) => continue, // the cgroup is gone
                Ok(_) if waited <= FREEZE_TIMEOUT => {
                    self.unconfirmed.push(u);
                    continue;
                }
                Ok(_) => {}
            }
            if u.want == 1
                && let Ok(dir) = self.cg.dir(&u.rel)
            {
                let _ = fs::write(dir.join("cgroup.freeze"), "0");
            }
            let e = ActError::FreezeTimeout {
                cgroup: format!("/{}", normalize(&u.rel)),
                want: u.want,
                waited,
            };
            tracing::warn!(error = %e, "not confirmed: taken back, the engine asks again");
            if let Some(action) = u.action {
                failed.push((action, e, waited));
            }
        }
        failed
    }

    /// The `frozen` field of cgroup.events.
    pub fn events_frozen(&self, rel: &str) -> Result<u8, ActError> {
        let events = self.read_file(rel, "cgroup.events")?;
        Ok(events
            .lines()
            .find_map(|l| l.strip_prefix("frozen "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Gives `cpus` to cgroup `rel` alone: a cpuset partition (`isolated` where the kernel
    /// allows, else `root`), which takes the CPUs out of every other cgroup's effective cpuset.
    /// Needs the cpuset controller in cgroup v2. A local partition needs the parent to be a
    /// partition root (a child of the root cgroup); deeper, such as Proxmox's
    /// `qemu.slice/<vmid>.scope`, kernels from 6.7 make a remote one: the CPUs are handed down
    /// through `cpuset.cpus.exclusive` of every ancestor below the root, and no parent has to
    /// become a partition itself.
    pub fn partition(&mut self, rel: &str, cpus: &CpuList) -> Result<Effect, ActError> {
        self.check_scope_cgroup(rel)?;
        let rel = normalize(rel);
        self.require_cpuset("cpuset.cpus.partition")?;
        if self.dry_run {
            return Ok(Effect::WouldDo(format!("partition /{rel} on CPUs {cpus}")));
        }
        // Before anything of the cpuset changes (older entries are undone later, after it);
        // protect_trading_cores asked already, before it narrowed the others.
        self.keep_own_masks(std::slice::from_ref(&rel))?;
        self.enable_cpuset_above(&rel)?;
        self.leave_other_partition(&rel, cpus)?;
        self.write_file(&rel, "cpuset.cpus", &cpus.to_string())?;
        // Valid is not enough: on 6.7+ a cgroup below a parent with exclusive CPUs becomes a
        // valid remote partition on those CPUs alone (the old cores of a reload).
        if let Some(state) = self.try_partition(&rel)?
            && self.holds(&rel, cpus)?
        {
            return Ok(Effect::Done(format!(
                "partition /{rel} = {state} on CPUs {cpus}"
            )));
        }
        if let Some(state) = self.remote_partition(&rel, cpus)? {
            return Ok(Effect::Done(format!(
                "remote partition /{rel} = {state} on CPUs {cpus} (cpuset.cpus.exclusive handed down from the root; its parents stay members)"
            )));
        }
        let state = self.read_file(&rel, "cpuset.cpus.partition")?;
        self.write_file(&rel, "cpuset.cpus.partition", "member")?;
        Err(ActError::Partition {
            cgroup: format!("/{rel}"),
            state,
        })
    }

    /// A partition `rel` holds on other CPUs than `cpus` (the trading cores moved by a reload)
    /// is left first: a member again, its own exclusive CPUs emptied. Else the old partition
    /// stays valid on its old CPUs (a remote one keeps its `cpuset.cpus.exclusive`, whatever
    /// `cpuset.cpus` says), the new cores are in no partition and what runs there stays.
    fn leave_other_partition(&mut self, rel: &str, cpus: &CpuList) -> Result<(), ActError> {
        let state = self.read_file(rel, "cpuset.cpus.partition")?;
        if PartitionState::parse(&state) == Some(PartitionState::Member) {
            return Ok(());
        }
        if self.holds(rel, cpus)? {
            return Ok(());
        }
        let from = self.read_file(rel, "cpuset.cpus.effective")?;
        tracing::info!(cgroup = %rel, from = %from.trim(), to = %cpus, "the partition moves: left first");
        self.write_file(rel, "cpuset.cpus.partition", "member")?;
        if self.cg.dir(rel)?.join("cpuset.cpus.exclusive").exists() {
            self.write_file(rel, "cpuset.cpus.exclusive", "")?;
        }
        Ok(())
    }

    /// The partition `rel` holds `cpus`, no fewer and no more (`cpuset.cpus.effective`).
    fn holds(&self, rel: &str, cpus: &CpuList) -> Result<bool, ActError> {
        let effective = self.read_file(rel, "cpuset.cpus.effective")?;
        Ok(effective.trim().parse::<CpuList>().ok().as_ref() == Some(cpus))
    }

    /// `isolated`, else `root`: the state read back when one is valid.
    fn try_partition(&mut self, rel: &str) -> Result<Option<String>, ActError> {
        for mode in ["isolated", "root"] {
            self.write_file(rel, "cpuset.cpus.partition", mode)?;
            let state = self.read_file(rel, "cpuset.cpus.partition")?;
            if PartitionState::parse(&state).is_some_and(|s| s.is_valid()) {
                return Ok(Some(state));
            }
        }
        Ok(None)
    }

    /// A remote partition (kernel 6.7+, where `cpuset.cpus.exclusive` exists): `cpus` added to
    /// the exclusive CPUs of each ancestor below the root and of `rel`, then the partition
    /// tried again. Not possible: the exclusive CPUs written are taken back at once.
    fn remote_partition(&mut self, rel: &str, cpus: &CpuList) -> Result<Option<String>, ActError> {
        let Some((parent, _)) = rel.rsplit_once('/') else {
            return Ok(None); // a child of the root: only a local partition
        };
        if !self.cg.dir(rel)?.join("cpuset.cpus.exclusive").exists() {
            return Ok(None); // before 6.7
        }
        self.write_file(rel, "cpuset.cpus.partition", "member")?;
        let parts: Vec<&str> = parent.split('/').collect();
        let chain: Vec<String> = (1..=parts.len())
            .map(|n| parts[..n].join("/"))
            .chain(std::iter::once(rel.to_string()))
            .collect();
        let mut written: Vec<(String, String)> = Vec::new();
        for c in &chain {
            let before = self.read_file(c, "cpuset.cpus.exclusive")?;
            let had: CpuList = before.trim().parse().unwrap_or_default();
            // A parent's exclusive CPUs must hold its children's; the partition's own are
            // exactly its CPUs.
            let want = if c == rel {
                cpus.clone()
            } else {
                had.union(cpus)
            };
            if let Err(e) = self.write_file(c, "cpuset.cpus.exclusive", &want.to_string()) {
                tracing::debug!(cgroup = %c, error = %e, "cpuset.cpus.exclusive refused");
                self.take_back_exclusive(&written);
                return Ok(None);
            }
            written.push((c.clone(), before.trim().to_string()));
        }
        let mut state = self.try_partition(rel)?;
        if state.is_some() && !self.holds(rel, cpus)? {
            state = None;
        }
        if state.is_none() {
            self.write_file(rel, "cpuset.cpus.partition", "member")?;
            self.take_back_exclusive(&written);
        }
        Ok(state)
    }

    /// Writes back the exclusive CPUs of a remote partition that could not be made, deepest
    /// first (a parent's exclusive CPUs must hold its children's).
    fn take_back_exclusive(&mut self, written: &[(String, String)]) {
        for (c, before) in written.iter().rev() {
            let _ = self.write_file(c, "cpuset.cpus.exclusive", before);
        }
    }

    /// The cpuset controller is in the v2 hierarchy (not so on hybrid hosts), else `file` of it
    /// is missing.
    pub(super) fn require_cpuset(&self, file: &str) -> Result<(), ActError> {
        let controllers =
            fs::read_to_string(self.cg.mount().join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpuset") {
            return Ok(());
        }
        Err(ActError::Missing {
            cgroup: "/".into(),
            file: file.into(),
            controller: "cpuset".into(),
        })
    }

    /// Enables cpuset in the root and every ancestor of `rel`, down to its parent.
    fn enable_cpuset_above(&mut self, rel: &str) -> Result<(), ActError> {
        let parts: Vec<&str> = rel.split('/').collect();
        for depth in 0..parts.len() {
            self.enable_controller(&parts[..depth].join("/"), "cpuset")?;
        }
        Ok(())
    }

    /// `+controller` in a cgroup's subtree_control, journaled as an enable to undo.
    fn enable_controller(&mut self, rel: &str, controller: &str) -> Result<(), ActError> {
        let current = self.read_file(rel, "cgroup.subtree_control")?;
        if current.split_whitespace().any(|c| c == controller) {
            return Ok(());
        }
        let dir = self.cg.dir(rel)?;
        self.journal().record(&Entry::Enable {
            cgroup: dir.clone(),
            controller: controller.to_string(),
        })?;
        let file = dir.join("cgroup.subtree_control");
        fs::write(&file, format!("+{controller}"))
            .map_err(|source| ActError::Io { path: file, source })?;
        super::fault::at_kind("enable", super::fault::Step::Applied);
        Ok(())
    }
}

/// What to write for `value`: a cgroup file ignores a write of zero bytes, so an empty value
/// (`cpuset.cpus` = the parent's) is written as a newline.
pub fn write_form(value: &str) -> &str {
    if value.is_empty() { "\n" } else { value }
}

/// The value to write back to restore a file: what was read, except where the file's read
/// format differs from its write format.
fn original_for_restore(file: &str, current: &str) -> String {
    match file {
        // "root invalid (...)" reads back, "member"/"root"/"isolated" is written.
        "cpuset.cpus.partition" => PartitionState::parse(current)
            .map_or("member", |s| s.written_form())
            .to_string(),
        _ => current.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A freeze not confirmed is taken back: now past its timeout, off the loop
    // (act/tests.rs: a_freeze_not_seen_at_once_is_confirmed_later_and_given_up_past_its_timeout).

    #[test]
    fn restore_values_are_writable() {
        assert_eq!(
            original_for_restore("cpuset.cpus.partition", "root invalid (x)"),
            "root"
        );
        assert_eq!(original_for_restore("cpu.max", "max 100000"), "max 100000");
        assert_eq!(controller_of("memory.high"), "memory");
    }
}

//! The crash-safety journal: every change is written here *before* it is applied, so that a
//! keeper started after a crash or `kill -9` (and a keeper exiting) can put everything back:
//! original file values, frozen cgroups, stopped processes, moved affinities, the GPU's power
//! limit and clock offset, GPU state checkpointed by a handoff, and VMs it stopped.
//!
//! One JSON object per line in `<state dir>/journal.jsonl` (mode 0600). Records are synced to
//! disk in batches ([`Journal::sync`], once per tick and after a rewrite), and at once for a
//! change that outlives a reboot (a VM hibernated through Proxmox stays so after a crash of the
//! host): a crash may lose the last tick's records of changes a reboot undoes anyway (cgroup
//! files, frozen cgroups, affinities), never a hibernated VM. The state directory is held with an exclusive `flock` for the
//! journal's lifetime, so a second keeper neither reads nor undoes what the first one did.
//! A line that does not parse (a torn write, a stray byte) is moved to
//! `journal.quarantine` with a warning: it never stops a start.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    fault::{self, Step},
    pending::Pending,
};
use crate::cpulist::CpuList;

/// One recorded change, with what undoing it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A control file (cpu.max, memory.high, cpuset.cpus, ...) and its value before the keeper.
    File { path: PathBuf, original: String },
    /// A controller the keeper enabled in a cgroup's `cgroup.subtree_control`.
    Enable { cgroup: PathBuf, controller: String },
    /// A cgroup the keeper froze (`cgroup.freeze` was 0).
    Freeze { cgroup: PathBuf },
    /// A process the keeper stopped with SIGSTOP; `start` (clock ticks since boot) tells a
    /// reused pid apart.
    Stop { pid: u32, start: u64 },
    /// A task whose CPU affinity the keeper changed, and the original CPU list; `since`: when
    /// (clock ticks since boot, as task start times): a task born after it from this one
    /// inherited the CPUs the keeper set, and gets the original back too (act/forks.rs).
    Affinity {
        pid: u32,
        start: u64,
        original: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A task's own CPU affinity, journaled before the first cpuset partition on a kernel that
    /// forgets it when the partition ends (before 6.2): put back if found widened.
    OwnMask {
        pid: u32,
        start: u64,
        original: String,
    },
    /// A thread whose scheduling policy the keeper changed (a vCPU made SCHED_FIFO, a
    /// real-time intruder demoted to SCHED_OTHER), and the policy and real-time priority it
    /// had (a deadline task: its parameters too).
    Scheduler {
        pid: u32,
        start: u64,
        policy: i32,
        priority: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<super::sched_class::Deadline>,
    },
    /// A VM whose balloon the keeper moved (QMP socket), and the guest memory it had.
    Balloon { socket: PathBuf, original: u64 },
    /// The GPU power limit before the keeper changed it (set back through NVML at `lib`).
    GpuPowerLimit {
        lib: PathBuf,
        uuid: String,
        original_mw: u32,
    },
    /// The GPU clock offset before the keeper changed it.
    GpuClockOffset {
        lib: PathBuf,
        uuid: String,
        original_mhz: i32,
    },
    /// A process whose GPU state the keeper checkpointed (`tool --toggle` gives it back).
    GpuCheckpoint { pid: u32, start: u64, tool: PathBuf },
    /// That process got its GPU state back: the checkpoint above needs no undoing.
    GpuRestored { pid: u32, start: u64 },
    /// An interrupt line the keeper moved (`host.irq_guard`), and where it was allowed before.
    IrqAffinity { irq: u32, original: String },
    /// irqbalance was told (on its socket in `dir`) to leave CPUs alone: the ban is lifted.
    IrqbalanceBan { dir: PathBuf },
    /// A VM the keeper hibernated through the Proxmox API described by the file `api`.
    VmStopped { vmid: u32, api: PathBuf },
    /// That VM was started again (or its hibernation refused): nothing to undo.
    VmStarted { vmid: u32 },
    /// The passthrough GPU lent by the VM at QMP socket `holder` to the one at `borrower`
    /// (`rules.gpu_mutex`): given back if it is not with its holder.
    GpuLent {
        holder: PathBuf,
        borrower: PathBuf,
        device: std::collections::BTreeMap<String, String>,
    },
    /// The passthrough GPU lent by a planned restart (`rules.gpu_mutex.config`): `key: value`
    /// moved from VM `holder`'s Proxmox configuration to VM `borrower`'s, through the API
    /// described by the file `api`. Moved back if the holder's configuration lacks it.
    GpuConfigLent {
        api: PathBuf,
        holder: u32,
        borrower: u32,
        key: String,
        value: String,
    },
    /// A systemd unit a preemption started (`start_on`): stopped if still active.
    ServiceUnit { unit: String },
    /// A command a preemption started (`start_on`), leader of its own process group: the group
    /// is stopped if the leader is still that task.
    ServiceCommand { pid: u32, start: u64 },
}

impl Entry {
    /// The entry's kind, as the journal's `kind` field names it (`freeze`, `affinity`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::File { .. } => "file",
            Entry::Enable { .. } => "enable",
            Entry::Freeze { .. } => "freeze",
            Entry::Stop { .. } => "stop",
            Entry::Affinity { .. } => "affinity",
            Entry::OwnMask { .. } => "own_mask",
            Entry::Scheduler { .. } => "scheduler",
            Entry::Balloon { .. } => "balloon",
            Entry::GpuPowerLimit { .. } => "gpu_power_limit",
            Entry::GpuClockOffset { .. } => "gpu_clock_offset",
            Entry::GpuCheckpoint { .. } => "gpu_checkpoint",
            Entry::GpuRestored { .. } => "gpu_restored",
            Entry::IrqAffinity { .. } => "irq_affinity",
            Entry::IrqbalanceBan { .. } => "irqbalance_ban",
            Entry::VmStopped { .. } => "vm_stopped",
            Entry::VmStarted { .. } => "vm_started",
            Entry::GpuLent { .. } => "gpu_lent",
            Entry::GpuConfigLent { .. } => "gpu_config_lent",
            Entry::ServiceUnit { .. } => "service_unit",
            Entry::ServiceCommand { .. } => "service_command",
        }
    }

    /// A change a reboot of the host does not undo: synced to disk as soon as it is recorded
    /// (a hibernated VM; a GPU's key moved between VMs' configurations, which live in
    /// /etc/pve).
    pub fn outlives_reboot(&self) -> bool {
        matches!(self, Entry::VmStopped { .. } | Entry::GpuConfigLent { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "another keeper ({holder}) holds the state directory {dir}: this one read, undid and changed nothing"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "journal {path} holds {size} bytes after compaction (at most {MAX_BYTES}): no further change is made until it is undone"
    )]
    Full { path: PathBuf, size: u64 },
}

impl JournalError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The append-only journal file, and the lock on its state directory.
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// `<state dir>/lock`, flocked exclusively while this journal lives (the kernel drops the
    /// lock when the keeper dies, however it dies).
    _lock: Option<File>,
    /// Lines written since the journal was last compacted, and the count that compacts it.
    lines: usize,
    compact_at: usize,
    /// Records written since the last sync.
    dirty: bool,
    /// The affinity change in flight ([`Journal::record_around`]), in memory that outlives the
    /// process.
    pending: Option<Pending>,
}

/// Lines after which the journal is compacted (before the next record).
const COMPACT_AFTER: usize = 4096;
/// The most the journal may hold once compacted: past it a change is refused (and so not
/// made) with a clear error, rather than the disk filled.
pub const MAX_BYTES: u64 = 16 << 20;

/// The name of the file that lines which do not parse are moved to.
pub const QUARANTINE: &str = "journal.quarantine";

impl Journal {
    /// Locks `state_dir` (creating it) and opens its journal. Fails, having read nothing,
    /// when another keeper holds the directory.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        fs::create_dir_all(state_dir).map_err(JournalError::io(state_dir))?;
        let lock = lock_dir(state_dir)?;
        let path = state_dir.join("journal.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(JournalError::io(&path))?;
        // A journal made by an older keeper (or by hand) may be readable by others.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(JournalError::io(&path))?;
        let (pending, left) = Pending::open(state_dir)
            .map_err(JournalError::io(&state_dir.join(super::pending::FILE)))?;
        let mut journal = Self {
            path,
            file: Some(file),
            _lock: Some(lock),
            lines: 0,
            compact_at: COMPACT_AFTER,
            dirty: false,
            pending: Some(pending),
        };
        if let Some(entry) = left {
            tracing::info!(
                ?entry,
                "a change the last keeper made without its journal line: journaled now"
            );
            journal.append(&entry)?;
            journal.sync()?;
        }
        if let Some(p) = &mut journal.pending {
            p.clear();
        }
        Ok(journal)
    }

    /// A journal that records nothing (`--dry-run`).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
            _lock: None,
            lines: 0,
            compact_at: COMPACT_AFTER,
            dirty: false,
            pending: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (before the change it describes is applied). The journal is compacted
    /// by the loop ([`Journal::compact_if_due`]), never here: a record may be made on the
    /// eviction path, which a rewrite of the whole file must not delay.
    pub fn record(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.append(entry)?;
        if entry.outlives_reboot() {
            self.sync()?;
        }
        fault::at(entry, Step::Recorded);
        Ok(())
    }

    /// Records that thread `pid` (started at `start`) leaves its `original` CPUs around
    /// `change`, which moves it: in the pending record (memory) before the change, in the
    /// journal's line after it, so that no write to the file delays the move (an eviction).
    /// Recorded first as [`Journal::record`] does where the record cannot hold the CPUs.
    pub fn record_around<T>(
        &mut self,
        pid: u32,
        start: u64,
        original: &CpuList,
        change: impl FnOnce() -> T,
    ) -> Result<T, JournalError> {
        let since = Some(crate::device::procfs::now_ticks());
        let entry = || Entry::Affinity {
            pid,
            start,
            original: original.to_string(),
            since,
        };
        let armed = (self.pending.as_mut()).is_some_and(|p| p.arm(pid, start, original));
        if !armed {
            self.record(&entry())?;
            let done = change();
            fault::at_kind("affinity", Step::Applied);
            return Ok(done);
        }
        fault::at_kind("affinity", Step::Armed);
        let done = change();
        fault::at_kind("affinity", Step::Applied);
        match self.append(&entry()) {
            Ok(()) => {
                fault::at_kind("affinity", Step::Recorded);
                if let Some(p) = &mut self.pending {
                    p.clear();
                }
                Ok(done)
            }
            Err(e) => {
                // The record stays armed in the file for the next keeper; this one records
                // (and so changes) nothing more around it.
                self.pending = None;
                Err(e)
            }
        }
    }

    /// A second handle on the journal file when records were written since the last sync, to
    /// sync them outside the journal's lock (see [`super::Actuators::sync_journal`]).
    pub fn to_sync(&mut self) -> Result<Option<File>, JournalError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        if !self.dirty {
            return Ok(None);
        }
        self.dirty = false;
        file.try_clone()
            .map(Some)
            .map_err(JournalError::io(&self.path))
    }

    /// Puts the records written since the last sync on disk (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if let Some(file) = &self.file
            && self.dirty
        {
            file.sync_data().map_err(JournalError::io(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Compacts the journal once it has grown by [`COMPACT_AFTER`] lines since the last time
    /// (called by the loop at each tick); whether it did.
    pub fn compact_if_due(&mut self) -> Result<bool, JournalError> {
        if self.file.is_none() || self.lines < self.compact_at {
            return Ok(false);
        }
        self.compact().map(|_| true)
    }

    /// Rewrites the journal with only what undoing needs (see [`super::compact`]); refuses
    /// past [`MAX_BYTES`]. Returns the entries before and after.
    pub fn compact(&mut self) -> Result<(usize, usize), JournalError> {
        let entries = self.entries()?;
        let kept = super::compact::compacted(&entries, |pid, start| {
            super::process::start_time(pid) == Some(start)
        });
        self.rewrite(&kept)?;
        self.compact_at = COMPACT_AFTER.max(2 * kept.len());
        let size = fs::metadata(&self.path)
            .map_err(JournalError::io(&self.path))?
            .len();
        tracing::debug!(
            before = entries.len(),
            after = kept.len(),
            size,
            "journal compacted"
        );
        if size > MAX_BYTES {
            return Err(JournalError::Full {
                path: self.path.clone(),
                size,
            });
        }
        Ok((entries.len(), kept.len()))
    }

    /// Tests: writes to the journal fail (a full disk) until [`Journal::mend`].
    #[cfg(test)]
    pub(crate) fn break_writes(&mut self) -> File {
        let ro = File::open("/dev/null").expect("/dev/null");
        self.file.replace(ro).expect("an open journal")
    }

    /// Tests: the journal's own file back after [`Journal::break_writes`].
    #[cfg(test)]
    pub(crate) fn mend(&mut self, file: File) {
        self.file = Some(file);
    }

    fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.lines += 1;
        self.dirty = true;
        let mut line = serde_json::to_string(entry)
            .map_err(|e| JournalError::io(&self.path)(io::Error::other(e)))?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(JournalError::io(&self.path))
    }

    /// Every entry recorded so far, oldest first. Lines that do not parse (a torn last write,
    /// bytes that are not UTF-8, an entry of an unknown kind) are moved to the quarantine file
    /// beside the journal with a warning, and the journal is rewritten without them.
    pub fn entries(&mut self) -> Result<Vec<Entry>, JournalError> {
        if self.file.is_none() {
            return Ok(vec![]);
        }
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(JournalError::io(&self.path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(JournalError::io(&self.path)(e)),
        };
        let mut out = Vec::new();
        let mut bad: Vec<&[u8]> = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(line) {
                Ok(e) => out.push(e),
                Err(error) => {
                    tracing::warn!(journal = %self.path.display(), line = n + 1, %error, quarantine = QUARANTINE, "unreadable journal line moved to the quarantine file");
                    bad.push(line);
                }
            }
        }
        if !bad.is_empty() {
            self.quarantine(&bad)?;
            self.rewrite(&out)?;
        }
        Ok(out)
    }

    /// Appends unreadable lines to the quarantine file (mode 0600), for a person to read.
    fn quarantine(&self, lines: &[&[u8]]) -> Result<(), JournalError> {
        let path = self.path.with_file_name(QUARANTINE);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(JournalError::io(&path))?;
        for line in lines {
            f.write_all(line)
                .and_then(|()| f.write_all(b"\n"))
                .map_err(JournalError::io(&path))?;
        }
        Ok(())
    }

    /// Replaces the journal's content with `entries` (those still to undo), atomically: written
    /// to a file beside it and synced, renamed over it, the directory synced. A crash at any
    /// point leaves the old journal or the new one, never a cut one.
    pub fn rewrite(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut text = String::new();
        for e in entries {
            text.push_str(
                &serde_json::to_string(e)
                    .map_err(|e| JournalError::io(&self.path)(io::Error::other(e)))?,
            );
            text.push('\n');
        }
        let next = self.path.with_extension("jsonl.next");
        let io = JournalError::io(&next);
        let written = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&next)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()));
        written.map_err(io)?;
        fs::rename(&next, &self.path).map_err(JournalError::io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(JournalError::io(dir))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(JournalError::io(&self.path))?;
        self.file = Some(file);
        self.lines = entries.len();
        self.dirty = false;
        Ok(())
    }

    /// Empties the journal once everything in it has been undone.
    pub fn clear(&mut self) -> Result<(), JournalError> {
        self.rewrite(&[])
    }
}

fn parse_line(line: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Opens `path` for reading and writing, created with mode 0600 if missing, its content kept.
pub(super) fn open_root_only(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Takes `<dir>/lock` exclusively and writes our pid in it; when another process holds it,
/// says which (the pid it wrote).
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("lock");
    let mut file = open_root_only(&path).map_err(JournalError::io(&path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(JournalError::io(&path)(err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "pid unknown".to_string(),
            pid => format!("pid {pid}"),
        };
        return Err(JournalError::Locked {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(JournalError::io(&path))?;
    Ok(file)
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;

//! The crash-safety journal: every change is written here *before* it is applied, so that a
//! keeper started after a crash or `kill -9` (and a keeper exiting) can put everything back:
//! original file values, frozen cgroups, stopped processes, moved affinities, the GPU's power
//! limit and clock offset, GPU state checkpointed by a handoff, and VMs it stopped.
//!
//! One JSON object per line in `<state dir>/journal.jsonl`. Writes are not fsynced: the journal
//! must outlive the keeper's process, not the machine (a reboot resets cgroups and processes).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

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
    /// A task whose CPU affinity the keeper changed, and the original CPU list.
    Affinity {
        pid: u32,
        start: u64,
        original: String,
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
    /// A VM the keeper hibernated through the Proxmox API described by the file `api`.
    VmStopped { vmid: u32, api: PathBuf },
    /// That VM was started again (or its hibernation refused): nothing to undo.
    VmStarted { vmid: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The append-only journal file.
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    /// Opens (creating the directory) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal.jsonl");
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    /// A journal that records nothing (`--dry-run`).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (before the change it describes is applied).
    pub fn record(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_string(entry).map_err(|e| JournalError {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(|source| JournalError {
                path: self.path.clone(),
                source,
            })
    }

    /// Every entry recorded so far, oldest first. Lines that do not parse (a torn last write)
    /// are skipped with a warning.
    pub fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        if self.file.is_none() {
            return Ok(vec![]);
        }
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(JournalError {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| JournalError {
                path: self.path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(journal = %self.path.display(), line = n + 1, error = %e, "skipping unreadable journal line")
                }
            }
        }
        Ok(out)
    }

    /// Empties the journal once everything in it has been undone.
    pub fn clear(&mut self) -> Result<(), JournalError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.set_len(0).map_err(|source| JournalError {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_replays_entries_in_order() {
        let dir = std::env::temp_dir().join(format!("keeper-journal-{}", std::process::id()));
        let mut j = Journal::open(&dir).unwrap();
        j.clear().unwrap();
        let a = Entry::File {
            path: "/sys/fs/cgroup/x/cpu.max".into(),
            original: "max 100000".into(),
        };
        let b = Entry::Freeze {
            cgroup: "/sys/fs/cgroup/x".into(),
        };
        j.record(&a).unwrap();
        j.record(&b).unwrap();
        // A torn last line is skipped, not fatal.
        fs::OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"{\"kind\":\"fre")
            .unwrap();
        assert_eq!(j.entries().unwrap(), vec![a, b]);
        j.clear().unwrap();
        assert!(j.entries().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_disabled_journal_records_nothing() {
        let mut j = Journal::disabled();
        j.record(&Entry::Stop { pid: 1, start: 1 }).unwrap();
        assert!(j.entries().unwrap().is_empty());
    }
}

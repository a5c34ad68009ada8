//! The journal's record of the affinity change in flight, kept in a shared mapping of
//! `<state dir>/journal.pending`: memory that outlives the keeper's process. The eviction path
//! writes the task and its original CPUs there (no system call), moves the task, and only then
//! writes the journal's line and clears the record (docs/decisions/0031). A keeper killed
//! between the move and the line leaves the record armed; the next [`super::journal::Journal`]
//! opened on the directory appends it as a line, the newest: an older line for the same task,
//! or the line itself written just before the kill, holds the same or an older original, and
//! the oldest wins at undo as always ([`super::compact`]).
//!
//! A reboot loses what the page cache did not write back, and undoes every affinity with it.
//! A record that is not one (a stray byte, a file cut short) is set aside with a warning: it
//! never stops a start.

use std::{
    fs::File,
    io::{self, Read},
    os::fd::AsRawFd,
    path::Path,
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use super::journal::Entry;
use crate::cpulist::CpuList;
use keeper_common::CPU_MASK_WORDS as WORDS;

/// The file's name in the state directory.
pub const FILE: &str = "journal.pending";

/// One record, as laid out in the file (native byte order: read back on the host that wrote it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Record {
    /// [`ARMED`] while a change is in flight, 0 otherwise; written last, cleared first.
    armed: u64,
    pid: u64,
    /// Start time, clock ticks since boot.
    start: u64,
    /// The original CPUs, one bit each.
    mask: [u64; WORDS],
}

const ARMED: u64 = u64::from_le_bytes(*b"KPENDING");
/// The mapping's length: one page.
const LEN: usize = 4096;

/// The mapped record. Sent between threads with the journal (behind its lock).
pub struct Pending {
    record: NonNull<Record>,
    _file: File,
}

// SAFETY: the mapping is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for Pending {}

impl Pending {
    /// Opens (creating, mode 0600) and maps `dir`'s record; also returns the change a keeper
    /// left in flight, as a journal entry, which the caller must journal before it
    /// [`Pending::clear`]s the record.
    pub fn open(dir: &Path) -> io::Result<(Pending, Option<Entry>)> {
        let path = dir.join(FILE);
        let mut file = super::journal::open_root_only(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let left = match parse(&bytes) {
            Ok(entry) => entry,
            Err(why) => {
                tracing::warn!(file = %path.display(), %why, "the journal's pending record is unreadable: set aside");
                None
            }
        };
        // Its blocks reserved, not a hole: a store into a mapped hole on a full disk is a
        // SIGBUS, on the eviction path.
        // SAFETY: posix_fallocate on an fd this frame owns; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, LEN as libc::off_t) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: a fresh shared read-write mapping of one page of a file we opened read-write
        // and sized to that page; unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let record = NonNull::new(addr.cast::<Record>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mut pending = Pending {
            record,
            _file: file,
        };
        if left.is_none() {
            // Also faults the page in, so that the first eviction does not.
            pending.clear();
        }
        Ok((pending, left))
    }

    /// Arms the record with `pid` (started at `start`) and its `original` CPUs; false (nothing
    /// written) for CPUs past what the record holds.
    pub fn arm(&mut self, pid: u32, start: u64, original: &CpuList) -> bool {
        let mut mask = [0u64; WORDS];
        for cpu in original.iter() {
            let Some(word) = mask.get_mut(cpu as usize / 64) else {
                return false;
            };
            *word |= 1 << (cpu % 64);
        }
        let record = Record {
            armed: 0,
            pid: pid.into(),
            start,
            mask,
        };
        // SAFETY: the mapping holds one Record, aligned (page start), live while self is.
        unsafe {
            let p = self.record.as_ptr();
            std::ptr::write_volatile(p, record);
            fence(Ordering::Release);
            std::ptr::write_volatile(&raw mut (*p).armed, ARMED);
        }
        true
    }

    /// Clears the record (its change is in the journal now, or was never made).
    pub fn clear(&mut self) {
        // SAFETY: as in `arm`.
        unsafe {
            let p = self.record.as_ptr();
            std::ptr::write_volatile(&raw mut (*p).armed, 0);
            fence(Ordering::Release);
            std::ptr::write_volatile(p, Record::default());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.record.as_ptr().cast(), LEN) };
    }
}

/// The change in flight that `bytes` (the file as found) records: `None` when none is (an
/// empty or new file, a cleared record), an error when they are not a record.
pub(super) fn parse(bytes: &[u8]) -> Result<Option<Entry>, String> {
    let word = |i: usize| -> Option<u64> {
        let b = bytes.get(i * 8..i * 8 + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    };
    match word(0) {
        None | Some(0) => return Ok(None),
        Some(ARMED) => {}
        Some(other) => return Err(format!("starts with {other:#018x}, not a record")),
    }
    let cut = || format!("{} bytes: cut short", bytes.len());
    let pid = word(1).ok_or_else(cut)?;
    let start = word(2).ok_or_else(cut)?;
    let mask = (0..WORDS)
        .map(|w| word(3 + w).ok_or_else(cut))
        .collect::<Result<Vec<u64>, String>>()?;
    let cpus = CpuList::from_bits(&mask);
    let pid = u32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    if cpus.is_empty() {
        return Err(format!("pid {pid}'s original CPUs are empty"));
    }
    Ok(Some(Entry::Affinity {
        pid,
        start,
        original: cpus.to_string(),
        since: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keeper-pending-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_armed_record_outlives_its_mapping_and_a_cleared_one_says_nothing() {
        let dir = temp_dir("armed");
        let (mut p, left) = Pending::open(&dir).unwrap();
        assert!(left.is_none());
        assert!(p.arm(4242, 77, &"0-1,130".parse().unwrap()));
        // The process "dies": the mapping goes, the page stays.
        drop(p);
        let (mut p, left) = Pending::open(&dir).unwrap();
        let want = Entry::Affinity {
            pid: 4242,
            start: 77,
            original: "0-1,130".into(),
            since: None,
        };
        assert_eq!(left, Some(want.clone()));
        // Until cleared, it is still there.
        drop(p);
        let (mut again, left) = Pending::open(&dir).unwrap();
        assert_eq!(left, Some(want));
        again.clear();
        drop(again);
        p = Pending::open(&dir).unwrap().0;
        p.arm(1, 1, &"0".parse().unwrap());
        p.clear();
        drop(p);
        assert!(Pending::open(&dir).unwrap().1.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpus_past_the_record_are_refused_and_bad_bytes_set_aside() {
        let dir = temp_dir("bad");
        let (mut p, _) = Pending::open(&dir).unwrap();
        assert!(!p.arm(1, 1, &CpuList::new([keeper_common::MAX_CPUS])));
        drop(p);
        assert!(parse(b"").unwrap().is_none());
        assert!(parse(&[0u8; 4096]).unwrap().is_none());
        let e = parse(b"\xff\xfe garbage").unwrap_err();
        assert!(e.contains("not a record"), "{e}");
        let e = parse(&ARMED.to_ne_bytes()).unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        let mut empty = ARMED.to_ne_bytes().to_vec();
        empty.resize(size_of::<Record>(), 0);
        assert!(parse(&empty).unwrap_err().contains("empty"));
        // A stray byte never stops an open: the record is cleared and mapped again.
        std::fs::write(dir.join(FILE), b"\xff\n").unwrap();
        let (_, left) = Pending::open(&dir).unwrap();
        assert!(left.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Unit tests of the journal (records, replay, quarantine, compaction, sync).

use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keeper-journal-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn records_and_replays_entries_in_order() {
    let dir = temp_dir("order");
    let mut j = Journal::open(&dir).unwrap();
    let a = Entry::File {
        path: "/sys/fs/cgroup/x/cpu.max".into(),
        original: "max 100000".into(),
    };
    let b = Entry::Freeze {
        cgroup: "/sys/fs/cgroup/x".into(),
    };
    j.record(&a).unwrap();
    j.record(&b).unwrap();
    // A torn last line is set aside, not fatal.
    append(j.path(), b"{\"kind\":\"fre");
    assert_eq!(j.entries().unwrap(), vec![a, b]);
    j.clear().unwrap();
    assert!(j.entries().unwrap().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_byte_is_quarantined_and_the_rest_replayed() {
    let dir = temp_dir("bad-byte");
    let mut j = Journal::open(&dir).unwrap();
    let a = Entry::Stop { pid: 10, start: 1 };
    let b = Entry::Stop { pid: 11, start: 2 };
    j.record(&a).unwrap();
    // `printf '\xff\n' >> journal.jsonl`, then an unknown kind, then a good entry.
    append(j.path(), b"\xff\n{\"kind\":\"teleport\"}\n");
    j.record(&b).unwrap();
    assert_eq!(j.entries().unwrap(), vec![a.clone(), b.clone()]);
    let q = fs::read(dir.join(QUARANTINE)).unwrap();
    assert_eq!(q, b"\xff\n{\"kind\":\"teleport\"}\n");
    // The journal no longer holds them: read again, nothing more is quarantined.
    assert_eq!(j.entries().unwrap(), vec![a, b]);
    assert_eq!(fs::read(dir.join(QUARANTINE)).unwrap().len(), q.len());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_journal_is_root_only() {
    let dir = temp_dir("mode");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.jsonl");
    fs::write(&path, "").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let _j = Journal::open(&dir).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_journal_on_the_same_directory_is_refused() {
    let dir = temp_dir("lock");
    let first = Journal::open(&dir).unwrap();
    // flock locks belong to the open file description: a second open in this process
    // conflicts as another keeper's would.
    let err = Journal::open(&dir).err().expect("second open must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("changed nothing"),
        "{msg}"
    );
    drop(first);
    Journal::open(&dir).expect("free again once the first is gone");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn repeated_records_are_compacted_by_the_loop_by_a_rename() {
    let dir = temp_dir("compact");
    let mut j = Journal::open(&dir).unwrap();
    let me = std::process::id();
    let start = crate::act::process::start_time(me).unwrap();
    let aff = |original: &str| Entry::Affinity {
        pid: me,
        start,
        original: original.into(),
        since: None,
    };
    j.record(&aff("0-1")).unwrap();
    // A task evicted again and again, and one that is gone.
    for _ in 0..10_000 {
        j.record(&aff("0")).unwrap();
    }
    j.record(&Entry::Stop {
        pid: u32::MAX - 1,
        start: 1,
    })
    .unwrap();
    // Records never compact (they may be on the eviction path): the loop's tick does.
    let lines = fs::read_to_string(j.path()).unwrap().lines().count();
    assert_eq!(lines, 10_002, "a record compacted the journal");
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = inode(j.path());
    assert!(j.compact_if_due().unwrap());
    assert!(!j.compact_if_due().unwrap(), "compacted again at once");
    // The rewrite is a new file renamed over the old one (never the old one cut).
    assert_ne!(inode(j.path()), before);
    assert!(!j.path().with_extension("jsonl.next").exists());
    j.record(&aff("0-1")).unwrap();
    assert_eq!(j.compact().unwrap().1, 1);
    assert_eq!(j.entries().unwrap(), [aff("0-1")]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_are_synced_per_batch_and_a_hibernated_vm_at_once() {
    let dir = temp_dir("sync");
    let mut j = Journal::open(&dir).unwrap();
    j.record(&Entry::Stop { pid: 1, start: 1 }).unwrap();
    assert!(j.dirty, "a batch waits for its sync");
    j.sync().unwrap();
    assert!(!j.dirty);
    j.record(&Entry::VmStopped {
        vmid: 102,
        api: "/etc/keeper/pve.yaml".into(),
    })
    .unwrap();
    assert!(
        !j.dirty,
        "a hibernated VM is on disk before it is hibernated"
    );
    drop(j);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_move_is_journaled_around_it_and_a_kill_in_between_loses_nothing() {
    use crate::act::pending;
    let dir = temp_dir("around");
    let mut j = Journal::open(&dir).unwrap();
    let aff = |pid, original: &str| Entry::Affinity {
        pid,
        start: 5,
        original: original.into(),
        since: None,
    };
    let left = || pending::parse(&fs::read(dir.join(pending::FILE)).unwrap()).unwrap();
    let moved = j.record_around(10, 5, &"0-1".parse().unwrap(), || {
        // During the move: no line yet (no write to the file), the record holds it.
        assert_eq!(fs::read_to_string(dir.join("journal.jsonl")).unwrap(), "");
        assert_eq!(left(), Some(aff(10, "0-1")));
        "moved"
    });
    assert_eq!(moved.unwrap(), "moved");
    assert_eq!(
        left(),
        None,
        "the record is cleared once the line is written"
    );
    // The line says since when (a task forked from this one after it inherited the move).
    let entries = j.entries().unwrap();
    assert!(matches!(
        entries[..],
        [Entry::Affinity { since: Some(_), .. }]
    ));
    let plain = |e: Entry| match e {
        Entry::Affinity { pid, original, .. } => aff(pid, &original),
        e => e,
    };
    assert_eq!(
        entries.into_iter().map(plain).collect::<Vec<_>>(),
        [aff(10, "0-1")]
    );
    drop(j);
    // A keeper killed between a move and its line: the record armed, no line.
    let (mut p, _) = pending::Pending::open(&dir).unwrap();
    assert!(p.arm(11, 5, &"1".parse().unwrap()));
    drop(p);
    let mut j = Journal::open(&dir).unwrap();
    let entries: Vec<Entry> = j.entries().unwrap().into_iter().map(plain).collect();
    assert_eq!(entries, [aff(10, "0-1"), aff(11, "1")]);
    assert_eq!(left(), None);
    drop(j);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_disabled_journal_records_nothing() {
    let mut j = Journal::disabled();
    j.record(&Entry::Stop { pid: 1, start: 1 }).unwrap();
    assert!(j.entries().unwrap().is_empty());
}

/// A GPU's key moved between two VMs' configurations (/etc/pve) outlives a reboot: its line is
/// on disk before the move (before, it waited for the loop's next sync).
#[test]
fn a_lend_of_the_gpu_by_configuration_is_synced_at_once() {
    let dir = temp_dir("config-lent");
    let mut j = Journal::open(&dir).unwrap();
    j.record(&Entry::GpuConfigLent {
        api: "/etc/keeper/proxmox.toml".into(),
        holder: 100,
        borrower: 104,
        key: "hostpci0".into(),
        value: "0000:01:00,pcie=1".into(),
    })
    .unwrap();
    assert!(j.to_sync().unwrap().is_none(), "left for a later sync");
    fs::remove_dir_all(&dir).unwrap();
}

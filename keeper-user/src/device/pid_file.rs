//! Pid files a policy names (`match: { pid_file: … }`): each read the safe way
//! ([`read_pid_file`]: no link, no FIFO, root's, small) and **off the loop**. A file on a file
//! system that never answers (a hung NFS server, a stuck FUSE daemon) blocks the open itself,
//! `O_NONBLOCK` or not; so a thread of its own (`keeper-pidfile`, at normal priority) reads
//! the files the loop asks for, every [`READ_EVERY`], and the loop takes the last answer
//! ([`pid_in`]). A read that has not come back for [`HUNG`] is given up on: its file is
//! answered [`PidFileError::Unanswered`] (or its last answer, said once), and a fresh reader
//! thread takes the other files (the hung one keeps its thread until its read returns: at
//! most one per hung file).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

/// How often the reader reads each file.
pub const READ_EVERY: Duration = Duration::from_millis(250);
/// A read this long: its file system hangs.
pub const HUNG: Duration = Duration::from_secs(1);
/// How long a new file's first answer is waited for.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// A file nobody asked for this long is no longer read (a reload removed its workload).
const FORGET: Duration = Duration::from_secs(60);

/// What a pid file said: the live pid it names (`None`: no file, or its process is gone).
pub type PidAnswer = Result<Option<u32>, Arc<PidFileError>>;

/// Why a pid file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error(
        "owned by uid {uid} with mode {mode:o}: a pid file must be root's and writable by root only"
    )]
    NotRoots { uid: u32, mode: u32 },
    #[error("a symbolic link: a pid file is read where it lies, never through a link")]
    Link,
    #[error("not a regular file ({0}): a pid file is a small regular file")]
    NotRegular(&'static str),
    #[error("larger than {PID_FILE_MAX} bytes: not a pid file")]
    TooLarge,
    #[error("`{0}` is not a pid")]
    NotAPid(String),
    #[error("pid {0} is init or the keeper itself")]
    Forbidden(u32),
    #[error("its read has not come back for {0} s (a hung file system?)")]
    Unanswered(u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The most a pid file may hold.
pub const PID_FILE_MAX: u64 = 64;

/// The live pid a pid file names (`None`: no file, or the process is gone). The file must be
/// a regular file (a FIFO or a device would block the read, or never end it), reached without
/// a symbolic link (a link to `/run/sshd.pid` would make sshd's tree the workload), root's and
/// writable by nobody else (whoever can write it chooses what the keeper acts on), at most
/// [`PID_FILE_MAX`] bytes, and it may not name pid 1 or the keeper itself. Opened with
/// `O_NOFOLLOW | O_NONBLOCK`, checked on the open file (no race with a rename).
fn read_pid_file(file: &Path) -> Result<Option<u32>, PidFileError> {
    use std::{
        io::Read,
        os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    };
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(PidFileError::Link),
        Err(e) => return Err(e.into()),
    };
    let meta = f.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(PidFileError::NotRegular(match () {
            _ if kind.is_fifo() => "a FIFO",
            _ if kind.is_socket() => "a socket",
            _ if kind.is_char_device() => "a character device",
            _ if kind.is_block_device() => "a block device",
            _ if kind.is_dir() => "a directory",
            _ => "not a file",
        }));
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(PidFileError::NotRoots {
            uid: meta.uid(),
            mode: meta.mode() & 0o777,
        });
    }
    let mut text = String::new();
    f.take(PID_FILE_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > PID_FILE_MAX {
        return Err(PidFileError::TooLarge);
    }
    let pid: u32 = (text.trim().parse()).map_err(|_| PidFileError::NotAPid(text.trim().into()))?;
    if pid <= 1 || pid == std::process::id() {
        return Err(PidFileError::Forbidden(pid));
    }
    Ok(Path::new(&format!("/proc/{pid}")).exists().then_some(pid))
}

/// One file the reader reads.
struct File {
    answer: Option<PidAnswer>,
    asked: Instant,
    /// Its read hangs, and this was said.
    hang_said: bool,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, File>,
    /// Reads under way: when each began, by which reader.
    reading: BTreeMap<PathBuf, (Instant, u64)>,
    /// The reader that reads now; older ones (each held by a hung read) end when it returns.
    reader: u64,
}

struct Reader {
    state: Mutex<State>,
    asked: Condvar,
    answered: Condvar,
}

static READER: OnceLock<Reader> = OnceLock::new();

fn lock(r: &Reader) -> MutexGuard<'_, State> {
    r.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last answer for `file`, asking the reader to read it from now on. A file asked for the
/// first time is waited for up to [`FIRST_WAIT`]; never longer, whatever its file system does.
pub fn pid_in(file: &Path) -> PidAnswer {
    let reader = READER.get_or_init(|| Reader {
        state: Mutex::new(State::default()),
        asked: Condvar::new(),
        answered: Condvar::new(),
    });
    let mut state = lock(reader);
    if state.reader == 0 {
        state.reader = 1;
        spawn_reader(reader, 1);
    }
    let new = !state.files.contains_key(file);
    let entry = state.files.entry(file.to_path_buf()).or_insert(File {
        answer: None,
        asked: Instant::now(),
        hang_said: false,
    });
    entry.asked = Instant::now();
    if new {
        reader.asked.notify_all();
        state = reader
            .answered
            .wait_timeout_while(state, FIRST_WAIT, |s| {
                s.files.get(file).is_some_and(|f| f.answer.is_none())
            })
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    replace_a_hung_reader(reader, &mut state);
    let hangs = state
        .reading
        .get(file)
        .is_some_and(|(since, _)| since.elapsed() >= HUNG);
    let Some(f) = state.files.get_mut(file) else {
        return Ok(None);
    };
    match (&f.answer, hangs) {
        (Some(last), true) => {
            if !std::mem::replace(&mut f.hang_said, true) {
                tracing::warn!(
                    "pid file {}: its read has not come back for {} s (a hung file system?); its last answer stands",
                    file.display(),
                    HUNG.as_secs()
                );
            }
            last.clone()
        }
        (Some(last), false) => {
            f.hang_said = false;
            last.clone()
        }
        (None, _) => Err(Arc::new(PidFileError::Unanswered(HUNG.as_secs()))),
    }
}

/// A read of the current reader that has hung: a fresh reader takes the other files.
fn replace_a_hung_reader(reader: &'static Reader, state: &mut State) {
    let current = state.reader;
    if state
        .reading
        .values()
        .any(|(since, by)| *by == current && since.elapsed() >= HUNG)
    {
        state.reader += 1;
        spawn_reader(reader, state.reader);
    }
}

fn spawn_reader(reader: &'static Reader, id: u64) {
    let spawned = std::thread::Builder::new()
        .name("keeper-pidfile".into())
        .spawn(move || {
            // Spawned from the loop (SCHED_FIFO): a reader of files needs no real-time priority.
            super::run_at_normal_priority();
            read_files(reader, id);
        });
    if let Err(e) = spawned {
        tracing::warn!("pid files: no reader thread ({e}); pid files find nothing");
    }
}

/// The reader's loop: each file asked for and not held by a hung read, read; the answers
/// kept; then a pause, cut short by a new file. Ends when a newer reader took over.
fn read_files(reader: &Reader, id: u64) {
    loop {
        let todo: Vec<PathBuf> = {
            let mut state = lock(reader);
            if state.reader != id {
                return;
            }
            state.files.retain(|_, f| f.asked.elapsed() < FORGET);
            let reading = &state.reading;
            state
                .files
                .keys()
                .filter(|p| !reading.contains_key(*p))
                .cloned()
                .collect()
        };
        for path in todo {
            lock(reader)
                .reading
                .insert(path.clone(), (Instant::now(), id));
            let answer = read_pid_file(&path).map_err(Arc::new);
            let mut state = lock(reader);
            state.reading.remove(&path);
            if let Some(f) = state.files.get_mut(&path) {
                f.answer = Some(answer);
            }
            reader.answered.notify_all();
            if state.reader != id {
                return;
            }
        }
        // Waits the pause out unless a file comes that was never read (one held by a hung
        // read is not waited for: it has its own thread).
        let nothing_new = |s: &mut State| {
            s.files
                .iter()
                .all(|(p, f)| f.answer.is_some() || s.reading.contains_key(p))
        };
        let state = lock(reader);
        drop(
            reader
                .asked
                .wait_timeout_while(state, READ_EVERY, nothing_new)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_must_be_roots_and_name_a_plain_process() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("keeper-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.pid");
        let me_child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::fs::write(&f, format!("{}\n", me_child.id())).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(read_pid_file(&f).unwrap(), Some(me_child.id()));
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_pid_file(&f).unwrap_err().to_string();
        assert!(err.contains("writable by root only"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            for pid in ["1".to_string(), std::process::id().to_string()] {
                std::fs::write(&f, &pid).unwrap();
                let err = read_pid_file(&f).unwrap_err().to_string();
                assert!(err.contains("init or the keeper"), "{err}");
            }
        }
        assert_eq!(read_pid_file(&dir.join("none.pid")).unwrap(), None);
        let mut c = me_child;
        let _ = c.kill();
        let _ = c.wait();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO blocked the read for good (the loop with it); a link led to another daemon's
    /// pid file; a large file was read whole. Each is refused now, at once.
    #[test]
    fn a_pid_file_is_a_small_regular_file_reached_without_a_link() {
        let dir = std::env::temp_dir().join(format!("keeper-pidfile-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.pid");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let err = read_pid_file(&fifo).unwrap_err();
        assert!(matches!(err, PidFileError::NotRegular("a FIFO")), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let real = dir.join("real.pid");
        std::fs::write(&real, format!("{}\n", std::process::id())).unwrap();
        let link = dir.join("link.pid");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(read_pid_file(&link), Err(PidFileError::Link)));
        let big = dir.join("big.pid");
        std::fs::write(&big, format!("{}{}", " ".repeat(100), 4242)).unwrap();
        assert!(matches!(read_pid_file(&big), Err(PidFileError::TooLarge)));
        assert!(matches!(
            read_pid_file(&dir),
            Err(PidFileError::NotRegular("a directory"))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The reader answers a file the first time it is asked (within its first wait), and
    /// sees it change within a pause.
    #[test]
    fn the_reader_answers_at_once_and_follows_the_file() {
        let dir =
            std::env::temp_dir().join(format!("keeper-pidfile-reader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.pid");
        assert_eq!(pid_in(&f).unwrap(), None);
        let fifo = dir.join("fifo.pid");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = pid_in(&fifo).unwrap_err();
        assert!(matches!(*err, PidFileError::NotRegular("a FIFO")), "{err}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            std::fs::write(&f, format!("{}\n", child.id())).unwrap();
            let deadline = Instant::now() + 4 * READ_EVERY;
            while pid_in(&f).unwrap() != Some(child.id()) {
                assert!(Instant::now() < deadline, "not seen within four pauses");
                std::thread::sleep(READ_EVERY / 5);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

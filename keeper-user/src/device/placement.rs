//! Where each workload of the policy lives on this host: its cgroups, or its processes when it
//! has no cgroup of its own; and which workload a process or cgroup belongs to.

use std::{collections::BTreeMap, fs, path::Path};

use super::{cgroupfs::CgroupFs, docker::Container, procfs::task_cgroup};
use crate::policy::{GuestIds, Policy, Workload};

/// Where a workload was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Its existing cgroups, relative to the v2 mount.
    pub cgroups: Vec<String>,
    /// Its processes outside those cgroups (matched by process name or pid file).
    pub pids: Vec<u32>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.pids.is_empty()
    }
}

/// Finds every workload of the policy on this host (Docker containers as the engine's watcher
/// last saw them, asked only when a workload matches by `docker`).
pub fn place_workloads(policy: &Policy, cg: &CgroupFs) -> BTreeMap<String, Placement> {
    let containers = if policy.workloads.iter().any(|w| w.matcher.docker.is_some()) {
        super::docker::containers()
    } else {
        Vec::new()
    };
    place_among(policy, cg, &containers)
}

/// [`place_workloads`] with these running Docker containers.
pub fn place_among(
    policy: &Policy,
    cg: &CgroupFs,
    containers: &[Container],
) -> BTreeMap<String, Placement> {
    let comms = if policy.workloads.iter().any(|w| w.matcher.process.is_some()) {
        process_names()
    } else {
        Vec::new()
    };
    let mut placed: BTreeMap<String, Placement> = policy
        .workloads
        .iter()
        .map(|w| (w.name.clone(), place(w, cg, &comms, containers)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    // A process of the rank-1 or trading-core workload is never another's (a pid file or a
    // process name pointing at it).
    let guarded: Vec<&str> = policy
        .workloads
        .iter()
        .filter(|w| w.rank == 1 || w.owns_trading_cores)
        .map(|w| w.name.as_str())
        .collect();
    let shield: Placement =
        guarded
            .iter()
            .filter_map(|n| placed.get(*n))
            .fold(Placement::default(), |mut all, p| {
                all.cgroups.extend(p.cgroups.iter().cloned());
                all.pids.extend(&p.pids);
                all
            });
    for (name, p) in placed
        .iter_mut()
        .filter(|(n, _)| !guarded.contains(&n.as_str()))
    {
        p.pids.retain(|pid| {
            let theirs = shield.pids.contains(pid)
                || task_cgroup(*pid).is_some_and(|tc| {
                    shield
                        .cgroups
                        .iter()
                        .any(|c| super::cgroupfs::under(&tc, c))
                });
            if theirs {
                say_once(format!(
                    "{name}: pid {pid} belongs to a protected workload; ignored"
                ));
            }
            !theirs
        });
    }
    placed
}

fn place(
    w: &Workload,
    cg: &CgroupFs,
    comms: &[(u32, String)],
    containers: &[Container],
) -> Placement {
    let mut cgroups: Vec<String> = w
        .matcher
        .cgroups()
        .into_iter()
        .filter(|c| cg.dir(c).is_ok_and(|d| d.is_dir()))
        .collect();
    for guests in w.matcher.guests() {
        cgroups.extend(guest_cgroups(cg, &guests));
    }
    if let Some(d) = &w.matcher.docker {
        for c in containers.iter().filter(|c| d.matches(&c.name, &c.labels)) {
            if let Err(why) = container_cgroup(c) {
                say_once(format!(
                    "{}.match.docker: container {}: {why}; ignored",
                    w.name, c.name
                ));
            } else if cg.dir(&c.cgroup).is_ok_and(|d| d.is_dir()) && !cgroups.contains(&c.cgroup) {
                cgroups.push(c.cgroup.clone());
            }
        }
    }
    let mut pids = Vec::new();
    if let Some(name) = &w.matcher.process {
        pids.extend(comms.iter().filter(|(_, c)| c == name).map(|(p, _)| *p));
    }
    if let Some(file) = &w.matcher.pid_file {
        match read_pid_file(Path::new(file)) {
            Ok(Some(pid)) => pids.push(pid),
            Ok(None) => {}
            Err(why) => say_once(format!("{}.match.pid_file {file}: {why}; ignored", w.name)),
        }
    }
    // Processes inside the workload's own cgroups are handled through the cgroup.
    pids.retain(|p| {
        task_cgroup(*p).is_none_or(|tc| !cgroups.iter().any(|c| super::cgroupfs::under(&tc, c)))
    });
    Placement { cgroups, pids }
}

/// A container's cgroup is its own: not the root, and not one that holds the keeper (a
/// container sharing the host's cgroup namespace and cgroup).
fn container_cgroup(c: &Container) -> Result<(), String> {
    if c.cgroup.trim_matches('/').is_empty() {
        return Err("its cgroup is the root".into());
    }
    match task_cgroup(std::process::id()) {
        Some(mine) if super::cgroupfs::under(&mine, &c.cgroup) => {
            Err(format!("its cgroup /{} holds the keeper itself", c.cgroup))
        }
        _ => Ok(()),
    }
}

/// The cgroups of the guests in a range that exist now (`qemu.slice/301.scope`, `lxc/301`),
/// by id.
fn guest_cgroups(cg: &CgroupFs, guests: &GuestIds) -> Vec<String> {
    let Some(entries) = cg
        .dir(guests.parent)
        .ok()
        .and_then(|d| fs::read_dir(d).ok())
    else {
        return vec![];
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = guests.id_of(&name)?;
            Some((id, format!("{}/{name}", guests.parent)))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, c)| c).collect()
}

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
pub fn read_pid_file(file: &Path) -> Result<Option<u32>, PidFileError> {
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

/// Logs a warning the first time it is given (placements are made every tick); the last 256
/// messages are remembered, so a long run does not grow it.
fn say_once(msg: String) {
    static SAID: std::sync::Mutex<std::collections::VecDeque<String>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&msg) {
        tracing::warn!("{msg}");
        if said.len() == 256 {
            said.pop_front();
        }
        said.push_back(msg);
    }
}

/// The workload a cgroup (relative to the v2 mount) belongs to: the one with the deepest
/// cgroup holding it (a workload nested in another's subtree wins over the outer one).
pub fn owner_of_cgroup(placements: &BTreeMap<String, Placement>, cgroup: &str) -> Option<String> {
    let c = cgroup.trim_matches('/');
    placements
        .iter()
        .flat_map(|(n, p)| p.cgroups.iter().map(move |w| (n, w.trim_matches('/'))))
        .filter(|(_, w)| c == *w || c.strip_prefix(*w).is_some_and(|r| r.starts_with('/')))
        .max_by_key(|(_, w)| w.len())
        .map(|(name, _)| name.clone())
}

/// The workload a process belongs to: that of its cgroup ([`owner_of_cgroup`]), else the
/// workload whose matched process is it or one of its ancestors (a GPU worker's parent).
pub fn owner_of(pid: u32, placements: &BTreeMap<String, Placement>) -> Option<String> {
    if let Some(owner) = task_cgroup(pid).and_then(|cg| owner_of_cgroup(placements, &cg)) {
        return Some(owner);
    }
    let mut cur = pid;
    for _ in 0..64 {
        if let Some((name, _)) = placements.iter().find(|(_, p)| p.pids.contains(&cur)) {
            return Some(name.clone());
        }
        cur = parent_of(cur)?;
        if cur <= 1 {
            return None;
        }
    }
    None
}

fn parent_of(pid: u32) -> Option<u32> {
    super::procfs::task_stat(pid).map(|s| s.ppid)
}

fn process_names() -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_string()))
        })
        .collect()
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

    #[test]
    fn a_process_belongs_to_the_workload_of_its_cgroup_or_ancestor() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        let mut placements = BTreeMap::new();
        placements.insert(
            "launcher".to_string(),
            Placement {
                cgroups: vec![],
                pids: vec![parent],
            },
        );
        assert_eq!(owner_of(me, &placements).as_deref(), Some("launcher"));
        let mine = task_cgroup(me).unwrap();
        placements.insert(
            "here".to_string(),
            Placement {
                cgroups: vec![mine],
                pids: vec![],
            },
        );
        assert_eq!(owner_of(me, &placements).as_deref(), Some("here"));
        assert_eq!(owner_of(u32::MAX - 1, &BTreeMap::new()), None);
    }

    #[test]
    fn a_cgroup_belongs_to_the_workload_whose_deepest_subtree_holds_it() {
        let mut p = BTreeMap::new();
        let at = |c: &str| Placement {
            cgroups: vec![c.into()],
            pids: vec![],
        };
        p.insert("muse".to_string(), at("system.slice/muse.service"));
        p.insert("system".to_string(), at("system.slice"));
        let owner = |c| owner_of_cgroup(&p, c);
        assert_eq!(
            owner("/system.slice/muse.service/worker").as_deref(),
            Some("muse")
        );
        assert_eq!(owner("system.slice/muse.service").as_deref(), Some("muse"));
        assert_eq!(
            owner("system.slice/muse.serviceX").as_deref(),
            Some("system")
        );
        assert_eq!(owner("user.slice"), None);
    }

    #[test]
    fn guests_in_a_range_are_found_among_their_parents_children() {
        let root = std::env::temp_dir().join(format!("keeper-guests-{}", std::process::id()));
        for d in [
            "qemu.slice/100.scope",
            "qemu.slice/500.scope",
            "qemu.slice/502.scope",
            "qemu.slice/503.scope",
            "lxc/301/ns",
            "lxc/299",
            "lxc/abc",
            "lxc.monitor/301",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("lxc/302"), "").unwrap(); // a file, not a cgroup
        let policy = crate::policy::parse_str(
            "version: 1\nhost: { trading_cores: \"1\", housekeeping_cores: \"0\" }\nworkloads:\n\
             \x20 - { name: lab, rank: 2, match: { vmid: 500-502 } }\n\
             \x20 - { name: workers, rank: 3, match: { ctid: 300-399 } }\n",
        )
        .unwrap();
        let placed = place_workloads(&policy, &CgroupFs::at(&root));
        let _ = fs::remove_dir_all(&root);
        assert_eq!(
            placed["lab"].cgroups,
            ["qemu.slice/500.scope", "qemu.slice/502.scope"]
        );
        assert_eq!(placed["workers"].cgroups, ["lxc/301"]);
    }

    #[test]
    fn docker_containers_are_placed_by_name_or_label_in_their_cgroups() {
        let root = std::env::temp_dir().join(format!("keeper-docker-pl-{}", std::process::id()));
        for d in ["docker/aaa", "docker/bbb"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let c = |id: &str, name: &str, role: &str| Container {
            id: id.into(),
            name: name.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            cgroup: format!("docker/{id}"),
        };
        let containers = [
            c("aaa", "eva-core", "assistant"),
            c("bbb", "scraper-1", "worker"),
            c("ccc", "scraper-2", "worker"), // its cgroup is gone: it just stopped
            Container {
                cgroup: String::new(),
                ..c("ddd", "rooted", "worker")
            },
        ];
        let policy = crate::policy::parse_str(
            "version: 1\nhost: { trading_cores: \"1\", housekeeping_cores: \"0\" }\nworkloads:\n\
             \x20 - { name: eva, rank: 2, match: { docker: { name: eva-core } } }\n\
             \x20 - { name: workers, rank: 3, match: { docker: { label: role=worker } } }\n\
             \x20 - { name: none, rank: 4, match: { docker: { name: eva-core, label: role=worker } } }\n",
        )
        .unwrap();
        let placed = place_among(&policy, &CgroupFs::at(&root), &containers);
        let _ = fs::remove_dir_all(&root);
        assert_eq!(placed["eva"].cgroups, ["docker/aaa"]);
        assert_eq!(placed["workers"].cgroups, ["docker/bbb"]);
        assert!(!placed.contains_key("none"), "{placed:?}");
        // A container task belongs to its workload like any task of a cgroup it holds.
        assert_eq!(
            owner_of_cgroup(&placed, "docker/bbb/init").as_deref(),
            Some("workers")
        );
    }
}

//! Host observations read from kernel files: load average, PSI, and where each workload lives
//! (its cgroups, or its processes when it has no cgroup of its own).

use std::{collections::BTreeMap, fs, path::Path};

use crate::{
    act::task_cgroup,
    cgroupfs::CgroupFs,
    decide::{Psi, WorkloadObs},
    policy::{Policy, Workload},
};

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

/// 1-minute load average from /proc/loadavg.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Parses a PSI file (`some avg10=… …\nfull avg10=…`).
pub fn parse_psi(text: &str) -> Psi {
    let avg10 = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Psi {
        some_avg10: avg10("some"),
        full_avg10: avg10("full"),
    }
}

pub fn read_psi(path: &Path) -> Psi {
    fs::read_to_string(path)
        .map(|t| parse_psi(&t))
        .unwrap_or_default()
}

/// Finds every workload of the policy on this host.
pub fn place_workloads(policy: &Policy, cg: &CgroupFs) -> BTreeMap<String, Placement> {
    let comms = if policy.workloads.iter().any(|w| w.matcher.process.is_some()) {
        process_names()
    } else {
        Vec::new()
    };
    let mut placed: BTreeMap<String, Placement> = policy
        .workloads
        .iter()
        .map(|w| (w.name.clone(), place(w, cg, &comms)))
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
                || task_cgroup(*pid)
                    .is_some_and(|tc| shield.cgroups.iter().any(|c| crate::act::under(&tc, c)));
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

fn place(w: &Workload, cg: &CgroupFs, comms: &[(u32, String)]) -> Placement {
    let cgroups: Vec<String> = w
        .matcher
        .cgroups()
        .into_iter()
        .filter(|c| cg.dir(c).is_ok_and(|d| d.is_dir()))
        .collect();
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
        task_cgroup(*p).is_none_or(|tc| !cgroups.iter().any(|c| crate::act::under(&tc, c)))
    });
    Placement { cgroups, pids }
}

/// The live pid a pid file names (`None`: no file, or the process is gone). The file must be
/// root's and writable by nobody else (whoever can write it chooses what the keeper acts
/// on), and it may not name pid 1 or the keeper itself.
pub fn read_pid_file(file: &Path) -> Result<Option<u32>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:o}: a pid file must be root's and writable by root only",
            meta.uid(),
            meta.mode() & 0o777
        ));
    }
    let text = fs::read_to_string(file).map_err(|e| e.to_string())?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a pid", text.trim()))?;
    if pid <= 1 || pid == std::process::id() {
        return Err(format!("pid {pid} is init or the keeper itself"));
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

/// The workload a process belongs to: the deepest workload cgroup holding it, else the
/// workload whose matched process is it or one of its ancestors (a GPU worker's parent).
pub fn owner_of(pid: u32, placements: &BTreeMap<String, Placement>) -> Option<String> {
    if let Some(cg) = task_cgroup(pid) {
        let best = placements
            .iter()
            .flat_map(|(n, p)| p.cgroups.iter().map(move |c| (n, c)))
            .filter(|(_, c)| crate::act::under(&cg, c))
            .max_by_key(|(_, c)| c.len());
        if let Some((name, _)) = best {
            return Some(name.clone());
        }
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
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
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

/// What the engine needs to know about a placed workload.
pub fn observe_workload(p: &Placement, cg: &CgroupFs) -> WorkloadObs {
    let mut frozen = !p.cgroups.is_empty();
    let mut procs = !p.pids.is_empty();
    let mut pressure = Psi::default();
    for c in &p.cgroups {
        let Ok(dir) = cg.dir(c) else { continue };
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        frozen &= events.lines().any(|l| l == "frozen 1");
        procs |= events.lines().any(|l| l == "populated 1");
        let psi = read_psi(&dir.join("memory.pressure"));
        pressure.some_avg10 = pressure.some_avg10.max(psi.some_avg10);
        pressure.full_avg10 = pressure.full_avg10.max(psi.full_avg10);
    }
    WorkloadObs {
        running: procs && !frozen,
        memory_pressure: pressure,
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
            assert_eq!(read_pid_file(&f), Ok(Some(me_child.id())));
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_pid_file(&f).unwrap_err();
        assert!(err.contains("writable by root only"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            for pid in ["1".to_string(), std::process::id().to_string()] {
                std::fs::write(&f, &pid).unwrap();
                let err = read_pid_file(&f).unwrap_err();
                assert!(err.contains("init or the keeper"), "{err}");
            }
        }
        assert_eq!(read_pid_file(&dir.join("none.pid")), Ok(None));
        let mut c = me_child;
        let _ = c.kill();
        let _ = c.wait();
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
    fn reads_psi_avg10() {
        let p = parse_psi(
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=1\nfull avg10=3.25 avg60=0 avg300=0 total=0\n",
        );
        assert_eq!(p.some_avg10, 12.5);
        assert_eq!(p.full_avg10, 3.25);
        assert_eq!(parse_psi("garbage"), Psi::default());
    }
}

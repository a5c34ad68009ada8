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
        match super::pid_file::pid_in(Path::new(file)) {
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

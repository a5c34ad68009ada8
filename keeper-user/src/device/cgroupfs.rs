//! cgroup v2 as files: where the v2 hierarchy is mounted, path ↔ id, descendants, and the
//! cgroups the keeper (or its tests) create and remove.
//!
//! On hybrid hosts the v2 hierarchy lives at /sys/fs/cgroup/unified; on pure v2 hosts at
//! /sys/fs/cgroup. The cgroup id the kernel reports (`bpf_get_current_cgroup_id`) is the
//! inode number of the cgroup's directory.

use std::{
    collections::HashMap,
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoV2Mount,
    #[error("cgroup path `{0}` must be relative to the cgroup v2 mount and stay inside it")]
    BadPath(String),
    #[error("cgroup `{path}` does not exist under {mount}")]
    Missing { path: String, mount: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// The cgroup v2 hierarchy of this host.
#[derive(Clone, Debug)]
pub struct CgroupFs {
    mount: PathBuf,
}

impl CgroupFs {
    /// Finds the cgroup2 mount in /proc/self/mountinfo.
    pub fn discover() -> Result<Self, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        Self::from_mountinfo(&info).ok_or(CgroupError::NoV2Mount)
    }

    fn from_mountinfo(info: &str) -> Option<Self> {
        // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        info.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mountpoint = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| Self {
                mount: PathBuf::from(mountpoint),
            })
        })
    }

    pub fn at(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Absolute directory of a cgroup given relative to the mount (`keeper/banker`, `/x` too).
    pub fn dir(&self, rel: &str) -> Result<PathBuf, CgroupError> {
        let rel_path = Path::new(rel.trim_start_matches('/'));
        if rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(CgroupError::BadPath(rel.to_string()));
        }
        Ok(self.mount.join(rel_path))
    }

    /// The cgroup id (inode number) of an existing cgroup.
    pub fn id(&self, rel: &str) -> Result<u64, CgroupError> {
        let dir = self.dir(rel)?;
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(m.ino()),
            Ok(_) => Err(CgroupError::BadPath(rel.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(CgroupError::Missing {
                path: rel.to_string(),
                mount: self.mount.clone(),
            }),
            Err(e) => Err(io_err("stat", &dir)(e)),
        }
    }

    /// Ids of a cgroup and of all its descendants (protection covers the whole subtree).
    pub fn subtree_ids(&self, rel: &str) -> Result<Vec<u64>, CgroupError> {
        let dir = self.dir(rel)?;
        let mut ids = vec![self.id(rel)?];
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                // A child vanished while we walked: nothing below it to protect.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read_dir", &d)(e)),
            };
            for entry in entries.flatten() {
                if let Ok(m) = entry.metadata()
                    && m.is_dir()
                {
                    ids.push(m.ino());
                    stack.push(entry.path());
                }
            }
        }
        Ok(ids)
    }

    /// Map of every cgroup id to its path relative to the mount ("/" for the root).
    pub fn id_index(&self) -> HashMap<u64, String> {
        let mut index = HashMap::new();
        let mut stack = vec![self.mount.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(m) = fs::metadata(&d) {
                let rel = d.strip_prefix(&self.mount).unwrap_or(Path::new(""));
                index.insert(m.ino(), format!("/{}", rel.display()));
            }
            if let Ok(entries) = fs::read_dir(&d) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
        index
    }

    /// Whether the root's `cgroup.controllers` lists `name` (e.g. `cpuset`).
    pub fn has_controller(&self, name: &str) -> bool {
        fs::read_to_string(self.mount.join("cgroup.controllers"))
            .is_ok_and(|t| t.split_whitespace().any(|c| c == name))
    }

    /// Whether cgroups here can be frozen (`cgroup.freeze` in a child of the root: v2, 5.2+).
    pub fn has_freezer(&self) -> bool {
        fs::read_dir(&self.mount)
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("cgroup.freeze").exists()))
    }

    /// Creates a cgroup (and its parents); fine if it already exists.
    pub fn create(&self, rel: &str) -> Result<PathBuf, CgroupError> {
        let dir = self.dir(rel)?;
        fs::create_dir_all(&dir).map_err(io_err("mkdir", &dir))?;
        Ok(dir)
    }

    /// Moves a process (all its threads) into a cgroup.
    pub fn move_process(&self, rel: &str, pid: u32) -> Result<(), CgroupError> {
        let file = self.dir(rel)?.join("cgroup.procs");
        fs::write(&file, pid.to_string()).map_err(io_err("write", &file))
    }

    /// Pids in a cgroup (not its children).
    pub fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let file = self.dir(rel)?.join("cgroup.procs");
        let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Removes an empty cgroup and its empty children, deepest first. Missing is fine.
    pub fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        let dir = self.dir(rel)?;
        remove_tree(&dir)
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read_dir", dir)(e)),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("rmdir", dir)(e)),
    }
}

/// `a/b` without leading or trailing slashes ("" is the root).
pub fn normalize(rel: &str) -> String {
    rel.trim_matches('/').to_string()
}

/// True when `path` is `scope` or below it ("" scope holds everything).
pub fn under(path: &str, scope: &str) -> bool {
    scope.is_empty() || path == scope || path.starts_with(&format!("{scope}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_holds_its_subtree_only() {
        assert!(under("kt/banker", "kt"));
        assert!(under("kt", "kt"));
        assert!(!under("kt2/x", "kt"));
        assert!(under("anything", ""));
        assert_eq!(normalize("/a/b/"), "a/b");
    }

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let info = "25 30 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    26 30 0:23 / /sys/fs/cgroup/unified rw,relatime shared:7 - cgroup2 cgroup2 rw\n";
        let fs = CgroupFs::from_mountinfo(info).unwrap();
        assert_eq!(fs.mount(), Path::new("/sys/fs/cgroup/unified"));
        assert!(CgroupFs::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }

    #[test]
    fn paths_stay_inside_the_mount() {
        let fs = CgroupFs::at("/sys/fs/cgroup");
        assert_eq!(fs.dir("/a/b").unwrap(), Path::new("/sys/fs/cgroup/a/b"));
        assert!(matches!(fs.dir("../etc"), Err(CgroupError::BadPath(_))));
        assert!(matches!(fs.dir("a/../../x"), Err(CgroupError::BadPath(_))));
    }
}

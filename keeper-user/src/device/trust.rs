//! Files the keeper, running as root, loads or runs on a path it was given or read back from
//! its journal (the NVML library, `cuda-checkpoint`): only files that no one but root (or the
//! keeper's own user) can change, in directories no one else can swap them in.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Why a file is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not executable")]
    NotExecutable { path: PathBuf },
    #[error("{path} is owned by uid {uid} (only root's or the keeper's own files are used)")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path} is writable by group or others (mode {mode:o})")]
    Writable { path: PathBuf, mode: u32 },
}

/// `p`'s canonical path when it is a regular file (executable, with `executable`) owned by
/// root or the keeper's user, not writable by group or others, and every directory above it
/// is the same or sticky (`/tmp`); otherwise why not.
pub fn trusted_file(p: &Path, executable: bool) -> Result<PathBuf, TrustError> {
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Unreadable { path, source }
    };
    let real = p.canonicalize().map_err(unreadable(p))?;
    let m = real.metadata().map_err(unreadable(&real))?;
    if !m.is_file() {
        return Err(TrustError::NotAFile { path: real });
    }
    if executable && m.mode() & 0o111 == 0 {
        return Err(TrustError::NotExecutable { path: real });
    }
    owned_safely(&real, &m)?;
    for dir in real.ancestors().skip(1) {
        let d = dir.metadata().map_err(unreadable(dir))?;
        if d.mode() & 0o1000 == 0 {
            owned_safely(dir, &d)?;
        }
    }
    Ok(real)
}

fn owned_safely(p: &Path, m: &std::fs::Metadata) -> Result<(), TrustError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        return Err(TrustError::Owner {
            path: p.to_path_buf(),
            uid: m.uid(),
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(TrustError::Writable {
            path: p.to_path_buf(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn only_files_no_one_else_can_change_are_trusted() {
        let dir = std::env::temp_dir().join(format!("keeper-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join("lib.so");
        std::fs::write(&f, b"x").unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&f, 0o644);
        assert_eq!(trusted_file(&f, false).unwrap(), f.canonicalize().unwrap());
        let e = trusted_file(&f, true).unwrap_err().to_string();
        assert!(e.contains("not executable"), "{e}");
        mode(&f, 0o666);
        let e = trusted_file(&f, false).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 666)"), "{e}");
        // A safe file in a directory others may write (not sticky): it could be swapped.
        mode(&f, 0o644);
        mode(&dir, 0o777);
        let e = trusted_file(&f, false).unwrap_err().to_string();
        assert!(e.contains("keeper-trust") && e.contains("mode 777"), "{e}");
        mode(&dir, 0o755);
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: chown on a path we created.
            let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let e = trusted_file(&f, false).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        assert!(trusted_file(&dir.join("missing.so"), false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

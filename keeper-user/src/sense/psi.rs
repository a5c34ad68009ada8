//! PSI triggers (Documentation/accounting/psi.rst): the kernel wakes the keeper when tasks
//! stalled on a resource for more than `stall` within `window`, so a pressure spike is acted
//! on at once, not at the next tick. Awaited with tokio (AsyncFd, priority events).

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

/// `some` (at least one task stalled) or `full` (all non-idle tasks stalled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    Some,
    Full,
}

/// A trigger: more than `stall` of stalled time within `window` (500 ms ..= 10 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerSpec {
    pub kind: Stall,
    pub stall: Duration,
    pub window: Duration,
}

impl TriggerSpec {
    /// A trigger for "stalled more than `percent` % of a 1 s window".
    pub fn percent_of_second(kind: Stall, percent: f64) -> Self {
        let pct = percent.clamp(0.1, 100.0);
        TriggerSpec {
            kind,
            stall: Duration::from_micros((pct * 10_000.0) as u64),
            window: Duration::from_secs(1),
        }
    }

    /// What is written to the PSI file: `some 150000 1000000`.
    pub fn line(&self) -> String {
        let kind = match self.kind {
            Stall::Some => "some",
            Stall::Full => "full",
        };
        format!(
            "{kind} {} {}",
            self.stall.as_micros(),
            self.window.as_micros()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error("PSI trigger `{spec}` on {path}: {source}")]
    Register {
        path: PathBuf,
        spec: String,
        source: std::io::Error,
    },
}

/// A registered trigger; dropping it unregisters it (the kernel forgets it when the fd closes).
pub struct PsiTrigger {
    fd: AsyncFd<File>,
    path: PathBuf,
    spec: String,
}

impl PsiTrigger {
    /// Registers `spec` on a PSI file (`/proc/pressure/memory`, a cgroup's `memory.pressure`).
    /// Needs a tokio runtime. Fails on a file that is not a PSI file (a regular file cannot be
    /// polled for priority events), and for windows outside 500 ms ..= 10 s.
    pub fn register(path: &Path, spec: TriggerSpec) -> Result<PsiTrigger, PsiError> {
        let line = spec.line();
        let err = |source| PsiError::Register {
            path: path.to_path_buf(),
            spec: line.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        // The kernel takes the string with its terminating NUL.
        let mut bytes = line.clone().into_bytes();
        bytes.push(0);
        file.write_all(&bytes).map_err(err)?;
        // SAFETY: the File owns its fd and keeps it open for as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }
            .map_err(|e| err(e.into_parts().1))?;
        Ok(PsiTrigger {
            fd,
            path: path.to_path_buf(),
            spec: line,
        })
    }

    /// "Stalled more than `percent` % of the window": a 1 s window, or, where the kernel
    /// refuses it (without CAP_SYS_RESOURCE, windows must be multiples of 2 s), a 2 s window.
    pub fn register_share(path: &Path, kind: Stall, percent: f64) -> Result<PsiTrigger, PsiError> {
        let one = TriggerSpec::percent_of_second(kind, percent);
        match PsiTrigger::register(path, one) {
            Err(PsiError::Register { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                let two = TriggerSpec {
                    kind,
                    stall: one.stall * 2,
                    window: Duration::from_secs(2),
                };
                PsiTrigger::register(path, two)
            }
            r => r,
        }
    }

    /// Waits until the trigger fires (once per window at most, by the kernel's rules).
    pub async fn fired(&mut self) -> std::io::Result<()> {
        let mut guard = self.fd.ready_mut(Interest::PRIORITY).await?;
        guard.clear_ready();
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("{} on {}", self.spec, self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_line_is_what_the_kernel_reads() {
        let t = TriggerSpec::percent_of_second(Stall::Some, 15.0);
        assert_eq!(t.line(), "some 150000 1000000");
        let f = TriggerSpec {
            kind: Stall::Full,
            stall: Duration::from_millis(100),
            window: Duration::from_millis(500),
        };
        assert_eq!(f.line(), "full 100000 500000");
    }

    #[tokio::test]
    async fn a_regular_file_is_refused_with_its_path() {
        let path = std::env::temp_dir().join(format!("keeper-psi-{}", std::process::id()));
        std::fs::write(&path, "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        let err = PsiTrigger::register(&path, TriggerSpec::percent_of_second(Stall::Some, 10.0))
            .err()
            .expect("a regular file is not a PSI file");
        let _ = std::fs::remove_file(&path);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_host_memory_psi_takes_a_trigger_as_root() {
        if unsafe { libc::geteuid() } != 0 || !Path::new("/proc/pressure/memory").exists() {
            eprintln!("!!! SKIPPED: needs root and /proc/pressure/memory !!!");
            return;
        }
        // A 1 s window, or 2 s where the kernel sees no CAP_SYS_RESOURCE (as on these VMs).
        let t = PsiTrigger::register_share(Path::new("/proc/pressure/memory"), Stall::Some, 25.0)
            .unwrap();
        let d = t.describe();
        assert!(
            d == "some 250000 1000000 on /proc/pressure/memory"
                || d == "some 500000 2000000 on /proc/pressure/memory",
            "{d}"
        );
        // A window the kernel does not accept.
        let bad = TriggerSpec {
            kind: Stall::Some,
            stall: Duration::from_millis(10),
            window: Duration::from_secs(60),
        };
        assert!(PsiTrigger::register(Path::new("/proc/pressure/memory"), bad).is_err());
    }
}

//! The hardware watchdog, through the kernel's watchdog API
//! (Documentation/watchdog/watchdog-api.rst): opening the device arms it, the timeout is set
//! with `WDIOC_SETTIMEOUT`, each `WDIOC_KEEPALIVE` restarts its count, and writing the magic
//! character `V` before closing disarms it. Closed any other way (the keeper killed, or hung
//! and never fed), the hardware resets the machine when the timeout runs out.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// `_IOR('W', 0, struct watchdog_info)`.
const WDIOC_GETSUPPORT: libc::c_ulong = 0x8028_5700;
/// `_IOR('W', 5, int)`.
const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
/// `_IOWR('W', 6, int)`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xc004_5706;
/// `WDIOF_MAGICCLOSE`: the driver disarms on a close that follows a `V`.
const WDIOF_MAGICCLOSE: u32 = 0x0100;

/// `struct watchdog_info`.
#[repr(C)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "watchdog {path}: asked for a {asked}s timeout, the driver set {set}s; choose a timeout it supports"
    )]
    Timeout { path: PathBuf, asked: u64, set: u64 },
}

/// An armed watchdog. Dropped without [`Watchdog::disarm`], it stays armed: the machine
/// resets unless someone opens and feeds it again within the timeout (systemd restarting the
/// keeper does).
pub struct Watchdog {
    file: File,
    path: PathBuf,
    timeout: Duration,
    identity: String,
    magic_close: bool,
}

impl Watchdog {
    /// Opens (arms) the device, sets its timeout and feeds it once.
    pub fn arm(path: &Path, timeout: Duration) -> Result<Watchdog, WatchdogError> {
        let io = |what| {
            move |source| WatchdogError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io("opening"))?;
        let mut w = Watchdog {
            file,
            path: path.to_path_buf(),
            timeout,
            identity: String::new(),
            magic_close: false,
        };
        let mut info = WatchdogInfo {
            options: 0,
            firmware_version: 0,
            identity: [0; 32],
        };
        // SAFETY: WDIOC_GETSUPPORT fills a `struct watchdog_info`, which `info` is.
        if unsafe { libc::ioctl(w.file.as_raw_fd(), WDIOC_GETSUPPORT, &mut info) } == 0 {
            let end = info.identity.iter().position(|&b| b == 0).unwrap_or(32);
            w.identity = String::from_utf8_lossy(&info.identity[..end]).into_owned();
            w.magic_close = info.options & WDIOF_MAGICCLOSE != 0;
        }
        let asked = timeout.as_secs();
        let mut secs = libc::c_int::try_from(asked).unwrap_or(libc::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT reads and writes back one int, which `secs` is.
        if unsafe { libc::ioctl(w.file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut secs) } != 0 {
            let e = std::io::Error::last_os_error();
            w.disarm_quietly();
            return Err(io("setting the timeout")(e));
        }
        let set = u64::try_from(secs).unwrap_or(0);
        if set != asked {
            w.disarm_quietly();
            return Err(WatchdogError::Timeout {
                path: path.to_path_buf(),
                asked,
                set,
            });
        }
        w.keepalive()?;
        Ok(w)
    }

    /// Restarts the hardware's count.
    pub fn keepalive(&self) -> Result<(), WatchdogError> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE takes a pointer to an int it does not need.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), WDIOC_KEEPALIVE, &mut dummy) } != 0 {
            return Err(WatchdogError::Io {
                path: self.path.clone(),
                what: "keepalive",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The driver's name for itself (`i6300ESB timer`, `Software Watchdog`...).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often the loop feeds it: a quarter of the timeout, at least every second and at
    /// most every 30 s.
    pub fn period(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// A clean exit: the magic close. Returns whether the driver promised to disarm (a
    /// driver without magic close, or one built with `nowayout`, stays armed).
    pub fn disarm(mut self) -> Result<bool, WatchdogError> {
        self.file
            .write_all(b"V")
            .map_err(|source| WatchdogError::Io {
                path: self.path.clone(),
                what: "magic close",
                source,
            })?;
        Ok(self.magic_close)
    }

    fn disarm_quietly(&mut self) {
        let _ = self.file.write_all(b"V");
    }
}

/// What keeps a watchdog's count from running out.
pub trait Feed: Sync {
    fn feed(&self);
    fn period(&self) -> Duration;
}

impl Feed for Watchdog {
    fn feed(&self) {
        if let Err(e) = self.keepalive() {
            tracing::error!(error = %e, "hardware watchdog keepalive failed");
        }
    }
    fn period(&self) -> Duration {
        Watchdog::period(self)
    }
}

/// Runs `work` (the undo at the exit, the replay at a start: VM, QMP and systemctl calls of up
/// to a minute) while a thread feeds `dog` every period, for at most `limit`: longer than the
/// watchdog's timeout the machine would reset mid-undo; past `limit` the undo is taken for
/// hung, and the watchdog does its job.
pub fn fed_while<T>(dog: Option<&dyn Feed>, limit: Duration, work: impl FnOnce() -> T) -> T {
    let Some(dog) = dog else {
        return work();
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let feeder = s.spawn(|| {
            let started = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < limit {
                dog.feed();
                std::thread::park_timeout(dog.period());
            }
        });
        let out = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        feeder.thread().unpark();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::sync::atomic::AtomicU32);

    impl Feed for Counter {
        fn feed(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn period(&self) -> Duration {
            Duration::from_millis(20)
        }
    }

    /// Before the fix the exit's undo and a start's replay ran with nobody feeding the
    /// watchdog: an undo longer than its timeout reset the machine.
    #[test]
    fn a_long_undo_is_fed_throughout_and_only_up_to_its_limit() {
        let dog = Counter(std::sync::atomic::AtomicU32::new(0));
        let out = fed_while(Some(&dog), Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(300));
            7
        });
        assert_eq!(out, 7);
        let fed = dog.0.load(std::sync::atomic::Ordering::Relaxed);
        assert!(fed >= 10, "fed {fed} times in 300 ms at a 20 ms period");
        // A hung undo is fed for `limit` only.
        let dog = Counter(std::sync::atomic::AtomicU32::new(0));
        fed_while(Some(&dog), Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_millis(400));
        });
        let fed = dog.0.load(std::sync::atomic::Ordering::Relaxed);
        assert!(fed <= 8, "fed {fed} times: past its limit");
    }

    /// The request numbers are the kernel's `_IOR`/`_IOWR` encodings.
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        let ioc = |dir: libc::c_ulong, nr: libc::c_ulong, size: libc::c_ulong| {
            (dir << 30) | (size << 16) | (0x57 << 8) | nr
        };
        assert_eq!(WDIOC_GETSUPPORT, ioc(2, 0, 40));
        assert_eq!(std::mem::size_of::<WatchdogInfo>(), 40);
        assert_eq!(WDIOC_KEEPALIVE, ioc(2, 5, 4));
        assert_eq!(WDIOC_SETTIMEOUT, ioc(3, 6, 4));
    }

    #[test]
    fn a_missing_device_says_which() {
        let e = Watchdog::arm(Path::new("/nonexistent/watchdog"), Duration::from_secs(10))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "watchdog /nonexistent/watchdog: opening: No such file or directory (os error 2)"
        );
    }
}

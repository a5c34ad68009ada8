//! The guest kernels: Debian's 6.1 cloud kernel (bookworm, the machines' own suite) and 6.12
//! (trixie, read from the Debian archive with an apt state of its own, so the system's lists
//! are untouched). The metapackage linux-image-cloud-amd64 names the current ABI; the package
//! is fetched with `apt-get download` and unpacked once into the cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The unpacked kernel package.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` of the package (`usr/lib/modules/RELEASE` on trixie).
    pub modules: PathBuf,
}

/// Which kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// 6.1, the machines' own suite: the cgroup v2 and eBPF checks.
    Bookworm,
    /// 6.12 (Proxmox VE 8.2+ and 9 run 6.8-6.14): the watchdog (its cloud kernel has the
    /// i6300esb driver), and the same eBPF object on a current kernel.
    Trixie,
}

impl Suite {
    fn dir(self) -> PathBuf {
        match self {
            Suite::Bookworm => cache_dir(),
            Suite::Trixie => cache_dir().with_file_name("vm-kernel-trixie"),
        }
    }

    fn version_prefix(self) -> &'static str {
        match self {
            Suite::Bookworm => "linux-image-6.1.",
            Suite::Trixie => "linux-image-6.12.",
        }
    }

    /// apt options: none for bookworm; for trixie, a sources list and state of its own.
    fn apt_options(self) -> anyhow::Result<Vec<String>> {
        if self == Suite::Bookworm {
            return Ok(vec![]);
        }
        let state = self.dir().join("apt");
        std::fs::create_dir_all(state.join("lists/partial"))?;
        std::fs::create_dir_all(state.join("cache/archives/partial"))?;
        let list = state.join("sources.list");
        std::fs::write(
            &list,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n",
        )?;
        let opts = vec![
            format!("-oDir::Etc::sourcelist={}", list.display()),
            "-oDir::Etc::sourceparts=/dev/null".to_string(),
            format!("-oDir::State::Lists={}", state.join("lists").display()),
            format!("-oDir::Cache={}", state.join("cache").display()),
        ];
        let status = Command::new("apt-get")
            .args(&opts)
            .args(["update", "-qq"])
            .status()
            .context("running apt-get update for trixie")?;
        if !status.success() {
            bail!(
                "apt-get update (trixie, private state) failed ({status}); is the Debian archive reachable?"
            );
        }
        Ok(opts)
    }
}

/// Where the downloaded and unpacked kernels live.
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/the-keeper/vm-kernel")
}

/// The package of the suite's current cloud kernel, e.g. `linux-image-6.1.0-56-cloud-amd64`.
fn package_name(suite: Suite, apt: &[String]) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(apt)
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .context("running apt-cache (a Debian host is needed for the guest kernel)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = suite.version_prefix();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with(prefix) && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "apt-cache depends linux-image-cloud-amd64 names no {prefix}* cloud kernel:\n{text}"
            )
        })
}

/// The 6.1 kernel, downloaded and unpacked if the cache lacks it (idempotent).
pub fn ensure() -> anyhow::Result<Kernel> {
    ensure_suite(Suite::Bookworm)
}

/// The suite's kernel, downloaded and unpacked if the cache lacks it (idempotent).
pub fn ensure_suite(suite: Suite) -> anyhow::Result<Kernel> {
    let dir = suite.dir();
    std::fs::create_dir_all(&dir)?;
    // Reuse any kernel already unpacked: the test needs this series, not the newest build.
    if let Some(k) = unpacked(&dir)? {
        return Ok(k);
    }
    let apt = suite.apt_options()?;
    let package = package_name(suite, &apt)?;
    eprintln!("xtask: vm-test: downloading {package}");
    let status = Command::new("apt-get")
        .args(&apt)
        .args(["download", &package])
        .current_dir(&dir)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!("apt-get download {package} failed ({status}); is the Debian archive reachable?");
    }
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}*.deb in {}",
                dir.display()
            )
        })?;
    let unpack = dir.join("unpacked.tmp");
    let _ = std::fs::remove_dir_all(&unpack);
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    std::fs::rename(&unpack, dir.join("unpacked"))?;
    let _ = std::fs::remove_file(&deb);
    unpacked(&dir)?.context("the kernel package holds no /boot/vmlinuz-*")
}

fn unpacked(dir: &Path) -> anyhow::Result<Option<Kernel>> {
    let boot = dir.join("unpacked/boot");
    let Ok(entries) = std::fs::read_dir(&boot) else {
        return Ok(None);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let modules = ["unpacked/lib/modules", "unpacked/usr/lib/modules"]
                .map(|m| dir.join(m).join(release))
                .into_iter()
                .find(|m| m.is_dir())
                .unwrap_or_else(|| dir.join("unpacked/lib/modules").join(release));
            return Ok(Some(Kernel {
                release: release.to_string(),
                vmlinuz: e.path(),
                modules,
            }));
        }
    }
    Ok(None)
}

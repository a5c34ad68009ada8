//! The guest kernel: Debian's 6.1 cloud kernel (the metapackage linux-image-cloud-amd64 names
//! the current ABI), fetched with `apt-get download` and unpacked once into the cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The unpacked kernel package.
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` of the package.
    pub modules: PathBuf,
}

/// Where the downloaded and unpacked kernels live.
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/the-keeper/vm-kernel")
}

/// The package of the current 6.1 cloud kernel, e.g. `linux-image-6.1.0-56-cloud-amd64`.
fn package_name() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .context("running apt-cache (a Debian host is needed for the guest kernel)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6.1.") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .with_context(|| {
            format!("apt-cache depends linux-image-cloud-amd64 names no 6.1 cloud kernel:\n{text}")
        })
}

/// The kernel, downloaded and unpacked if the cache lacks it (idempotent).
pub fn ensure() -> anyhow::Result<Kernel> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    // Reuse any kernel already unpacked: the test needs a 6.1 kernel, not the newest one.
    if let Some(k) = unpacked(&dir)? {
        return Ok(k);
    }
    let package = package_name()?;
    eprintln!("xtask: vm-test: downloading {package}");
    let status = Command::new("apt-get")
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
            return Ok(Some(Kernel {
                release: release.to_string(),
                vmlinuz: e.path(),
                modules: dir.join("unpacked/lib/modules").join(release),
            }));
        }
    }
    Ok(None)
}

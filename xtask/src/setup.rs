//! Idempotent set-up of what the build and the tests need: the nightly toolchain's rust-src,
//! bpf-linker built against nightly's own libLLVM, and Debian packages.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, run};

/// Where the private bpf-linker lives (its rpath points at `lib/` here: keep the folder).
pub fn bpf_linker_prefix() -> anyhow::Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/the-keeper/bpf-linker"))
}

/// PATH with the private bpf-linker first, for every cargo we start.
pub fn path_with_bpf_linker() -> anyhow::Result<std::ffi::OsString> {
    let bin = bpf_linker_prefix()?.join("bin");
    let mut paths: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    paths.retain(|p| p != &bin);
    paths.insert(0, bin);
    Ok(env::join_paths(paths)?)
}

pub fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8(o.stdout)?.trim())),
        _ => bail!(
            "the nightly Rust toolchain is missing; it builds the eBPF programs.\n\
             Install it with `rustup toolchain install nightly` (the machine image ships nightly 1.97 with LLVM 22)"
        ),
    }
}

pub fn ensure_rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly");
    run(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// Builds bpf-linker against nightly's libLLVM (Debian's LLVM is too old for bpf-linker 0.13).
pub fn ensure_bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let prefix = bpf_linker_prefix()?;
    let llvm = find_nightly_libllvm(&sysroot.join("lib"))?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    // `libLLVM.so` is what bpf-linker's build links against; the versioned name is the soname
    // the installed binary asks the loader for (through its rpath to this folder).
    let soname = llvm.file_name().context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
        }
    }
    let linker = prefix.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker 0.13 against {} (about a minute)",
        llvm.display()
    );
    run(cmd("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--locked",
            "--version",
            "~0.13",
        ])
        .args(["--no-default-features", "--features", "llvm-22", "--root"])
        .arg(&prefix)
        .env("LLVM_PREFIX", &prefix))
    .context("installing bpf-linker")
}

fn find_nightly_libllvm(libdir: &Path) -> anyhow::Result<PathBuf> {
    // The versioned file (`libLLVM.so.22.1-rust-…-nightly`) carries the soname bpf-linker records.
    let entries =
        std::fs::read_dir(libdir).with_context(|| format!("reading {}", libdir.display()))?;
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    names
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in the nightly toolchain ({})",
                libdir.display()
            )
        })
}

/// Everything `cargo build` of keeper-user needs.
pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    nightly_sysroot()?;
    ensure_rust_src()?;
    ensure_bpf_linker()
}

/// The packages of `packages` not installed.
fn not_installed<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    (packages.iter().copied())
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Installs missing Debian packages (needs root; `apt-get update` only when something is
/// missing), without starting or enabling a service: the tests start their own daemons
/// (dockerd, prometheus's promtool) and the machine must not be left running one (docker.io's
/// service rewrites iptables and bridges). Installing one package can remove another (a
/// backported qemu-utils for stable's qemu-system-x86): checked again after, once.
pub fn ensure_apt(packages: &[&str]) -> anyhow::Result<()> {
    for _ in 0..2 {
        let missing = not_installed(packages);
        if missing.is_empty() {
            return Ok(());
        }
        if !is_root() {
            bail!(
                "missing packages: {}; run as root or `apt-get install {}`",
                missing.join(" "),
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing {}", missing.join(" "));
        run(cmd("apt-get").arg("update").arg("-q"))?;
        let no_starts = NoServiceStarts::new()?;
        run(cmd("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        drop(no_starts);
        disable_units_of(&missing);
    }
    let missing = not_installed(packages);
    if !missing.is_empty() {
        bail!("still missing after apt-get install: {}", missing.join(" "));
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` saying 101 ("action forbidden") while it lives: the packages'
/// maintainer scripts start no service (invoke-rc.d and deb-systemd-invoke ask it). An
/// administrator's own file is left as it is.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn new() -> anyhow::Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask: no service starts while it installs\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The systemd units the packages just installed ship (services, sockets, timers), disabled:
/// their maintainer scripts enabled them for the next boot. `systemctl` works on the unit
/// files whether or not systemd runs (`deb-systemd-helper` refuses outside dpkg).
fn disable_units_of(packages: &[&str]) {
    if !Path::new("/usr/bin/systemctl").exists() && !Path::new("/bin/systemctl").exists() {
        return;
    }
    for p in packages {
        let Ok(out) = Command::new("dpkg-query").args(["-L", p]).output() else {
            continue;
        };
        let files = String::from_utf8_lossy(&out.stdout).into_owned();
        for f in files.lines().filter(|f| f.contains("/systemd/system/")) {
            let unit = f.rsplit('/').next().unwrap_or_default();
            let kind = unit.rsplit('.').next().unwrap_or_default();
            if !["service", "socket", "timer"].contains(&kind) || unit.contains('@') {
                continue;
            }
            let enabled = Command::new("systemctl")
                .args(["is-enabled", "--quiet", unit])
                .status()
                .is_ok_and(|s| s.success());
            if enabled {
                eprintln!("xtask: {unit} (of {p}) disabled: the tests start their own");
                let _ = Command::new("systemctl")
                    .args(["disable", "--quiet", unit])
                    .status();
            }
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

//! Builds the eBPF object (keeper-ebpf) with the nightly toolchain and puts it in OUT_DIR, where
//! `sense::ebpf` embeds it: the `keeper` binary can never run with a stale or missing object.
//!
//! Needs nightly with rust-src and bpf-linker: `cargo xtask build-ebpf` installs both. The
//! bpf-linker that xtask builds lives in ~/.cache/the-keeper/bpf-linker/bin and is found there too.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const SKIP: &str = "KEEPER_SKIP_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var_os(SKIP).is_some_and(|v| v == "1") {
        // Developer escape hatch for work that never loads programs (policy, decide). The binary
        // then refuses, at run time, to load anything: see sense::ebpf::object().
        println!("cargo:warning={SKIP}=1: building without the eBPF object");
        std::fs::write(out_dir.join("keeper"), b"")?;
        return Ok(());
    }
    add_private_bpf_linker_to_path();
    which_bpf_linker()?;

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "keeper-ebpf")
        .ok_or_else(|| anyhow!("keeper-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Nightly)
        .context("building keeper-ebpf failed: is the nightly toolchain installed with rust-src? `cargo xtask build-ebpf` sets it up")
}

fn add_private_bpf_linker_to_path() {
    let Some(home) = env::var_os("HOME") else {
        return;
    };
    let dir = PathBuf::from(home).join(".cache/the-keeper/bpf-linker/bin");
    if !dir.join("bpf-linker").exists() {
        return;
    }
    let mut paths: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    if !paths.contains(&dir) {
        paths.insert(0, dir);
        if let Ok(joined) = env::join_paths(paths) {
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { env::set_var("PATH", joined) };
        }
    }
}

fn which_bpf_linker() -> anyhow::Result<()> {
    let found = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .any(|p| p.join("bpf-linker").is_file());
    if found {
        Ok(())
    } else {
        Err(anyhow!(
            "bpf-linker not found on PATH nor in ~/.cache/the-keeper/bpf-linker/bin: run `cargo xtask build-ebpf`, which installs it"
        ))
    }
}

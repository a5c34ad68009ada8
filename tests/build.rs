//! Where keeper-user's binaries are (`KEEPER_BIN_DIR`: target/<profile>, beside this crate's
//! test binaries), and a warning when they are missing or older than the sources they are
//! built from: cargo builds another package's binaries only when asked
//! (`cargo build -p keeper-user --bins`, which `cargo xtask test` runs first).

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/<profile>/build/<crate>-<hash>/out.
    let bin_dir = out
        .ancestors()
        .nth(3)
        .expect("target/<profile>")
        .to_path_buf();
    println!("cargo:rustc-env=KEEPER_BIN_DIR={}", bin_dir.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["keeper-user/src", "keeper-ebpf/src", "keeper-common/src"].map(|s| root.join(s));
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let newest = sources.iter().filter_map(|s| newest(s)).max();
    for bin in ["keeper", "keeper-probe"] {
        let path = bin_dir.join(bin);
        println!("cargo:rerun-if-changed={}", path.display());
        match (modified(&path), newest) {
            (None, _) => println!(
                "cargo:warning={} is missing: run `cargo build -p keeper-user --bins` first",
                path.display()
            ),
            (Some(built), Some(src)) if built < src => println!(
                "cargo:warning={} is older than its sources: run `cargo build -p keeper-user --bins` first",
                path.display()
            ),
            _ => {}
        }
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time of any file below `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut best = modified(dir);
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() { newest(&p) } else { modified(&p) };
        best = best.max(t);
    }
    best
}

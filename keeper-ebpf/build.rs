//! Rebuild the programs when the bpf-linker binary changes, and say clearly when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found on PATH; run `cargo xtask build-ebpf` to install it"
        ),
    }
}

//! The eBPF object, embedded at build time by keeper-user's build script (aya-build), so the
//! binary always carries the programs built from the same sources as itself.

/// Bytes of the eBPF object built from keeper-ebpf, aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keeper"));

#[derive(Debug, thiserror::Error)]
#[error(
    "this keeper binary was built with KEEPER_SKIP_EBPF=1 and carries no eBPF object; rebuild it with `cargo xtask build-ebpf && cargo build`"
)]
pub struct NoObject;

/// The embedded object, or an error when the binary was built without one.
pub fn object() -> Result<&'static [u8], NoObject> {
    if OBJECT.is_empty() {
        Err(NoObject)
    } else {
        Ok(OBJECT)
    }
}

/// Gives the heap's free memory back to the system: loading reads the kernel's BTF (megabytes,
/// freed at once), and without this the freed pages stay in the keeper's RSS for its life.
pub fn release_load_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Raises RLIMIT_MEMLOCK for kernels before 5.11, which charge BPF maps to it. Harmless after.
pub fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)"
        );
    }
}

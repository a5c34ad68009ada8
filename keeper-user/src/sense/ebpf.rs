//! The eBPF object, embedded at build time by keeper-user's build script (aya-build), so the
//! binary always carries the programs built from the same sources as itself; and the one
//! loader that loads it.

use std::sync::{Mutex, PoisonError};

use aya::{EbpfLoader, Pod};

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

/// The process's one aya loader. `EbpfLoader::new()` reads and parses the kernel's BTF (a
/// peak of about 18 MB of RSS on 6.18; aya issue #1172) whether the programs need it or not;
/// the keeper's need none (the fields they read come as offsets in globals, decision 0012).
/// So the parsed BTF is dropped at once and the loader kept: the parse happens once per
/// process, at [`prepare_loader`], while the heap is small, not once per sensor in the middle
/// of the start (the daemon's RSS peak was 32–36 MB for a steady 13 MB).
static LOADER: Mutex<Option<EbpfLoader<'static>>> = Mutex::new(None);

/// Makes the loader now (`keeper run`'s first step; else the first sensor makes it).
pub fn prepare_loader() {
    with_loader(|_| ());
}

/// Runs `f` with the loader, made at the first call.
pub fn with_loader<R>(f: impl FnOnce(&mut EbpfLoader<'static>) -> R) -> R {
    let mut guard = LOADER.lock().unwrap_or_else(PoisonError::into_inner);
    let loader = guard.get_or_insert_with(|| {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        release_load_memory();
        loader
    });
    f(loader)
}

/// A global's value for the loader, which keeps what it is given for the process's life: a few
/// bytes per load (the sensors load once).
pub fn global<T: Pod>(value: T) -> &'static T {
    Box::leak(Box::new(value))
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

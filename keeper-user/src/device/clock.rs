//! The kernel's clocks, read directly (`clock_gettime`).

/// A clock's reading in nanoseconds.
pub fn ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, so of every event's
/// timestamp.
pub fn monotonic_ns() -> u64 {
    ns(libc::CLOCK_MONOTONIC)
}

//! keeper-probe: a small, predictable workload for tests and benchmarks.
//!
//! - `keeper-probe sleep COUNT INTERVAL_US`: wakes COUNT times, sleeping INTERVAL_US each time;
//! - `keeper-probe spin SECONDS [NAME]`: a busy loop for SECONDS (fractions allowed), renamed
//!   NAME (its comm);
//!
//! Pin it with taskset or by the caller's affinity; it changes nothing else.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        Some("sleep") => {
            let (Some(count), Some(interval)) = (num(1), num(2)) else {
                eprintln!("usage: keeper-probe sleep COUNT INTERVAL_US");
                return ExitCode::from(2);
            };
            for _ in 0..count {
                std::thread::sleep(Duration::from_micros(interval));
            }
            ExitCode::SUCCESS
        }
        Some("spin") => {
            let Some(secs) = args
                .get(1)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
            else {
                eprintln!("usage: keeper-probe spin SECONDS [NAME]");
                return ExitCode::from(2);
            };
            if let Some(name) = args.get(2) {
                set_comm(name);
            }
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut x = 0u64;
            while Instant::now() < end {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            std::hint::black_box(x);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: keeper-probe sleep COUNT INTERVAL_US | spin SECONDS [NAME]");
            ExitCode::from(2)
        }
    }
}

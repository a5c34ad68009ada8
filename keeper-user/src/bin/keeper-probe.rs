//! keeper-probe: a small, predictable workload for tests and benchmarks.
//!
//! - `keeper-probe sleep COUNT INTERVAL_US`: wakes COUNT times, sleeping INTERVAL_US each time;
//! - `keeper-probe spin SECONDS [NAME]`: a busy loop for SECONDS (fractions allowed), renamed
//!   NAME (its comm; `kworker/1:9` passes for a kernel thread by name);
//! - `keeper-probe repin SECONDS CPU [NAME]`: the same busy loop, pinning itself back onto CPU
//!   every millisecond (`sched_setaffinity(0, {CPU})`): a task that will not stay evicted;
//! - `keeper-probe threads SECONDS COUNT`: the busy loop on COUNT threads besides the main one
//!   (a multi-threaded intruder);
//!
//! - `keeper-probe ticks SECONDS PERIOD_US WORK_US OUT`: a trading loop: every PERIOD_US (on
//!   an absolute clock) it wakes and does WORK_US of CPU work; each tick's response time (from
//!   its due time to its work done, in µs) goes to OUT, one per line. Unlike a wakeup-latency
//!   probe it needs the CPU: a task sharing the core stretches every tick;
//! - `keeper-probe wakes SECONDS PERIOD_US WAKER_CPU OUT`: a thread pinned to WAKER_CPU
//!   wakes the main thread through an eventfd every PERIOD_US, stamping the instant just
//!   before; the main thread, once it runs, writes how long after that stamp (in ns, one per
//!   line) to OUT: its own wake-up latency, beside the keeper's run-queue latency (`cargo
//!   xtask bench isolation`'s latency check);
//! - `keeper-probe newcomers SECONDS EVERY_MS CPU...`: every EVERY_MS, starts a fresh
//!   `keeper-probe spin 0.03` allowed on CPU... (its own affinity stays as it was): newcomers
//!   born in this process's cgroup, the way a service's workers are;
//! - `keeper-probe mem MIB SECONDS`: allocates MIB MiB and keeps touching every page for
//!   SECONDS (memory pressure under a low `memory.high`);
//! - `keeper-probe psi-wait FILE PERCENT SECONDS`: registers a PSI trigger (`some`, PERCENT of
//!   the window) on FILE and prints `fired after N ms`, or exits 1 after SECONDS.
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
        Some(mode @ ("spin" | "repin")) => {
            let repin = mode == "repin";
            let secs = args
                .get(1)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
            let cpu = if repin { num(2) } else { Some(0) };
            let (Some(secs), Some(cpu)) = (secs, cpu) else {
                eprintln!("usage: keeper-probe spin SECONDS [NAME] | repin SECONDS CPU [NAME]");
                return ExitCode::from(2);
            };
            if let Some(name) = args.get(if repin { 3 } else { 2 }) {
                set_comm(name);
            }
            spin(secs, repin.then_some(cpu as usize));
            ExitCode::SUCCESS
        }
        Some("rtspin") => {
            // A real-time intruder where no chrt is (the vm-test guests' busybox): SCHED_FIFO
            // at PRIO first, then pinned to CPU (so that it arrives there real-time), spinning
            // for SECONDS.
            let (Some(secs), Some(cpu), Some(prio)) = (num(1), num(2), num(3)) else {
                eprintln!("usage: keeper-probe rtspin SECONDS CPU PRIO [NAME]");
                return ExitCode::from(2);
            };
            if let Some(name) = args.get(4) {
                set_comm(name);
            }
            // SAFETY: a zeroed cpu_set_t with one CPU set, and a valid sched_param, for the
            // calling thread.
            let ok = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu as usize, &mut set);
                let param = libc::sched_param {
                    sched_priority: prio as i32,
                };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
                    && libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
            };
            if !ok {
                eprintln!("rtspin: {}", std::io::Error::last_os_error());
                return ExitCode::FAILURE;
            }
            spin(secs as f64, None);
            ExitCode::SUCCESS
        }
        Some("threads") => {
            let (Some(secs), Some(n)) = (num(1), num(2)) else {
                eprintln!("usage: keeper-probe threads SECONDS COUNT");
                return ExitCode::from(2);
            };
            // COUNT spinning threads besides the main one (a multi-threaded intruder).
            let spinners: Vec<_> = (0..n)
                .map(|_| std::thread::spawn(move || spin(secs as f64, None)))
                .collect();
            spin(secs as f64, None);
            spinners.into_iter().for_each(|t| drop(t.join()));
            ExitCode::SUCCESS
        }
        Some("ticks") => {
            let (Some(secs), Some(period), Some(work), Some(out)) =
                (num(1), num(2), num(3), args.get(4))
            else {
                eprintln!("usage: keeper-probe ticks SECONDS PERIOD_US WORK_US OUT");
                return ExitCode::from(2);
            };
            write_samples(out, &ticks(secs, period, work))
        }
        Some("wakes") => {
            let (Some(secs), Some(period), Some(cpu), Some(out)) =
                (num(1), num(2), num(3), args.get(4))
            else {
                eprintln!("usage: keeper-probe wakes SECONDS PERIOD_US WAKER_CPU OUT");
                return ExitCode::from(2);
            };
            write_samples(out, &wakes(secs, period, cpu as usize))
        }
        Some("newcomers") => {
            let (Some(secs), Some(every)) = (num(1), num(2)) else {
                eprintln!("usage: keeper-probe newcomers SECONDS EVERY_MS CPU...");
                return ExitCode::from(2);
            };
            let cpus: Vec<usize> = args[3..].iter().filter_map(|c| c.parse().ok()).collect();
            println!("{}", newcomers(secs, every, &cpus));
            ExitCode::SUCCESS
        }
        Some("mem") => {
            let (Some(mib), Some(secs)) = (num(1), num(2)) else {
                eprintln!("usage: keeper-probe mem MIB SECONDS");
                return ExitCode::from(2);
            };
            let mut block = vec![0u8; (mib as usize) << 20];
            let end = Instant::now() + Duration::from_secs(secs);
            let mut round = 0u8;
            while Instant::now() < end {
                round = round.wrapping_add(1);
                for page in block.chunks_mut(4096) {
                    page[0] = round;
                }
                std::hint::black_box(&block);
            }
            ExitCode::SUCCESS
        }
        Some("psi-wait") => {
            let (Some(file), Some(pct), Some(secs)) = (
                args.get(1),
                args.get(2).and_then(|v| v.parse::<f64>().ok()),
                num(3),
            ) else {
                eprintln!("usage: keeper-probe psi-wait FILE PERCENT SECONDS");
                return ExitCode::from(2);
            };
            psi_wait(file, pct, secs)
        }
        _ => {
            eprintln!(
                "usage: keeper-probe sleep COUNT INTERVAL_US | spin SECONDS [NAME] | repin SECONDS CPU [NAME] | ticks SECONDS PERIOD_US WORK_US OUT | wakes SECONDS PERIOD_US WAKER_CPU OUT | newcomers SECONDS EVERY_MS CPU... | mem MIB SECONDS | psi-wait FILE PERCENT SECONDS"
            );
            ExitCode::from(2)
        }
    }
}

/// A probe's samples to OUT, one per line.
fn write_samples(out: &str, samples: &[u64]) -> ExitCode {
    let text: String = samples.iter().map(|v| format!("{v}\n")).collect();
    match std::fs::write(out, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keeper-probe: {out}: {e}");
            ExitCode::from(2)
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The trading loop: response times (µs) of each tick, due time → work done.
fn ticks(secs: u64, period_us: u64, work_us: u64) -> Vec<u64> {
    let period = period_us.max(1) * 1000;
    let start = clock_ns(libc::CLOCK_MONOTONIC) + period;
    let end = start + secs * 1_000_000_000;
    let mut out = Vec::with_capacity((secs * 1_000_000 / period_us.max(1)) as usize);
    let mut due = start;
    let mut x = 0u64;
    while due < end {
        let ts = libc::timespec {
            tv_sec: (due / 1_000_000_000) as libc::time_t,
            tv_nsec: (due % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: an absolute sleep on CLOCK_MONOTONIC with a valid timespec.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0 < work_us * 1000 {
            for i in 0..100u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        out.push(clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(due) / 1000);
        // A tick that overran its period: the next ones are due on the original grid.
        due += period;
    }
    std::hint::black_box(x);
    out
}

/// Wake-up latencies (ns) of this thread, woken through an eventfd by a thread on `waker_cpu`
/// every `period_us` for `secs`: from the waker's stamp, taken just before its write, to this
/// thread running again.
fn wakes(secs: u64, period_us: u64, waker_cpu: usize) -> Vec<u64> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    // SAFETY: eventfd with no preconditions; -1 on failure, checked.
    let efd = unsafe { libc::eventfd(0, 0) };
    if efd < 0 {
        return vec![];
    }
    let stamp = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (s, d) = (stamp.clone(), done.clone());
    let waker = std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread (0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(waker_cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_micros(period_us.max(1)));
            s.store(clock_ns(libc::CLOCK_MONOTONIC), Ordering::SeqCst);
            let one = 1u64;
            // SAFETY: writes 8 bytes from a valid u64 to the eventfd.
            unsafe { libc::write(efd, (&raw const one).cast(), 8) };
        }
        d.store(true, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: as above: the last write lets the reader see `done`.
        unsafe { libc::write(efd, (&raw const one).cast(), 8) };
    });
    let mut out = Vec::with_capacity((secs * 1_000_000 / period_us.max(1)) as usize);
    loop {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from the eventfd.
        let r = unsafe { libc::read(efd, (&raw mut n).cast(), 8) };
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        if r != 8 || done.load(Ordering::SeqCst) {
            break;
        }
        // Two writes folded into one read (this thread was late by a whole period): only the
        // last one is timed.
        out.push(now.saturating_sub(stamp.load(Ordering::SeqCst)));
    }
    let _ = waker.join();
    // SAFETY: closes the eventfd made above, used by no one now.
    unsafe { libc::close(efd) };
    out
}

/// Starts a 30 ms spinner allowed on `cpus` every `every_ms` for `secs`; how many.
fn newcomers(secs: u64, every_ms: u64, cpus: &[usize]) -> usize {
    use std::os::unix::process::CommandExt;
    let Ok(me) = std::env::current_exe() else {
        return 0;
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut running = Vec::new();
    let mut started = 0;
    while Instant::now() < end {
        let cpus = cpus.to_vec();
        let mut cmd = std::process::Command::new(&me);
        cmd.args(["spin", "0.03", &format!("kb_new{started}")]);
        // SAFETY: only sched_setaffinity between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &c in &cpus {
                    libc::CPU_SET(c, &mut set);
                }
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        if let Ok(c) = cmd.spawn() {
            running.push(c);
            started += 1;
        }
        running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    for mut c in running {
        let _ = c.wait();
    }
    started
}

/// A busy loop for `secs`; with `repin`, it pins itself back onto that CPU every millisecond.
fn spin(secs: f64, repin: Option<usize>) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut pinned = Instant::now() - Duration::from_secs(1);
    let mut x = 0u64;
    while Instant::now() < end {
        if let Some(cpu) = repin
            && pinned.elapsed() >= Duration::from_millis(1)
        {
            // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            }
            pinned = Instant::now();
        }
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

fn psi_wait(file: &str, pct: f64, secs: u64) -> ExitCode {
    use keeper::sense::psi::{PsiTrigger, Stall};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(2);
    };
    rt.block_on(async {
        let mut t = match PsiTrigger::register_share(std::path::Path::new(file), Stall::Some, pct) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("keeper-probe: {e}");
                return ExitCode::from(2);
            }
        };
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(secs), t.fired()).await {
            Ok(Ok(())) => {
                println!(
                    "fired after {} ms ({})",
                    start.elapsed().as_millis(),
                    t.describe()
                );
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                eprintln!("keeper-probe: {e}");
                ExitCode::from(2)
            }
            Err(_) => {
                println!("not fired within {secs} s ({})", t.describe());
                ExitCode::from(1)
            }
        }
    })
}

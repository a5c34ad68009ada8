//! The chaos suite's bookkeeping: a seeded random source (replayable), the tally it reports,
//! and setting a task's affinity from a CPU list.

use std::time::Duration;

/// xorshift64*: enough for choosing events; the seed is printed so a run can be replayed.
pub struct Rng {
    pub seed: u64,
    state: u64,
}

impl Rng {
    /// Seeded by `KEEPER_CHAOS_SEED`, else by the clock.
    pub fn from_env() -> Rng {
        let seed = std::env::var("KEEPER_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("chaos seed {seed} (KEEPER_CHAOS_SEED={seed} replays it)");
        Rng {
            seed,
            state: seed | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// What the run did and survived.
#[derive(Debug, Default)]
pub struct Tally {
    pub lives: usize,
    pub kills: usize,
    pub clean_stops: usize,
    pub truncations: usize,
    pub intruders: usize,
    pub requests: usize,
    pub evictions: u64,
    /// Actions carried out (`done: …` in the keeper's log).
    pub done: usize,
    /// Changes undone: by a start after a kill, or at a clean exit.
    pub undone: usize,
    /// (life, seconds into it, RSS KiB), one a second.
    pub rss: Vec<(usize, f64, u64)>,
    /// Kills that left a workload frozen, a VM stopped or ballooned: the next start's work.
    pub kills_with_work: usize,
    /// What those kills left, by kind: frozen, stopped (VM), ballooned.
    pub left_at_kill: [usize; 3],
    /// Hibernations the stub was asked for.
    pub hibernations: usize,
}

impl Tally {
    /// Counts a life's log: actions done, changes an earlier keeper left and this one undid.
    pub fn count(&mut self, log: &[String]) {
        self.done += log.iter().filter(|l| l.contains("done: ")).count();
        self.undone += log
            .iter()
            .filter(|l| l.contains("undid a change left by an earlier keeper run"))
            .count();
    }

    /// Notes what a kill left behind (`Hive::left_over` at that moment).
    pub fn at_kill(&mut self, left: &[String]) {
        self.kills_with_work += usize::from(!left.is_empty());
        for (i, word) in [" frozen", " stopped", " ballooned"].iter().enumerate() {
            self.left_at_kill[i] += left.iter().filter(|l| l.contains(word)).count();
        }
    }

    /// Samples the keeper's resident memory.
    pub fn rss(&mut self, life: usize, at: Duration, pid: u32) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        if let Some(kib) = kib {
            self.rss.push((life, at.as_secs_f64(), kib));
        }
    }

    pub fn print(&self, ran: Duration, seed: u64) {
        let mib = |k: u64| k as f64 / 1024.0;
        let mut all: Vec<u64> = self.rss.iter().map(|r| r.2).collect();
        all.sort_unstable();
        let median = all.get(all.len() / 2).copied().unwrap_or(0);
        let max = all.last().copied().unwrap_or(0);
        // The longest life: its RSS in its first and last 10 s.
        let longest = (0..self.lives)
            .max_by_key(|l| self.rss.iter().filter(|r| r.0 == *l).count())
            .unwrap_or(0);
        let of = |keep: &dyn Fn(f64, f64) -> bool| {
            let life: Vec<_> = self.rss.iter().filter(|r| r.0 == longest).collect();
            let end = life.last().map_or(0.0, |r| r.1);
            let v: Vec<u64> = life
                .iter()
                .filter(|r| keep(r.1, end))
                .map(|r| r.2)
                .collect();
            v.iter().sum::<u64>() / v.len().max(1) as u64
        };
        let (early, late) = (of(&|t, _| t < 10.0), of(&|t, end| t > end - 10.0));
        let span = self
            .rss
            .iter()
            .rfind(|r| r.0 == longest)
            .map_or(0.0, |r| r.1);
        eprintln!(
            "chaos: {:.0} s, seed {seed}: {} keepers, {} killed with SIGKILL and survived, {} clean exits, \
             {} journals cut mid-record (each quarantined); {} kills left work for the next start \
             ({} frozen, {} VMs hibernated, {} balloons out); {} intruders, {} evictions, {} control requests, \
             {} hibernations asked; {} actions done, {} changes undone; nothing left behind after any start or exit; \
             RSS median {:.1} MiB, max {:.1} MiB; longest life {:.0} s: {:.1} → {:.1} MiB",
            ran.as_secs_f64(),
            self.lives,
            self.kills,
            self.clean_stops,
            self.truncations,
            self.kills_with_work,
            self.left_at_kill[0],
            self.left_at_kill[1],
            self.left_at_kill[2],
            self.intruders,
            self.evictions,
            self.requests,
            self.hibernations,
            self.done,
            self.undone,
            mib(median),
            mib(max),
            span,
            mib(early),
            mib(late),
        );
    }
}

/// Sets a task's CPU affinity from a list such as `0-1,3`.
pub fn set_affinity(pid: i32, list: &str) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it (cpu < CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for part in list.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
                continue;
            };
            for cpu in a..=b.min(1023) {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set);
    }
}

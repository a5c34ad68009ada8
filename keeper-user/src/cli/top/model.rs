//! What `keeper top` shows, from the frames received: the last 5 s taken as the difference
//! between the newest frame and one about 5 s older, the run as the newest frame's counters.
//! Pure (no terminal), so both views and the tests share it.

use std::collections::VecDeque;

use crate::{
    interface::frame::{Frame, WorkloadState},
    report::view::{CpuView, IntruderView, NoiseView},
    sense::latency::Histogram,
};

/// The window the "last 5 s" figures cover.
pub const WINDOW_S: f64 = 5.0;

/// The frames of the last few seconds, newest last.
#[derive(Clone, Default)]
pub struct History {
    frames: VecDeque<Frame>,
}

impl History {
    /// Keeps `frame`, and the older ones the window still needs. A frame from a new run
    /// (its clock went back) starts over.
    pub fn push(&mut self, frame: Frame) {
        if self.frames.back().is_some_and(|f| f.run_s > frame.run_s) {
            self.frames.clear();
        }
        while self.frames.len() > 1 && frame.run_s - self.frames[1].run_s >= WINDOW_S {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    pub fn newest(&self) -> Option<&Frame> {
        self.frames.back()
    }

    /// The frame the window starts at; `None` while only one has come (the window is then
    /// the run so far).
    fn window_start(&self) -> Option<&Frame> {
        (self.frames.len() > 1).then(|| &self.frames[0])
    }
}

/// How the workloads table is ordered (`s` cycles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Rank,
    State,
    Name,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Rank => Sort::State,
            Sort::State => Sort::Name,
            Sort::Name => Sort::Rank,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Rank => "rank",
            Sort::State => "state",
            Sort::Name => "name",
        }
    }
}

/// One trading core: the protected tasks' wakeup latency and the intruders' share of its
/// time, over the window and the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Core {
    pub cpu: u32,
    pub window: Latency,
    pub run: Latency,
    /// Shares of the core's time (0–1) taken by intruders.
    pub intruder_share_window: Option<f64>,
    pub intruder_share_run: Option<f64>,
    /// The window's histogram (the kernel's log-linear buckets).
    pub buckets: Vec<u64>,
}

/// Wakeups counted, and their p50 and p99 (µs, interpolated in their log-linear bucket).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub wakeups: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// One intruder: its time on the trading cores in the window and over the run.
#[derive(Clone, Debug, PartialEq)]
pub struct IntruderRow {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub window_ms: f64,
    pub run_share: f64,
}

/// The trading cores, from the window's first and last frames.
pub fn cores(h: &History) -> Vec<Core> {
    let Some(new) = h.newest() else {
        return vec![];
    };
    let old = h.window_start();
    new.cpus
        .iter()
        .map(|c| core(c, old.and_then(|o| o.cpus.iter().find(|o| o.cpu == c.cpu))))
        .collect()
}

fn core(now: &CpuView, before: Option<&CpuView>) -> Core {
    let buckets: Vec<u64> = match before {
        Some(b) => (now.protected.buckets.iter().enumerate())
            .map(|(i, n)| n.saturating_sub(b.protected.buckets.get(i).copied().unwrap_or(0)))
            .collect(),
        None => now.protected.buckets.clone(),
    };
    let total = CpuView::total_ns;
    let share = |intruder: u64, all: u64| (all > 0).then(|| intruder as f64 / all as f64);
    let (b_intruder, b_total) = before.map_or((0, 0), |b| (b.intruder_ns, total(b)));
    Core {
        cpu: now.cpu,
        window: latency(&buckets, now.protected.max_us),
        run: Latency {
            wakeups: now.protected.count,
            p50_us: now.protected.p50_us,
            p99_us: now.protected.p99_us,
        },
        intruder_share_window: share(
            now.intruder_ns.saturating_sub(b_intruder),
            total(now).saturating_sub(b_total),
        ),
        intruder_share_run: share(now.intruder_ns, total(now)),
        buckets,
    }
}

fn latency(buckets: &[u64], run_max_us: Option<f64>) -> Latency {
    // The window's largest sample is unknown: the run's bounds it.
    let h = Histogram {
        buckets: buckets.to_vec(),
        max_ns: run_max_us.map_or(u64::MAX, |m| (m * 1000.0).ceil() as u64),
    };
    Latency {
        wakeups: h.count(),
        p50_us: h.quantile(0.5).map(|q| q.us()),
        p99_us: h.quantile(0.99).map(|q| q.us()),
    }
}

/// Interrupt time on the trading cores over the window: its share of the cores' time, and
/// each source's (`36 virtio1-req.0`, `TIMER`), most first.
pub fn noise(h: &History) -> Option<(f64, Vec<(String, f64)>)> {
    let new = h.newest()?;
    if new.noise.is_empty() {
        return None;
    }
    let old = h.window_start();
    let span_s = new.run_s - old.map_or(0.0, |o| o.run_s);
    let span_ns = span_s * 1e9 * new.cpus.len().max(1) as f64;
    if span_ns <= 0.0 {
        return None;
    }
    let key = |n: &NoiseView| match n.irq {
        Some(irq) => format!("{irq} {}", n.name),
        None => n.name.clone(),
    };
    let before = |n: &NoiseView| {
        let k = key(n);
        old.and_then(|o| o.noise.iter().find(|b| key(b) == k))
            .map_or(0, |b| b.time_ns)
    };
    let mut rows: Vec<(String, f64)> = (new.noise.iter())
        .map(|n| (key(n), n.time_ns.saturating_sub(before(n)) as f64 / span_ns))
        .filter(|(_, share)| *share > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    Some((rows.iter().map(|r| r.1).sum(), rows))
}

/// The intruders, most time in the window first, then most over the run.
pub fn intruders(h: &History) -> Vec<IntruderRow> {
    let Some(new) = h.newest() else {
        return vec![];
    };
    let old = h.window_start();
    let before = |i: &IntruderView| {
        old.and_then(|o| o.intruders.iter().find(|o| o.pid == i.pid))
            .map_or(0, |o| o.stolen_ns)
    };
    let mut rows: Vec<IntruderRow> = (new.intruders.iter())
        .map(|i| IntruderRow {
            pid: i.pid,
            comm: i.comm.clone(),
            cgroup: i.cgroup.clone(),
            window_ms: old.map_or(0.0, |_| i.stolen_ns.saturating_sub(before(i)) as f64 / 1e6),
            run_share: i.share,
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.window_ms.total_cmp(&a.window_ms)).then(b.run_share.total_cmp(&a.run_share))
    });
    rows
}

/// The workloads, in the chosen order.
pub fn workloads(frame: &Frame, sort: Sort) -> Vec<&crate::interface::frame::WorkloadLine> {
    let mut rows: Vec<_> = frame.workloads.iter().collect();
    match sort {
        Sort::Rank => rows.sort_by_key(|w| (w.rank, w.name.clone())),
        Sort::Name => rows.sort_by_key(|w| w.name.clone()),
        Sort::State => rows.sort_by_key(|w| (w.state, w.rank)),
    }
    rows
}

/// A histogram as one line of block characters, one per bucket from the first to the last
/// that holds a wakeup, with the range it covers: `▁▃█▂ 2µs–32µs`.
pub fn histogram_line(buckets: &[u64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let rows = crate::report::view::octaves(buckets);
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return "no wakeups".to_string();
    };
    let peak = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    let bars: String = (rows.iter())
        .map(|&(_, _, c)| match c {
            0 => ' ',
            c => BLOCKS[((c * 8).div_ceil(peak) as usize).clamp(1, 8) - 1],
        })
        .collect();
    let high = match last.1 {
        u64::MAX => "…".to_string(),
        ns => micros(ns / 1000),
    };
    format!("{bars} {}–{high}", micros(first.0 / 1000))
}

/// A quantile in microseconds, short: `3.2µs`, `512µs`, `2.05ms`, `1.20s`.
pub fn micros_f(us: f64) -> String {
    match us {
        ..10.0 => format!("{us:.1}µs"),
        ..1_000.0 => format!("{us:.0}µs"),
        ..1_000_000.0 => format!("{:.2}ms", us / 1e3),
        _ => format!("{:.2}s", us / 1e6),
    }
}

/// A duration in microseconds, short: `512µs`, `2ms`, `1s`.
pub fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{}ms", us / 1000),
        _ => format!("{}s", us / 1_000_000),
    }
}

/// Whether a workload is held by the keeper (not merely found or absent).
pub fn held(state: WorkloadState) -> bool {
    !matches!(state, WorkloadState::Active | WorkloadState::Absent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        interface::{
            Mode, Summary,
            frame::{PressureLine, WorkloadLine},
        },
        report::view::LatencyView,
    };

    fn cpu(buckets: Vec<u64>, intruder_ns: u64, all_ns: u64) -> CpuView {
        let h = Histogram {
            buckets: buckets.clone(),
            max_ns: 2_000_000,
        };
        CpuView {
            cpu: 1,
            protected: LatencyView::from(&h),
            other: LatencyView::from(&Histogram::default()),
            idle_ns: all_ns - intruder_ns,
            kernel_ns: 0,
            protected_ns: 0,
            intruder_ns,
            keeper_ns: 0,
            switches: 0,
        }
    }

    fn frame(run_s: f64, cpus: Vec<CpuView>, intruders: Vec<(u32, u64)>) -> Frame {
        Frame {
            ok: true,
            at_unix_ms: 0,
            run_s,
            summary: Summary {
                mode: Mode::Enforcing,
                policy: "p".into(),
                trading_cores: "1".into(),
                housekeeping_cores: "0".into(),
                trading_cores_owner: None,
                interaction: false,
                evictions: 0,
                errors: 0,
            },
            cpus,
            noise: vec![],
            intruders: (intruders.into_iter())
                .map(|(pid, ns)| IntruderView {
                    pid,
                    tgid: pid,
                    comm: format!("t{pid}"),
                    cgroup: "/x".into(),
                    cgroup_id: 1,
                    stolen_ns: ns,
                    share: ns as f64 / (run_s * 1e9),
                })
                .collect(),
            workloads: vec![],
            pressure: PressureLine::default(),
            gpu: None,
            undo_pending: 0,
            last_actions: vec![],
        }
    }

    #[test]
    fn the_window_is_the_difference_of_frames_about_five_seconds_apart() {
        let mut h = History::default();
        // 100 fast wakeups in the first 10 s (at 12 µs), then 100 slow ones (at 1.5 ms).
        let at = keeper_common::latency_bucket;
        let mut fast = vec![0u64; keeper_common::HIST_BUCKETS];
        fast[at(12_000)] = 100;
        for s in 0..=10u64 {
            h.push(frame(
                s as f64,
                vec![cpu(fast.clone(), 0, s * 1_000_000_000 + 1)],
                vec![],
            ));
        }
        let mut both = fast.clone();
        both[at(1_500_000)] = 100;
        // The intruder took 1 s of the last 5 s (0.5 s in each of the last two frames).
        for s in 11..=15u64 {
            let intruder = if s >= 14 { (s - 13) * 500_000_000 } else { 0 };
            let buckets = if s == 15 { both.clone() } else { fast.clone() };
            h.push(frame(
                s as f64,
                vec![cpu(buckets, intruder, s * 1_000_000_000)],
                vec![(7, intruder)],
            ));
        }
        let c = &cores(&h)[0];
        assert_eq!(
            c.window.wakeups, 100,
            "only the slow ones are in the window"
        );
        let near = |got: Option<f64>, us: f64| got.is_some_and(|g| (g - us).abs() <= us * 0.0625);
        assert!(near(c.window.p50_us, 1500.0), "{:?}", c.window);
        assert_eq!(c.run.wakeups, 200);
        assert!(near(c.run.p50_us, 12.0), "{:?}", c.run);
        let w = c.intruder_share_window.unwrap();
        assert!((w - 0.2).abs() < 1e-6, "{w}");
        let r = c.intruder_share_run.unwrap();
        assert!((r - 1.0 / 15.0).abs() < 1e-6, "{r}");
        let i = &intruders(&h)[0];
        assert_eq!((i.pid, i.window_ms), (7, 1000.0));
        // A new run (its clock went back) starts over.
        h.push(frame(
            1.0,
            vec![cpu(fast.clone(), 0, 1_000_000_000)],
            vec![],
        ));
        assert_eq!(cores(&h)[0].window.wakeups, 100);
    }

    #[test]
    fn histograms_read_as_one_line_of_blocks() {
        let at = keeper_common::latency_bucket;
        let mut b = vec![0; keeper_common::HIST_BUCKETS];
        assert_eq!(histogram_line(&b), "no wakeups");
        // By power of two: 8 wakeups at 3 µs, 1 at 10 µs, 4 at 20 µs.
        b[at(3_000)] = 8;
        b[at(10_000)] = 1;
        b[at(20_000)] = 4;
        assert_eq!(histogram_line(&b), "█ ▁▄ 2µs–32µs");
        let mut b = vec![0; keeper_common::HIST_BUCKETS];
        b[at(1_500_000_000)] = 1;
        assert_eq!(histogram_line(&b), "█ 536ms–…");
        assert_eq!(micros(2048), "2ms");
        assert_eq!(micros_f(3.25), "3.2µs");
        assert_eq!(micros_f(2048.0), "2.05ms");
    }

    #[test]
    fn workloads_sort_by_rank_state_or_name() {
        let mut f = frame(1.0, vec![], vec![]);
        let w = |name: &str, rank, state| WorkloadLine {
            name: name.into(),
            rank,
            state,
            found_at: None,
        };
        f.workloads = vec![
            w("muse", 3, WorkloadState::Frozen),
            w("banker", 1, WorkloadState::Active),
            w("eva", 2, WorkloadState::Absent),
        ];
        let names = |s| {
            workloads(&f, s)
                .iter()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Sort::Rank), ["banker", "eva", "muse"]);
        assert_eq!(names(Sort::State), ["muse", "banker", "eva"]);
        assert_eq!(names(Sort::Name), ["banker", "eva", "muse"]);
    }

    #[test]
    fn noise_over_the_window_is_named_by_source_most_first() {
        let n = |irq: Option<u32>, name: &str, ms: u64| NoiseView {
            kind: if irq.is_some() { "irq" } else { "softirq" }.into(),
            irq,
            name: name.into(),
            time_ns: ms * 1_000_000,
            count: 1,
            max_us: 1.0,
            share: 0.0,
        };
        let mut h = History::default();
        for s in 0..=6u64 {
            let mut f = frame(
                s as f64,
                vec![cpu(vec![0; 12], 0, s * 1_000_000_000)],
                vec![],
            );
            // The disk's IRQ: 10 ms a second; TIMER: 1 ms a second from second 2 on.
            f.noise = vec![
                n(Some(36), "virtio1-req.0", 10 * s),
                n(None, "TIMER", s.saturating_sub(2)),
            ];
            h.push(f);
        }
        let (share, rows) = noise(&h).unwrap();
        assert_eq!(rows[0].0, "36 virtio1-req.0");
        assert!((rows[0].1 - 0.01).abs() < 1e-9, "{rows:?}");
        assert_eq!(rows[1].0, "TIMER");
        // TIMER: 4 ms over the window (from second 1 to 6: 0 ms then 4 ms).
        assert!((share - 0.0108).abs() < 1e-9, "{share}");
        // Not measured: no line.
        let mut h = History::default();
        h.push(frame(1.0, vec![], vec![]));
        assert_eq!(noise(&h), None);
    }
}

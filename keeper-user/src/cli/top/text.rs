//! The view in words: the lines both the terminal view and the plain refresh show, and the
//! plain refresh itself (no terminal: one block of text a second).

use std::{io::Write as _, sync::mpsc};

use super::{
    Feed,
    model::{self, Core, History, IntruderRow, Sort},
};
use crate::{
    decide::Outcome,
    interface::frame::{ActionLine, Frame, WorkloadLine},
};

/// Prints a block a frame until `frames` have come (`None`) or the feed ends (why).
pub fn run(feed: &mpsc::Receiver<Feed>, frames: Option<u64>) -> anyhow::Result<Option<String>> {
    let mut history = History::default();
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    loop {
        match feed.recv() {
            Err(_) => return Ok(Some("the feed stopped".into())),
            Ok(Feed::Ended(why)) => return Ok(Some(why)),
            Ok(Feed::Frame(f)) => history.push(*f),
        }
        for line in screen(&history, Sort::Rank) {
            writeln!(out, "{line}")?;
        }
        writeln!(out)?;
        out.flush()?;
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(None);
        }
    }
}

/// Everything, as plain lines.
pub fn screen(h: &History, sort: Sort) -> Vec<String> {
    let Some(f) = h.newest() else {
        return vec!["waiting for the keeper's first frame".into()];
    };
    let mut out = vec![header(f), counters(f)];
    out.extend(model::cores(h).iter().flat_map(core_lines));
    if let Some((share, rows)) = model::noise(h) {
        out.push(noise(share, &rows));
    }
    out.push(pressure(f));
    out.push(String::new());
    out.push(workload_title());
    out.extend(model::workloads(f, sort).into_iter().map(workload));
    out.push(String::new());
    out.push(intruder_title());
    let intruders = model::intruders(h);
    if intruders.is_empty() {
        out.push("  none".into());
    }
    out.extend(intruders.iter().map(intruder));
    out.push(String::new());
    out.push("Last actions".into());
    if f.last_actions.is_empty() {
        out.push("  none yet".into());
    }
    out.extend(f.last_actions.iter().map(action));
    out
}

/// `keeper top · enforcing · up 0:12:03 · policy hive.yaml`
pub fn header(f: &Frame) -> String {
    let mode = f.summary.mode.name();
    let up = f.run_s as u64;
    format!(
        "keeper top · {mode} · up {}:{:02}:{:02} · policy {}",
        up / 3600,
        up / 60 % 60,
        up % 60,
        f.summary.policy,
    )
}

/// Trading cores, their owner, and the keeper's counters.
pub fn counters(f: &Frame) -> String {
    let s = &f.summary;
    format!(
        "trading {} → {} · housekeeping {} · evictions {} · errors {} · undo {}{}",
        s.trading_cores,
        s.trading_cores_owner.as_deref().unwrap_or("nobody"),
        s.housekeeping_cores,
        s.evictions,
        s.errors,
        f.undo_pending,
        if s.interaction { " · interaction" } else { "" }
    )
}

/// Two lines per trading core: the protected tasks' wakeup latency, then the intruders'
/// share of its time and the window's histogram.
pub fn core_lines(c: &Core) -> [String; 2] {
    let us = |v: Option<f64>| v.map_or("-".to_string(), model::micros_f);
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    [
        format!(
            "CPU {:<3} wakeups 5s: p50 {} p99 {} ({}) · run: p50 {} p99 {}",
            c.cpu,
            us(c.window.p50_us),
            us(c.window.p99_us),
            c.window.wakeups,
            us(c.run.p50_us),
            us(c.run.p99_us),
        ),
        format!(
            "        intruders 5s {} run {} · 5s {}",
            pct(c.intruder_share_window),
            pct(c.intruder_share_run),
            model::histogram_line(&c.buckets)
        ),
    ]
}

/// The interrupt time on the trading cores over the window, and its largest sources.
pub fn noise(share: f64, rows: &[(String, f64)]) -> String {
    let mut line = format!("noise 5s {:.2}%", share * 100.0);
    for (source, s) in rows {
        let next = format!(" · {source} {:.2}%", s * 100.0);
        if line.chars().count() + next.chars().count() > 80 {
            break;
        }
        line.push_str(&next);
    }
    line
}

/// PSI and load, and the GPU.
pub fn pressure(f: &Frame) -> String {
    let p = &f.pressure;
    let gpu = match &f.gpu {
        None => "GPU none".to_string(),
        Some(g) => format!(
            "GPU {} {}°C {}%{}",
            g.name,
            g.temperature_c,
            g.utilization_percent,
            match (g.power_draw_w, g.power_limit_w) {
                (Some(d), Some(l)) => format!(" {d:.0}/{l:.0} W"),
                (Some(d), None) => format!(" {d:.0} W"),
                _ => String::new(),
            }
        ),
    };
    format!(
        "pressure cpu {:.1}% · memory {:.1}% some, {:.1}% full · load {:.2} · {gpu}",
        p.cpu_some_percent, p.memory_some_percent, p.memory_full_percent, p.loadavg
    )
}

pub fn workload_title() -> String {
    format!(
        "{:<16} {:>4} {:<10} {}",
        "Workload", "rank", "state", "found at"
    )
}

pub fn workload(w: &WorkloadLine) -> String {
    format!(
        "{:<16} {:>4} {:<10} {}",
        w.name,
        w.rank,
        w.state.name(),
        w.found_at.as_deref().unwrap_or("-")
    )
}

pub fn intruder_title() -> String {
    format!(
        "{:<8} {:<16} {:>8} {:>6} {}",
        "Intruder", "comm", "5s ms", "run %", "cgroup"
    )
}

pub fn intruder(i: &IntruderRow) -> String {
    format!(
        "{:<8} {:<16} {:>8.1} {:>6.2} {}",
        i.pid,
        i.comm,
        i.window_ms,
        i.run_share * 100.0,
        i.cgroup
    )
}

/// `10:12:01 evict_intruder done: evict pid 812 … (banker.intruders)`
pub fn action(a: &ActionLine) -> String {
    let time = a.at.get(11..19).unwrap_or(&a.at);
    let outcome = match a.outcome {
        Outcome::Done => "done",
        Outcome::ObservedOnly => "observed",
        Outcome::Skipped => "skipped",
        Outcome::Failed { .. } => "FAILED",
    };
    format!("{time} {outcome:<7} {} ({}): {}", a.what, a.rule, a.reason)
}

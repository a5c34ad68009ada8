//! `keeper report` for a terminal: verdicts first, then the trading cores, intruders, what the
//! pressure and the GPU did, and the actions.

use std::io::{self, Write};

use super::{
    RunRecord,
    view::{write_histogram, write_intruders, write_noise},
};

pub fn write(out: &mut impl Write, r: &RunRecord) -> io::Result<()> {
    writeln!(
        out,
        "The Keeper{}: policy {} ({}), trading cores {}{}",
        if r.live { " (live)" } else { "" },
        r.policy,
        r.mode,
        r.trading_cores,
        r.scope
            .as_ref()
            .map(|s| format!(", scope {s}"))
            .unwrap_or_default()
    )?;
    writeln!(out, "{} → {} ({:.1} s)", r.started, r.ended, r.duration_s)?;

    writeln!(out, "\nService levels:")?;
    if r.slo.is_empty() {
        writeln!(out, "  (the policy sets no latency objective)")?;
    }
    for v in &r.slo {
        let verdict = match v.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "not measured",
        };
        writeln!(
            out,
            "  {:<12} {:<20} target {:<16} measured {:<40} {verdict}",
            v.workload,
            v.objective,
            v.target,
            v.measured.as_deref().unwrap_or("-")
        )?;
    }

    writeln!(
        out,
        "\nTrading cores (quantiles {}):",
        crate::sense::latency::QUANTILE_ERROR
    )?;
    for c in &r.cpus {
        let q = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let l = &c.protected;
        writeln!(
            out,
            "  CPU {} protected: {} wakeups, p50 {} p90 {} p99 {} p99.9 {} max {} µs",
            c.cpu,
            l.count,
            q(l.p50_us),
            q(l.p90_us),
            q(l.p99_us),
            q(l.p999_us),
            l.max_us.map_or("-".into(), |m| format!("{m:.1}"))
        )?;
        write_histogram(out, c.cpu, "protected tasks", l)?;
    }

    writeln!(out)?;
    let top: Vec<_> = r.intruders.iter().take(10).cloned().collect();
    write_intruders(out, "Top intruders", &top)?;
    if !r.noise.is_empty() {
        let top: Vec<_> = r.noise.iter().take(10).cloned().collect();
        write_noise(out, &top)?;
    }
    let e = &r.eviction_latency;
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2} ms", v / 1000.0));
    writeln!(
        out,
        "Evictions: {} (first run → evicted: p50 {}, p99 {}, max {})",
        r.evictions,
        ms(e.p50_us),
        ms(e.p99_us),
        ms(e.max_us)
    )?;

    let max = |f: fn(&super::Sample) -> Option<f64>| {
        r.samples
            .iter()
            .filter_map(f)
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
            .map_or("-".to_string(), |v| format!("{v:.1}"))
    };
    writeln!(
        out,
        "\nOver {} samples: max p99 wakeup {} µs, max memory pressure (some avg10) {} %, max CPU \
         pressure {} %, max GPU temperature {} °C",
        r.samples.len(),
        max(|s| s.trading_p99_us),
        max(|s| s.memory_pressure_some_avg10),
        max(|s| s.cpu_pressure_some_avg10),
        max(|s| s.gpu_temperature_c)
    )?;

    writeln!(out, "\nMemory: {} OOM kills", r.oom_kills.len())?;
    for k in &r.oom_kills {
        writeln!(
            out,
            "  {:>8.1}s OOM kill {}[{}] in {} ({})",
            k.t_s,
            k.comm,
            k.pid,
            k.cgroup,
            k.workload.as_deref().unwrap_or("no workload")
        )?;
    }
    for rc in r.reclaim.iter().take(5) {
        writeln!(
            out,
            "  direct reclaim in {}: {} stalls, {:.1} ms in all, p99 {} µs",
            rc.cgroup,
            rc.stalls,
            rc.total_ms,
            rc.p99_us.map_or("-".into(), |p| format!("{p:.1}"))
        )?;
    }
    for a in &r.sizing {
        writeln!(out, "  sizing: {}", a.advice)?;
    }

    writeln!(out, "\nActions ({}, {} errors):", r.actions.len(), r.errors)?;
    if r.actions_dropped > 0 {
        writeln!(out, "  ({} older actions not kept)", r.actions_dropped)?;
    }
    for a in &r.actions {
        writeln!(
            out,
            "  {:>8.1}s {}{} [{}] {} → {}",
            a.t_s,
            if a.ok { "" } else { "FAILED " },
            a.action,
            a.rule,
            a.reason,
            a.outcome.join("; ")
        )?;
    }
    if !r.restored_at_exit.is_empty() {
        writeln!(out, "\nRestored at exit:")?;
        for x in &r.restored_at_exit {
            writeln!(out, "  {x}")?;
        }
    }
    Ok(())
}

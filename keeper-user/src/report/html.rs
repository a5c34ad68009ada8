//! `keeper report --format html`: one self-contained page (inline CSS and SVG, no script, no
//! CDN) with the SLO verdicts, each trading core's histogram, latency over time, the actions on
//! the time axis, pressure and GPU over time, the intruders and the action log.

use std::fmt::Write as _;

use super::{
    RunRecord,
    svg::{self, Mark, Series, esc},
    view::{CpuView, LatencyView},
};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
.met{color:#16703a;font-weight:bold}.missed{color:#b3261e;font-weight:bold}.unknown{color:#666}\
.chart{display:block;margin:8px 0;border:1px solid #ddd}.small{color:#666;font-size:12px}";

/// Lanes of the actions chart and the kinds of action in each.
const LANES: &[(&str, &[&str], &str)] = &[
    ("freeze/thaw", &["freeze", "thaw"], "#1f5fbf"),
    (
        "throttle",
        &[
            "set_cpu_weight",
            "set_cpu_max",
            "set_memory_high",
            "restore_limits",
            "apply_class_limits",
        ],
        "#c77c02",
    ),
    ("evict", &["evict_intruder"], "#7b3fb5"),
    (
        "cores",
        &["protect_trading_cores", "release_trading_cores"],
        "#16703a",
    ),
    (
        "GPU/VM",
        &[
            "set_gpu_power_limit",
            "set_gpu_clock_offset",
            "gpu_checkpoint",
            "gpu_restore",
            "balloon",
            "stop_vm",
            "start_vm",
        ],
        "#00838f",
    ),
    ("SLO", &["slo_breach", "slo_met"], "#555555"),
];

pub fn render(r: &RunRecord) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>The Keeper: run report</title><style>{STYLE}</style></head><body>\
         <h1>The Keeper: run report{}</h1><p>Policy <b>{}</b> ({}), trading cores <b>{}</b>{}.<br>\
         {} → {} ({:.1} s). Evictions: {}. Errors: {}.</p>",
        if r.live { " (live)" } else { "" },
        esc(&r.policy),
        esc(&r.mode),
        esc(&r.trading_cores),
        r.scope
            .as_ref()
            .map(|s| format!(", scope <code>{}</code>", esc(s)))
            .unwrap_or_default(),
        esc(&r.started),
        esc(&r.ended),
        r.duration_s,
        r.evictions,
        r.errors
    );
    slo(&mut h, r);
    trading_cores(&mut h, r);
    over_time(&mut h, r);
    intruders(&mut h, r);
    noise(&mut h, r);
    memory(&mut h, r);
    actions(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn slo(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Service levels</h2>");
    if r.slo.is_empty() {
        h.push_str("<p class=\"small\">The policy sets no latency objective.</p>");
        return;
    }
    h.push_str("<table><tr><th>workload</th><th>objective</th><th>target</th><th>measured</th><th>verdict</th></tr>");
    for v in &r.slo {
        let (class, word) = match v.met {
            Some(true) => ("met", "met"),
            Some(false) => ("missed", "missed"),
            None => ("unknown", "not measured"),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}<div class=\"small\">{}</div></td><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>",
            esc(&v.workload),
            esc(&v.objective),
            esc(&v.detail),
            esc(&v.target),
            esc(v.measured.as_deref().unwrap_or("-"))
        );
    }
    h.push_str("</table>");
}

fn quantiles(l: &LatencyView) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    format!(
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
        l.count,
        f(l.p50_us),
        f(l.p90_us),
        f(l.p99_us),
        f(l.p999_us),
        l.max_us.map_or("-".into(), |m| format!("{m:.1}"))
    )
}

fn trading_cores(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Trading cores: wakeup latency</h2>");
    if r.cpus.is_empty() {
        h.push_str("<p class=\"small\">No trading core was watched.</p>");
        return;
    }
    h.push_str("<table><tr><th>CPU</th><th>tasks</th><th>wakeups</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>max µs</th></tr>");
    for c in &r.cpus {
        for (label, l) in [("protected", &c.protected), ("other", &c.other)] {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{label}</td>{}</tr>",
                c.cpu,
                quantiles(l)
            );
        }
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<p class=\"small\">Quantiles {}.</p>",
        esc(crate::sense::latency::QUANTILE_ERROR)
    );
    for c in &r.cpus {
        histogram(h, c);
    }
}

fn histogram(h: &mut String, c: &CpuView) {
    let l = &c.protected;
    // From 0 µs to at least 256 µs, so that the axis reads the same across runs.
    let mut rows = super::view::all_octaves(&l.buckets);
    rows.truncate(rows.iter().rposition(|r| r.2 > 0).unwrap_or(0).max(7) + 1);
    let labels: Vec<String> = (rows.iter())
        .map(|(low, _, _)| format!("{}", *low as f64 / 1000.0))
        .collect();
    let values: Vec<u64> = rows.iter().map(|r| r.2).collect();
    h.push_str(&svg::bars(
        &format!("histogram-cpu{}", c.cpu),
        &format!(
            "CPU {}: protected tasks' wakeup latency ({} wakeups)",
            c.cpu, l.count
        ),
        &labels,
        &values,
        "#1f5fbf",
    ));
    let _ = write!(
        h,
        "<p class=\"small\">CPU {} time: protected {:.1} %, intruders {:.1} %, kernel {:.1} %, keeper {:.2} %, idle {:.1} %.</p>",
        c.cpu,
        c.pct(c.protected_ns),
        c.pct(c.intruder_ns),
        c.pct(c.kernel_ns),
        c.pct(c.keeper_ns),
        c.pct(c.idle_ns)
    );
}

fn over_time(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Over time</h2>");
    let pts = |f: fn(&super::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        r.samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t_s, v)))
            .collect()
    };
    h.push_str(&svg::lines(
        "latency-over-time",
        "Trading cores: p99 wakeup latency of protected tasks (last 5 s)",
        "µs",
        r.duration_s,
        &[Series {
            name: "p99 wakeup (µs)",
            color: "#1f5fbf",
            points: pts(|s| s.trading_p99_us),
        }],
    ));
    let marks: Vec<Mark> = r
        .actions
        .iter()
        .map(|a| {
            let lane = LANES
                .iter()
                .position(|(_, kinds, _)| kinds.contains(&a.kind.as_str()))
                .unwrap_or(LANES.len() - 1);
            Mark {
                t_s: a.t_s,
                lane,
                color: if a.ok { LANES[lane].2 } else { "#b3261e" },
                label: format!("{} ({})", a.action, a.rule),
            }
        })
        .collect();
    let lanes: Vec<&str> = LANES.iter().map(|l| l.0).collect();
    h.push_str(&svg::timeline(
        "actions-over-time",
        "Actions (red: failed)",
        r.duration_s,
        &lanes,
        &marks,
    ));
    h.push_str(&svg::lines(
        "pressure-over-time",
        "Pressure (PSI some avg10, %) and load average",
        "",
        r.duration_s,
        &[
            Series {
                name: "memory some %",
                color: "#b3261e",
                points: pts(|s| s.memory_pressure_some_avg10),
            },
            Series {
                name: "cpu some %",
                color: "#c77c02",
                points: pts(|s| s.cpu_pressure_some_avg10),
            },
            Series {
                name: "load average",
                color: "#555555",
                points: pts(|s| s.loadavg),
            },
        ],
    ));
    if r.samples
        .iter()
        .any(|s| s.gpu_temperature_c.is_some() || s.gpu_power_w.is_some())
    {
        h.push_str(&svg::lines(
            "gpu-over-time",
            "GPU temperature (°C) and power (W)",
            "",
            r.duration_s,
            &[
                Series {
                    name: "temperature °C",
                    color: "#b3261e",
                    points: pts(|s| s.gpu_temperature_c),
                },
                Series {
                    name: "power W",
                    color: "#00838f",
                    points: pts(|s| s.gpu_power_w),
                },
            ],
        ));
    } else {
        h.push_str("<p class=\"small\">No GPU readings in this run.</p>");
    }
}

fn noise(h: &mut String, r: &RunRecord) {
    if r.noise.is_empty() {
        return;
    }
    h.push_str("<h2>Kernel noise on the trading cores</h2>");
    h.push_str("<table><tr><th>kind</th><th>source</th><th>runs</th><th>time (ms)</th><th>longest (µs)</th><th>share</th></tr>");
    for n in r.noise.iter().take(20) {
        let source = match n.irq {
            Some(irq) => format!("{irq}: {}", n.name),
            None => n.name.clone(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{:.2} %</td></tr>",
            esc(&n.kind),
            esc(&source),
            n.count,
            n.time_ns as f64 / 1e6,
            n.max_us,
            100.0 * n.share
        );
    }
    h.push_str("</table>");
}

fn intruders(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Top intruders</h2>");
    if r.intruders.is_empty() {
        h.push_str("<p class=\"small\">None.</p>");
    } else {
        h.push_str("<table><tr><th>comm</th><th>pid</th><th>cgroup</th><th>time stolen (ms)</th><th>share</th></tr>");
        for i in r.intruders.iter().take(20) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.2} %</td></tr>",
                esc(&i.comm),
                i.pid,
                esc(&i.cgroup),
                i.stolen_ns as f64 / 1e6,
                100.0 * i.share
            );
        }
        h.push_str("</table>");
    }
    let e = &r.eviction_latency;
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2} ms", v / 1000.0));
    let _ = write!(
        h,
        "<p>Evictions: {} (latency from first run on a trading core: p50 {}, p99 {}, max {}).</p>",
        r.evictions,
        ms(e.p50_us),
        ms(e.p99_us),
        ms(e.max_us)
    );
}

fn memory(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Memory</h2>");
    for a in &r.sizing {
        let _ = write!(h, "<p class=\"missed\">Sizing: {}</p>", esc(&a.advice));
    }
    if r.oom_kills.is_empty() {
        h.push_str("<p class=\"small\">No OOM kill.</p>");
    } else {
        h.push_str("<table><tr><th>t (s)</th><th>OOM-killed</th><th>pid</th><th>cgroup</th><th>workload</th></tr>");
        for k in &r.oom_kills {
            let _ = write!(
                h,
                "<tr><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                k.t_s,
                esc(&k.comm),
                k.pid,
                esc(&k.cgroup),
                esc(k.workload.as_deref().unwrap_or("-"))
            );
        }
        h.push_str("</table>");
    }
    if !r.reclaim.is_empty() {
        h.push_str("<table><tr><th>cgroup</th><th>direct-reclaim stalls</th><th>total ms</th><th>p99 µs</th></tr>");
        for rc in r.reclaim.iter().take(10) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                esc(&rc.cgroup),
                rc.stalls,
                rc.total_ms,
                rc.p99_us.map_or("-".into(), |p| format!("{p:.1}"))
            );
        }
        h.push_str("</table>");
    }
}

fn actions(h: &mut String, r: &RunRecord) {
    h.push_str("<h2>Actions</h2>");
    if r.actions_dropped > 0 {
        let _ = write!(
            h,
            "<p class=\"small\">{} older actions are not kept in this record.</p>",
            r.actions_dropped
        );
    }
    if r.actions.is_empty() {
        h.push_str("<p class=\"small\">None.</p>");
        return;
    }
    h.push_str(
        "<table><tr><th>t (s)</th><th>action</th><th>rule</th><th>reason</th><th>outcome</th></tr>",
    );
    for a in &r.actions {
        let _ = write!(
            h,
            "<tr><td>{:.1}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.t_s,
            if a.ok { "" } else { "missed" },
            esc(&a.action),
            esc(&a.rule),
            esc(&a.reason),
            esc(&a.outcome.join("; "))
        );
    }
    h.push_str("</table>");
    if !r.restored_at_exit.is_empty() {
        let _ = write!(
            h,
            "<p class=\"small\">Restored at exit: {}</p>",
            esc(&r.restored_at_exit.join("; "))
        );
    }
}

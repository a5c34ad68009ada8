//! `keeper run --metrics ADDR`: Prometheus on `GET /metrics`: OpenMetrics text to a scraper
//! that asks for it (Prometheus does), the classic text format to others (`curl`, promtool).
//!
//! The loop refreshes a snapshot each tick; a scrape encodes the snapshot (prometheus-client
//! collector), so the sensor and the actuators stay on the loop's thread and a slow scraper
//! never delays enforcement.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::exposition;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{
    report::view::{CpuView, NoiseView},
    sense::latency::Histogram,
};

/// Everything a scrape shows, as of the last tick.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub cpus: Vec<CpuView>,
    pub events_sent: u64,
    pub events_lost: u64,
    pub evictions: u64,
    pub errors: u64,
    /// (action kind, ok) → count.
    pub actions: BTreeMap<(String, bool), u64>,
    /// Workload → (frozen, throttled).
    pub workloads: BTreeMap<String, (bool, bool)>,
    pub trading_p99_seconds: Option<f64>,
    pub loadavg: f64,
    pub cpu_pressure_some: f64,
    pub memory_pressure_some: f64,
    pub memory_pressure_full: f64,
    pub gpu_temperature_celsius: Option<f64>,
    pub gpu_power_watts: Option<f64>,
    /// Journal entries whose undo failed, retried with backoff.
    pub undo_pending: u64,
    /// Whether `rules.thermal_guard` holds GPU users frozen.
    pub thermal_guard_active: bool,
    /// When the loop last ticked (Unix seconds): a stuck loop shows here.
    pub last_tick_unix_s: f64,
    /// The policy's service levels for the trading cores (`rules.slo`), where it sets them.
    pub slo_trading_p99_seconds: Option<f64>,
    pub slo_trading_intruder_share_ratio: Option<f64>,
    /// Interactions' preemptions done, and those over the tightest `preempt.deadline`.
    pub preemptions: u64,
    pub preemptions_late: u64,
    /// IRQ and softirq time on the trading cores since the start, by source.
    pub noise: Vec<NoiseView>,
}

/// The snapshot, shared between the loop (writer) and the HTTP server (reader).
#[derive(Debug, Default, Clone)]
pub struct Metrics(Arc<Mutex<Snapshot>>);

impl Metrics {
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    /// The exposition text (OpenMetrics), as a scrape sees it.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    match rows {
        [(labels, v)] if labels.is_empty() => ConstCounter::new(*v).encode(m)?,
        _ => {
            for (labels, v) in rows {
                ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
            }
        }
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match rows {
        [(labels, v)] if labels.is_empty() => ConstGauge::new(*v).encode(m)?,
        _ => {
            for (labels, v) in rows {
                ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
            }
        }
    }
    Ok(())
}

/// Interrupt time on the trading cores by source: `kind` irq (with its number) or softirq,
/// `name` the device's action or the vector.
fn noise(enc: &mut DescriptorEncoder, list: &[NoiseView]) -> Result<(), std::fmt::Error> {
    let labels = |n: &NoiseView| -> Labels {
        let mut l = vec![("kind", n.kind.clone()), ("name", n.name.clone())];
        if let Some(irq) = n.irq {
            l.push(("irq", irq.to_string()));
        }
        l
    };
    let mut m = enc.encode_descriptor(
        "keeper_noise_seconds",
        "Interrupt handler time on the trading cores (a softirq's net of the IRQs inside it)",
        None,
        MetricType::Counter,
    )?;
    for n in list {
        ConstCounter::new(n.time_ns as f64 * 1e-9).encode(m.encode_family(&labels(n))?)?;
    }
    let runs: Vec<(Labels, u64)> = list.iter().map(|n| (labels(n), n.count)).collect();
    counter(
        enc,
        "keeper_noise_runs",
        "Interrupt handler runs on the trading cores",
        &runs,
    )
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match self.0.lock() {
            Ok(s) => s.clone(),
            Err(_) => return Ok(()),
        };
        // Wakeup latency per trading core, from the kernel's log-linear buckets, four of them
        // to a `le` bound (docs/run.md); the sum is estimated from the bucket midpoints (the
        // kernel side keeps counts, not sums).
        let mut m = enc.encode_descriptor(
            "keeper_wakeup_latency_seconds",
            "Run-queue latency (wakeup to on-CPU) on the trading cores, by task kind (le bounds: 4 per power of two, 0.512 us apart below 2.048 us)",
            None,
            MetricType::Histogram,
        )?;
        for c in &s.cpus {
            for (tasks, l) in [("protected", &c.protected), ("other", &c.other)] {
                let labels: Labels = vec![("cpu", c.cpu.to_string()), ("tasks", tasks.into())];
                let (buckets, sum) = le_buckets(&l.buckets);
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, l.count, &buckets, None)?;
            }
        }
        let ns = 1e-9;
        let time: Vec<(Labels, u64)> = s
            .cpus
            .iter()
            .flat_map(|c| {
                [
                    ("protected", c.protected_ns),
                    ("intruder", c.intruder_ns),
                    ("kernel", c.kernel_ns),
                    ("keeper", c.keeper_ns),
                    ("idle", c.idle_ns),
                ]
                .map(|(k, v)| (vec![("cpu", c.cpu.to_string()), ("kind", k.to_string())], v))
            })
            .collect();
        let mut m = enc.encode_descriptor(
            "keeper_trading_core_seconds",
            "Time on each trading core by kind of task (intruder: neither protected nor kernel)",
            None,
            MetricType::Counter,
        )?;
        for (labels, v) in &time {
            ConstCounter::new(*v as f64 * ns).encode(m.encode_family(labels)?)?;
        }
        noise(&mut enc, &s.noise)?;
        counter(
            &mut enc,
            "keeper_evictions",
            "Intruders moved off the trading cores",
            &[(vec![], s.evictions)],
        )?;
        let actions: Vec<(Labels, u64)> = s
            .actions
            .iter()
            .map(|((kind, ok), n)| (vec![("kind", kind.clone()), ("ok", ok.to_string())], *n))
            .collect();
        counter(
            &mut enc,
            "keeper_actions",
            "Actions carried out, by kind and success",
            &actions,
        )?;
        counter(
            &mut enc,
            "keeper_errors",
            "Actions that failed",
            &[(vec![], s.errors)],
        )?;
        counter(
            &mut enc,
            "keeper_ringbuf_events",
            "Intruder events on the ring buffer (lost: buffer full)",
            &[
                (vec![("state", "sent".into())], s.events_sent),
                (vec![("state", "lost".into())], s.events_lost),
            ],
        )?;
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let frozen: Vec<(Labels, f64)> = s
            .workloads
            .iter()
            .map(|(w, (f, _))| (vec![("workload", w.clone())], flag(*f)))
            .collect();
        let throttled: Vec<(Labels, f64)> = s
            .workloads
            .iter()
            .map(|(w, (_, t))| (vec![("workload", w.clone())], flag(*t)))
            .collect();
        gauge(
            &mut enc,
            "keeper_workload_frozen",
            "1 while the keeper holds the workload frozen",
            &frozen,
        )?;
        gauge(
            &mut enc,
            "keeper_workload_throttled",
            "1 while the keeper throttles the workload",
            &throttled,
        )?;
        let one = |v: f64| vec![(Labels::new(), v)];
        if let Some(p99) = s.trading_p99_seconds {
            gauge(
                &mut enc,
                "keeper_trading_p99_wakeup_seconds",
                "p99 wakeup latency of protected tasks on the trading cores, last 5 s",
                &one(p99),
            )?;
        }
        gauge(
            &mut enc,
            "keeper_loadavg",
            "1-minute load average",
            &one(s.loadavg),
        )?;
        gauge(
            &mut enc,
            "keeper_pressure_avg10_ratio",
            "Host PSI avg10: share of the last 10 s that tasks stalled (0-1)",
            &[
                (
                    vec![("resource", "cpu".into()), ("kind", "some".into())],
                    s.cpu_pressure_some / 100.0,
                ),
                (
                    vec![("resource", "memory".into()), ("kind", "some".into())],
                    s.memory_pressure_some / 100.0,
                ),
                (
                    vec![("resource", "memory".into()), ("kind", "full".into())],
                    s.memory_pressure_full / 100.0,
                ),
            ],
        )?;
        encode_keeper_state(&mut enc, &s)?;
        if let Some(t) = s.gpu_temperature_celsius {
            gauge(
                &mut enc,
                "keeper_gpu_temperature_celsius",
                "GPU temperature",
                &one(t),
            )?;
        }
        if let Some(p) = s.gpu_power_watts {
            gauge(
                &mut enc,
                "keeper_gpu_power_watts",
                "GPU power draw",
                &one(p),
            )?;
        }
        Ok(())
    }
}

/// What the keeper itself holds: its liveness, its service-level targets, what it could not
/// undo, the thermal guard, and how its preemptions kept their deadline (what the alerting
/// rules in deploy/prometheus/ read).
fn encode_keeper_state(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let one = |v: f64| vec![(Labels::new(), v)];
    gauge(
        enc,
        "keeper_last_tick_timestamp_seconds",
        "When the keeper's loop last ticked (Unix time)",
        &one(s.last_tick_unix_s),
    )?;
    gauge(
        enc,
        "keeper_undo_pending",
        "Changes whose undo failed and is retried (keeper status lists them)",
        &one(s.undo_pending as f64),
    )?;
    gauge(
        enc,
        "keeper_thermal_guard_active",
        "1 while rules.thermal_guard holds GPU users frozen",
        &one(if s.thermal_guard_active { 1.0 } else { 0.0 }),
    )?;
    if let Some(t) = s.slo_trading_p99_seconds {
        gauge(
            enc,
            "keeper_slo_trading_p99_wakeup_target_seconds",
            "The policy's target for the trading cores' p99 wakeup latency (rules.slo)",
            &one(t),
        )?;
    }
    if let Some(r) = s.slo_trading_intruder_share_ratio {
        gauge(
            enc,
            "keeper_slo_trading_intruder_share_target_ratio",
            "The policy's ceiling on intruders' share of the trading cores (rules.slo)",
            &one(r),
        )?;
    }
    counter(
        enc,
        "keeper_preemptions",
        "Interactions whose preemption was carried out",
        &[(vec![], s.preemptions)],
    )?;
    counter(
        enc,
        "keeper_preemption_deadline_missed",
        "Preemptions that took longer than the tightest preempt.deadline",
        &[(vec![], s.preemptions_late)],
    )
}

/// `--metrics` values: `PORT` (127.0.0.1), `:PORT` (127.0.0.1), `HOST:PORT`, `[V6]:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let bare = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = bare.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not PORT, :PORT or HOST:PORT (e.g. 9464, 127.0.0.1:9464)"))
}

/// Binds now (so a taken port is an error at start) and serves `GET /metrics` until dropped.
/// Metrics connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics");
    // Each connection holds a descriptor: past this many at once, a new one is closed at
    // accept, so idle or slow peers cannot use up the keeper's descriptors.
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let (mut conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (EMFILE) fails at once: no busy loop.
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open, closing a new one");
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded in size and time).
                let head = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let got = conn.read(&mut buf[n..]).await.ok()?;
                        if got == 0 {
                            break;
                        }
                        n += got;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
                })
                .await;
                let Ok(Some(head)) = head else { return };
                let line = head.lines().next().unwrap_or_default();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let response = if method == "GET"
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    let (body, kind) = match exposition::wants_openmetrics(&head) {
                        true => (metrics.render(), exposition::OPENMETRICS),
                        false => (
                            exposition::to_text_0_0_4(&metrics.render()),
                            exposition::TEXT_0_0_4,
                        ),
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    tracing::debug!(%peer, request = %line, "metrics: not found");
                    let body = "only GET /metrics here\n";
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

/// The kernel's log-linear buckets, four to a `le` bound (in seconds; the last one `+Inf`),
/// as /metrics gives them (non-cumulative counts), and the sum estimated from the buckets'
/// midpoints (the last one's lower bound).
fn le_buckets(buckets: &[u64]) -> (Vec<(f64, u64)>, f64) {
    const PER_BOUND: usize = 4;
    let groups = keeper_common::HIST_BUCKETS / PER_BOUND;
    let le = (0..groups)
        .map(|g| {
            let n = (buckets.iter().skip(g * PER_BOUND).take(PER_BOUND)).sum();
            let bound = match g + 1 {
                last if last == groups => f64::MAX,
                next => keeper_common::bucket_low_ns(next * PER_BOUND) as f64 / 1e9,
            };
            (bound, n)
        })
        .collect();
    let sum = (buckets.iter().enumerate())
        .map(|(i, &n)| {
            let (low, high) = Histogram::bucket_bounds_ns(i);
            let mid = if high == u64::MAX {
                low
            } else {
                (low + high) / 2
            };
            n as f64 * mid as f64 / 1e9
        })
        .sum();
    (le, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::view::LatencyView;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:1").unwrap().to_string(), "0.0.0.0:1");
        assert!(parse_addr("nope").unwrap_err().contains("HOST:PORT"));
    }

    /// Four log-linear buckets to a `le` bound, the last one `+Inf`; each wakeup counted once.
    #[test]
    fn le_bounds_gather_four_log_linear_buckets() {
        let mut b = vec![0; keeper_common::HIST_BUCKETS];
        b[keeper_common::latency_bucket(3_000)] = 2;
        b[keeper_common::latency_bucket(65_000)] = 1;
        b[keeper_common::HIST_BUCKETS - 1] = 1;
        let (le, sum) = le_buckets(&b);
        assert_eq!(le.len(), keeper_common::HIST_BUCKETS / 4);
        assert_eq!(le.iter().map(|x| x.1).sum::<u64>(), 4);
        assert_eq!(le.last().unwrap(), &(f64::MAX, 1));
        let at = |s: f64| le.iter().find(|(bound, _)| *bound >= s).unwrap();
        assert_eq!(at(3e-6).1, 2, "{le:?}");
        assert!((at(65e-6).0 - 65e-6).abs() < 65e-6 * 0.25);
        assert!(sum > 1.0 && sum < 1.1, "{sum}");
    }

    #[test]
    fn a_snapshot_renders_as_openmetrics() {
        let m = Metrics::default();
        m.update(|s| {
            let l = LatencyView {
                count: 3,
                p50_us: None,
                p90_us: None,
                p99_us: None,
                p999_us: None,
                max_us: None,
                buckets: {
                    let mut b = vec![0; keeper_common::HIST_BUCKETS];
                    b[keeper_common::latency_bucket(3_000)] = 2;
                    b[keeper_common::latency_bucket(50_000)] = 1;
                    b
                },
            };
            s.cpus = vec![CpuView {
                cpu: 1,
                protected: l.clone(),
                other: l,
                idle_ns: 1_000_000_000,
                kernel_ns: 0,
                protected_ns: 0,
                intruder_ns: 5,
                keeper_ns: 0,
                switches: 9,
            }];
            s.evictions = 4;
            s.actions.insert(("freeze".into(), true), 2);
            s.workloads.insert("muse".into(), (true, false));
        });
        let text = m.render();
        for want in [
            "keeper_wakeup_latency_seconds_bucket{le=\"0.000003072\",cpu=\"1\",tasks=\"protected\"} 2",
            "keeper_wakeup_latency_seconds_bucket{le=\"0.000049152\",cpu=\"1\",tasks=\"protected\"} 2",
            "keeper_wakeup_latency_seconds_bucket{le=\"0.000057344\",cpu=\"1\",tasks=\"protected\"} 3",
            "keeper_wakeup_latency_seconds_bucket{le=\"+Inf\",cpu=\"1\",tasks=\"protected\"} 3",
            "keeper_evictions_total 4",
            "keeper_actions_total{kind=\"freeze\",ok=\"true\"} 2",
            "keeper_workload_frozen{workload=\"muse\"} 1",
            "keeper_trading_core_seconds_total{cpu=\"1\",kind=\"idle\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "no `{want}` in\n{text}");
        }
    }
}

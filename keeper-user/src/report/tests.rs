//! Renderings of a hand-made record: every format, escaping, and records from older versions.

use super::{view::*, *};

fn record() -> RunRecord {
    let mut buckets = vec![0u64; keeper_common::HIST_BUCKETS];
    buckets[keeper_common::latency_bucket(10_000)] = 900;
    buckets[keeper_common::latency_bucket(20_000)] = 90;
    buckets[keeper_common::latency_bucket(70_000)] = 10;
    let lat = LatencyView {
        count: 1000,
        p50_us: Some(10.1),
        p90_us: Some(10.2),
        p99_us: Some(20.3),
        p999_us: Some(70.4),
        max_us: Some(101.0),
        buckets,
    };
    RunRecord {
        version: RECORD_VERSION,
        started: "2026-11-23T08:00:00Z".into(),
        ended: "2026-11-23T08:01:00Z".into(),
        duration_s: 60.0,
        policy: "hive <embedded>".into(),
        mode: "enforcing".into(),
        trading_cores: "1".into(),
        cpus: vec![CpuView {
            cpu: 1,
            protected: lat.clone(),
            other: LatencyView {
                count: 0,
                buckets: vec![],
                ..lat
            },
            idle_ns: 50,
            kernel_ns: 1,
            protected_ns: 40,
            intruder_ns: 9,
            keeper_ns: 0,
            switches: 2000,
        }],
        intruders: vec![IntruderView {
            pid: 42,
            tgid: 42,
            comm: "<hog>".into(),
            cgroup: "muse.slice".into(),
            cgroup_id: 7,
            stolen_ns: 9_000_000,
            share: 0.15,
        }],
        evictions: 1,
        eviction_latency: EvictionLatency::of(&[1200.0]),
        slo: vec![SloVerdict {
            workload: "banker".into(),
            objective: "trading_p99_wakeup".into(),
            target: "p99 ≤ 100 µs".into(),
            measured: Some("p99 20.3 µs (1000 wakeups)".into()),
            met: Some(true),
            detail: "d".into(),
        }],
        samples: (0..60)
            .map(|i| Sample {
                t_s: i as f64,
                trading_p99_us: Some(20.0 + i as f64),
                loadavg: Some(0.3),
                memory_pressure_some_avg10: Some(1.5),
                ..Sample::default()
            })
            .collect(),
        actions: vec![ActionRecord {
            t_s: 12.5,
            kind: "freeze".into(),
            action: "freeze muse".into(),
            rule: "eva-core.preempt".into(),
            reason: "interaction started".into(),
            outcome: vec!["done: frozen".into()],
            ok: true,
            ..ActionRecord::default()
        }],
        ..RunRecord::default()
    }
}

#[test]
fn html_is_one_self_contained_page_with_every_chart() {
    let html = html::render(&record());
    for id in [
        "histogram-cpu1",
        "latency-over-time",
        "actions-over-time",
        "pressure-over-time",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no chart {id}");
    }
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no CDN"
    );
    assert!(
        html.contains("&lt;hog&gt;") && !html.contains("<hog>"),
        "escaped"
    );
    assert!(html.contains("class=\"met\""));
    assert!(html.contains("No GPU readings"));
    // Powers of two from 0 µs to 256 µs are drawn (at least eight, so the axis reads the same
    // across runs).
    assert_eq!(html.matches("class=\"bar\"").count(), 8, "0–256 µs drawn");
}

#[test]
fn text_leads_with_the_verdicts() {
    let mut out = Vec::new();
    text::write(&mut out, &record()).unwrap();
    let text = String::from_utf8(out).unwrap();
    let slo = text.find("Service levels").unwrap();
    assert!(slo < text.find("Trading cores").unwrap());
    assert!(text.contains("MET"));
    assert!(text.contains("p99 20.3 "), "{text}");
    assert!(text.contains("freeze muse [eva-core.preempt]"));
}

#[test]
fn json_round_trips_and_old_records_still_read() {
    let json = serde_json::to_vec(&record()).unwrap();
    let back = parse("x.json", &json).unwrap();
    assert_eq!(back.samples.len(), 60);
    // A record without the fields added later (samples, slo, intruders) still reads.
    let old = br#"{"started":"a","ended":"b","policy":"p","mode":"enforcing","trading_cores":"1",
        "restored_at_start":[],"restored_at_exit":[],"cpus":[],"evictions":0,
        "eviction_latency":{"count":0,"p50_us":null,"p99_us":null,"max_us":null,"samples_us":[]},
        "errors":0,"actions":[]}"#;
    assert!(parse("old.json", old).unwrap().samples.is_empty());
}

/// A record written with the former 32 log2 buckets reads into the log-linear ones, each
/// count at its bucket's midpoint (bucket 3, 8–16 µs: at 12 µs).
#[test]
fn a_record_with_log2_buckets_reads_into_log_linear_ones() {
    let mut log2 = vec![0u64; 32];
    log2[3] = 5;
    log2[10] = 1;
    let json =
        format!(r#"{{"count":6,"p50_us":16,"p99_us":2048,"max_us":1500.0,"buckets":{log2:?}}}"#);
    let view: LatencyView = serde_json::from_str(&json).unwrap();
    assert_eq!(view.buckets.len(), keeper_common::HIST_BUCKETS);
    assert_eq!(view.buckets[keeper_common::latency_bucket(12_000)], 5);
    assert_eq!(view.buckets[keeper_common::latency_bucket(1_536_000)], 1);
    assert_eq!(view.p50_us, Some(16.0));
}

#[test]
fn a_broken_or_newer_record_is_a_located_error() {
    let err = parse("r.json", b"{\n  \"started\": 3")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("r.json:2:"), "{err}");
    let mut r = record();
    r.version = RECORD_VERSION + 1;
    let err = parse("r.json", &serde_json::to_vec(&r).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("version"), "{err}");
}

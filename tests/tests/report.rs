//! `keeper report` from a real run: the daemon enforces for a few seconds (a protected sleeper
//! and an intruder on the trading core, an EVA interaction that freezes Muse), its record is
//! rendered as HTML, and headless Chromium shows the charts (screenshot not blank, bars and
//! lines drawn). `keeper report --live` and `/metrics` answer while the daemon runs.

use std::{path::Path, process::Command, time::Duration};

use integration_test::{rig::*, *};

/// Chromium, or None (said loudly; a failure under CI=true, where xtask installs it).
fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true: chromium is needed for the HTML report test (apt package chromium)");
        }
        eprintln!("\n!!! SKIPPED the browser half of the report test: no chromium !!!\n");
    }
    found
}

fn keeper(args: &[&str]) -> std::process::Output {
    let out = Command::new(KEEPER).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "keeper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_real_run_renders_as_html_with_its_charts_in_chromium() {
    if !privileged("a_real_run_renders_as_html_with_its_charts_in_chromium") {
        return;
    }
    let rig = Rig::with_rules(
        "report",
        "  slo: { trading_p99_wakeup: 5ms, trading_intruder_share: 50% }\n",
    );
    let record = rig.dir.join("run.json");
    let mut daemon = rig.keeper(&[
        "--for",
        "5s",
        "--tick",
        "200ms",
        "--report",
        record.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    daemon.wait_for("metrics on /metrics", Duration::from_secs(10));
    let metrics_addr = daemon
        .lines
        .iter()
        .find_map(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .expect("the metrics address in the log");
    let cg = |w: &str| TestCgroup {
        rel: rig.rel(w),
        dir: rig.cg(w),
    };
    let (banker, muse, eva) = (cg("banker"), cg("muse"), cg("eva"));
    // Protected wakeups on the trading core, an intruder there, and an interaction.
    let sleeper = spawn_pinned(PROBE, &["sleep", "2000", "1000"], 1, Some(&banker));
    let hog = spawn_pinned(PROBE, &["spin", "6", "kt_report"], 1, Some(&muse));
    let assistant = spawn_pinned(PROBE, &["sleep", "600", "10000"], 0, Some(&eva));
    std::mem::forget((banker, muse, eva)); // the rig's scope removes them
    std::thread::sleep(Duration::from_millis(1500));
    let started = rig.control(&["interaction", "start"]);
    assert_eq!(started["ok"], true, "{started:#}");
    let live = keeper(&[
        "report",
        "--live",
        "--format",
        "json",
        "--socket",
        rig.socket().to_str().unwrap(),
    ]);
    let live: serde_json::Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(live["live"], true);
    assert!(live["evictions"].as_u64().unwrap() >= 1, "{live:#}");
    // Prometheus during the run: latency histogram, evictions, Muse frozen.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = scrape(&metrics_addr);
    for want in [
        "keeper_wakeup_latency_seconds_bucket{le=",
        "keeper_trading_core_seconds_total{cpu=\"1\",kind=\"intruder\"}",
        "keeper_workload_frozen{workload=\"muse\"} 1",
        "keeper_actions_total{kind=\"evict_intruder\",ok=\"true\"}",
    ] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }
    metrics_serve_the_alerting_rules(&metrics);
    metrics_serve_the_dashboard(&metrics);
    // Prometheus asks for OpenMetrics, and gets it.
    let om = scrape_accepting(&metrics_addr, "application/openmetrics-text;version=1.0.0");
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE keeper_evictions counter"),
        "{om}"
    );
    rig.control(&["interaction", "stop"]);
    daemon.finish();
    for c in [sleeper, hog, assistant] {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_cpu_time(c);
    }

    // The record: verdicts, a histogram with samples, actions, samples over time.
    let json = keeper(&["report", record.to_str().unwrap(), "--format", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        r["cpus"][0]["protected"]["count"].as_u64().unwrap() > 100,
        "{:#}",
        r["cpus"]
    );
    assert!(r["samples"].as_array().unwrap().len() >= 10);
    let kinds: Vec<&str> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"evict_intruder") && kinds.contains(&"freeze"),
        "{kinds:?}"
    );
    let verdicts: Vec<&str> = r["slo"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["objective"].as_str())
        .collect();
    assert_eq!(
        verdicts,
        [
            "trading_p99_wakeup",
            "trading_intruder_share",
            "preemption_deadline"
        ],
        "{:#}",
        r["slo"]
    );
    assert_eq!(r["slo"][2]["met"], true, "{:#}", r["slo"]);
    let text = keeper(&["report", record.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Service levels"));

    let html = rig.dir.join("report.html");
    keeper(&[
        "report",
        record.to_str().unwrap(),
        "--format",
        "html",
        "-o",
        html.to_str().unwrap(),
    ]);
    let Some(chromium) = chromium() else { return };
    let url = format!("file://{}", html.display());
    let dom = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in [
        "histogram-cpu1",
        "latency-over-time",
        "actions-over-time",
        "pressure-over-time",
    ] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "chart {id} not in the browser's DOM"
        );
    }
    let shot = rig.dir.join("report.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, h, rgb) = decode(&shot);
    let non_white = rgb.chunks(3).filter(|p| p.iter().any(|&c| c < 235)).count();
    let bar_blue = rgb
        .chunks(3)
        .filter(|p| near(p, [0x1f, 0x5f, 0xbf]))
        .count();
    eprintln!("screenshot {w}×{h}: {non_white} non-white pixels, {bar_blue} chart-blue pixels");
    assert!(
        non_white > (w * h) as usize / 100,
        "the screenshot is (nearly) blank"
    );
    assert!(bar_blue > 200, "no histogram bars or latency line drawn");
    if let Ok(dir) = std::env::var("KEEPER_REPORT_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&shot, Path::new(&dir).join("report.png"));
        let _ = std::fs::copy(&html, Path::new(&dir).join("report.html"));
    }
}

/// GET /metrics, the body.
/// `GET /metrics` as curl asks (the classic text format).
fn scrape(addr: &str) -> String {
    scrape_accepting(addr, "*/*")
}

fn scrape_accepting(addr: &str, accept: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn near(p: &[u8], c: [u8; 3]) -> bool {
    p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 24)
}

/// The screenshot as 8-bit RGB.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgb)
}

/// Every metric an alerting rule of deploy/prometheus/ reads is served by a live keeper, and
/// the scrape passes `promtool check metrics` (Prometheus' naming lint) where promtool is.
fn metrics_serve_the_alerting_rules(metrics: &str) {
    let rules_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/keeper-rules.yaml");
    let rules = std::fs::read_to_string(rules_file).unwrap();
    let mut named: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("description:"))
        .filter(|l| !l.contains("summary:"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("keeper_"))
        .collect();
    named.sort();
    named.dedup();
    assert!(named.len() >= 8, "{named:?}");
    for name in named {
        assert!(
            served(metrics, name),
            "the alerting rules read `{name}`, which /metrics does not serve:\n{metrics}"
        );
    }
    let Ok(mut lint) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: promtool must be installed"
        );
        return;
    };
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check metrics:\n{said}");
}

/// Every query of deploy/grafana/keeper.json (panels and variables) names metrics a live
/// keeper serves; the GPU's two are served with a GPU only (this run has none).
fn metrics_serve_the_dashboard(metrics: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/keeper.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let mut queries: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    queries.extend(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["query"].as_str()),
    );
    // The GPU's with a GPU only (this run has none); the noise's once an interrupt ran on a
    // trading core during the run (not on every host).
    let with_a_gpu = [
        "keeper_gpu_temperature_celsius",
        "keeper_gpu_power_watts",
        "keeper_noise_seconds",
    ];
    for q in queries {
        for name in q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("keeper_"))
        {
            assert!(
                served(metrics, name) || with_a_gpu.contains(&name),
                "the dashboard's `{q}` reads `{name}`, which /metrics does not serve"
            );
        }
    }
}

/// Whether the scrape has a sample of metric `name` (a line `name value` or `name{…} value`).
fn served(metrics: &str, name: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
}

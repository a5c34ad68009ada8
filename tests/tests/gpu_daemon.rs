//! Privileged live runs of `keeper run` against the fake NVML: the GPU handoff through the
//! control socket (checkpoint → freeze → thaw → restore, in the run record with each step's
//! time), eco mode on the fake's power limit and its restore at exit; and a run without a GPU
//! library, which says so once and keeps working. Everything acts inside a scope cgroup.

use std::{path::PathBuf, time::Duration};

use integration_test::gpu::{FakeGpu, Process, STATE_ENV, fake_lib};
use integration_test::{rig::*, *};

#[test]
fn live_handoff_and_eco_mode_against_the_fake_gpu() {
    if !privileged("live_handoff_and_eco_mode_against_the_fake_gpu") {
        return;
    }
    let g = FakeGpu::new("live");
    let scope = TestCgroup::new("gpu");
    let cg = |w: &str| {
        let dir = scope.dir.join(w);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup {
            rel: format!("{}/{w}", scope.rel),
            dir,
        }
    };
    let (eva, muse) = (cg("eva"), cg("muse"));
    let assistant = spawn_pinned(PROBE, &["sleep", "100000", "10000"], 0, Some(&eva));
    let worker = spawn_pinned(PROBE, &["sleep", "100000", "10000"], 0, Some(&muse));
    let s = &scope.rel;
    let policy = g.dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\n\
             host: {{ name: test, time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }}\n\
             workloads:\n\
             \x20 - name: eva\n\
             \x20   rank: 1\n\
             \x20   match: {{ cgroup: {s}/eva }}\n\
             \x20   gpu_handoff: {{ on: interaction, from: [muse], release_after: 1s }}\n\
             \x20 - {{ name: muse, rank: 2, match: {{ cgroup: {s}/muse }} }}\n\
             rules:\n\
             \x20 eco_mode: {{ idle_below: 10, idle_after: 2s, idle_power_limit: 60%, busy_power_limit: 100%, clock_offset_mhz: -200 }}\n"
        ),
    )
    .unwrap();
    g.device(|d| {
        d.utilization_gpu = 98;
        d.temperature_c = 70;
        d.compute_processes = vec![Process {
            pid: worker.id(),
            used_memory_bytes: 6 << 30,
        }];
    });
    let tool = g.stand_in_tool();
    let (socket, report) = (g.dir.join("keeper.sock"), g.dir.join("report.json"));
    let lib = fake_lib();
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let mut run = Daemon::start(
        &[
            "--policy",
            &p(&policy),
            "--scope",
            s,
            "--socket",
            &p(&socket),
            "--state-dir",
            &p(&g.dir.join("state")),
            "--report",
            &p(&report),
            "--nvml-lib",
            &p(&lib),
            "--cuda-checkpoint",
            &p(&tool),
            "--tick",
            "200ms",
        ],
        &[(STATE_ENV, g.state.to_str().unwrap())],
    );
    assert!(
        run.lines
            .iter()
            .any(|l| l.contains("GPU found: GPU rules active")),
        "{:#?}",
        run.lines
    );

    // The first decision sets eco mode's limit for a busy GPU ("GPU limit at start"): waited
    // for, so that it is not in the interaction's answer when the request beats the first tick.
    run.wait_for("set GPU power limit", Duration::from_secs(5));

    // EVA needs the GPU while Muse holds it. The checkpoint (cuda-checkpoint, seconds on a
    // real GPU) runs on the slow hands: the answer comes at once, the freeze waits behind it.
    let answer = control_at(&socket, &["interaction", "start"]);
    assert_eq!(answer["ok"], true, "{answer:#}");
    let kinds = |key: &str| -> Vec<String> {
        answer[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap().to_string())
            .collect()
    };
    let steps = [kinds("actions"), kinds("pending")].concat();
    assert_eq!(steps, ["gpu_checkpoint", "freeze"], "{answer:#}");
    assert!(
        answer["elapsed_ms"].as_f64().unwrap() < 1000.0,
        "{answer:#}"
    );
    assert!(
        eventually(Duration::from_secs(3), || cgroup_frozen(&muse.dir)),
        "muse never frozen"
    );
    assert!(!cgroup_frozen(&eva.dir));
    let toggle = format!("--toggle --pid {}", worker.id());
    assert_eq!(g.tool_calls(), [toggle]);
    // Checkpointed, Muse left the GPU; EVA works on it.
    g.device(|d| {
        d.compute_processes = vec![Process {
            pid: assistant.id(),
            used_memory_bytes: 8 << 30,
        }]
    });
    // `keeper status` shows the last readout (each tick reads the GPU).
    let mut status = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(3), || {
            status = control_at(&socket, &["status"]);
            status["gpu"]["processes"][0]["workload"] == "eva"
        }),
        "{status:#}"
    );
    assert_eq!(
        status["gpu_checkpointed"],
        serde_json::json!(["muse"]),
        "{status:#}"
    );

    // EVA is done: after the 1 s hysteresis Muse is thawed, then gets its GPU state back.
    control_at(&socket, &["interaction", "stop"]);
    assert!(
        eventually(Duration::from_secs(5), || !cgroup_frozen(&muse.dir)
            && g.tool_calls().len() == 2),
        "muse not handed back: {:?}",
        g.tool_calls()
    );
    // The GPU idles: eco mode lowers the power limit (and undervolts) after 2 s.
    g.device(|d| {
        d.compute_processes.clear();
        d.utilization_gpu = 0;
    });
    assert!(
        eventually(Duration::from_secs(6), || g.limit_mw() == 210_000),
        "eco mode did not act: {} mW",
        g.limit_mw()
    );
    // The undervolt is the batch's next step on the slow hands, right behind the limit.
    assert!(
        eventually(Duration::from_secs(1), || g.read().devices[0]
            .clock_offset_mhz
            == Some(-200)),
        "no undervolt: {:?}",
        g.read().devices[0].clock_offset_mhz
    );

    // At exit the keeper puts the GPU back as it found it.
    let log = run.stop();
    assert_eq!(g.limit_mw(), 350_000, "{log:#?}");
    assert_eq!(g.read().devices[0].clock_offset_mhz, Some(0));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let timeline: Vec<String> = record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["detail"]["workload"] == "muse" || a["kind"].as_str().unwrap().contains("gpu")
        })
        .map(|a| {
            format!(
                "{} {} [{}] {:.1} ms: {}",
                a["at"].as_str().unwrap(),
                a["kind"].as_str().unwrap(),
                a["rule"].as_str().unwrap(),
                a["elapsed_ms"].as_f64().unwrap(),
                a["outcome"][0].as_str().unwrap_or("")
            )
        })
        .collect();
    eprintln!("live GPU timeline:\n{}", timeline.join("\n"));
    let kinds: Vec<&str> = timeline
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "set_gpu_power_limit",
            "gpu_checkpoint",
            "freeze",
            "thaw",
            "gpu_restore",
            "set_gpu_power_limit",
            "set_gpu_clock_offset"
        ],
        "{timeline:#?}"
    );
    assert!(
        record["restored_at_exit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "GPU power limit back to 350 W"),
        "{record:#}"
    );
    for c in [assistant, worker] {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_cpu_time(c);
    }
}

#[test]
fn a_live_run_without_a_gpu_library_says_so_once_and_keeps_working() {
    if !privileged("a_live_run_without_a_gpu_library_says_so_once_and_keeps_working") {
        return;
    }
    let g = FakeGpu::new("live-nogpu");
    let scope = TestCgroup::new("nogpu");
    let run = Daemon::start(
        &[
            "--policy",
            integration_test::HIVE_POLICY,
            "--scope",
            &scope.rel,
            "--socket",
            g.dir.join("keeper.sock").to_str().unwrap(),
            "--state-dir",
            g.dir.join("state").to_str().unwrap(),
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
            "--tick",
            "100ms",
        ],
        &[(STATE_ENV, g.state.to_str().unwrap())],
    );
    let status = control_at(&g.dir.join("keeper.sock"), &["status"]);
    assert_eq!(status["ok"], true);
    assert!(status["gpu"].is_null());
    std::thread::sleep(Duration::from_millis(500));
    let log = run.stop();
    let said: Vec<&String> = log.iter().filter(|l| l.contains("no GPU")).collect();
    assert_eq!(said.len(), 1, "{log:#?}");
    assert!(said[0].contains("GPU rules inactive, everything else keeps working"));
    assert!(!log.iter().any(|l| l.contains("panicked")));
}

/// A GPU whose driver hangs (each NVML query 3 s, the fake's `hang_ms`) does not hold the
/// loop: the readout is made on a thread of its own, an interaction is answered and Muse
/// frozen at once, the GPU is said unreadable (GPU rules still) and readable again once the
/// driver answers. Before, the loop made the readout itself and stood still behind it.
#[test]
fn a_hanging_gpu_driver_does_not_hold_the_loop() {
    if !privileged("a_hanging_gpu_driver_does_not_hold_the_loop") {
        return;
    }
    let g = FakeGpu::new("hang");
    let rig = Rig::new("gpu-hang");
    let (muse, eva) = (rig.workload("muse"), rig.workload("eva"));
    let mut kids = [
        spawn_pinned(PROBE, &["sleep", "100000", "10000"], 0, Some(&muse)),
        spawn_pinned(PROBE, &["sleep", "100000", "10000"], 0, Some(&eva)),
    ];
    let lib = fake_lib();
    let mut run = rig.keeper_with_env(
        &["--nvml-lib", lib.to_str().unwrap(), "--tick", "200ms"],
        &[(STATE_ENV, g.state.to_str().unwrap())],
    );
    run.wait_for("GPU found: GPU rules active", Duration::from_secs(5));
    let mut s = g.read();
    s.hang_ms = 3000;
    g.write(&s);
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    let answer = rig.control(&["interaction", "start"]);
    let took = t.elapsed();
    assert_eq!(answer["ok"], true, "{answer:#}");
    assert!(
        took < Duration::from_secs(1),
        "the interaction waited {took:?} behind the GPU's readout"
    );
    assert!(rig.frozen("muse"), "muse not frozen at once");
    run.wait_for("has not answered a readout", Duration::from_secs(5));
    s.hang_ms = 0;
    g.write(&s);
    run.wait_for("GPU readable again", Duration::from_secs(10));
    rig.control(&["interaction", "stop"]);
    run.stop();
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    std::mem::forget((muse, eva));
}

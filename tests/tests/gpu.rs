//! GPU tests against the fake NVML (fake-nvml/, loaded by nvml-wrapper like the real one):
//! `keeper gpu`, the "no GPU" cases, the power limit (clamped, read back, journaled, restored),
//! eco mode down and up, and the thermal guard with hysteresis. The handoff is in
//! gpu_handoff.rs, the live daemon in gpu_daemon.rs. No root needed: workloads are child
//! processes matched by pid file, frozen with SIGSTOP.

use std::{collections::BTreeMap, process::Command};

use integration_test::{gpu::*, gpu_rig::*};
use jiff::Timestamp;
use keeper::{
    act::{Actuators, execute::execute},
    decide::{self, EngineState, Observations, WorkloadObs},
    device::{
        placement::{self, Placement},
        procfs::HostTotals,
    },
    policy::{Percent, Policy},
};

fn keeper_gpu(g: &FakeGpu, args: &[&str]) -> std::process::Output {
    Command::new(KEEPER)
        .arg("gpu")
        .args(args)
        .env(STATE_ENV, &g.state)
        .output()
        .unwrap()
}

#[test]
fn keeper_gpu_prints_the_fake_readout_with_workloads() {
    let g = FakeGpu::new("readout");
    let muse = Kid::new(&g.dir, "muse");
    let policy = g.dir.join("policy.yaml");
    std::fs::write(&policy, policy_text(&g.dir, "", "")).unwrap();
    g.device(|d| {
        d.temperature_c = 67;
        d.utilization_gpu = 93;
        d.power_usage_mw = 312_500;
        d.compute_processes = vec![Process {
            pid: muse.pid(),
            used_memory_bytes: 5 << 30,
        }];
        d.graphics_processes = vec![Process {
            pid: 4_000_000,
            used_memory_bytes: 200 << 20,
        }];
    });
    let lib = fake_lib();
    let base = [
        "--nvml-lib",
        lib.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    let out = keeper_gpu(&g, &[&base[..], &["--format", "json"]].concat());
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["temperature_c"], 67);
    assert_eq!(v["utilization_pct"], 93);
    assert_eq!(v["name"], "NVIDIA GeForce RTX 3090 (fake)");
    assert_eq!(v["power"]["limit_mw"], 350_000);
    assert_eq!(v["power"]["min_mw"], 100_000);
    assert_eq!(v["power"]["max_mw"], 400_000);
    assert_eq!(v["clock_offset_mhz"], 0);
    assert_eq!(v["processes"][0]["pid"], muse.pid());
    assert_eq!(v["processes"][0]["kind"], "compute");
    assert_eq!(v["processes"][0]["workload"], "muse");
    assert_eq!(v["processes"][1]["kind"], "graphics");
    assert!(v["processes"][1]["workload"].is_null());
    let text = keeper_gpu(&g, &base);
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "temperature   67 °C",
        "power draw    312.5 W",
        "constraints 100–400 W",
        "5.0 GiB  muse",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
}

#[test]
fn no_library_no_driver_an_old_driver_or_a_bad_state_file_is_no_gpu() {
    let g = FakeGpu::new("nogpu");
    let lib = fake_lib();
    let lib = lib.to_str().unwrap();
    let mut cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        (
            "missing library",
            vec!["--nvml-lib", "/nonexistent/libnvidia-ml.so.1"],
            None,
        ),
        (
            "driver not loaded",
            vec!["--nvml-lib", lib],
            Some(r#"{"init": "driver_not_loaded"}"#),
        ),
        (
            "old driver",
            vec!["--nvml-lib", lib],
            Some(r#"{"missing": ["nvmlDeviceGetComputeRunningProcesses_v3"]}"#),
        ),
        (
            "no device",
            vec!["--nvml-lib", lib],
            Some(r#"{"devices": []}"#),
        ),
        ("bad state file", vec!["--nvml-lib", lib], Some("{not json")),
    ];
    for (case, args, state) in cases.drain(..) {
        if let Some(s) = state {
            std::fs::write(&g.state, s).unwrap();
        }
        let out = keeper_gpu(&g, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stdout} {stderr}");
        assert!(stdout.starts_with("no GPU: "), "{case}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{case}: {stdout}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
    // The old driver names what it lacks.
    std::fs::write(&g.state, r#"{"missing": ["nvmlDeviceGetTemperature"]}"#).unwrap();
    let out = keeper_gpu(&g, &["--nvml-lib", lib, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["gpu"].is_null());
    assert!(
        v["no_gpu"].as_str().unwrap().contains("too old")
            && v["no_gpu"]
                .as_str()
                .unwrap()
                .contains("nvmlDeviceGetTemperature"),
        "{v}"
    );
}

#[test]
fn the_power_limit_is_clamped_read_back_journaled_and_restored() {
    let g = FakeGpu::new("limit");
    let _env = in_process(&g);
    g.device(|d| {
        d.default_limit_mw = 450_000;
        d.power_limit_mw = 400_000;
    });
    // --dry-run: says what it would do, changes nothing.
    let mut dry = actuators(&g, true, None);
    let o = dry.set_gpu_power_limit(Percent::new(60.0)).unwrap();
    assert!(
        o.to_string()
            .starts_with("dry run, would: set GPU power limit 270 W"),
        "{o}"
    );
    assert_eq!(g.limit_mw(), 400_000);
    drop(dry);

    let mut act = actuators(&g, false, None);
    let o = act
        .set_gpu_power_limit(Percent::new(20.0))
        .unwrap()
        .to_string();
    assert!(o.contains("90 W raised to the minimum 100 W"), "{o}");
    assert!(o.contains("enforced limit read back"), "{o}");
    assert_eq!(g.limit_mw(), 100_000);
    let o = act
        .set_gpu_power_limit(Percent::new(100.0))
        .unwrap()
        .to_string();
    assert!(o.contains("450 W lowered to the maximum 400 W"), "{o}");
    assert_eq!(g.limit_mw(), 400_000);
    let o = act
        .set_gpu_power_limit(Percent::new(100.0))
        .unwrap()
        .to_string();
    assert!(o.starts_with("unchanged"), "{o}");
    // The driver keeps enforcing something else: not confirmed.
    g.device(|d| d.enforced_limit_mw = Some(300_000));
    let e = act
        .set_gpu_power_limit(Percent::new(60.0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("270000 mW not confirmed") && e.contains("300000"),
        "{e}"
    );
    g.device(|d| d.enforced_limit_mw = None);
    // Refused (not root on a real GPU): an error, no panic.
    g.device(|d| d.set_error = Some("no_permission".into()));
    assert!(act.set_gpu_power_limit(Percent::new(50.0)).is_err());
    g.device(|d| d.set_error = None);
    // Exit (or the next start after a crash): the original limit comes back.
    assert_eq!(g.limit_mw(), 270_000);
    let restored = act.restore_all().unwrap();
    assert_eq!(restored, ["GPU power limit back to 400 W"]);
    assert_eq!(g.limit_mw(), 400_000);
}

#[test]
fn a_library_named_by_the_journal_is_loaded_only_if_root_alone_can_change_it() {
    use keeper::act::journal::{Entry, Journal};
    use std::os::unix::fs::PermissionsExt;
    let g = FakeGpu::new("untrusted");
    let _env = in_process(&g);
    g.device(|d| d.power_limit_mw = 200_000);
    // A working library, in a folder anyone may write (not sticky): anyone could swap it.
    let open = g.dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let lib = open.join("libnvidia-ml.so.1");
    std::fs::copy(fake_lib(), &lib).unwrap();
    let uuid = g.read().devices[0].uuid.clone();
    let mut journal = Journal::open(&g.dir.join("state")).unwrap();
    let entry = Entry::GpuPowerLimit {
        lib: lib.clone(),
        uuid,
        original_mw: 350_000,
    };
    journal.record(&entry).unwrap();
    drop(journal);
    let mut act = actuators(&g, false, None);
    let restored = act.restore_all().unwrap();
    // Not loaded, nothing set: the undo stays in the journal for a person to look at.
    assert!(restored.is_empty(), "{restored:?}");
    assert_eq!(g.limit_mw(), 200_000);
    assert_eq!(act.undo_pending(), [entry]);
    let e = keeper::device::gpu::Gpu::open(&lib)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("writable by group or others (mode 777)"), "{e}");
    // The same library where only root can change it is loaded.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let restored = act.restore_all().unwrap();
    assert_eq!(restored, ["GPU power limit back to 350 W"]);
    assert_eq!(g.limit_mw(), 350_000);
}

#[test]
fn a_checkpoint_tool_named_by_the_journal_is_run_only_if_root_alone_can_change_it() {
    use keeper::act::journal::{Entry, Journal};
    use std::os::unix::fs::PermissionsExt;
    let g = FakeGpu::new("untrusted-tool");
    let _env = in_process(&g);
    let kid = Kid::new(&g.dir, "muse");
    let pid = kid.pid();
    // The stand-in tool (it logs each call in g.dir), in a folder anyone may write.
    let open = g.dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let tool = open.join("cuda-checkpoint");
    std::fs::copy(g.stand_in_tool(), &tool).unwrap();
    let entry = Entry::GpuCheckpoint {
        pid,
        start: keeper::act::process::start_time(pid).unwrap(),
        tool: tool.clone(),
    };
    let mut journal = Journal::open(&g.dir.join("state")).unwrap();
    journal.record(&entry).unwrap();
    drop(journal);
    let mut act = actuators(&g, false, None);
    act.restore_all().unwrap();
    // Never run (not even `--get-state`); the undo waits in the journal.
    let log = g.dir.join("cuda-checkpoint.log");
    assert!(!log.exists(), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(act.undo_pending(), [entry]);
    // Only root can change it now: run, and the undo is done.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    act.restore_all().unwrap();
    assert!(act.undo_pending().is_empty());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("--get-state")
    );
}

/// observe (fake GPU, pid-file workloads) → decide at a given time → execute.
struct Loop {
    g: FakeGpu,
    policy: Policy,
    act: Actuators,
    state: EngineState,
    placements: BTreeMap<String, Placement>,
    kids: BTreeMap<&'static str, Kid>,
}

impl Loop {
    fn new(tag: &str, rules: &str) -> Loop {
        let g = FakeGpu::new(tag);
        let policy = load_policy(&policy_text(&g.dir, "", rules));
        let kids: BTreeMap<_, _> = ["eva", "muse", "research"]
            .into_iter()
            .map(|n| (n, Kid::new(&g.dir, n)))
            .collect();
        let act = {
            let _env = in_process(&g);
            actuators(&g, false, None)
        };
        let placements = placement::place_workloads(&policy, act.cgroups());
        assert_eq!(placements.len(), 3);
        Loop {
            g,
            policy,
            act,
            state: EngineState::default(),
            placements,
            kids,
        }
    }

    fn pid(&self, w: &str) -> u32 {
        self.kids[w].pid()
    }

    fn on_gpu(&self, workloads: &[&str], util: u32, temp: u32) {
        let procs = workloads
            .iter()
            .map(|w| Process {
                pid: self.pid(w),
                used_memory_bytes: 1 << 30,
            })
            .collect();
        self.g.device(|d| {
            d.compute_processes = procs;
            d.utilization_gpu = util;
            d.temperature_c = temp;
        });
    }

    /// One tick at `secs` after 2026-03-10T01:00Z; returns `action: outcome` lines.
    fn tick(&mut self, secs: i64) -> Vec<String> {
        let _env = in_process(&self.g);
        let mut r = self.act.gpu().unwrap().readout().unwrap();
        r.assign(|pid| placement::owner_of(pid, &self.placements));
        let obs = Observations {
            gpu: Some(keeper::sense::gpu::observation(&r)),
            workloads: self
                .placements
                .keys()
                .map(|w| (w.clone(), WorkloadObs::default()))
                .collect(),
            ..Default::default()
        };
        let now = Timestamp::from_second(1_773_104_400 + secs).unwrap();
        let mut out = Vec::new();
        for a in decide::decide(&self.policy, &mut self.state, &obs, now) {
            for r in execute(&mut self.act, &self.placements, HostTotals::read(), &a) {
                let r = r.unwrap_or_else(|e| panic!("{}: {e}", a.kind));
                out.push(format!("{}: {r}", a.kind));
            }
        }
        out
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _env = in_process(&self.g);
        let _ = self.act.restore_all();
    }
}

const ECO: &str = "rules:\n  eco_mode: { idle_below: 10, idle_after: 1m, idle_power_limit: 60%, busy_power_limit: 100%, clock_offset_mhz: -200 }\n";

#[test]
fn eco_mode_lowers_the_power_limit_when_idle_and_raises_it_for_work() {
    let mut l = Loop::new("eco", ECO);
    l.on_gpu(&[], 0, 40);
    let start = l.tick(0);
    assert_eq!(
        start,
        [
            "set GPU power limit 100%: unchanged: GPU power limit 350 W (100% of the default 350 W): already so"
        ]
    );
    assert!(l.tick(30).is_empty());
    let idle = l.tick(61);
    assert!(
        idle[0].starts_with("set GPU power limit 60%: done: GPU power limit 210 W"),
        "{idle:?}"
    );
    assert!(
        idle[1].starts_with("set GPU clock offset -200 MHz: done"),
        "{idle:?}"
    );
    assert_eq!(l.g.limit_mw(), 210_000);
    assert_eq!(l.g.read().devices[0].clock_offset_mhz, Some(-200));
    // A heavy task starts.
    l.on_gpu(&["muse"], 97, 60);
    let work = l.tick(62);
    assert!(
        work[0].starts_with("set GPU power limit 100%: done: GPU power limit 350 W"),
        "{work:?}"
    );
    assert!(
        work[1].starts_with("set GPU clock offset 0 MHz: done"),
        "{work:?}"
    );
    assert_eq!(l.g.limit_mw(), 350_000);
    assert_eq!(l.g.read().devices[0].clock_offset_mhz, Some(0));
    // Where the GPU has no clock offset, eco mode says the undervolt is unavailable.
    l.on_gpu(&[], 0, 40);
    l.g.device(|d| d.clock_offset_mhz = None);
    l.tick(70);
    let idle = l.tick(131);
    assert!(idle[1].contains("GPU clock offset unavailable"), "{idle:?}");
}

#[test]
fn the_thermal_guard_freezes_the_lowest_ranked_gpu_user_and_thaws_with_hysteresis() {
    let rules = "rules:\n  thermal_guard: { gpu_temp_above: 80, resume_below: 72, dwell: 10s }\n";
    let mut l = Loop::new("thermal", rules);
    let (muse, research) = (l.pid("muse"), l.pid("research"));
    l.on_gpu(&["muse", "research"], 98, 76);
    assert!(l.tick(0).is_empty());
    l.on_gpu(&["muse", "research"], 98, 85);
    let hot = l.tick(1);
    assert_eq!(
        hot,
        ["freeze research: done: stop 1 processes under ".to_string() + &research.to_string()]
    );
    assert!(stopped(research, true));
    assert!(stopped(muse, false));
    assert_eq!(l.tick(11).len(), 1, "still hot after the dwell: muse next");
    assert!(stopped(muse, true));
    // Between 72 and 80 °C: hysteresis holds both.
    l.on_gpu(&["muse", "research"], 0, 76);
    assert!(l.tick(30).is_empty());
    assert!(stopped(muse, true));
    // Cool: thaw in reverse, one per dwell.
    l.on_gpu(&["muse", "research"], 0, 65);
    let cool = l.tick(40);
    assert!(cool[0].starts_with("thaw muse: done: continue"), "{cool:?}");
    assert!(stopped(muse, false));
    assert!(stopped(research, true));
    assert!(l.tick(45).is_empty());
    assert!(l.tick(50)[0].starts_with("thaw research: done"));
    assert!(stopped(research, false));
}

//! Golden tests of `keeper simulate`: the seed scenarios (policies/scenarios/ × one-host.yaml)
//! and the Hive map's (policies/scenarios/hive/ × hive.yaml, or brain-vm.yaml for the GPU VM).

use std::path::{Path, PathBuf};
use std::process::Command;

use keeper::simulate::{self, scenario};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn simulate_text(name: &str) -> String {
    simulate_with("one-host.yaml", name)
}

/// `policies/SCENARIO` simulated on `policies/POLICY`.
fn simulate_with(policy: &str, name: &str) -> String {
    let text = std::fs::read(root().join("policies").join(policy)).unwrap();
    let policy = keeper::policy::load(&text, &keeper::policy::HostFacts::default())
        .expect("the policy is valid")
        .policy;
    let bytes = std::fs::read(root().join("policies/scenarios").join(name)).unwrap();
    let s = scenario::parse(&bytes).expect("scenario parses");
    simulate::run(&policy, &s)
        .expect("scenario runs")
        .render_text()
}

macro_rules! golden {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            let text = simulate_text($file);
            insta::with_settings!({ snapshot_path => "../policies/snapshots", prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(concat!("simulate_", stringify!($test)), text);
            });
        }
    };
}

golden!(trading_monday, "trading-monday.yaml");
golden!(hot_gpu_night, "hot-gpu-night.yaml");
golden!(saturday, "saturday.yaml");
golden!(dst_night, "dst-night.yaml");
golden!(dst_autumn_night, "dst-autumn-night.yaml");
golden!(gpu_handoff, "gpu-handoff.yaml");
golden!(repeat_offender, "repeat-offender.yaml");

macro_rules! golden_on {
    ($test:ident, $policy:literal, $file:literal) => {
        #[test]
        fn $test() {
            let text = simulate_with($policy, $file);
            insta::with_settings!({ snapshot_path => "../policies/snapshots", prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(concat!("simulate_", stringify!($test)), text);
            });
        }
    };
}

golden_on!(hive_trading_day, "hive.yaml", "hive/trading-day.yaml");
golden_on!(hive_memory_night, "hive.yaml", "hive/memory-night.yaml");
golden_on!(
    hive_brain_hot_gpu,
    "brain-vm.yaml",
    "hive/brain-hot-gpu.yaml"
);

#[test]
fn every_scenario_has_a_golden_test() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("policies/scenarios"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dst-autumn-night.yaml",
            "dst-night.yaml",
            "gpu-handoff.yaml",
            "hive",
            "hot-gpu-night.yaml",
            "repeat-offender.yaml",
            "saturday.yaml",
            "trading-monday.yaml"
        ]
    );
    let mut hive: Vec<String> = std::fs::read_dir(root().join("policies/scenarios/hive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    hive.sort();
    assert_eq!(
        hive,
        [
            "brain-hot-gpu.yaml",
            "memory-night.yaml",
            "trading-day.yaml"
        ]
    );
}

#[test]
fn the_binary_prints_the_same_timeline_and_json() {
    let run = |format: &str| {
        Command::new(integration_test::KEEPER)
            .args([
                "simulate",
                "--policy",
                "policies/one-host.yaml",
                "--scenario",
                "policies/scenarios/hot-gpu-night.yaml",
            ])
            .args(["--format", format])
            .current_dir(root())
            .output()
            .unwrap()
    };
    let text = run("text");
    assert!(text.status.success());
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        simulate_text("hot-gpu-night.yaml")
    );
    let json = run("json");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let first = &v["entries"][1]["actions"][0];
    assert_eq!(first["action"], "freeze");
    assert_eq!(first["workload"], "research");
    assert_eq!(first["rule"], "rules.thermal_guard");
}

#[test]
fn a_bad_scenario_is_refused_with_a_location() {
    let err = scenario::parse(b"steps:\n  - at: +1s\n    lodavg: 3\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown key `lodavg` (did you mean `loadavg`?)"),
        "{err}"
    );
    let policy = keeper::policy::one_host().unwrap();
    let s = scenario::parse(b"steps:\n  - at: +1s\n").unwrap();
    assert!(
        simulate::run(&policy, &s)
            .unwrap_err()
            .to_string()
            .contains("needs an earlier step")
    );
}

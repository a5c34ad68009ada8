//! `rules.gpu_mutex`: the GPU is lent while the borrower is active and given back after, a
//! failed move is asked again after its backoff, and where it is believed to be follows what
//! each move came to.

use jiff::Timestamp;

use super::*;
use crate::policy::{HostFacts, Policy};

const POLICY: &str = r#"
version: 1
host: { time_zone: UTC, trading_cores: "1", housekeeping_cores: "0" }
workloads:
  - { name: brain, rank: 2, match: { vmid: 100 } }
  - name: visual
    rank: 3
    match: { vmid: 104 }
    windows: [{ days: all, hours: "20:00-23:00" }]
rules:
  gpu_mutex:
    holder: brain
    lend_to: [visual]
    device: { id: hostpci0, driver: vfio-pci, host: "0000:01:00.0" }
"#;

fn policy() -> Policy {
    crate::policy::load(POLICY.as_bytes(), &HostFacts::default())
        .unwrap_or_else(|e| panic!("{:#?}", e.0))
        .policy
}

fn at(hhmmss: &str) -> Timestamp {
    format!("2026-03-10T{hhmmss}Z").parse().unwrap()
}

fn obs(present: &[&str]) -> Observations {
    let mut o = Observations::default();
    for n in present {
        o.workloads.insert((*n).to_string(), WorkloadObs::default());
    }
    o
}

fn moves(actions: &[Action]) -> Vec<String> {
    (actions.iter())
        .filter(|a| matches!(a.kind, ActionKind::MoveGpu { .. }))
        .map(|a| a.kind.to_string())
        .collect()
}

const LEND: &str = "move the GPU (hostpci0) from brain (vm 100) to visual (vm 104)";
const RETURN: &str = "move the GPU (hostpci0) from visual (vm 104) to brain (vm 100)";

#[test]
fn the_gpu_is_lent_while_the_borrower_is_active_and_given_back_after() {
    let p = policy();
    let mut s = EngineState::default();
    let both = obs(&["brain", "visual"]);
    assert!(moves(&decide(&p, &mut s, &both, at("19:59:00"))).is_empty());
    // Not running: nothing to lend to.
    assert!(moves(&decide(&p, &mut s, &obs(&["brain"]), at("20:00:00"))).is_empty());
    let lend = decide(&p, &mut s, &both, at("20:00:01"));
    assert_eq!(moves(&lend), [LEND]);
    let a = lend.iter().find(|a| a.rule.0 == "rules.gpu_mutex").unwrap();
    assert_eq!(a.reason, "visual needs the GPU: lent by brain");
    assert!(moves(&decide(&p, &mut s, &both, at("22:00:00"))).is_empty());
    assert_eq!(moves(&decide(&p, &mut s, &both, at("23:00:00"))), [RETURN]);
    assert_eq!(s.applied.gpu_lent, None);
}

#[test]
fn a_failed_lend_stays_with_the_holder_and_a_failed_return_with_the_borrower() {
    let p = policy();
    let mut s = EngineState::default();
    let both = obs(&["brain", "visual"]);
    let lend = decide(&p, &mut s, &both, at("20:00:00"));
    let lend = lend
        .iter()
        .find(|a| a.rule.0 == "rules.gpu_mutex")
        .unwrap()
        .clone();
    let failed = Outcome::Failed { retryable: true };
    acknowledge(&mut s, &mut Batch::default(), &lend, failed);
    assert_eq!(s.applied.gpu_lent, None);
    assert!(moves(&decide(&p, &mut s, &both, at("20:00:00.500"))).is_empty());
    assert_eq!(moves(&decide(&p, &mut s, &both, at("20:00:01"))), [LEND]);
    assert_eq!(s.applied.gpu_lent.as_deref(), Some("visual"));
    let back = decide(&p, &mut s, &both, at("23:00:00"));
    let back = back
        .iter()
        .find(|a| a.rule.0 == "rules.gpu_mutex")
        .unwrap()
        .clone();
    acknowledge(&mut s, &mut Batch::default(), &back, failed);
    assert_eq!(s.applied.gpu_lent.as_deref(), Some("visual"));
    assert!(moves(&decide(&p, &mut s, &both, at("23:00:00.500"))).is_empty());
    assert_eq!(moves(&decide(&p, &mut s, &both, at("23:00:01"))), [RETURN]);
}

#[test]
fn a_borrower_that_is_not_running_needs_the_gpu_in_its_windows_only_with_the_restart_path() {
    // Without `config`: a VM that is not running cannot be given the GPU.
    let p = policy();
    let mut s = EngineState::default();
    assert!(moves(&decide(&p, &mut s, &obs(&["brain"]), at("20:00:00"))).is_empty());
    // With it: lent at its window's start (the move starts it), given back at its end.
    let with = POLICY.replace(
        "device: { id: hostpci0",
        "config: \"0000:01:00.0,pcie=1\"\n    device: { id: hostpci0",
    );
    let p = crate::policy::load(with.as_bytes(), &HostFacts::default())
        .unwrap()
        .policy;
    let mut s = EngineState::default();
    assert!(moves(&decide(&p, &mut s, &obs(&["brain"]), at("19:59:00"))).is_empty());
    let lend = decide(&p, &mut s, &obs(&["brain"]), at("20:00:00"));
    assert_eq!(moves(&lend), [LEND]);
    let ActionKind::MoveGpu { config, .. } = &lend
        .iter()
        .find(|a| a.rule.0 == "rules.gpu_mutex")
        .unwrap()
        .kind
    else {
        unreachable!()
    };
    assert_eq!(config.as_deref(), Some("0000:01:00.0,pcie=1"));
    // Started by the move, it runs: it needs the GPU while it is active, up to 23:00.
    let running = obs(&["visual"]);
    assert!(moves(&decide(&p, &mut s, &running, at("21:00:00"))).is_empty());
    assert_eq!(
        moves(&decide(&p, &mut s, &running, at("23:00:00"))),
        [RETURN]
    );
}

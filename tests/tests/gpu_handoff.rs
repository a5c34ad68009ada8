//! The GPU handoff through the daemon's own loop (the `Enforcer`: observe → decide → act) on the
//! fake NVML: its order with cuda-checkpoint absent and present (a stand-in script), each step
//! timed; the rollback when a step fails; the journal's replay after a crash mid-handoff.
//! No root needed: workloads are child processes matched by pid file, frozen with SIGSTOP.

use std::{path::PathBuf, time::Duration};

use integration_test::{gpu::*, gpu_rig::*};
use keeper::{act::execute::Done, enforcer::Enforcer, policy::PolicySource};

/// An `Enforcer` (the daemon's observe → decide → act) on pid-file workloads and the fake GPU;
/// EVA's handoff from Muse with a 1 s hysteresis.
fn handoff_enforcer(g: &FakeGpu, tool: Option<PathBuf>) -> Enforcer {
    let file = g.dir.join("policy.yaml");
    let text = policy_text(
        &g.dir,
        ", gpu_handoff: { on: interaction, from: [muse], release_after: 1s }",
        "",
    );
    std::fs::write(&file, &text).unwrap();
    let source = PolicySource {
        file: Some(file),
        trading_cores: None,
        protect: vec![],
    };
    Enforcer::new(source, load_policy(&text), actuators(g, false, tool))
}

fn names(done: &[Done]) -> Vec<String> {
    done.iter().map(|d| d.action.kind.to_string()).collect()
}

/// Starts an interaction with Muse on the GPU; returns what the keeper did.
fn start_handoff(k: &mut Enforcer, g: &FakeGpu, muse: u32) -> Vec<Done> {
    g.device(|d| {
        d.compute_processes = vec![Process {
            pid: muse,
            used_memory_bytes: 6 << 30,
        }];
        d.utilization_gpu = 98;
    });
    k.interaction = true;
    let obs = k.observe(vec![], None);
    assert_eq!(obs.gpu.as_ref().unwrap().users.get("muse"), Some(&1));
    k.tick(&obs)
}

/// Ends it: the interaction stops, the hysteresis (1 s) passes.
fn end_handoff(k: &mut Enforcer, g: &FakeGpu) -> Vec<Done> {
    // Checkpointed, Muse left the GPU.
    g.device(|d| d.compute_processes.clear());
    k.interaction = false;
    let obs = k.observe(vec![], None);
    assert!(k.tick(&obs).is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    let obs = k.observe(vec![], None);
    k.tick(&obs)
}

#[test]
fn handoff_without_cuda_checkpoint_freezes_muse_and_says_its_vram_stays_held() {
    let g = FakeGpu::new("handoff-absent");
    let _env = in_process(&g);
    let (_eva, muse) = (Kid::new(&g.dir, "eva"), Kid::new(&g.dir, "muse"));
    let mut k = handoff_enforcer(&g, None);
    let done = start_handoff(&mut k, &g, muse.pid());
    assert_eq!(
        names(&done),
        [
            "checkpoint GPU state of muse (release its VRAM)",
            "freeze muse"
        ]
    );
    assert!(done.iter().all(|d| d.ok()), "{done:#?}");
    assert!(
        done[0].steps[0]
            .to_string()
            .contains("cuda-checkpoint not found: muse's VRAM stays held"),
        "{:?}",
        done[0].steps
    );
    assert!(stopped(muse.pid(), true));
    let done = end_handoff(&mut k, &g);
    assert_eq!(names(&done), ["thaw muse", "restore GPU state of muse"]);
    assert!(
        done[1].steps[0].to_string().contains("nothing to restore"),
        "{done:#?}"
    );
    assert!(stopped(muse.pid(), false));
    k.act.restore_all().unwrap();
}

#[test]
fn handoff_with_cuda_checkpoint_checkpoints_freezes_then_thaws_restores_each_step_timed() {
    let g = FakeGpu::new("handoff-tool");
    let _env = in_process(&g);
    let (_eva, muse) = (Kid::new(&g.dir, "eva"), Kid::new(&g.dir, "muse"));
    let mut k = handoff_enforcer(&g, Some(g.stand_in_tool()));
    let toggle = format!("--toggle --pid {}", muse.pid());
    let done = start_handoff(&mut k, &g, muse.pid());
    assert_eq!(
        names(&done),
        [
            "checkpoint GPU state of muse (release its VRAM)",
            "freeze muse"
        ]
    );
    assert!(
        done.iter().all(|d| d.ok() && d.elapsed_ms > 0.0),
        "{done:#?}"
    );
    assert!(
        done[0].steps[0].to_string().starts_with(&format!(
            "done: checkpointed the GPU state of muse (pid {} in ",
            muse.pid()
        )),
        "{:?}",
        done[0].steps
    );
    assert_eq!(g.tool_calls(), std::slice::from_ref(&toggle));
    assert!(stopped(muse.pid(), true));
    let done = end_handoff(&mut k, &g);
    assert_eq!(names(&done), ["thaw muse", "restore GPU state of muse"]);
    assert!(
        done[1].steps[0]
            .to_string()
            .starts_with("done: restored the GPU state of muse"),
        "{done:#?}"
    );
    assert_eq!(g.tool_calls(), [toggle.clone(), toggle]);
    assert!(stopped(muse.pid(), false));
    // The GPU state was given back: only the (already continued) stop is replayed.
    let replayed = k.act.restore_all().unwrap();
    assert!(!replayed.iter().any(|r| r.contains("GPU")), "{replayed:?}");
}

#[test]
fn a_failed_checkpoint_rolls_the_handoff_back_to_muse_running() {
    let g = FakeGpu::new("handoff-fail");
    let _env = in_process(&g);
    let (_eva, muse) = (Kid::new(&g.dir, "eva"), Kid::new(&g.dir, "muse"));
    let mut k = handoff_enforcer(&g, Some(g.stand_in_tool()));
    g.set_tool_failing(true);
    let done = start_handoff(&mut k, &g, muse.pid());
    assert_eq!(
        names(&done),
        [
            "checkpoint GPU state of muse (release its VRAM)",
            "freeze muse"
        ]
    );
    assert!(
        !done[0].ok() && done[0].steps[0].to_string().contains("stand-in: refused"),
        "{done:#?}"
    );
    assert!(
        done[1].steps[0]
            .to_string()
            .starts_with("skipped: the handoff of muse rolled back"),
        "{done:#?}"
    );
    assert!(stopped(muse.pid(), false));
    assert!(k.state.handoff["muse"].rolled_back);
    // No retry while EVA still talks; nothing to undo at the end.
    let obs = k.observe(vec![], None);
    assert!(k.tick(&obs).is_empty());
    g.set_tool_failing(false);
    assert!(end_handoff(&mut k, &g).is_empty());
    assert_eq!(g.tool_calls().len(), 1);
}

#[test]
fn after_a_crash_mid_handoff_the_next_keeper_thaws_then_restores_the_gpu_state() {
    let g = FakeGpu::new("handoff-crash");
    let _env = in_process(&g);
    let (_eva, muse) = (Kid::new(&g.dir, "eva"), Kid::new(&g.dir, "muse"));
    let mut k = handoff_enforcer(&g, Some(g.stand_in_tool()));
    start_handoff(&mut k, &g, muse.pid());
    assert!(stopped(muse.pid(), true));
    drop(k); // a crash: nothing undone, the journal stays
    let mut next = actuators(&g, false, None);
    let restored = next.restore_all().unwrap();
    assert_eq!(restored.len(), 2, "{restored:?}");
    assert!(restored[0].starts_with("continued pid"), "{restored:?}");
    assert!(
        restored[1].starts_with(&format!("restored the GPU state of pid {}", muse.pid())),
        "{restored:?}"
    );
    assert!(stopped(muse.pid(), false));
    assert_eq!(g.tool_calls().len(), 2);
}

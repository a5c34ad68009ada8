//! In-process rig of the GPU tests: workloads as child processes matched by pid file, the
//! policy naming them, actuators on the fake GPU.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
};

use keeper::{
    act::{Actuators, journal::Journal},
    device::{cgroupfs::CgroupFs, gpu::Gpu},
    policy::{HostFacts, Policy},
};

use crate::gpu::{FakeGpu, STATE_ENV, fake_lib};

pub use crate::{KEEPER, PROBE};

/// In-process tests share the fake's environment variable: one at a time.
static ENV: Mutex<()> = Mutex::new(());

pub fn in_process(g: &FakeGpu) -> MutexGuard<'static, ()> {
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: every in-process test holds ENV while the fake reads this variable.
    unsafe { std::env::set_var(STATE_ENV, &g.state) };
    guard
}

/// A child process (a workload stand-in), killed on drop.
pub struct Kid(Child);

impl Kid {
    pub fn new(dir: &Path, name: &str) -> Kid {
        let c = Command::new(PROBE)
            .args(["sleep", "100000", "10000"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pid")), c.id().to_string()).unwrap();
        Kid(c)
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn policy_text(dir: &Path, extra_eva: &str, rules: &str) -> String {
    let pf = |n: &str| dir.join(format!("{n}.pid")).display().to_string();
    format!(
        "version: 1\nhost: {{ time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }}\n\
         workloads:\n\
         \x20 - {{ name: eva, rank: 1, match: {{ pid_file: {} }}{extra_eva} }}\n\
         \x20 - {{ name: muse, rank: 2, match: {{ pid_file: {} }} }}\n\
         \x20 - {{ name: research, rank: 3, match: {{ pid_file: {} }} }}\n{rules}",
        pf("eva"),
        pf("muse"),
        pf("research")
    )
}

pub fn load_policy(text: &str) -> Policy {
    keeper::policy::load(text.as_bytes(), &HostFacts::default())
        .unwrap_or_else(|e| panic!("{:#?}", e.0))
        .policy
}

pub fn actuators(g: &FakeGpu, dry_run: bool, tool: Option<PathBuf>) -> Actuators {
    let journal = if dry_run {
        Journal::disabled()
    } else {
        Journal::open(&g.dir.join("state")).unwrap()
    };
    let mut act = Actuators::new(
        CgroupFs::at(g.dir.join("no-cgroups")),
        journal,
        dry_run,
        None,
    );
    act.set_gpu(Some(Gpu::open(&fake_lib()).unwrap()), tool);
    act
}

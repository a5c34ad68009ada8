//! The fake NVML for the GPU tests: where its library is, its state file, and a stand-in
//! `cuda-checkpoint` that logs its calls.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

pub use nvidia_ml_fake::state::{Device, Process, STATE_ENV, State, write_atomic};

/// `libnvidia_ml_fake.so`: built beside the test binaries (this crate's dependency puts it
/// in deps/; a workspace build also in the profile folder).
pub fn fake_lib() -> PathBuf {
    let dir = Path::new(crate::KEEPER).parent().expect("target/<profile>");
    for p in [
        dir.join("deps/libnvidia_ml_fake.so"),
        dir.join("libnvidia_ml_fake.so"),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!(
        "libnvidia_ml_fake.so not found under {}: cargo build -p fake-nvml",
        dir.display()
    );
}

/// A folder with the fake GPU's state file and the stand-in tool; removed on drop.
pub struct FakeGpu {
    pub dir: PathBuf,
    pub state: PathBuf,
}

impl FakeGpu {
    /// The default fake (an RTX 3090: 350 W default, 100–400 W), idle, no process.
    pub fn new(tag: &str) -> FakeGpu {
        let dir = std::env::temp_dir().join(format!("keeper-gpu-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let g = FakeGpu {
            state: dir.join("nvml.json"),
            dir,
        };
        g.write(&State::default());
        g
    }

    pub fn write(&self, s: &State) {
        write_atomic(&self.state, s).unwrap_or_else(|e| panic!("{}", e.0));
    }

    pub fn read(&self) -> State {
        serde_json::from_slice(&std::fs::read(&self.state).unwrap()).unwrap()
    }

    /// Changes device 0.
    pub fn device(&self, f: impl FnOnce(&mut Device)) {
        let mut s = self.read();
        f(&mut s.devices[0]);
        self.write(&s);
    }

    pub fn limit_mw(&self) -> u32 {
        self.read().devices[0].power_limit_mw
    }

    /// A `cuda-checkpoint` stand-in (`--get-state` / `--toggle` `--pid N`, each process's state
    /// kept in `state-N`, `running` at first): appends `<ns> <args>` to `cuda-checkpoint.log`; a
    /// toggle fails (exit 1) while the file `fail` exists beside it.
    pub fn stand_in_tool(&self) -> PathBuf {
        let tool = self.dir.join("cuda-checkpoint");
        std::fs::write(&tool, stand_in_script(&self.dir)).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        tool
    }

    /// The stand-in's state-changing calls, in order (`--toggle --pid N`).
    pub fn tool_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("cuda-checkpoint.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, args)| args.to_string()))
            .filter(|args| !args.starts_with("--get-state"))
            .collect()
    }

    pub fn set_tool_failing(&self, fail: bool) {
        let f = self.dir.join("fail");
        if fail {
            std::fs::write(f, "").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for FakeGpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stand-in's shell script, keeping its files in `dir`.
fn stand_in_script(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "#!/bin/sh\n\
         echo \"$(date +%s%N) $*\" >> '{d}/cuda-checkpoint.log'\n\
         st='{d}/state-'\"$3\"\n\
         if [ \"$1\" = --get-state ]; then cat \"$st\" 2>/dev/null || echo running; exit 0; fi\n\
         if [ -e '{d}/fail' ]; then echo 'stand-in: refused' >&2; exit 1; fi\n\
         if [ \"$(cat \"$st\" 2>/dev/null)\" = checkpointed ]; then echo running > \"$st\"; else echo checkpointed > \"$st\"; fi\n"
    )
}

/// Waits (up to 2 s: signals are asynchronous) until `pid` is stopped (`T`) or, with `false`,
/// until it is not; says whether it got there.
pub fn stopped(pid: u32, want: bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(2) {
        if (crate::proc_state(pid) == 'T') == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

//! The harness's scenarios: each a rig whose conditions make a keeper take one kind of
//! action (or take it at its start), and the journal entry kinds with the steps it reaches.

use std::{collections::BTreeMap, process::Child, sync::Arc, time::Duration};

use integration_test::{
    PROBE,
    gpu::{FakeGpu, Process, STATE_ENV, fake_lib},
    irqs::SavedIrqs,
    pve_stub::{MIB, PveStub, StubVm},
    qemu::{Qemu, boot_guest, cached_guest, has_testdev, qemu_in},
    qmp_proxy::QmpProxy,
    rig::{Rig, eventually, write_psi},
    spawn_on, spawn_pinned,
};
use keeper::{
    act::fault::{self, Step},
    device::qmp::Qmp,
};

/// Makes a stage's action happen once the keeper runs, for the point of this entry kind.
pub type Trigger = Box<dyn Fn(&Rig, &str)>;

/// A rig in which a keeper takes one kind of action.
pub struct Stage {
    pub name: &'static str,
    pub rig: Rig,
    /// The journal entry kinds the action writes, each with the steps it has.
    pub points: Vec<(&'static str, Vec<Step>)>,
    pub args: Vec<String>,
    /// Makes the action happen once the keeper runs (nothing: it happens at the start), for
    /// the point of this entry kind.
    pub trigger: Trigger,
    /// Conditions back to quiet, before each keeper.
    pub calm: Box<dyn Fn()>,
    /// What the scenario adds to the host's snapshot.
    pub extra: Box<dyn Fn() -> BTreeMap<String, String>>,
    /// The keepers' environment (the fake GPU's state file).
    pub env: Vec<(String, String)>,
    /// How long a keeper runs before SIGTERM.
    pub settle: Duration,
    pub _children: Vec<Child>,
    /// Puts back what a failed run left (interrupt lines, the workqueue mask).
    pub _guard: Option<HostGuard>,
    pub _gpu: Option<Arc<FakeGpu>>,
    pub _vm: Option<Qemu>,
    pub _vms: Vec<Qemu>,
}

/// Every interrupt line's affinity and the workqueue mask, put back at drop.
pub struct HostGuard {
    _irqs: SavedIrqs,
    workqueues: String,
}

const WORKQUEUES: &str = "/sys/devices/virtual/workqueue/cpumask";

impl Drop for HostGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(WORKQUEUES, &self.workqueues);
    }
}

/// Every step of a change; `undo: false` for a marker that has nothing to undo.
fn steps(kind: &str, undo: bool) -> Vec<Step> {
    Step::ALL
        .into_iter()
        .filter(|s| *s != Step::Armed || fault::armed(kind))
        .filter(|s| undo || !matches!(s, Step::Undoing | Step::Undone | Step::Applied))
        .collect()
}

fn stage(name: &'static str, rig: Rig, points: Vec<(&'static str, Vec<Step>)>) -> Stage {
    Stage {
        name,
        rig,
        points,
        args: vec![],
        trigger: Box::new(|_, _| {}),
        calm: Box::new(|| {}),
        extra: Box::new(BTreeMap::new),
        env: vec![],
        settle: Duration::from_secs(3),
        _children: vec![],
        _guard: None,
        _gpu: None,
        _vm: None,
        _vms: vec![],
    }
}

/// A process in the rig's cgroup `w`, pinned to `cpu`.
fn spawn_in(rig: &Rig, w: &str, args: &[&str], cpu: usize) -> Child {
    let cg = rig.workload(w);
    let child = spawn_pinned(PROBE, args, cpu, Some(&cg));
    std::mem::forget(cg); // the rig's scope removes it
    child
}

/// Residents that wake every 2 ms on the trading core: each keeper evicts them as they
/// arrive (the eviction thread's pending record), and its exit puts them back.
pub fn evict() -> Stage {
    let rig = Rig::new("faults-evict");
    let kids = vec![
        spawn_in(&rig, "banker", &["sleep", "100000000", "50000"], 1),
        spawn_in(&rig, "strays", &["sleep", "100000000", "2000"], 1),
        spawn_in(&rig, "strays", &["sleep", "100000000", "2000"], 1),
    ];
    Stage {
        _children: kids,
        ..stage("evict", rig, vec![("affinity", steps("affinity", true))])
    }
}

/// EVA's interaction freezes Muse.
pub fn freeze() -> Stage {
    let rig = Rig::new("faults-freeze");
    let kids = vec![
        spawn_in(&rig, "muse", &["sleep", "100000000", "20000"], 0),
        spawn_in(&rig, "eva", &["sleep", "100000000", "20000"], 0),
    ];
    Stage {
        trigger: Box::new(|rig, _| interaction(rig, "start")),
        _children: kids,
        ..stage("freeze", rig, vec![("freeze", steps("freeze", true))])
    }
}

fn interaction(rig: &Rig, what: &str) {
    // Not `rig.control`: the keeper may die at the point while it answers.
    let out = std::process::Command::new(integration_test::KEEPER)
        .args(["interaction", what, "--socket"])
        .arg(rig.socket())
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&out.stdout).contains("\"ok\": true") {
        eprintln!("faults: `interaction {what}` not answered (the keeper died at its point?)");
    }
}

/// EVA's interaction starts a command (`start_on`), stopped when it ends.
pub fn start_on() -> Stage {
    let rig = Rig::new("faults-start-on");
    rig.edit_policy(
        "release_after: 1s }\n",
        "release_after: 1s }\n    start_on: { command: [sleep, \"313\"], deadline: 5s }\n",
    );
    let kids = vec![
        spawn_in(&rig, "muse", &["sleep", "100000000", "20000"], 0),
        spawn_in(&rig, "eva", &["sleep", "100000000", "20000"], 0),
    ];
    Stage {
        trigger: Box::new(|rig, _| interaction(rig, "start")),
        extra: Box::new(|| {
            BTreeMap::from([("sleep 313 running".into(), commands("sleep\x00313\x00"))])
        }),
        _children: kids,
        ..stage(
            "start_on",
            rig,
            vec![("service_command", steps("service_command", true))],
        )
    }
}

/// EVA's interaction starts a systemd unit (`start_on: {unit: …}`), through a stand-in
/// `systemctl` first on the keepers' PATH (no systemd here) that keeps each unit's state in a
/// file, the way `is-active` reads it.
pub fn start_unit() -> Stage {
    let rig = Rig::new("faults-unit");
    rig.edit_policy(
        "release_after: 1s }\n",
        "release_after: 1s }\n    start_on: { unit: llama3.service, deadline: 5s }\n",
    );
    let (bin, units) = (rig.dir.join("bin"), rig.dir.join("units"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&units).unwrap();
    let script = format!(
        "#!/bin/sh\ncase $1 in\n\
         start) touch {u}/$2 ;;\n\
         stop) rm -f {u}/$2 ;;\n\
         is-active) test -e {u}/$3 ;;\n\
         esac\n",
        u = units.display()
    );
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, script).unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kids = vec![
        spawn_in(&rig, "muse", &["sleep", "100000000", "20000"], 0),
        spawn_in(&rig, "eva", &["sleep", "100000000", "20000"], 0),
    ];
    Stage {
        env: vec![("PATH".into(), path)],
        trigger: Box::new(|rig, _| interaction(rig, "start")),
        extra: Box::new(move || {
            let active = units.join("llama3.service").exists();
            BTreeMap::from([("llama3.service active".into(), active.to_string())])
        }),
        _children: kids,
        ..stage(
            "start_unit",
            rig,
            vec![("service_unit", steps("service_unit", true))],
        )
    }
}

/// How many processes run the command line `cmdline` (NUL-separated).
fn commands(cmdline: &str) -> String {
    let n = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline.as_bytes()))
        .count();
    n.to_string()
}

/// A stock re-pinner (it puts itself back on the trading core every millisecond): a repeat
/// offender, stopped (SIGSTOP, `rules.intruders.then`'s default) and continued at the exit.
pub fn then_stop() -> Stage {
    let rig = Rig::new("faults-stop");
    let banker = spawn_in(&rig, "banker", &["sleep", "100000000", "50000"], 1);
    let strays = rig.workload("strays");
    // Bounded from outside; it spins, so only while this stage runs.
    let args = ["-s", "KILL", "900", PROBE, "repin", "900", "1", "kt_repin"];
    let repinner = spawn_on("timeout", &args, &[0, 1], Some(&strays));
    std::mem::forget(strays);
    Stage {
        settle: Duration::from_secs(4),
        _children: vec![banker, repinner],
        ..stage("then_stop", rig, vec![("stop", steps("stop", true))])
    }
}

/// Interrupt lines and the unbound workqueues kept off the trading core.
pub fn irqs() -> Stage {
    let rig = Rig::new("faults-irq");
    rig.with_host("irq_guard: true, workqueue_guard: true");
    let kids = vec![spawn_in(
        &rig,
        "banker",
        &["sleep", "100000000", "50000"],
        1,
    )];
    let guard = HostGuard {
        _irqs: SavedIrqs::now(),
        workqueues: std::fs::read_to_string(WORKQUEUES)
            .unwrap()
            .trim()
            .to_string(),
    };
    Stage {
        _children: kids,
        _guard: Some(guard),
        ..stage(
            "irq",
            rig,
            vec![
                ("irq_affinity", steps("irq_affinity", true)),
                ("file", steps("file", true)),
            ],
        )
    }
}

/// A real-time resident (SCHED_FIFO 10, waking every 2 ms) evicted and demoted, its class
/// given back at the exit.
pub fn real_time() -> Stage {
    let rig = Rig::new("faults-rt");
    let banker = spawn_in(&rig, "banker", &["sleep", "100000000", "50000"], 1);
    let strays = rig.workload("strays");
    // Bounded from outside (a `timeout` inside chrt would share its class and CPU).
    let rt = spawn_on(
        "timeout",
        &[
            "-s",
            "KILL",
            "900",
            "chrt",
            "-f",
            "10",
            PROBE,
            "sleep",
            "100000000",
            "2000",
        ],
        &[1],
        Some(&strays),
    );
    std::mem::forget(strays);
    Stage {
        _children: vec![banker, rt],
        ..stage(
            "real_time",
            rig,
            vec![("scheduler", steps("scheduler", true))],
        )
    }
}

/// The Banker's VM (QEMU, paused) with `vcpu_priority: fifo:1`: its vCPU made SCHED_FIFO.
pub fn vcpu() -> Stage {
    let rig = Rig::new("faults-vcpu");
    rig.edit_policy(
        "owns_trading_cores: true }",
        "owns_trading_cores: true, vcpu_priority: \"fifo:1\" }",
    );
    let banker = rig.workload("banker");
    let args = [
        "-name",
        "banker,debug-threads=on",
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "64",
        "-display",
        "none",
        "-nodefaults",
        "-S",
    ];
    let qemu = spawn_on("qemu-system-x86_64", &args, &[0, 1], Some(&banker));
    std::mem::forget(banker);
    // Its vCPU thread first: a keeper that protects the cores before QEMU made it has no vCPU
    // to make real-time, and the first point (`scheduler.recorded`) went unreached under load.
    assert!(
        eventually(Duration::from_secs(20), || {
            integration_test::tid_named(qemu.id(), "CPU 0/TCG").is_some()
        }),
        "QEMU made no vCPU thread"
    );
    Stage {
        _children: vec![qemu],
        ..stage(
            "vcpu_priority",
            rig,
            vec![("scheduler", steps("scheduler", true))],
        )
    }
}

/// Sustained memory pressure: the lowest-ranked VM hibernated through the Proxmox stub
/// (`stop_vm_after: 1s`; no QMP socket, so its balloon step fails at once).
pub fn vm_stop() -> Stage {
    let rig = Rig::with(
        "faults-vmstop",
        &|s| format!("  - {{ name: vm102, rank: 5, match: {{ vmid: 102, cgroup: {s}/vm102 }} }}\n"),
        "  memory: { balloon_above: 10, balloon_target: 10%, balloon_floor: 64M, stop_vm_above: 20, stop_vm_after: 1s, release_after: 1s }\n",
    );
    let kid = spawn_in(&rig, "vm102", &["sleep", "100000000", "50000"], 0);
    let stub = std::sync::Arc::new(PveStub::start_for(
        "pve1",
        [
            (100, StubVm::running(256 * MIB)),
            (102, StubVm::running(256 * MIB)),
        ],
        Duration::from_secs(3600),
    ));
    let api = stub.write_config(&rig.dir.join("pve"), None);
    let pressure = rig.dir.join("memory.pressure");
    write_psi(&pressure, 0.0, 0.0);
    let qmp = rig.dir.join("qemu-server");
    std::fs::create_dir_all(&qmp).unwrap();
    let args = [
        "--tick",
        "200ms",
        "--proxmox",
        api.to_str().unwrap(),
        "--memory-psi",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        pressure.display().to_string(),
        "--qmp-dir".into(),
        qmp.display().to_string(),
    ])
    .collect();
    let (up, down) = (pressure.clone(), pressure.clone());
    Stage {
        args,
        // Up: the VM is stopped 1 s past the balloon's failure. For `vm_started`, down once it
        // is: the keeper starts it again.
        trigger: Box::new(move |_, kind| {
            write_psi(&up, 30.0, 30.0);
            if kind == "vm_started" {
                std::thread::sleep(Duration::from_secs(3));
                write_psi(&up, 0.0, 0.0);
            }
        }),
        calm: Box::new(move || write_psi(&down, 0.0, 0.0)),
        extra: Box::new(move || vms(&stub)),
        settle: Duration::from_secs(5),
        _children: vec![kid],
        ..stage(
            "vm_stop",
            rig,
            vec![
                ("vm_stopped", steps("vm_stopped", true)),
                ("vm_started", steps("vm_started", false)),
            ],
        )
    }
}

/// Memory pressure between the balloon's threshold and the stop's: the lowest-ranked VM (a
/// real QEMU behind a QMP proxy that sees each target sent) ballooned, given back its memory
/// when the pressure ends and at the exit.
pub fn balloon() -> Stage {
    let rig = Rig::with(
        "faults-balloon",
        &|s| format!("  - {{ name: vm102, rank: 5, match: {{ vmid: 102, cgroup: {s}/vm102 }} }}\n"),
        "  memory: { balloon_above: 10, balloon_target: 50%, balloon_floor: 64M, stop_vm_above: 95, stop_vm_after: 60s, release_after: 1s }\n",
    );
    let (real, qmp) = (rig.dir.join("qemu-real"), rig.dir.join("qemu-server"));
    std::fs::create_dir_all(&qmp).unwrap();
    let vm = qemu_in(&real, "faults", 102, 256).expect("QEMU (CI=true needs it)");
    let cg = rig.workload("vm102");
    std::fs::write(cg.dir.join("cgroup.procs"), vm.child.id().to_string()).unwrap();
    std::mem::forget(cg);
    let proxy = Arc::new(QmpProxy::start(&qmp.join("102.qmp"), &real.join("102.qmp")));
    let pressure = rig.dir.join("memory.pressure");
    write_psi(&pressure, 0.0, 0.0);
    let args = ["--tick", "200ms", "--memory-psi"]
        .map(String::from)
        .into_iter()
        .chain([
            pressure.display().to_string(),
            "--qmp-dir".into(),
            qmp.display().to_string(),
        ])
        .collect();
    let (up, down) = (pressure.clone(), pressure);
    Stage {
        args,
        trigger: Box::new(move |_, _| write_psi(&up, 15.0, 0.0)),
        calm: Box::new(move || write_psi(&down, 0.0, 0.0)),
        // The last target QEMU was told: its whole memory, or never told.
        extra: Box::new(move || {
            let target = proxy.last_balloon().unwrap_or(256 * MIB) >> 20;
            BTreeMap::from([("VM 102 balloon target (MiB)".into(), target.to_string())])
        }),
        _vm: Some(vm),
        ..stage("balloon", rig, vec![("balloon", steps("balloon", true))])
    }
}

/// The fake GPU (fake NVML, a stand-in `cuda-checkpoint`): eco mode caps an idle GPU's power
/// and clocks; EVA's interaction checkpoints Muse's GPU state (then freezes it), and its end
/// restores it.
pub fn gpu() -> Stage {
    let rig = Rig::with_rules(
        "faults-gpu",
        "  eco_mode: { idle_below: 10, idle_after: 1s, idle_power_limit: 60%, busy_power_limit: 100%, clock_offset_mhz: -200 }\n",
    );
    rig.edit_policy(
        "preempt: { on: interaction, deadline: 200ms, targets: [muse], release_after: 1s }",
        "gpu_handoff: { on: interaction, from: [muse], release_after: 1s }",
    );
    let muse = spawn_in(&rig, "muse", &["sleep", "100000000", "20000"], 0);
    let eva = spawn_in(&rig, "eva", &["sleep", "100000000", "20000"], 0);
    let g = Arc::new(FakeGpu::new("faults"));
    g.device(|d| d.clock_offset_mhz = Some(0));
    let tool = g.stand_in_tool();
    let args = vec![
        "--tick".into(),
        "200ms".into(),
        "--nvml-lib".into(),
        fake_lib().display().to_string(),
        "--cuda-checkpoint".into(),
        tool.display().to_string(),
    ];
    let env = vec![(STATE_ENV.to_string(), g.state.display().to_string())];
    let pid = muse.id();
    let (busy, calm, seen) = (g.clone(), g.clone(), g.clone());
    Stage {
        args,
        env,
        trigger: Box::new(move |rig, kind| gpu_trigger(&busy, rig, kind, pid)),
        // Busy, nobody on it: no eco mode, no handoff.
        calm: Box::new(move || {
            calm.device(|d| {
                d.utilization_gpu = 50;
                d.compute_processes.clear();
            })
        }),
        extra: Box::new(move || {
            let d = seen.read().devices[0].clone();
            let cuda = std::fs::read_to_string(seen.dir.join(format!("state-{pid}")));
            BTreeMap::from([
                ("GPU power limit".into(), d.power_limit_mw.to_string()),
                (
                    "GPU clock offset".into(),
                    format!("{:?}", d.clock_offset_mhz),
                ),
                (
                    "muse's CUDA state".into(),
                    cuda.unwrap_or("running".into()).trim().into(),
                ),
            ])
        }),
        settle: Duration::from_secs(4),
        _children: vec![muse, eva],
        _gpu: Some(g),
        ..stage(
            "gpu",
            rig,
            vec![
                ("gpu_power_limit", steps("gpu_power_limit", true)),
                ("gpu_clock_offset", steps("gpu_clock_offset", true)),
                ("gpu_checkpoint", steps("gpu_checkpoint", true)),
                ("gpu_restored", steps("gpu_restored", false)),
            ],
        )
    }
}

/// Idle for eco mode's points; Muse on the GPU and EVA's interaction for the handoff's, which
/// ends (`gpu_restored`) when the interaction does and Muse has left the GPU.
fn gpu_trigger(g: &FakeGpu, rig: &Rig, kind: &str, muse: u32) {
    if kind.starts_with("gpu_power") || kind.starts_with("gpu_clock") {
        g.device(|d| d.utilization_gpu = 0);
        return;
    }
    g.device(|d| {
        d.utilization_gpu = 98;
        d.compute_processes = vec![Process {
            pid: muse,
            used_memory_bytes: 6 << 30,
        }];
    });
    interaction(rig, "start");
    if kind == "gpu_restored" {
        std::thread::sleep(Duration::from_millis(1500));
        g.device(|d| d.compute_processes.clear());
        interaction(rig, "stop");
    }
}

/// The stub's VMs: status, lock, balloon, GPU keys.
fn vms(stub: &PveStub) -> BTreeMap<String, String> {
    vms_of(stub, &[100, 102])
}

/// The same, of these VMs.
fn vms_of(stub: &PveStub, ids: &[u32]) -> BTreeMap<String, String> {
    (ids.iter().copied())
        .map(|id| {
            let vm = stub.vm(id);
            let state = format!(
                "{} lock {:?} balloon {:?} {:?}",
                vm.status, vm.lock, vm.config_balloon, vm.hostpci
            );
            (format!("VM {id}"), state)
        })
        .collect()
}

/// The device's value in the stub's configurations (`rules.gpu_mutex.config`).
const HOSTPCI: &str = "0000:01:00.0,pcie=1";

/// `rules.gpu_mutex`'s planned restart through the Proxmox stub: the borrower (VM 104, not
/// running, in its windows all day) gets the GPU at the keeper's start (the holder VM 100
/// hibernated, `hostpci0` moved, VM 104 started); the exit gives it back.
pub fn gpu_config_lent() -> Stage {
    let rig = Rig::with(
        "faults-gpulend",
        &|_| {
            "  - { name: brain, rank: 4, match: { vmid: 100 } }\n  - { name: visual, rank: 5, match: { vmid: 104 }, windows: [{ days: all, hours: \"00:00-24:00\" }] }\n".into()
        },
        &format!(
            "  gpu_mutex: {{ holder: brain, lend_to: [visual], device: {{ id: hostpci0, driver: vfio-pci }}, config: \"{HOSTPCI}\", deadline: 5s }}\n"
        ),
    );
    let stub = Arc::new(PveStub::start_for(
        "pve1",
        [
            (100, StubVm::running(256 * MIB).with_gpu(HOSTPCI)),
            (104, StubVm::stopped(256 * MIB)),
        ],
        Duration::from_secs(3600),
    ));
    let api = stub.write_config(&rig.dir.join("pve"), None);
    let qmp = rig.dir.join("qemu-server");
    std::fs::create_dir_all(&qmp).unwrap();
    let args = vec![
        "--tick".into(),
        "200ms".into(),
        "--proxmox".into(),
        api.display().to_string(),
        "--qmp-dir".into(),
        qmp.display().to_string(),
    ];
    Stage {
        args,
        extra: Box::new(move || vms_of(&stub, &[100, 104])),
        settle: Duration::from_secs(4),
        ..stage(
            "gpu_config_lent",
            rig,
            vec![
                ("vm_stopped", steps("vm_stopped", true)),
                ("gpu_config_lent", steps("gpu_config_lent", true)),
            ],
        )
    }
}

/// `rules.gpu_mutex`'s hot-plug lend between two running guests (the cached 6.1 guest under
/// TCG; QEMU's `pci-testdev` stands in for the GPU): the borrower (VM 104, active) gets it at
/// the keeper's start (`device_del` on the holder, the guest's ACPI eject, `device_add` on the
/// borrower); the exit gives it back.
pub fn gpu_lent() -> Stage {
    let rig = Rig::with(
        "faults-gpuhot",
        &|s| {
            format!(
                "  - {{ name: brain, rank: 4, match: {{ vmid: 100, cgroup: {s}/vm100 }} }}\n  - {{ name: visual, rank: 5, match: {{ vmid: 104, cgroup: {s}/vm104 }} }}\n"
            )
        },
        "  gpu_mutex: { holder: brain, lend_to: [visual], device: { id: hostpci0, driver: pci-testdev }, deadline: 10s }\n",
    );
    let guest = cached_guest("the fault harness's gpu_lent stage")
        .expect("the cached guest kernel (CI=true needs it)");
    let qmp = rig.dir.join("qemu-server");
    std::fs::create_dir_all(&qmp).unwrap();
    let (holder, borrower) = (
        boot_guest(&qmp, &guest, 100, true),
        boot_guest(&qmp, &guest, 104, false),
    );
    for (vm, id) in [(&holder, "vm100"), (&borrower, "vm104")] {
        let cg = rig.workload(id);
        std::fs::write(cg.dir.join("cgroup.procs"), vm.child.id().to_string()).unwrap();
        std::mem::forget(cg);
    }
    let booted = || has_testdev(&qmp, 100) == Some(true) && has_testdev(&qmp, 104).is_some();
    assert!(
        eventually(Duration::from_secs(90), booted),
        "the guests never printed PCI lines"
    );
    let args = vec![
        "--tick".into(),
        "200ms".into(),
        "--qmp-dir".into(),
        qmp.display().to_string(),
    ];
    let seen = qmp.clone();
    Stage {
        args,
        // Which machine has the device, as QEMU says (the keepers are gone when it is read).
        extra: Box::new(move || {
            [100, 104]
                .into_iter()
                .map(|id| {
                    let sock = seen.join(format!("{id}.qmp"));
                    let has = Qmp::connect(&sock).and_then(|mut q| q.has_device("hostpci0"));
                    (format!("VM {id} has the GPU"), format!("{has:?}"))
                })
                .collect()
        }),
        settle: Duration::from_secs(8),
        _vms: vec![holder, borrower],
        ..stage("gpu_lent", rig, vec![("gpu_lent", steps("gpu_lent", true))])
    }
}

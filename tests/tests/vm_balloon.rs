//! `keeper vm list` and `keeper vm balloon` against a real QEMU with a virtio balloon device,
//! found by its QMP socket in a Proxmox-like directory; and the errors an operator meets: an
//! unknown vmid, a dead VM's stale socket, a target above the VM's memory.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use integration_test::{
    KEEPER,
    qemu::{Qemu, cached_guest, last_line, qemu},
};

fn keeper(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(KEEPER)
        .args(args)
        .arg("--qmp-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vm_list_and_balloon_talk_qmp_to_a_real_qemu() {
    let Some(vm) = qemu("list", 100, 512) else {
        return;
    };
    let (code, out, err) = keeper(
        &["vm", "list", "--format", "json"],
        vm.dir.as_deref().unwrap(),
    );
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["vmid"], 100);
    assert_eq!(list[0]["cgroup"], "qemu.slice/100.scope");
    assert_eq!(list[0]["max_memory_bytes"], 512u64 << 20);
    assert_eq!(list[0]["balloon_actual_bytes"], 512u64 << 20);
    let (code, out, err) = keeper(
        &["vm", "balloon", "100", "256MiB"],
        vm.dir.as_deref().unwrap(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("balloon target 256 MiB (was 512 MiB"), "{out}");
    // A share of the VM's maximum.
    let (code, out, _) = keeper(&["vm", "balloon", "100", "75%"], vm.dir.as_deref().unwrap());
    assert_eq!(code, 0);
    assert!(out.contains("target 384 MiB"), "{out}");
}

#[test]
fn bad_vm_requests_are_clear_errors() {
    let Some(vm) = qemu("bad", 100, 256) else {
        return;
    };
    let (code, _, err) = keeper(
        &["vm", "balloon", "101", "128MiB"],
        vm.dir.as_deref().unwrap(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("101.qmp: no such socket"), "{err}");
    let (code, _, err) = keeper(
        &["vm", "balloon", "100", "1GiB"],
        vm.dir.as_deref().unwrap(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("above its maximum memory 256 MiB"), "{err}");
    let (code, _, err) = keeper(&["vm", "balloon", "100", "0"], vm.dir.as_deref().unwrap());
    assert_eq!(code, 2);
    assert!(err.contains("refused"), "{err}");
    // A dead VM leaves its socket file behind: listed with the error, exit 1.
    let stale = vm.dir.as_deref().unwrap().join("102.qmp");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, out, _) = keeper(&["vm", "list"], vm.dir.as_deref().unwrap());
    assert_eq!(code, 1);
    assert!(
        out.contains("102") && out.contains("cannot connect"),
        "{out}"
    );
    let (code, _, err) = keeper(
        &["vm", "balloon", "102", "128MiB"],
        vm.dir.as_deref().unwrap(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("102.qmp: cannot connect"), "{err}");
}

/// The guest's last MemTotal in MiB, from its console log.
fn memtotal_mib(console: &Path) -> Option<u64> {
    let kb: u64 = last_line(console, "MEMTOTAL ")?.trim().parse().ok()?;
    Some(kb / 1024)
}

fn balloon_actual_mib(dir: &Path) -> u64 {
    let (code, out, err) = keeper(&["vm", "list", "--format", "json"], dir);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["balloon_actual_bytes"].as_u64().unwrap() >> 20
}

#[test]
fn memory_pressure_balloons_a_real_guest_and_its_end_deflates_it() {
    use integration_test::rig::{Rig, within, write_psi};
    if !integration_test::privileged(
        "memory_pressure_balloons_a_real_guest_and_its_end_deflates_it",
    ) {
        return;
    }
    let Some((vmlinuz, initrd)) = cached_guest("the guest balloon test") else {
        return;
    };
    let rig = Rig::with(
        "balloon",
        &|s| format!("  - {{ name: vm100, rank: 4, match: {{ vmid: 100, cgroup: {s}/vm100 }} }}\n"),
        "  memory: { balloon_above: 10, balloon_target: 50%, balloon_floor: 256M, release_after: 1s }\n",
    );
    let vmcg = rig.cg("vm100");
    std::fs::create_dir_all(&vmcg).unwrap();
    let qmp_dir = rig.dir.join("qemu-server");
    std::fs::create_dir_all(&qmp_dir).unwrap();
    let console = rig.dir.join("console.log");
    let procs = vmcg.join("cgroup.procs");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 quiet panic=-1"])
    .args(["-device", "virtio-balloon-pci"])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-qmp")
    .arg(format!(
        "unix:{}/100.qmp,server=on,wait=off",
        qmp_dir.display()
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // The VM runs in its workload's cgroup, as Proxmox's qemu.slice/100.scope.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let vm = Qemu {
        child: cmd.spawn().unwrap(),
        dir: None,
    };
    let booted = within(Duration::from_secs(60), || memtotal_mib(&console).is_some());
    assert!(booted.is_some(), "the guest never printed MEMTOTAL");
    let full = memtotal_mib(&console).unwrap();
    assert_eq!(balloon_actual_mib(&qmp_dir), 1024);

    let pressure = rig.dir.join("memory.pressure");
    write_psi(&pressure, 0.0, 0.0);
    let daemon = rig.keeper(&[
        "--for",
        "40s",
        "--tick",
        "200ms",
        "--qmp-dir",
        qmp_dir.to_str().unwrap(),
        "--memory-psi",
        pressure.to_str().unwrap(),
    ]);
    // Pressure: the lowest-ranked VM is ballooned to 50 % (512 MiB), above its 256 MiB floor.
    write_psi(&pressure, 30.0, 0.0);
    let inflated = within(Duration::from_secs(10), || {
        balloon_actual_mib(&qmp_dir) == 512
    })
    .expect("query-balloon never reached 512 MiB under pressure");
    let shrunk = within(Duration::from_secs(10), || {
        memtotal_mib(&console).is_some_and(|m| m + 400 < full)
    })
    .expect("the guest's MemTotal did not follow the balloon");
    eprintln!(
        "inflate: 1024 → 512 MiB in {:.2} s (query-balloon), guest MemTotal {full} → {} MiB in {:.2} s",
        inflated.as_secs_f64(),
        memtotal_mib(&console).unwrap(),
        shrunk.as_secs_f64()
    );
    // Pressure gone: after release_after, the VM gets all of its memory back.
    write_psi(&pressure, 0.0, 0.0);
    within(Duration::from_secs(15), || {
        balloon_actual_mib(&qmp_dir) == 1024
    })
    .expect("the balloon was not deflated when the pressure cleared");
    within(Duration::from_secs(10), || {
        memtotal_mib(&console).is_some_and(|m| m + 50 >= full)
    })
    .expect("the guest's MemTotal did not come back");
    drop(daemon);
    drop(vm);
}

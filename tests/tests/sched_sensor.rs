//! Privileged end-to-end tests of the scheduler sensor on the real kernel: programs load with
//! offsets from tracefs, the histograms count real wakeups, intruders are named, and nothing
//! stays attached. CPU 1 is the trading core. Run as root (`cargo xtask test`).

use std::time::Duration;

use integration_test::*;
use keeper::{
    cpulist::CpuList,
    sense::{
        sched::{SchedConfig, SchedOffsets, SchedSensor},
        tracefs::Tracefs,
    },
};

/// `keeper watch --cpus 1` around a `spin 2 NAME` pinned to CPU 1: the report, the spinner's
/// entry among the intruders, and its CPU time.
fn watch_a_spinner(name: &str) -> (serde_json::Value, serde_json::Value, Duration) {
    let watch = Watch::start(&["--cpus", "1", "--for", "4s"]);
    let spinner = spawn_pinned(PROBE, &["spin", "2", name], 1, None);
    let pid = spinner.id();
    let cpu_time = wait_cpu_time(spinner);
    let report = watch.finish();
    let me = report["intruders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} ({name}) not among intruders: {report:#}"))
        .clone();
    (report, me, cpu_time)
}

fn cpu1(report: &serde_json::Value) -> &serde_json::Value {
    report["cpus"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cpu"] == 1))
        .unwrap_or_else(|| panic!("no CPU 1 in {report:#}"))
}

#[test]
fn programs_load_with_offsets_from_tracefs_and_detach_on_drop() {
    if !privileged("programs_load_with_offsets_from_tracefs_and_detach_on_drop") {
        return;
    }
    let tracefs = Tracefs::find_or_mount().expect("tracefs");
    let offsets = SchedOffsets::from_tracefs(&tracefs).expect("offsets");
    // The offsets are the ones this kernel's format files give.
    let text =
        std::fs::read_to_string(tracefs.root().join("events/sched/sched_switch/format")).unwrap();
    let line = text.lines().find(|l| l.contains(" next_pid;")).unwrap();
    assert!(
        line.contains(&format!("offset:{};", offsets.next_pid)),
        "{line} vs {offsets:?}"
    );

    let config = SchedConfig {
        trading_cpus: CpuList::new([1]),
        protected_cgroups: vec![],
        intruder_event_interval: Duration::from_millis(100),
    };
    let sensor = SchedSensor::attach(&tracefs, &config).expect("attach");
    let names = loaded_programs();
    for p in [
        "keeper_wakeup",
        "keeper_wake_new",
        "keeper_switch",
        "keeper_arrive",
    ] {
        assert!(names.iter().any(|n| n == p), "{p} not loaded: {names:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu = &sensor.cpu_readouts().unwrap()[0];
    assert_eq!(cpu.cpu, 1);
    assert!(
        cpu.switches > 0,
        "no context switch seen on CPU 1 in 300 ms"
    );
    drop(sensor);
    // Detached at once; the kernel frees a raw tracepoint's program after an RCU grace period,
    // which a loaded machine can stretch: give it 2 s.
    let gone = integration_test::rig::eventually(Duration::from_secs(2), || {
        !loaded_programs().iter().any(|n| n.starts_with("keeper_"))
    });
    assert!(
        gone,
        "still loaded 2 s after the drop: {:?}",
        loaded_programs()
    );
}

#[test]
fn a_format_without_a_field_is_a_clear_error() {
    // Needs no privilege: a fake tracefs tree.
    let root = std::env::temp_dir().join(format!("keeper-fake-tracefs-{}", std::process::id()));
    for (event, body) in [
        (
            "sched_wakeup",
            "\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n",
        ),
        (
            "sched_wakeup_new",
            "\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int target_cpu;\toffset:32;\tsize:4;\tsigned:1;\n",
        ),
        ("sched_switch", ""),
    ] {
        let dir = root.join("events/sched").join(event);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("format"),
            format!("name: {event}\nformat:\n{body}"),
        )
        .unwrap();
    }
    let err = SchedOffsets::from_tracefs(&Tracefs::at(&root))
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(err.contains("events/sched/sched_wakeup/format"), "{err}");
    assert!(err.contains("no field `target_cpu`"), "{err}");
}

#[test]
fn a_sleeper_on_cpu1_is_counted_once_per_wakeup() {
    if !privileged("a_sleeper_on_cpu1_is_counted_once_per_wakeup") {
        return;
    }
    const N: u64 = 400;
    let cg = TestCgroup::new("sleeper");
    let watch = Watch::start(&["--cpus", "1", "--protect", &cg.rel, "--for", "4s"]);
    let sleeper = spawn_pinned(PROBE, &["sleep", &N.to_string(), "2000"], 1, Some(&cg));
    wait_cpu_time(sleeper);
    let report = watch.finish();
    let count = cpu1(&report)["protected"]["count"].as_u64().unwrap();
    let (lo, hi) = (N * 95 / 100, N * 105 / 100);
    assert!(
        (lo..=hi).contains(&count),
        "{count} samples for {N} wakeups (want {lo}..={hi})"
    );
}

#[test]
fn a_busy_loop_on_cpu1_is_named_as_an_intruder_unless_protected() {
    if !privileged("a_busy_loop_on_cpu1_is_named_as_an_intruder_unless_protected") {
        return;
    }
    let name = format!("kt_intr_{}", std::process::id() % 100_000);
    // Unprotected: an intruder with its pid, comm and at least 80 % of its run time.
    let (_, me, cpu_time) = watch_a_spinner(&name);
    assert_eq!(me["comm"], name.as_str());
    let stolen = me["stolen_ns"].as_u64().unwrap() as f64;
    let ratio = stolen / cpu_time.as_nanos() as f64;
    assert!(
        ratio >= 0.8,
        "stolen {stolen} ns is {ratio:.2} of its {cpu_time:?} run time"
    );

    // Protected: the same program inside a --protect'ed cgroup is no intruder.
    let cg = TestCgroup::new("spin");
    let watch = Watch::start(&["--cpus", "1", "--protect", &cg.rel, "--for", "3s"]);
    let spinner = spawn_pinned(PROBE, &["spin", "1", &name], 1, Some(&cg));
    let pid = spinner.id();
    let cpu_time = wait_cpu_time(spinner);
    let report = watch.finish();
    assert!(
        !report["intruders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["pid"] == pid),
        "protected pid {pid} reported as intruder: {report:#}"
    );
    let protected_ns = cpu1(&report)["protected_ns"].as_u64().unwrap() as f64;
    assert!(
        protected_ns >= 0.8 * cpu_time.as_nanos() as f64,
        "protected time {protected_ns} for {cpu_time:?}"
    );
}

#[test]
fn a_task_named_like_a_kernel_thread_is_an_intruder() {
    if !privileged("a_task_named_like_a_kernel_thread_is_an_intruder") {
        return;
    }
    // The kernel's flags (PF_KTHREAD) decide, not the name: a spoofed kworker/1:9 is reported
    // with its time, and its time is not counted as kernel time.
    let (report, me, cpu_time) = watch_a_spinner("kworker/1:9");
    assert_eq!(me["comm"], "kworker/1:9");
    let stolen = me["stolen_ns"].as_u64().unwrap() as f64;
    assert!(
        stolen >= 0.8 * cpu_time.as_nanos() as f64,
        "stolen {stolen} ns of its {cpu_time:?}"
    );
    let kernel_ns = cpu1(&report)["kernel_ns"].as_u64().unwrap() as f64;
    assert!(
        kernel_ns < 0.2 * cpu_time.as_nanos() as f64,
        "kernel time {kernel_ns} ns: the spoof was counted as a kernel thread"
    );
}

#[test]
fn keeper_watch_leaves_no_program_behind() {
    if !privileged("keeper_watch_leaves_no_program_behind") {
        return;
    }
    let watch = Watch::start(&["--cpus", "1", "--for", "1s"]);
    let during = loaded_programs();
    assert!(
        during.iter().any(|n| n == "keeper_switch"),
        "not attached while watching: {during:?}"
    );
    watch.finish();
    // The kernel frees a raw tracepoint's program after an RCU-tasks grace period.
    let gone = integration_test::rig::eventually(Duration::from_secs(5), || {
        !loaded_programs().iter().any(|n| n.starts_with("keeper_"))
    });
    assert!(gone, "left behind 5 s after exit: {:?}", loaded_programs());
}

#[test]
fn bad_arguments_are_clear_errors() {
    if !privileged("bad_arguments_are_clear_errors") {
        return;
    }
    let out = std::process::Command::new(KEEPER)
        .args([
            "watch",
            "--cpus",
            "1",
            "--protect",
            "no/such/cgroup-kt",
            "--for",
            "1s",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no/such/cgroup-kt") && err.contains("does not exist"),
        "{err}"
    );

    let out = std::process::Command::new(KEEPER)
        .args(["watch", "--cpus", "250", "--for", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("CPU 250 is not online"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// IRQ number → how many times it fired on CPU 1 (`/proc/interrupts`' second column).
fn cpu1_interrupts() -> std::collections::BTreeMap<u64, u64> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (label, rest) = l.split_once(':')?;
            let irq = label.trim().parse().ok()?;
            let count = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((irq, count))
        })
        .collect()
}

/// A 16 MiB file on the root disk, written around the page cache (removed on drop).
struct DiskFile(std::path::PathBuf);

impl DiskFile {
    fn new() -> DiskFile {
        let path = std::path::PathBuf::from(format!("/var/tmp/kt-noise-{}", std::process::id()));
        let out = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=16", "oflag=direct"])
            .arg(format!("of={}", path.display()))
            .output()
            .expect("dd");
        assert!(out.status.success(), "{out:?}");
        DiskFile(path)
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// On this machine the disk's interrupts fire on CPU 1 (virtio1-req.0, a managed line). Direct
/// reads of a file on the root disk during a watch of CPU 1 are named in its noise table, with no more
/// runs than /proc/interrupts counted there; the tick's softirqs (CPU 1 kept busy by a
/// spinner) are beside them, and the time adds up to less than the window.
#[test]
fn interrupt_time_on_the_trading_core_is_named_by_its_source() {
    if !privileged("interrupt_time_on_the_trading_core_is_named_by_its_source") {
        return;
    }
    let file = DiskFile::new();
    let watch = Watch::start(&["--cpus", "1", "--for", "3s"]);
    let before = cpu1_interrupts();
    let spinner = spawn_pinned(PROBE, &["spin", "2", "noisy"], 1, None);
    let reads = std::process::Command::new("taskset")
        .args(["-c", "0", "dd", "of=/dev/null", "bs=4k", "iflag=direct"])
        .arg(format!("if={}", file.0.display()))
        .output()
        .expect("dd");
    assert!(reads.status.success(), "{reads:?}");
    wait_cpu_time(spinner);
    let report = watch.finish();
    let after = cpu1_interrupts();
    let noise = report["noise"]
        .as_array()
        .unwrap_or_else(|| panic!("noise not measured: {report:#}"));
    let softirqs: Vec<&str> = (noise.iter())
        .filter(|n| n["kind"] == "softirq" && n["count"].as_u64() > Some(0))
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(softirqs.contains(&"TIMER"), "{noise:#?}");
    let fired =
        |irq: u64| after.get(&irq).copied().unwrap_or(0) - before.get(&irq).copied().unwrap_or(0);
    let names = std::fs::read_to_string("/proc/interrupts").unwrap();
    let busiest = (after.keys())
        .copied()
        .max_by_key(|&irq| fired(irq))
        .unwrap();
    eprintln!(
        "IRQ {busiest} fired {} times on CPU 1; noise: {noise:#?}",
        fired(busiest)
    );
    assert!(
        fired(busiest) >= 100,
        "the reads raised no interrupt on CPU 1"
    );
    let entry = (noise.iter())
        .find(|n| n["irq"].as_u64() == Some(busiest))
        .unwrap_or_else(|| panic!("IRQ {busiest} not in {noise:#?}"));
    let name = entry["name"].as_str().unwrap();
    assert!(
        names
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{busiest}:")) && l.ends_with(name)),
        "IRQ {busiest} named {name}"
    );
    for n in noise.iter().filter(|n| n["kind"] == "irq") {
        let (irq, count) = (n["irq"].as_u64().unwrap(), n["count"].as_u64().unwrap());
        assert!(
            count >= 1 && count <= fired(irq),
            "IRQ {irq}: {count} runs, {} fired",
            fired(irq)
        );
    }
    let total_s: f64 = (noise.iter())
        .filter_map(|n| n["time_ns"].as_f64())
        .sum::<f64>()
        / 1e9;
    assert!(
        total_s < report["duration_s"].as_f64().unwrap(),
        "{total_s} s of interrupts in the window"
    );
}

//! Unit tests of the policy parser and checks: the seed policy, located errors, hostile input.

use std::time::{Duration, Instant};

use super::*;

fn errors(text: &str) -> Vec<String> {
    match load(text.as_bytes(), &HostFacts::default()) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|d| format!("{}: {}", d.pos, d)).collect(),
    }
}

fn one_host_with(from: &str, to: &str) -> String {
    assert!(
        ONE_HOST_YAML.contains(from),
        "one-host.yaml has no `{from}`"
    );
    ONE_HOST_YAML.replacen(from, to, 1)
}

#[test]
fn one_host_encodes_the_seed_matrix() {
    let p = one_host().expect("one-host.yaml is valid");
    let names: Vec<(&str, u32)> = p
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.rank))
        .collect();
    assert_eq!(
        names,
        [
            ("banker", 1),
            ("eva-core", 2),
            ("sentinel", 3),
            ("muse", 4),
            ("research", 5)
        ]
    );
    let banker = p.workload("banker").unwrap();
    assert!(banker.owns_trading_cores);
    assert_eq!(banker.pauses, ["muse", "research"]);
    assert_eq!(banker.matcher.cgroups(), ["qemu.slice/200.scope"]);
    assert_eq!(
        banker.windows[0].to_string(),
        "mon-fri 08:00-23:00 Europe/Paris"
    );
    let eva = p.workload("eva-core").unwrap();
    assert_eq!(
        eva.preempt.as_ref().unwrap().deadline,
        Duration::from_millis(200)
    );
    let muse = p.workload("muse").unwrap();
    assert_eq!(muse.conditions.loadavg_below, Some(0.5));
    assert_eq!(muse.when_inactive, WhenInactive::Freeze);
    assert!(muse.windows[0].is_overnight());
    assert_eq!(p.host.trading_cores.to_string(), "1");
    assert_eq!(p.host.housekeeping_cores.to_string(), "0");
    let batch = &p.classes[&Class::Batch];
    assert_eq!(batch.memory_max, Some(Amount::Percent(Percent::new(80.0))));
    assert_eq!(batch.cpu_max, Some(Percent::new(90.0)));
}

#[test]
fn every_error_is_located_and_names_its_key() {
    // (edit of one-host.yaml, expected "line:col: error: message" fragment)
    let table: &[(&str, &str, &str)] = &[
        (
            "    rank: 4",
            "    rnak: 4",
            "54:5: error: unknown key `rnak` (did you mean `rank`?)",
        ),
        (
            "    rank: 3",
            "    rank: 2",
            "48:11: error: `sentinel.rank`: duplicate rank 2",
        ),
        (
            "  - name: research",
            "  - name: muse",
            "64:11: error: `name`: duplicate workload name `muse` (first at 53:11)",
        ),
        (
            "pauses: [muse, research]",
            "pauses: [muse, reserch]",
            "`banker.pauses`: unknown workload `reserch` (did you mean `research`?)",
        ),
        (
            "targets: [muse, research]",
            "targets: [banker]",
            "`eva-core.preempt.targets`: `banker` has rank 1, which is never frozen",
        ),
        (
            "housekeeping_cores: \"0\"",
            "housekeeping_cores: \"0-1\"",
            "12:23: error: `host.housekeeping_cores`: cores 1 are also trading cores",
        ),
        (
            "time_zone: Europe/Paris",
            "time_zone: Mars/Olympus",
            "10:14: error: `host.time_zone`: `Mars/Olympus` is not a known time zone",
        ),
        (
            "hours: \"08:00-23:00\"",
            "hours: \"08:00-25:00\"",
            "`banker.windows[0].hours`: `25:00` is not a time of day",
        ),
        (
            "days: mon-fri",
            "days: mon-fry",
            "`banker.windows[0].days`: `fry` is not a day",
        ),
        (
            "deadline: 200ms",
            "deadline: 5ms",
            "`eva-core.preempt.deadline`: 5ms is below the engine's minimum reaction time (10ms)",
        ),
        (
            "idle_power_limit: 60%",
            "idle_power_limit: 160%",
            "`rules.eco_mode.idle_power_limit`: percentage 160 is out of range 0..=100",
        ),
        (
            "cpu_pressure_above: 25",
            "cpu_pressure_above: 250",
            "`rules.escalation.cpu_pressure_above`: 250 is out of range 0..=100",
        ),
        (
            "resume_below: 72",
            "resume_below: 85",
            "`rules.thermal_guard.resume_below`: must be below gpu_temp_above",
        ),
        (
            "class: batch",
            "class: batsh",
            "unknown value `batsh` (did you mean `batch`?)",
        ),
        (
            "match: { vmid: 200 }",
            "match: { vmid: 7 }",
            "`banker.match.vmid`: 7 is not a Proxmox VM id",
        ),
        (
            "loadavg_below: 0.5",
            "loadavg_below: lots",
            "`loadavg_below`: ",
        ),
        (
            "dwell: 10s",
            "dwell: 10 parsecs",
            "`rules.escalation.dwell`: `10 parsecs` is not a duration",
        ),
        (
            "      - freeze\n",
            "      - freeze\n      - cpu_weight: 5\n",
            "`rules.escalation.steps[2]`: `freeze` is the last step",
        ),
        (
            "from: [muse]",
            "from: [banker]",
            "`eva-core.gpu_handoff.from`: `banker` has rank 1, which is never frozen",
        ),
        (
            "clock_offset_mhz: -200",
            "clock_offset_mhz: -2000",
            "`rules.eco_mode.clock_offset_mhz`: -2000 MHz is not a plausible clock offset",
        ),
        (
            "version: 1",
            "version: 2",
            "6:10: error: `version`: version 2 is unknown",
        ),
    ];
    for (from, to, want) in table {
        let errs = errors(&one_host_with(from, to));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "edit `{from}` → `{to}`: want `{want}`, got {errs:#?}"
        );
        assert!(
            errs.iter().all(|e| !e.starts_with("0:")),
            "unlocated: {errs:?}"
        );
    }
}

#[test]
fn cores_missing_on_this_host_warn_or_fail() {
    let text = one_host_with("trading_cores: \"1\"", "trading_cores: \"7\"");
    let online: crate::cpulist::CpuList = "0-1".parse().unwrap();
    let warn = HostFacts {
        online_cpus: Some(online.clone()),
        for_this_host: false,
    };
    let loaded = load(text.as_bytes(), &warn).expect("only a warning");
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .message
            .contains("cores 7 do not exist on this host")
    );
    let strict = HostFacts {
        online_cpus: Some(online),
        for_this_host: true,
    };
    let err = load(text.as_bytes(), &strict).unwrap_err();
    assert_eq!(err.0[0].pos, Pos { line: 11, col: 18 });
}

fn assert_refused_quickly(name: &str, bytes: &[u8], want: &str) {
    let start = Instant::now();
    let err = load(bytes, &HostFacts::default()).expect_err(name);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{name} took {:?}",
        start.elapsed()
    );
    let d = &err.0[0];
    assert!(d.pos.line >= 1, "{name}: unlocated {d}");
    assert!(d.message.contains(want), "{name}: want `{want}`, got `{d}`");
}

#[test]
fn hostile_input_is_refused_quickly_with_a_location() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb += &format!("a{i}: &a{i} [{refs}]\n");
    }
    let bomb_in_workloads = format!("workloads: &w [{}]\n", ["*w"; 10].join(","));
    assert_refused_quickly("alias bomb", bomb.as_bytes(), "unknown key `a0`");
    assert_refused_quickly("self alias", bomb_in_workloads.as_bytes(), "");
    let deep_flow = format!("workloads: {}", "[".repeat(100_000));
    assert_refused_quickly("deep flow", deep_flow.as_bytes(), "");
    let deep_block: String = (0..500)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    assert_refused_quickly(
        "deep block",
        format!("workloads:\n{deep_block}").as_bytes(),
        "",
    );
    let deep_map: String = (0..500)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect();
    assert_refused_quickly("deep map", deep_map.as_bytes(), "");
    assert_refused_quickly("huge", &vec![b'#'; MAX_POLICY_BYTES + 1], "at most");
    assert_refused_quickly(
        "invalid UTF-8",
        b"host:\n  name: h\xc3\x28\n",
        "invalid UTF-8",
    );
    assert_refused_quickly("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary data");
    assert_refused_quickly("empty", b"", "empty");
    assert_refused_quickly("two documents", b"version: 1\n---\nversion: 1\n", "");
    assert_refused_quickly("a scalar", b"42\n", "");
}

#[test]
fn the_alias_bomb_is_stopped_by_the_budget_even_where_values_are_accepted() {
    // `description` accepts any string; aliases to huge sequences must still be refused.
    let mut text = String::from("x: &a [a, a, a, a, a, a, a, a]\n");
    text.clear();
    text += "version: 1\nhost: {trading_cores: \"1\", housekeeping_cores: \"0\"}\nworkloads:\n";
    text += "  - &w {name: a, rank: 2, match: {vmid: 100}}\n";
    for _ in 0..2_000 {
        text += "  - *w\n";
    }
    let start = Instant::now();
    let err = load(text.as_bytes(), &HostFacts::default()).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.0[0].message.contains("alias"), "{}", err.0[0]);
}

#[test]
fn schema_describes_the_policy() {
    let s = json_schema().to_string();
    for key in [
        "workloads",
        "trading_cores",
        "when_inactive",
        "thermal_guard",
        "light-browser",
        "deadline",
    ] {
        assert!(s.contains(key), "schema lacks {key}");
    }
}

#[test]
fn example_policies_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let bytes = std::fs::read(&path).unwrap();
            if let Err(e) = load(&bytes, &HostFacts::default()) {
                panic!("{}: {:#?}", path.display(), e.0);
            }
            n += 1;
        }
    }
    assert!(n >= 3, "hive.yaml and the examples");
}

#[test]
fn a_workload_may_not_contain_the_keeper_or_the_trading_workload() {
    let e = errors(&one_host_with(
        "match: { cgroup: research.slice }",
        "match: { cgroup: qemu.slice }",
    ));
    assert!(
        e.iter().any(|m| m.contains("`research.match`")
            && m.contains("cgroup `qemu.slice` contains `banker`'s cgroup `qemu.slice/200.scope`")),
        "{e:#?}"
    );
    assert!(
        e.iter().all(|m| m.starts_with("67:")),
        "located at the match: {e:#?}"
    );
    let e = errors(&one_host_with(
        "match: { cgroup: research.slice }",
        "match: { cgroup: system.slice }",
    ));
    assert!(
        e.iter().any(|m| m.contains(
            "cgroup `system.slice` contains the keeper's own cgroup `system.slice/keeper.service`"
        )),
        "{e:#?}"
    );
    // A sibling is fine.
    assert!(
        errors(&one_host_with(
            "match: { cgroup: research.slice }",
            "match: { cgroup: qemu.slice/101.scope }"
        ))
        .is_empty()
    );
}

#[test]
fn host_smt_is_as_listed_unless_siblings_are_reserved() {
    assert_eq!(one_host().unwrap().host.smt, Smt::AsListed);
    let text = one_host_with(
        "housekeeping_cores: \"0\"\n",
        "housekeeping_cores: \"0\"\n  smt: reserve_siblings\n",
    );
    let p = load(text.as_bytes(), &HostFacts::default()).unwrap().policy;
    assert_eq!(p.host.smt, Smt::ReserveSiblings);
    let e = errors(&one_host_with(
        "housekeeping_cores: \"0\"\n",
        "housekeeping_cores: \"0\"\n  smt: off\n",
    ));
    assert!(
        e.iter().any(
            |m| m.contains("unknown value `off`; expected one of: as_listed, reserve_siblings")
        ),
        "{e:#?}"
    );
}

#[test]
fn rules_intruders_has_defaults_and_checks_its_values() {
    let p = one_host().unwrap();
    assert_eq!(p.rules.intruders, IntruderRule::default());
    let text = format!("{ONE_HOST_YAML}\n  intruders: {{ repeat: 2, within: 5s, then: stop }}\n");
    let p = load(text.as_bytes(), &HostFacts::default()).unwrap().policy;
    assert_eq!(p.rules.intruders.repeat, 2);
    assert_eq!(p.rules.intruders.within, Duration::from_secs(5));
    assert_eq!(p.rules.intruders.then, RepeatAction::Stop);
    let e = errors(&format!("{ONE_HOST_YAML}\n  intruders: {{ then: kill }}\n"));
    assert!(
        e.iter()
            .any(|m| m
                .contains("unknown value `kill`; expected one of: evict, throttle, freeze, stop")),
        "{e:#?}"
    );
    let text = format!("{ONE_HOST_YAML}\n  intruders: {{ then: throttle, cpu_max: 25% }}\n");
    let p = load(text.as_bytes(), &HostFacts::default()).unwrap().policy;
    assert_eq!(p.rules.intruders.then, RepeatAction::Throttle);
    assert_eq!(p.rules.intruders.cpu_max, crate::policy::Percent::new(25.0));
    for bad in ["0%", "lots"] {
        let e = errors(&format!(
            "{ONE_HOST_YAML}\n  intruders: {{ then: throttle, cpu_max: {bad} }}\n"
        ));
        assert!(
            e.iter().any(|m| m.contains("rules.intruders.cpu_max")),
            "{bad}: {e:#?}"
        );
    }
    let e = errors(&format!(
        "{ONE_HOST_YAML}\n  intruders: {{ repeat: 0, within: 0s }}\n"
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("`rules.intruders.repeat`: at least 1 return")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("`rules.intruders.within`: a window above 0")),
        "{e:#?}"
    );
}

#[test]
fn hive_is_the_map_of_the_design() {
    let p = hive().expect("hive.yaml is valid");
    let names: Vec<(&str, u32)> = (p.workloads.iter())
        .map(|w| (w.name.as_str(), w.rank))
        .collect();
    assert_eq!(
        names,
        [
            ("banker", 1),
            ("bastion", 2),
            ("brain", 3),
            ("visual-cortex", 4),
            ("council", 5),
            ("k8s-lab", 6),
            ("workers", 7),
        ]
    );
    let w = |n: &str| p.workload(n).unwrap();
    // The Banker is VM 200 (100 is The Brain), and owns the trading cores.
    assert_eq!(w("banker").matcher.vmid, Some(200));
    assert!(w("banker").owns_trading_cores);
    assert_eq!(w("brain").matcher.vmid, Some(100));
    assert!(w("bastion").never_frozen);
    assert_eq!(
        w("k8s-lab").matcher.vmids,
        Some(IdRange {
            first: 500,
            last: 502
        })
    );
    assert_eq!(
        w("workers").matcher.ctids,
        Some(IdRange {
            first: 300,
            last: 399
        })
    );
    // The GPU rules live in the Brain's own keeper.
    assert!(p.rules.thermal_guard.is_none() && p.rules.eco_mode.is_none());
    let brain = load(
        include_bytes!("../../../policies/brain-vm.yaml"),
        &HostFacts::default(),
    )
    .unwrap()
    .policy;
    assert!(brain.host.trading_cores.is_empty());
    assert!(brain.rules.thermal_guard.is_some());
    assert!(brain.workloads.iter().all(|w| !w.owns_trading_cores));
}

#[test]
fn guests_match_by_vmid_range_and_ctid() {
    let m = hive().unwrap();
    let lab = &m.workload("k8s-lab").unwrap().matcher;
    let workers = &m.workload("workers").unwrap().matcher;
    assert!(lab.owns_cgroup("/qemu.slice/501.scope/vcpu0"));
    assert!(!lab.owns_cgroup("qemu.slice/503.scope"));
    assert!(!lab.owns_cgroup("qemu.slice/5010.scope"));
    assert!(workers.owns_cgroup("lxc/305/ns/init.scope"));
    assert!(workers.owns_cgroup("lxc/399"));
    assert!(!workers.owns_cgroup("lxc/400"));
    assert!(!workers.owns_cgroup("lxc.monitor/305"));
    assert!(!workers.owns_cgroup("lxc/305x"));
    let one = |m: &str| {
        let text = HIVE_YAML.replacen("match: { ctid: 300-399 }", m, 1);
        load(text.as_bytes(), &HostFacts::default()).map(|l| l.policy)
    };
    let p = one("match: { ctid: 301 }").unwrap();
    let ct = p.workload("workers").unwrap().matcher.clone();
    assert!(ct.owns_cgroup("lxc/301/ns") && !ct.owns_cgroup("lxc/302"));
    assert_eq!(ct.guests()[0].ids.to_string(), "301");
    // A one-VM "range" is that VM.
    let p = one("match: { vmid: 301-301 }").unwrap();
    assert_eq!(p.workload("workers").unwrap().matcher.vmid, Some(301));
}

#[test]
fn bad_guest_ids_are_refused_where_they_are_written() {
    let at = |m: &str| {
        let text = HIVE_YAML.replacen("match: { ctid: 300-399 }", m, 1);
        errors(&text)
    };
    let line = HIVE_YAML[..HIVE_YAML.find("match: { ctid: 300-399 }").unwrap()]
        .lines()
        .count();
    for (m, want) in [
        (
            "match: { ctid: 399-300 }",
            "`workers.match.ctid`: 399-300: the range ends before it starts",
        ),
        (
            "match: { vmid: 50 }",
            "`workers.match.vmid`: 50 is not a Proxmox VM id (100..=999999999)",
        ),
        (
            "match: { ctid: 300-x }",
            "`workers.match.ctid`: `300-x` is not a container id or a range FIRST-LAST",
        ),
    ] {
        let e = at(m);
        assert!(
            e.iter()
                .any(|e| e.contains(want) && e.starts_with(&format!("{line}:"))),
            "{m}: {e:#?}"
        );
    }
}

#[test]
fn a_never_frozen_workload_cannot_be_paused_or_preempted() {
    let text = HIVE_YAML.replacen("pauses: [k8s-lab]", "pauses: [k8s-lab, bastion]", 1);
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|m| m.contains("`banker.pauses`: `bastion` is `never_frozen`")),
        "{e:#?}"
    );
}

#[test]
fn host_watchdog_reads_a_device_and_whole_seconds() {
    let with = |w: &str| {
        one_host_with(
            "housekeeping_cores: \"0\"\n",
            &format!("housekeeping_cores: \"0\"\n  watchdog: {w}\n"),
        )
    };
    let p = load(with("{ timeout: 180s }").as_bytes(), &HostFacts::default())
        .unwrap()
        .policy;
    assert_eq!(
        p.host.watchdog,
        Some(WatchdogSpec {
            device: "/dev/watchdog".into(),
            timeout: Duration::from_secs(180)
        })
    );
    assert_eq!(one_host().unwrap().host.watchdog, None);
    for (w, want) in [
        (
            "{ timeout: 1500ms }",
            "`host.watchdog.timeout`: whole seconds from 2s to 1h",
        ),
        (
            "{ timeout: 2h }",
            "`host.watchdog.timeout`: whole seconds from 2s to 1h",
        ),
        (
            "{ device: dev/watchdog, timeout: 10s }",
            "`host.watchdog.device`: an absolute path",
        ),
        (
            "{ device: /dev/watchdog }",
            "missing key `timeout` in `watchdog`",
        ),
    ] {
        let e = errors(&with(w));
        assert!(e.iter().any(|m| m.contains(want)), "{w}: {e:#?}");
    }
}

#[test]
fn vcpu_priority_is_fifo_n_on_the_trading_core_owner_only() {
    // The map asks for it ([design] "the trading VM in real-time priority").
    assert_eq!(
        hive().unwrap().workload("banker").unwrap().vcpu_fifo,
        Some(1)
    );
    let with = |v: &str| HIVE_YAML.replacen("vcpu_priority: \"fifo:1\"", v, 1);
    let p = load(
        with("vcpu_priority: \"fifo:20\"").as_bytes(),
        &HostFacts::default(),
    )
    .unwrap()
    .policy;
    assert_eq!(p.workload("banker").unwrap().vcpu_fifo, Some(20));
    let e = errors(&with("vcpu_priority: \"rr:5\""));
    assert!(
        e.iter()
            .any(|m| m
                .contains("`banker.vcpu_priority`: `rr:5` is not `fifo:N` with N from 1 to 98")),
        "{e:#?}"
    );
    let e = errors(&HIVE_YAML.replacen(
        "match: { vmid: 100 }",
        "match: { vmid: 100 }\n    vcpu_priority: \"fifo:1\"",
        1,
    ));
    assert!(
        e.iter()
            .any(|m| m
                .contains("`brain.vcpu_priority`: only the workload that owns the trading cores")),
        "{e:#?}"
    );
}

#[test]
fn start_on_is_a_unit_or_a_command_and_needs_the_workloads_preemption() {
    let on_eva = |start_on: &str| {
        one_host_with(
            "      release_after: 20s\n    gpu_handoff:",
            &format!("      release_after: 20s\n    start_on: {start_on}\n    gpu_handoff:"),
        )
    };
    let p = load(
        on_eva("{ command: [llama-server, --port, \"8080\"] }").as_bytes(),
        &HostFacts::default(),
    )
    .expect("a command");
    let s = p
        .policy
        .workload("eva-core")
        .unwrap()
        .start_on
        .clone()
        .unwrap();
    assert_eq!(
        s.service,
        Service::Command(vec!["llama-server".into(), "--port".into(), "8080".into()])
    );
    assert_eq!(s.deadline, Duration::from_secs(30));
    for (start_on, error) in [
        (
            "{ unit: llama3.service, command: [x] }",
            "`eva-core.start_on`: a `unit` or a `command`, not both",
        ),
        (
            "{ command: [] }",
            "`eva-core.start_on`: needs a `unit` or a `command` (not empty)",
        ),
        (
            "{ unit: llama3.service, deadline: soon }",
            "`eva-core.start_on.deadline`",
        ),
    ] {
        let found = errors(&on_eva(start_on));
        assert!(
            found.iter().any(|e| e.contains(error)),
            "{start_on}: {found:#?}"
        );
    }
    // On a workload without `preempt`: nothing would start it.
    let sentinel = one_host_with(
        "    class: light-browser\n",
        "    class: light-browser\n    start_on: { unit: x.service }\n",
    );
    let found = errors(&sentinel);
    assert!(
        found.iter().any(|e| e.contains(
            "`sentinel.start_on`: it starts with sentinel's preemption, and sentinel has no `preempt`"
        )),
        "{found:#?}"
    );
}

#[test]
fn the_gpu_mutex_names_vms_and_a_device_qmp_can_add() {
    let base = "version: 1\nhost: { time_zone: UTC, trading_cores: \"1\", housekeeping_cores: \"0\" }\n\
                workloads:\n\
                \x20 - { name: brain, rank: 2, match: { vmid: 100 } }\n\
                \x20 - { name: visual, rank: 3, match: { vmid: 104 } }\n\
                \x20 - { name: muse, rank: 4, match: { cgroup: muse.slice } }\n\
                rules:\n  gpu_mutex: ";
    let ok = format!(
        "{base}{{ holder: brain, lend_to: [visual], device: {{ id: hostpci0, driver: vfio-pci }} }}\n"
    );
    let p = load(ok.as_bytes(), &HostFacts::default())
        .expect("valid")
        .policy;
    let m = p.rules.gpu_mutex.unwrap();
    assert_eq!(
        (m.holder.as_str(), m.lend_to.as_slice()),
        ("brain", &["visual".to_string()][..])
    );
    assert_eq!(m.deadline, Duration::from_secs(30));
    for (rule, error) in [
        (
            "{ holder: brain, lend_to: [muse], device: { id: g, driver: d } }",
            "`rules.gpu_mutex.lend_to`: `muse` is not one VM (`match: {vmid: N}`)",
        ),
        (
            "{ holder: brain, lend_to: [brain], device: { id: g, driver: d } }",
            "`rules.gpu_mutex.lend_to`: `brain` holds the GPU already",
        ),
        (
            "{ holder: brian, lend_to: [visual], device: { id: g, driver: d } }",
            "`rules.gpu_mutex.holder`: unknown workload `brian`",
        ),
        (
            "{ holder: brain, lend_to: [visual], device: { id: g } }",
            "`rules.gpu_mutex.device`: needs `driver` (QMP's device_add)",
        ),
    ] {
        let found = errors(&format!("{base}{rule}\n"));
        assert!(
            found.iter().any(|e| e.contains(error)),
            "{rule}: {found:#?}"
        );
    }
}

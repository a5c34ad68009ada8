//! Unit tests of guest ids across workloads: two workloads never name the same VM or container.

use super::*;

fn errors(text: &str) -> Vec<String> {
    match load(text.as_bytes(), &HostFacts::default()) {
        Ok(_) => Vec::new(),
        Err(d) => d.0.iter().map(|d| format!("{}: {}", d.pos, d)).collect(),
    }
}

/// The 1-based line of `needle`'s first occurrence in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect(needle)].lines().count()
}

#[test]
fn a_vm_range_over_another_workloads_vm_is_refused_at_the_later_match() {
    // The lab's range would reach the Banker's VM 200: escalation on the lab would freeze it.
    let text = HIVE_YAML.replacen("match: { vmid: 500-502 }", "match: { vmid: 150-300 }", 1);
    let e = errors(&text);
    let line = line_of(&text, "match: { vmid: 150-300 }");
    let col = "    match: { vmid: ".len() + 1;
    let want = format!(
        "{line}:{col}: error: `k8s-lab.match.vmid`: VM 200 is also `banker`'s (`vmid: 200` at "
    );
    assert!(e.iter().any(|e| e.starts_with(&want)), "{want}\n{e:#?}");
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn every_workload_sharing_guests_is_named_with_the_shared_ids() {
    let text = HIVE_YAML.replacen("match: { vmid: 500-502 }", "match: { vmid: 100-300 }", 1);
    let e = errors(&text);
    for (other, ids) in [
        ("banker", "VM 200"),
        ("brain", "VM 100"),
        ("council", "VM 101"),
    ] {
        let want = format!("`k8s-lab.match.vmid`: {ids} is also `{other}`'s");
        assert!(e.iter().any(|e| e.contains(&want)), "{want}\n{e:#?}");
    }
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn overlapping_container_ranges_are_refused_and_name_the_shared_range() {
    let text = HIVE_YAML.replacen(
        "match: { vmid: 500-502 }",
        "match: { vmid: 500-502, ctid: 390-420 }",
        1,
    );
    let e = errors(&text);
    let want = "`k8s-lab.match.ctid`: containers 390-399 are also `workers`'s (`ctid: 300-399` at ";
    // k8s-lab comes first in the file: the error is at the later workload, `workers`.
    let line = line_of(&text, "match: { ctid: 300-399 }");
    let want_later = format!(
        "{line}:{}: error: `workers.match.ctid`: containers 390-399 are also `k8s-lab`'s (`ctid: 390-420` at ",
        "    match: { ctid: ".len() + 1
    );
    assert!(
        e.iter().any(|e| e.starts_with(&want_later)),
        "{want_later}\n{e:#?}"
    );
    assert!(!e.iter().any(|e| e.contains(want)), "{e:#?}");
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn the_same_single_vm_in_two_workloads_is_refused() {
    let text = HIVE_YAML.replacen("match: { vmid: 401 }", "match: { vmid: 101 }", 1);
    let e = errors(&text);
    let want = "`council.match.vmid`: VM 101 is also `visual-cortex`'s (`vmid: 101` at ";
    assert!(e.iter().any(|e| e.contains(want)), "{e:#?}");
}

#[test]
fn adjacent_ranges_and_a_vm_beside_a_container_of_the_same_number_pass() {
    let text = HIVE_YAML.replacen("match: { vmid: 500-502 }", "match: { vmid: 503-599 }", 1);
    assert_eq!(errors(&text), Vec::<String>::new());
    // VMs and containers are told apart by their cgroups (`qemu.slice/N.scope`, `lxc/N`).
    let text = HIVE_YAML.replacen("match: { vmid: 500-502 }", "match: { ctid: 200-299 }", 1);
    assert_eq!(errors(&text), Vec::<String>::new());
    let text = HIVE_YAML.replacen("match: { vmid: 500-502 }", "match: { vmid: 402-499 }", 1);
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn the_same_process_name_in_two_workloads_is_refused() {
    let text = HIVE_YAML.replacen(
        "workloads:\n",
        "workloads:\n  - { name: twin-a, rank: 90, match: { process: solver } }\n  - { name: twin-b, rank: 91, match: { process: solver } }\n",
        1,
    );
    let e = errors(&text);
    let want = "`twin-b.match.process`: processes named `solver` are also `twin-a`'s";
    assert!(e.iter().any(|e| e.contains(want)), "{e:#?}");
    assert_eq!(e.len(), 1, "{e:#?}");
}

/// Any local user can name a process `qemu`: an owner matched by name would protect it on the
/// trading cores and make its threads named like vCPUs real-time.
#[test]
fn the_owner_of_the_trading_cores_is_never_matched_by_a_process_name() {
    let text = HIVE_YAML.replacen("match: { vmid: 200 }", "match: { process: kvm }", 1);
    let e = errors(&text);
    assert!(
        e.iter().any(|e| e.contains(
            "`banker.match.process`: the workload that owns the trading cores is matched by a name"
        )),
        "{e:#?}"
    );
}

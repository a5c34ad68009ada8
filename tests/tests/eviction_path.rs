//! Privileged end-to-end tests of the eviction path on the real kernel: newcomers forked onto
//! the trading core by an unprotected parent are evicted at their arrival, before they have
//! run a millisecond there, with nothing read from /proc before the move (issue 13).

use integration_test::{rig::*, *};

/// One evicted task's run time on CPU 1 is bounded by its eviction latency: the record's
/// samples run from the task's first instant there (its arrival's or fork's event) to its move.
#[test]
fn forks_of_an_unprotected_parent_are_evicted_before_running_a_millisecond() {
    if !privileged("forks_of_an_unprotected_parent_are_evicted_before_running_a_millisecond") {
        return;
    }
    let rig = Rig::new("forks");
    let report = rig.dir.join("report.json");
    let keeper = rig.keeper(&["--for", "4s", "--report", report.to_str().unwrap()]);
    let muse = TestCgroup {
        rel: rig.rel("muse"),
        dir: rig.cg("muse"),
    };
    // The parent stays on CPU 0; every 50 ms it starts a 30 ms spinner allowed on CPU 1 only,
    // born in the parent's cgroup (a service's workers).
    let spawner = spawn_pinned(PROBE, &["newcomers", "2", "50", "1"], 0, Some(&muse));
    std::mem::forget(muse); // the rig's scope removes it
    wait_cpu_time(spawner);
    keeper.finish();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let samples: Vec<f64> = record["eviction_latency"]["samples_us"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert!(
        samples.len() >= 20,
        "{} evictions: {record:#}",
        samples.len()
    );
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "{} newcomers evicted; latency (µs) median {median:.0}, max {:.0}",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    // The median, not every one: this VM stalls now and then; a newcomer reported only by the
    // 2 ms sampler or at its switch-out would put the median over a millisecond.
    assert!(
        median < 1000.0,
        "median eviction latency {median:.0} µs: {sorted:?}"
    );
    // Each was reported before it ran (an arrival or a fork), not after a slice.
    let evictions: Vec<&serde_json::Value> = record["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            let done = |l: &serde_json::Value| l.as_str().is_some_and(|l| l.starts_with("done"));
            a["kind"] == "evict_intruder"
                && a["outcome"].as_array().is_some_and(|o| o.iter().any(done))
        })
        .collect();
    let late = evictions
        .iter()
        .filter(|a| !a["reason"].as_str().unwrap_or("").contains("ran 0us"))
        .count();
    assert!(
        late * 10 <= evictions.len(),
        "{late} of {} evictions came after the newcomer ran: {evictions:#?}",
        evictions.len()
    );
    // And they were moved by the eviction thread, as they came out of the kernel, not by the
    // loop (only the first ones, before the cgroup is known to its filter, go the loop's way).
    let mut carried: Vec<f64> = (evictions.iter())
        .filter_map(|a| a["elapsed_ms"].as_f64())
        .collect();
    carried.sort_by(f64::total_cmp);
    eprintln!(
        "carrying an eviction out took (ms) median {:.3}, max {:.3}",
        carried[carried.len() / 2],
        carried[carried.len() - 1]
    );
    let on_arrival = evictions
        .iter()
        .filter(|a| {
            a["reason"]
                .as_str()
                .unwrap_or("")
                .contains("evicted on arrival")
        })
        .count();
    assert!(
        on_arrival * 10 >= evictions.len() * 8,
        "{on_arrival} of {} evictions made on arrival: {evictions:#?}",
        evictions.len()
    );
}

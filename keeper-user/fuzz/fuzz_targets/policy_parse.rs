//! Fuzz target: any bytes through the policy loader and the scenario parser; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let facts = keeper::policy::HostFacts {
        online_cpus: "0-1".parse().ok(),
        for_this_host: data.first().is_some_and(|b| b & 1 == 1),
    };
    if let Err(diags) = keeper::policy::load(data, &facts) {
        for d in &diags.0 {
            let _ = d.render("fuzz.yaml");
        }
    }
    let _ = keeper::simulate::scenario::parse(data);
});

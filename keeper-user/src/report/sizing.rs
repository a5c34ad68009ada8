//! Seed 003, the sizing advisor: a workload of a class that is OOM-killed more than once a week
//! should move to the next class up, or be isolated with limits of its own. The kills counted
//! are the rolling week's, kept across restarts ([`super::oom_history`]).

use super::SizingAdvice;
use crate::policy::types::{Class, Policy};

/// The class above `c`, if there is one.
pub fn next_up(c: Class) -> Option<Class> {
    match c {
        Class::Micro => Some(Class::LightBrowser),
        Class::LightBrowser => Some(Class::HeavyBrowser),
        Class::HeavyBrowser => Some(Class::Batch),
        Class::Batch | Class::Experimental => None,
    }
}

/// The class as the policy writes it.
fn name(c: Class) -> &'static str {
    match c {
        Class::Micro => "micro",
        Class::LightBrowser => "light-browser",
        Class::HeavyBrowser => "heavy-browser",
        Class::Batch => "batch",
        Class::Experimental => "experimental",
    }
}

/// Advice for every classed workload killed more than once a week: `kills` names the workload
/// of each kill over `span_s` seconds (a span shorter than a week counts as a week: two kills
/// in an hour are already too many).
pub fn advise(policy: &Policy, kills: &[&str], span_s: f64) -> Vec<SizingAdvice> {
    let weeks = (span_s / (7.0 * 86400.0)).max(1.0);
    policy
        .workloads
        .iter()
        .filter_map(|w| {
            let class = w.class?;
            let n = kills.iter().filter(|k| **k == w.name).count() as u32;
            let per_week = n as f64 / weeks;
            (per_week > 1.0).then(|| SizingAdvice {
                workload: w.name.clone(),
                class: name(class).to_string(),
                oom_kills: n,
                per_week,
                advice: match next_up(class) {
                    Some(up) => format!(
                        "{} was OOM-killed {n} times ({per_week:.1} a week): move it to class {}, or isolate it with limits of its own",
                        w.name,
                        name(up)
                    ),
                    None => format!(
                        "{} was OOM-killed {n} times ({per_week:.1} a week) and {} is the largest class: isolate it with limits of its own",
                        w.name,
                        name(class)
                    ),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_kills_in_a_short_run_mean_the_next_class_up() {
        let policy = crate::policy::parse_str(crate::policy::ONE_HOST_YAML).expect("one-host");
        let kill = |w: &'static str| w;
        // Sentinel is light-browser in the one-host policy; one kill is not advice, two are.
        assert!(advise(&policy, &[kill("sentinel")], 3600.0).is_empty());
        let a = advise(&policy, &[kill("sentinel"), kill("sentinel")], 3600.0);
        assert_eq!(a.len(), 1);
        assert!(
            a[0].advice.contains("move it to class heavy-browser"),
            "{}",
            a[0].advice
        );
        // Two kills over four weeks: half a kill a week, fine.
        assert!(
            advise(
                &policy,
                &[kill("sentinel"), kill("sentinel")],
                28.0 * 86400.0
            )
            .is_empty()
        );
        // Batch (Muse) has no class above it.
        let a = advise(&policy, &[kill("muse"), kill("muse")], 60.0);
        assert!(a[0].advice.contains("largest class"), "{}", a[0].advice);
    }
}

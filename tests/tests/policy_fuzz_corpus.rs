//! Replays the fuzz corpus (keeper-user/fuzz/corpus/policy_parse) and the bad policies through
//! the parser: no panic, a located error or a policy, and bounded time for each input.

use std::path::Path;
use std::time::{Duration, Instant};

use keeper::policy::{HostFacts, load};

fn replay(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let start = Instant::now();
        let facts = HostFacts {
            online_cpus: "0-1".parse().ok(),
            for_this_host: true,
        };
        match load(&bytes, &facts) {
            Ok(_) => {}
            Err(d) => {
                assert!(
                    !d.0.is_empty(),
                    "{}: error without a finding",
                    path.display()
                );
                for diag in &d.0 {
                    assert!(
                        diag.pos.line >= 1 && diag.pos.col >= 1,
                        "{}: unlocated {diag}",
                        path.display()
                    );
                }
            }
        }
        let _ = keeper::simulate::scenario::parse(&bytes);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{} took {:?}",
            path.display(),
            start.elapsed()
        );
        n += 1;
    }
    n
}

#[test]
fn fuzz_corpus_replays_through_the_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(replay(&root.join("../keeper-user/fuzz/corpus/policy_parse")) >= 10);
    assert!(replay(&root.join("../tests/policies/bad")) >= 10);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]

    /// The seed policy with a stretch of it replaced by other bytes: a policy or located
    /// findings, never a panic (10 000 cases in every `cargo xtask test`).
    #[test]
    fn a_damaged_policy_loads_or_says_where(
        at in 0usize..keeper::policy::HIVE_YAML.len(),
        cut in 0usize..40,
        with in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
    ) {
        let hive = keeper::policy::HIVE_YAML.as_bytes();
        let end = (at + cut).min(hive.len());
        let bytes = [&hive[..at], &with[..], &hive[end..]].concat();
        let facts = HostFacts { online_cpus: "0-1".parse().ok(), for_this_host: true };
        if let Err(d) = load(&bytes, &facts) {
            proptest::prop_assert!(!d.0.is_empty());
            for diag in &d.0 {
                proptest::prop_assert!(diag.pos.line >= 1 && diag.pos.col >= 1, "{}", diag);
            }
        }
    }
}

//! The YAML policy: its types, its parser with located errors, its checks and its schema.
//!
//! Trip of a policy file: bytes → [`load::parse_raw`] (size cap, UTF-8, budgeted YAML, unknown
//! keys with "did you mean") → [`raw::RawPolicy`] → `validate` (values and semantic checks,
//! each located) → [`Policy`], the plain data the engine reads. docs/policy.md describes the
//! format; `keeper schema` prints its JSON Schema.

pub mod amount;
pub mod at;
pub mod diag;
pub mod init;
pub mod intruders;
pub mod load;
pub mod raw;
pub mod source;
pub mod types;
mod validate;
mod validate_guests;
mod validate_rules;
mod validate_workload;
pub mod window;

#[cfg(test)]
mod guest_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

pub use amount::{Amount, Percent};
pub use at::Pos;
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use intruders::{IntruderRule, RealTimeIntruders, RepeatAction};
pub use load::{MAX_POLICY_BYTES, read_capped};
pub use source::PolicySource;
pub use types::*;
pub use validate::{DEFAULT_THAW_HYSTERESIS, DEFAULT_TIME_ZONE, HostFacts};
pub use window::{DaySet, Window};

/// The engine's minimum reaction time: one `decide` call on a tick the daemon runs as soon as
/// a trigger (an interaction event) arrives. A preemption deadline below it cannot be met, so
/// `keeper check` refuses one.
pub const MIN_REACTION: std::time::Duration = std::time::Duration::from_millis(10);

/// The embedded default policy, `policies/hive.yaml` (the seed matrix).
pub const HIVE_YAML: &str = include_str!("../../../policies/hive.yaml");
/// Every workload on one host (policies/one-host.yaml): the decision engine's test fixture.
pub const ONE_HOST_YAML: &str = include_str!("../../../policies/one-host.yaml");

/// A policy that loaded, with its warnings.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and checks a policy file's bytes. `Err` holds every finding (errors and warnings),
/// sorted by position; `Ok` the policy and its warnings. Never panics, whatever the bytes.
pub fn load(bytes: &[u8], facts: &HostFacts) -> Result<Loaded, Diagnostics> {
    let raw = load::parse_raw(bytes).map_err(|d| Diagnostics(vec![d]))?;
    let mut checker = validate::Checker::new(facts);
    let policy = checker.policy(&raw);
    let diags = checker.diags;
    match policy {
        Some(policy) if !diags.iter().any(Diagnostic::is_error) => Ok(Loaded {
            policy,
            warnings: diags,
        }),
        _ => Err(Diagnostics(diags)),
    }
}

/// Parses a policy from text, without host facts (no CPU existence check).
pub fn parse_str(text: &str) -> Result<Policy, Diagnostics> {
    load(text.as_bytes(), &HostFacts::default()).map(|l| l.policy)
}

/// The embedded default policy ([`HIVE_YAML`]); tests keep it valid.
pub fn hive() -> Result<Policy, Diagnostics> {
    parse_str(HIVE_YAML)
}

/// [`ONE_HOST_YAML`], parsed.
pub fn one_host() -> Result<Policy, Diagnostics> {
    parse_str(ONE_HOST_YAML)
}

/// The JSON Schema of the policy file, for editors.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawPolicy);
    schema.to_value()
}

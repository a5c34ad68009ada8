//! Fault injection for the crash-consistency harness (`cargo xtask chaos --faults`): a named
//! point at each step of each journaled change, where a keeper built with the `failpoints`
//! feature kills itself with SIGKILL when the point is configured (`FAILPOINTS=NAME=return`,
//! the `fail` crate's syntax). Built without the feature (every shipped binary), each point
//! is an empty inline function: nothing is read, formatted or compared.
//!
//! A point is named `KIND.STEP`: `KIND` the journal entry's kind (`freeze`, `affinity`,
//! `vm_stopped`, ...: [`Entry::kind`]), `STEP` one of [`Step`]. The harness lists the points
//! each action reaches with [`points`].

use super::journal::Entry;

/// A step of a journaled change, where a kill is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Prepared, before the journal line: the eviction's pending record armed (in its mapped
    /// file), the task not yet moved; a `start_on` command spawned, waiting at its gate.
    Armed,
    /// The journal line is written (and synced where the entry asks it), the change not yet
    /// made.
    Recorded,
    /// The change is made; nothing after it yet (a second journal line, the next action).
    Applied,
    /// An undo (at exit or at a start's replay) is about to put this entry back.
    Undoing,
    /// That undo is done; the journal does not know it yet.
    Undone,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Armed,
        Step::Recorded,
        Step::Applied,
        Step::Undoing,
        Step::Undone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Armed => "armed",
            Step::Recorded => "recorded",
            Step::Applied => "applied",
            Step::Undoing => "undoing",
            Step::Undone => "undone",
        }
    }
}

/// The point's name: `KIND.STEP`.
pub fn point(kind: &str, step: Step) -> String {
    format!("{kind}.{}", step.name())
}

/// Whether entries of `kind` have an `armed` step (an eviction, a `start_on` command).
pub fn armed(kind: &str) -> bool {
    matches!(kind, "affinity" | "service_command")
}

/// Every point an entry of `kind` has.
pub fn points(kind: &str) -> Vec<String> {
    Step::ALL
        .into_iter()
        .filter(|s| *s != Step::Armed || armed(kind))
        .map(|s| point(kind, s))
        .collect()
}

/// Reads `FAILPOINTS` once, at start (a binary with the feature only). Held for the process's
/// life.
#[cfg(feature = "failpoints")]
pub fn setup() -> impl Sized {
    let scenario = fail::FailScenario::setup();
    if let Ok(points) = std::env::var("FAILPOINTS") {
        tracing::warn!(%points, "built with failpoints: the keeper kills itself at these");
    }
    scenario
}

/// Nothing (a binary without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> impl Sized {}

/// The point `KIND.STEP` of `entry`: the process ends here with SIGKILL if it is configured.
#[cfg(feature = "failpoints")]
pub fn at(entry: &Entry, step: Step) {
    at_kind(entry.kind(), step);
}

/// The point `KIND.STEP`, named by kind.
#[cfg(feature = "failpoints")]
pub fn at_kind(kind: &str, step: Step) {
    let name = point(kind, step);
    fail::eval(&name, |_| {
        eprintln!("failpoint {name}: SIGKILL");
        // SAFETY: kill(2) on our own pid with a constant signal; no memory is passed.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL to oneself is delivered before kill returns; never reached.
        std::process::abort()
    });
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn at(_: &Entry, _: Step) {}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn at_kind(_: &str, _: Step) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_steps_and_only_the_eviction_is_armed() {
        assert_eq!(
            points("freeze"),
            [
                "freeze.recorded",
                "freeze.applied",
                "freeze.undoing",
                "freeze.undone"
            ]
        );
        assert_eq!(points("affinity")[0], "affinity.armed");
        assert_eq!(points("affinity").len(), 5);
    }
}

//! What a cgroup's `cpuset.cpus.partition` says, typed: read by the sensors (is the owner's
//! partition valid?) and by the actuators (did the write take?), never matched as text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A partition root's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// `root`: its CPUs are its own, the scheduler still balances between them.
    Root,
    /// `isolated`: its own, and no load balancing between them.
    Isolated,
}

/// `cpuset.cpus.partition` as the kernel reads it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Not a partition root.
    Member,
    /// A valid partition root.
    Valid(PartitionKind),
    /// A partition root gone invalid (a CPU went offline, a parent changed, CPUs not
    /// exclusive), and the kernel's reason in its parentheses.
    Invalid { kind: PartitionKind, reason: String },
}

impl PartitionState {
    /// Parses the file's text (`member`, `isolated`, `root invalid (Cpu list in cpuset.cpus not
    /// exclusive)`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let kind = match word {
            "member" if rest.is_empty() => return Some(Self::Member),
            "root" => PartitionKind::Root,
            "isolated" => PartitionKind::Isolated,
            _ => return None,
        };
        let rest = rest.trim();
        if rest.is_empty() {
            return Some(Self::Valid(kind));
        }
        let reason = rest.strip_prefix("invalid")?.trim();
        let reason = (reason.strip_prefix('(').and_then(|r| r.strip_suffix(')')))
            .unwrap_or(reason)
            .to_string();
        Some(Self::Invalid { kind, reason })
    }

    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid(_))
    }

    /// What to write back to make the same partition again (the read and write forms
    /// differ: `root invalid (…)` reads back, `root` is written).
    pub fn written_form(&self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Valid(k) | Self::Invalid { kind: k, .. } => k.word(),
        }
    }

    /// How telling it is when a workload has several cgroups: one gone invalid, then a
    /// partition, then a member.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Member => 0,
            Self::Valid(_) => 1,
            Self::Invalid { .. } => 2,
        }
    }
}

impl PartitionKind {
    fn word(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Isolated => "isolated",
        }
    }
}

impl fmt::Display for PartitionState {
    /// The kernel's own words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Member => f.write_str("member"),
            Self::Valid(k) => f.write_str(k.word()),
            Self::Invalid { kind, reason } => write!(f, "{} invalid ({reason})", kind.word()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_words_parse_and_print_back() {
        for text in [
            "member",
            "root",
            "isolated",
            "isolated invalid (Cpu list in cpuset.cpus not exclusive)",
            "root invalid (Parent is an invalid partition root)",
        ] {
            let state = PartitionState::parse(&format!("{text}\n")).unwrap();
            assert_eq!(state.to_string(), text);
        }
        assert_eq!(
            PartitionState::parse("root invalid (x)")
                .unwrap()
                .written_form(),
            "root"
        );
        assert!(PartitionState::parse("isolated").unwrap().is_valid());
        assert!(!PartitionState::parse("member").unwrap().is_valid());
        assert_eq!(PartitionState::parse("bogus"), None);
        assert_eq!(PartitionState::parse("member extra"), None);
    }
}

//! The control socket's language: what `keeper status|interaction|reload|report` ask and what
//! `keeper run` answers, as plain serde types apart from the daemon (in the spirit of
//! resctl-demo's rd-agent-intf). One JSON object per line each way; every answer has `ok`,
//! and a refusal says why in `error`. `watch` is the one request answered by a stream: a
//! [`frame::Frame`] line a second until the client hangs up.

pub mod client;
pub mod frame;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    act::{execute::Done, journal::Entry},
    decide::{Action, Handoff},
    device::gpu::GpuReadout,
    enforcer::Enforcer,
    report::RunRecord,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InteractionState {
    Start,
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Interaction {
        state: InteractionState,
    },
    Reload,
    /// The run record so far (`keeper report --live`).
    Report,
    /// A [`frame::Frame`] a second until the client hangs up (`keeper top`).
    Watch,
}

/// The request as written; unknown keys are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    command: String,
    state: Option<InteractionState>,
}

impl Request {
    /// Parses one request line; the error says where and what was expected.
    pub fn parse(line: &str) -> Result<Request, String> {
        let expected = r#"expected {"command":"status"}, {"command":"interaction","state":"start"|"stop"}, {"command":"reload"}, {"command":"report"} or {"command":"watch"}"#;
        let w: Wire = serde_json::from_str(line)
            .map_err(|e| format!("request line 1, column {}: {e}; {expected}", e.column()))?;
        match (w.command.as_str(), w.state) {
            ("status", None) => Ok(Request::Status),
            ("reload", None) => Ok(Request::Reload),
            ("report", None) => Ok(Request::Report),
            ("watch", None) => Ok(Request::Watch),
            ("interaction", Some(state)) => Ok(Request::Interaction { state }),
            ("interaction", None) => {
                Err(format!("request: `interaction` needs `state`; {expected}"))
            }
            ("status" | "reload" | "report" | "watch", Some(_)) => Err(format!(
                "request: `{}` takes no `state`; {expected}",
                w.command
            )),
            (other, _) => Err(format!("request: unknown command `{other}`; {expected}")),
        }
    }
}

/// An answer of `keeper run` on its control socket.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    Interaction(Interaction),
    Reloaded(Reloaded),
    Record(Box<Record>),
    Frame(Box<frame::Frame>),
    Refused(Refused),
}

impl Reply {
    pub fn refused(error: impl Into<String>) -> Reply {
        Reply::Refused(Refused {
            ok: false,
            error: error.into(),
        })
    }
}

/// What a client reads back: the answer it asked for, or the keeper's refusal.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Answer<T> {
    Refused(Refused),
    Granted(T),
}

/// `{"ok": false, "error": …}`: the request was not carried out.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    pub ok: bool,
    pub error: String,
}

/// Enforcing, or `--dry-run` (saying what it would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Enforcing,
    DryRun,
}

impl Mode {
    /// In words, for the text views.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforcing => "enforcing",
            Mode::DryRun => "dry run",
        }
    }
}

/// What every view of the running keeper starts with: its mode, policy, cores and counters
/// (flattened into `status` and each `watch` frame).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub mode: Mode,
    pub policy: String,
    pub trading_cores: String,
    pub housekeeping_cores: String,
    /// The workload the trading cores are protected for now.
    pub trading_cores_owner: Option<String>,
    pub interaction: bool,
    pub evictions: u64,
    pub errors: u64,
}

impl Summary {
    /// Mode, policy, cores and counters: the head of `status` and of each `watch` frame.
    pub fn of(e: &Enforcer) -> Summary {
        Summary {
            mode: if e.act.dry_run() {
                Mode::DryRun
            } else {
                Mode::Enforcing
            },
            policy: e.source.name(),
            trading_cores: e.policy.host.trading_cores.to_string(),
            housekeeping_cores: e.policy.host.housekeeping_cores.to_string(),
            trading_cores_owner: e.state.applied.trading.clone(),
            interaction: e.interaction,
            evictions: e.evictions,
            errors: e.errors,
        }
    }
}

/// `keeper status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub ok: bool,
    #[serde(flatten)]
    pub summary: Summary,
    pub workloads: Vec<WorkloadStatus>,
    pub frozen: Vec<String>,
    pub throttled: Vec<String>,
    /// The last GPU readout (`null`: no GPU, or unreadable).
    pub gpu: Option<GpuReadout>,
    pub gpu_checkpointed: Vec<String>,
    pub handoff: BTreeMap<String, Handoff>,
    /// Changes of an earlier run whose undo failed, retried with a backoff.
    pub undo_pending: Vec<Entry>,
    /// Actions decided and not carried out yet (behind a slow one: a VM or GPU call).
    pub pending: Vec<Action>,
    /// The last actions, newest first.
    pub last_actions: Vec<Done>,
}

impl Status {
    /// The answer to `keeper status`.
    pub fn of(e: &Enforcer) -> Status {
        let a = &e.state.applied;
        let workloads = e
            .policy
            .workloads
            .iter()
            .map(|w| {
                let p = e.observer.placements.get(&w.name);
                WorkloadStatus {
                    name: w.name.clone(),
                    rank: w.rank,
                    present: p.is_some(),
                    cgroups: p.map(|p| p.cgroups.clone()).unwrap_or_default(),
                    pids: p.map(|p| p.pids.clone()).unwrap_or_default(),
                    frozen: a.frozen.contains_key(&w.name),
                    throttled: a.throttled(&w.name),
                }
            })
            .collect();
        Status {
            ok: true,
            summary: Summary::of(e),
            workloads,
            frozen: a.frozen.keys().cloned().collect(),
            throttled: a.knobs.keys().filter(|w| a.throttled(w)).cloned().collect(),
            gpu: e.observer.gpu_readout.clone(),
            gpu_checkpointed: a.gpu_checkpointed.keys().cloned().collect(),
            handoff: e.state.handoff.clone(),
            undo_pending: e.act.undo_pending().to_vec(),
            pending: e.pending().into_iter().cloned().collect(),
            last_actions: e.last.iter().rev().take(20).cloned().collect(),
        }
    }
}

/// One workload in `keeper status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub rank: u32,
    /// Found on this host.
    pub present: bool,
    pub cgroups: Vec<String>,
    pub pids: Vec<u32>,
    pub frozen: bool,
    pub throttled: bool,
}

/// `keeper interaction start|stop`: what it caused at once, and what waits.
#[derive(Debug, Serialize, Deserialize)]
pub struct Interaction {
    pub ok: bool,
    pub interaction: bool,
    pub elapsed_ms: f64,
    pub actions: Vec<Done>,
    /// Behind a slow step (a GPU checkpoint): carried out when it comes back.
    pub pending: Vec<Action>,
}

/// `keeper reload`: the policy now in force.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reloaded {
    pub ok: bool,
    pub policy: String,
}

/// `keeper report --live`: the run record so far.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub ok: bool,
    pub record: RunRecord,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Any line on the socket: a request or an error saying where, never a panic.
        #[test]
        fn any_request_line_parses_or_says_why(
            line in prop_oneof![
                "\\PC{0,80}",
                ("[a-z_]{0,12}", proptest::option::of("[a-z]{0,6}"), "[ -~]{0,12}").prop_map(
                    |(c, s, x)| match s {
                        Some(s) => format!(r#"{{"command":"{c}","state":"{s}"{x}}}"#),
                        None => format!(r#"{{"command":"{c}"{x}}}"#),
                    }
                ),
            ]
        ) {
            match Request::parse(&line) {
                Ok(r) => prop_assert_eq!(
                    Request::parse(&serde_json::to_string(&r).unwrap()),
                    Ok(r)
                ),
                Err(e) => prop_assert!(e.starts_with("request"), "{}", e),
            }
        }
    }

    #[test]
    fn requests_read_as_documented() {
        let r = Request::parse(r#"{"command":"interaction","state":"start"}"#).unwrap();
        assert_eq!(
            r,
            Request::Interaction {
                state: InteractionState::Start
            }
        );
        let line = serde_json::to_string(&Request::Reload).unwrap();
        assert_eq!(Request::parse(&line), Ok(Request::Reload));
        let e = Request::parse(r#"{"command":"status","x":1}"#).unwrap_err();
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = Request::parse(r#"{"command":"explode"}"#).unwrap_err();
        assert!(e.contains("unknown command `explode`"), "{e}");
        let e = Request::parse("{nope").unwrap_err();
        assert!(e.starts_with("request line 1, column 2"), "{e}");
    }

    /// What the keeper writes, a client reads back as the same types: an interaction's
    /// actions (CPU lists as text, a flattened action kind) survive the trip unchanged.
    #[test]
    fn answers_read_back_as_the_types_they_were_written_from() {
        use crate::{
            act::execute::Done,
            decide::{Action, ActionKind, RuleId, Step},
        };
        let action = |kind| Action {
            kind,
            rule: RuleId::new("banker.owns_trading_cores"),
            reason: "why".into(),
        };
        let answer = Reply::Interaction(Interaction {
            ok: true,
            interaction: true,
            elapsed_ms: 1.5,
            actions: vec![
                Done::new(
                    action(ActionKind::ProtectTradingCores {
                        workload: "banker".into(),
                        cpus: "2-5".parse().unwrap(),
                        housekeeping: "0-1,6".parse().unwrap(),
                        vcpu_fifo: Some(1),
                    }),
                    vec![Step::Done {
                        detail: "cpuset".into(),
                    }],
                    0.2,
                ),
                Done::new(
                    action(ActionKind::EvictIntruder {
                        pid: 7,
                        comm: "rsync".into(),
                        cgroup: "system.slice/backup.service".into(),
                        cpu: 2,
                        to: "0-1".parse().unwrap(),
                        seen_ns: None,
                        start: None,
                    }),
                    vec![Step::Failed {
                        error: "gone".into(),
                        retryable: false,
                    }],
                    0.1,
                ),
            ],
            pending: vec![],
        });
        let line = serde_json::to_string(&answer).unwrap();
        let back: Answer<Interaction> = serde_json::from_str(&line).unwrap();
        let Answer::Granted(i) = back else {
            panic!("read as a refusal: {line}")
        };
        assert_eq!(serde_json::to_string(&Reply::Interaction(i)).unwrap(), line);
        let refused = serde_json::to_string(&Reply::refused("no")).unwrap();
        let back: Answer<Interaction> = serde_json::from_str(&refused).unwrap();
        assert!(matches!(back, Answer::Refused(r) if r.error == "no"));
    }
}

//! `rules.intruders`: what a task that keeps coming back to a trading core gets, and what a
//! real-time intruder's class becomes as it leaves (the checked policy's part; see
//! [`super::types`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::amount::Percent;

/// `rules.intruders`: what a task that keeps coming back to a trading core gets.
#[derive(Clone, Debug, PartialEq)]
pub struct IntruderRule {
    pub repeat: u32,
    pub within: Duration,
    pub then: RepeatAction,
    /// The `cpu.max` a repeat offender's workload gets with `then: throttle`.
    pub cpu_max: Percent,
    /// What a real-time intruder's class becomes as it is moved to the housekeeping cores.
    pub real_time: RealTimeIntruders,
}

impl Default for IntruderRule {
    fn default() -> Self {
        Self {
            repeat: 3,
            within: Duration::from_secs(10),
            then: RepeatAction::Stop,
            cpu_max: Percent::new(10.0),
            real_time: RealTimeIntruders::Demote,
        }
    }
}

/// `rules.intruders.real_time`: the class of a real-time intruder (SCHED_FIFO, SCHED_RR) moved
/// off the trading cores.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RealTimeIntruders {
    /// Demoted to SCHED_OTHER while it is off the trading cores, its class journaled and given
    /// back with its CPUs at the exit (the default: at its real-time priority it would starve
    /// the housekeeping cores, the keeper's loop, sshd and the VMs' I/O threads with them).
    #[default]
    Demote,
    /// Moved with its class. For an operator whose real-time work must keep its priority on
    /// the housekeeping cores; the kernel's RT throttling is then all that bounds it there. A
    /// SCHED_DEADLINE task is demoted all the same: the kernel refuses to move it otherwise.
    Keep,
}

/// What a repeat offender gets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RepeatAction {
    /// Evicted again at each return (the task keeps its share of the trading cores).
    Evict,
    /// Its workload throttled (`cpu.max` at `rules.intruders.cpu_max`) while the trading
    /// cores stay protected (a task outside every workload is stopped instead).
    Throttle,
    /// Its workload frozen while the trading cores stay protected (a task outside every
    /// workload is stopped instead).
    Freeze,
    /// Its process (not its children) stopped with SIGSTOP while the trading cores stay
    /// protected, continued when they are let go or at the exit (the default).
    #[default]
    Stop,
}

impl RepeatAction {
    /// Its name in the policy (`rules.intruders.then`).
    pub fn name(self) -> &'static str {
        match self {
            RepeatAction::Evict => "evict",
            RepeatAction::Throttle => "throttle",
            RepeatAction::Freeze => "freeze",
            RepeatAction::Stop => "stop",
        }
    }

    /// What a repeat offender gets, in words.
    pub fn what(self) -> &'static str {
        match self {
            RepeatAction::Evict => {
                "evicted again at each return (this does not hold the share against a task that pins itself back without end)"
            }
            RepeatAction::Throttle => {
                "its workload throttled (rules.intruders.cpu_max) while the trading cores stay protected (a task of no workload: stopped)"
            }
            RepeatAction::Freeze => {
                "its workload frozen while the trading cores stay protected (a task of no workload: stopped)"
            }
            RepeatAction::Stop => {
                "its process stopped (SIGSTOP, not its children) while the trading cores stay protected"
            }
        }
    }
}

//! Answers to the control socket's requests (typed: [`crate::interface`]).

use std::time::Instant;

use super::{control::Call, running::Running, running::protected_ids};
use crate::{
    interface::{
        self, InteractionState, Reply, Request,
        frame::{
            ActionLine, Frame, GpuLine, LAST_ACTIONS, PressureLine, TOP_INTRUDERS, WorkloadLine,
            WorkloadState,
        },
    },
    report::view,
};

impl Running {
    /// Answers one request (an interaction or a reload acts at once).
    pub fn answer(&mut self, call: Call) {
        let reply = match call.request {
            Request::Status => Reply::Status(Box::new(self.keeper.status())),
            Request::Report => {
                let sensed = self.sensed();
                let record = self.recorder.build(&self.keeper.run_facts(), sensed, true);
                Reply::Record(Box::new(interface::Record { ok: true, record }))
            }
            Request::Interaction { state } => self.interaction(state == InteractionState::Start),
            Request::Reload => self.reload(),
            Request::Watch => Reply::Frame(Box::new(self.frame())),
        };
        let _ = call.reply.send(reply);
    }

    /// `keeper interaction start|stop`: decided and acted on at once; what waits behind a
    /// slow step (a GPU checkpoint) is said as pending.
    fn interaction(&mut self, start: bool) -> Reply {
        let started = Instant::now();
        let p99 = self.p99();
        self.keeper.interact(start);
        let obs = self.keeper.observe(vec![], p99);
        let done = self.keeper.tick(&obs);
        self.after(&done);
        Reply::Interaction(interface::Interaction {
            ok: done.iter().all(|d| d.ok()),
            interaction: self.keeper.interaction,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            actions: done,
            pending: self.keeper.pending().into_iter().cloned().collect(),
        })
    }

    /// `keeper reload`: the policy read again and acted on at once, or refused (the current
    /// one stays).
    fn reload(&mut self) -> Reply {
        let p = match super::start::load_policy(&self.keeper.source) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: keeping the current policy");
                return Reply::refused(format!("policy not reloaded, the current one stays:\n{e}"));
            }
        };
        if p.host.trading_cores != self.keeper.policy.host.trading_cores
            && let Err(e) = self.sensor.set_trading_cpus(&p.host.trading_cores)
        {
            return Reply::refused(e.to_string());
        }
        self.keeper.policy = p;
        self.keeper.set_balloon_floor();
        let _ = self
            .sensor
            .set_protected(&protected_ids(&self.keeper, &self.cg));
        tracing::info!(policy = %self.keeper.source.name(), "policy reloaded");
        // Place and act at once (a VM that just started, a policy that changed).
        let p99 = self.p99();
        let obs = self.keeper.observe(vec![], p99);
        let done = self.keeper.tick(&obs);
        self.after(&done);
        Reply::Reloaded(interface::Reloaded {
            ok: true,
            policy: self.keeper.source.name(),
        })
    }
}

impl Running {
    /// One frame of `watch`: what `keeper top` shows, counters since the run began.
    fn frame(&mut self) -> Frame {
        let readouts = self.sensor.cpu_readouts().unwrap_or_default();
        let run_s = self.run_s();
        let mut intruders = self.intruder_views(run_s);
        intruders.truncate(TOP_INTRUDERS);
        let noise = self.noise_views(run_s);
        let keeper = &self.keeper;
        let last = keeper.observer.last();
        Frame {
            ok: true,
            at_unix_ms: jiff::Timestamp::now().as_millisecond(),
            run_s,
            summary: keeper.summary(),
            cpus: readouts.iter().map(view::cpu_view).collect(),
            intruders,
            noise,
            workloads: self.workload_lines(),
            pressure: last.map_or_else(PressureLine::default, |o| PressureLine {
                cpu_some_percent: o.cpu_pressure.some_avg10,
                memory_some_percent: o.memory_pressure.some_avg10,
                memory_full_percent: o.memory_pressure.full_avg10,
                loadavg: o.loadavg,
            }),
            gpu: keeper.observer.gpu_readout.as_ref().map(GpuLine::from),
            undo_pending: keeper.act.undo_pending().len(),
            last_actions: (keeper.last.iter().rev().take(LAST_ACTIONS))
                .map(ActionLine::from)
                .collect(),
        }
    }

    /// Each workload of the policy and what the keeper holds it in.
    fn workload_lines(&self) -> Vec<WorkloadLine> {
        let keeper = &self.keeper;
        let a = &keeper.state.applied;
        (keeper.policy.workloads.iter())
            .map(|w| {
                let found = keeper.observer.placements.get(&w.name);
                let name = &w.name;
                let state = if a.stopped_vms.contains_key(name) {
                    WorkloadState::Stopped
                } else if found.is_none() {
                    WorkloadState::Absent
                } else if a.frozen.contains_key(name) {
                    WorkloadState::Frozen
                } else if a.balloons.contains_key(name) {
                    WorkloadState::Ballooned
                } else if a.throttled(name) {
                    WorkloadState::Throttled
                } else {
                    WorkloadState::Active
                };
                WorkloadLine {
                    name: name.clone(),
                    rank: w.rank,
                    state,
                    found_at: found.and_then(where_found),
                }
            })
            .collect()
    }
}

/// Where a workload was found: its first cgroup, else its processes.
fn where_found(p: &crate::device::placement::Placement) -> Option<String> {
    match (p.cgroups.first(), p.pids.as_slice()) {
        (Some(c), _) => Some(format!("/{c}")),
        (None, []) => None,
        (None, pids) => Some(format!(
            "pid {}",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}

//! Answers to the control socket's requests (typed: [`crate::interface`]).

use std::time::Instant;

use super::{running::Running, running::protected_ids};
use crate::{
    interface::{
        self, InteractionState, Reply, Request,
        frame::{
            ActionLine, Frame, GpuLine, LAST_ACTIONS, PressureLine, TOP_INTRUDERS, workload_lines,
        },
        server::Call,
    },
    interface::{Status, Summary},
    report::record::RunFacts,
    report::view,
};

impl Running {
    /// Answers one request (an interaction or a reload acts at once).
    pub fn answer(&mut self, call: Call) {
        let reply = match call.request {
            Request::Status => Reply::Status(Box::new(Status::of(&self.enforcer))),
            Request::Report => {
                let sensed = self.sensed();
                let record = self
                    .recorder
                    .build(&RunFacts::of(&self.enforcer), sensed, true);
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
        self.enforcer.interact(start);
        let obs = self.enforcer.observe(vec![], p99);
        let done = self.enforcer.tick(&obs);
        self.after(&done);
        Reply::Interaction(interface::Interaction {
            ok: done.iter().all(|d| d.ok()),
            interaction: self.enforcer.interaction,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            actions: done,
            pending: self.enforcer.pending().into_iter().cloned().collect(),
        })
    }

    /// SIGHUP (`systemctl reload`): [`Self::reload`], its outcome logged.
    pub(super) fn reload_on(&mut self, signal: &str) {
        match self.reload() {
            Reply::Reloaded(_) => tracing::info!(signal, "{signal}: policy reloaded"),
            Reply::Refused(r) => tracing::warn!(
                signal,
                error = %r.error,
                "{signal}: the policy was not reloaded, the current one stays"
            ),
            _ => {}
        }
    }

    /// `keeper reload`: the policy read again and acted on at once, or refused (the current
    /// one stays).
    fn reload(&mut self) -> Reply {
        let p = match super::start::load_policy(&self.enforcer.source) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: keeping the current policy");
                return Reply::refused(format!("policy not reloaded, the current one stays:\n{e}"));
            }
        };
        if p.host.trading_cores != self.enforcer.policy.host.trading_cores
            && let Err(e) = self.sensor.set_trading_cpus(&p.host.trading_cores)
        {
            return Reply::refused(e.to_string());
        }
        self.enforcer.policy = p;
        self.enforcer.set_actuator_values();
        let _ = self
            .sensor
            .set_protected(&protected_ids(&self.enforcer, &self.cg));
        tracing::info!(policy = %self.enforcer.source.name(), "policy reloaded");
        // Place and act at once (a VM that just started, a policy that changed).
        let p99 = self.p99();
        let obs = self.enforcer.observe(vec![], p99);
        let done = self.enforcer.tick(&obs);
        self.after(&done);
        Reply::Reloaded(interface::Reloaded {
            ok: true,
            policy: self.enforcer.source.name(),
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
        let enforcer = &self.enforcer;
        let last = enforcer.observer.last();
        Frame {
            ok: true,
            at_unix_ms: jiff::Timestamp::now().as_millisecond(),
            run_s,
            summary: Summary::of(enforcer),
            cpus: readouts.iter().map(view::cpu_view).collect(),
            intruders,
            noise,
            workloads: workload_lines(
                &enforcer.policy,
                &enforcer.state.applied,
                &enforcer.observer.placements,
            ),
            pressure: last.map_or_else(PressureLine::default, |o| PressureLine {
                cpu_some_percent: o.cpu_pressure.some_avg10,
                memory_some_percent: o.memory_pressure.some_avg10,
                memory_full_percent: o.memory_pressure.full_avg10,
                loadavg: o.loadavg,
            }),
            gpu: enforcer.observer.gpu_readout.as_ref().map(GpuLine::from),
            undo_pending: enforcer.act.undo_pending().len(),
            last_actions: (enforcer.last.iter().rev().take(LAST_ACTIONS))
                .map(ActionLine::from)
                .collect(),
        }
    }
}

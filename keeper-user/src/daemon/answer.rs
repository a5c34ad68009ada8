//! Answers to the control socket's requests (typed: [`crate::interface`]).

use std::time::Instant;

use super::{control::Call, running::Running, running::protected_ids};
use crate::interface::{self, InteractionState, Reply, Request};

impl Running {
    /// Answers one request (an interaction or a reload acts at once).
    pub fn answer(&mut self, call: Call) {
        let reply = match call.request {
            Request::Status => Reply::Status(Box::new(self.keeper.status())),
            Request::Report => {
                let record = self
                    .recorder
                    .build(&self.keeper.run_facts(), self.sensed(), true);
                Reply::Record(Box::new(interface::Record { ok: true, record }))
            }
            Request::Interaction { state } => self.interaction(state == InteractionState::Start),
            Request::Reload => self.reload(),
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

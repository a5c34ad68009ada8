//! `keeper status`, `keeper interaction start|stop`, `keeper reload`: clients of the running
//! daemon's control socket, typed end to end ([`crate::interface`]).

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use serde::{Serialize, de::DeserializeOwned};

use super::{Format, run::DEFAULT_SOCKET};
use crate::{
    act::execute::Done,
    interface::{
        Answer, Interaction, InteractionState, Reloaded, Request, Status, client, frame::ActionLine,
    },
};

#[derive(Debug, clap::Args)]
pub struct SocketArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct InteractionArgs {
    /// `start` when the user begins interacting with EVA, `stop` when done.
    #[arg(value_enum)]
    pub state: InteractionState,
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn status(args: &SocketArgs) -> anyhow::Result<ExitCode> {
    send(args, &Request::Status, |o, s: &Status| write_status(o, s))
}

pub fn interaction(args: &InteractionArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Interaction { state: args.state };
    send(&args.socket, &request, |o, i: &Interaction| {
        let state = if i.interaction { "on" } else { "off" };
        writeln!(o, "interaction {state} ({:.1} ms)", i.elapsed_ms)?;
        write_done(o, "actions", &i.actions)?;
        for a in &i.pending {
            writeln!(o, "  pending: {} [{}] {}", a.kind, a.rule, a.reason)?;
        }
        Ok(())
    })
}

pub fn reload(args: &SocketArgs) -> anyhow::Result<ExitCode> {
    send(args, &Request::Reload, |o, r: &Reloaded| {
        writeln!(o, "policy reloaded: {}", r.policy)
    })
}

/// Asks, prints the answer (JSON as the keeper wrote it, or text), exits 1 on a refusal.
fn send<T: DeserializeOwned + Serialize>(
    args: &SocketArgs,
    request: &Request,
    text: impl Fn(&mut dyn Write, &T) -> std::io::Result<()>,
) -> anyhow::Result<ExitCode> {
    let answer = client::call::<T>(&args.socket, request)
        .with_context(|| "is `keeper run` running? (see --socket)")?;
    let mut out = std::io::stdout().lock();
    let code = match (&answer, args.format) {
        (Answer::Granted(t), Format::Json) => print_json(&mut out, t, ExitCode::SUCCESS),
        (Answer::Refused(r), Format::Json) => print_json(&mut out, r, ExitCode::from(1)),
        (Answer::Granted(t), Format::Text) => text(&mut out, t).map(|()| ExitCode::SUCCESS),
        (Answer::Refused(r), Format::Text) => {
            writeln!(out, "error: {}", r.error).map(|()| ExitCode::from(1))
        }
    }?;
    Ok(code)
}

fn print_json(
    out: &mut dyn Write,
    v: &impl Serialize,
    code: ExitCode,
) -> std::io::Result<ExitCode> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    Ok(code)
}

/// `keeper status --format text`.
fn write_status(o: &mut dyn Write, status: &Status) -> std::io::Result<()> {
    let s = &status.summary;
    let mode = s.mode.name();
    writeln!(
        o,
        "{mode} · policy {} · trading cores {} for {} · housekeeping {} · interaction {}",
        s.policy,
        s.trading_cores,
        s.trading_cores_owner.as_deref().unwrap_or("nobody"),
        s.housekeeping_cores,
        if s.interaction { "on" } else { "off" }
    )?;
    writeln!(o, "evictions {} · errors {}", s.evictions, s.errors)?;
    writeln!(o, "workloads:")?;
    let s = status;
    for w in &s.workloads {
        let held = [(w.frozen, "frozen"), (w.throttled, "throttled")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let found = if w.present {
            w.cgroups
                .iter()
                .map(|c| format!("/{c}"))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            "absent".into()
        };
        writeln!(o, "  {:<16} rank {:<3} {found} {held}", w.name, w.rank)?;
    }
    match &s.gpu {
        Some(g) => writeln!(
            o,
            "gpu: {} {}°C {}%",
            g.name, g.temperature_c, g.utilization_pct
        )?,
        None => writeln!(o, "gpu: none")?,
    }
    for e in &s.undo_pending {
        writeln!(o, "undo pending: {e:?}")?;
    }
    for a in &s.pending {
        writeln!(o, "pending: {} [{}] {}", a.kind, a.rule, a.reason)?;
    }
    write_done(o, "last actions", &s.last_actions)
}

fn write_done(o: &mut dyn Write, title: &str, done: &[Done]) -> std::io::Result<()> {
    writeln!(o, "{title}:")?;
    for d in done {
        writeln!(o, "  {}", super::top::action_text(&ActionLine::from(d)))?;
    }
    Ok(())
}

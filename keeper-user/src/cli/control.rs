//! `keeper status`, `keeper interaction start|stop`, `keeper reload`: clients of the running
//! daemon's control socket.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::{Format, run::DEFAULT_SOCKET};
use crate::{
    daemon::control,
    interface::{InteractionState, Request},
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
    send(args, &Request::Status)
}

pub fn interaction(args: &InteractionArgs) -> anyhow::Result<ExitCode> {
    send(&args.socket, &Request::Interaction { state: args.state })
}

pub fn reload(args: &SocketArgs) -> anyhow::Result<ExitCode> {
    send(args, &Request::Reload)
}

fn send(args: &SocketArgs, request: &Request) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt
        .block_on(control::call(&args.socket, request))
        .with_context(|| "is `keeper run` running? (see --socket)")?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        Format::Text => print_text(&answer),
    }
    Ok(if answer["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(v: &serde_json::Value) {
    if let Some(err) = v["error"].as_str() {
        println!("error: {err}");
        return;
    }
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            match val {
                serde_json::Value::Array(a)
                    if k == "last_actions" || k == "actions" || k == "workloads" =>
                {
                    println!("{k}:");
                    for item in a {
                        println!("  {item}");
                    }
                }
                other => println!("{k}: {other}"),
            }
        }
    }
}

//! `keeper top`: a live view of a running keeper, fed by its control socket's `watch` stream
//! (a frame a second). On a terminal it is a full-screen view (ratatui) with keys to sort
//! (`s`), pause (`p`) and quit (`q`); without one (a pipe, a log) it prints a plain text
//! refresh each second.

mod draw;
mod model;
mod text;

pub use text::action as action_text;

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::mpsc,
    time::Duration,
};

use anyhow::Context as _;

use super::run::DEFAULT_SOCKET;
use crate::interface::{Answer, frame::Frame};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print plain text refreshes even on a terminal (the default without one).
    #[arg(long)]
    pub plain: bool,
    /// Stop after this many frames (one a second); without it, runs until `q`, Ctrl-C or the
    /// keeper stops.
    #[arg(long)]
    pub frames: Option<u64>,
}

/// What comes down the feed: a frame, or the keeper's last word.
pub enum Feed {
    Frame(Box<Frame>),
    Ended(String),
}

pub fn run(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let feed = subscribe(&args.socket).with_context(|| {
        format!(
            "{}: is `keeper run` running? (see --socket)",
            args.socket.display()
        )
    })?;
    let ended = if args.plain || !std::io::stdout().is_terminal() {
        text::run(&feed, args.frames)?
    } else {
        draw::run(&feed, args.frames)?
    };
    match ended {
        None => Ok(ExitCode::SUCCESS),
        Some(why) => {
            eprintln!("keeper top: {why}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Asks for the `watch` stream; a thread reads it and hands each line over.
fn subscribe(socket: &Path) -> std::io::Result<mpsc::Receiver<Feed>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(b"{\"command\":\"watch\"}\n")?;
    // A keeper that stops answering: said within a few seconds, not waited on for ever.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            let feed = match reader.read_line(&mut line) {
                Ok(0) => Feed::Ended("the keeper closed the feed (stopped?)".into()),
                Err(e) => Feed::Ended(format!("reading the feed: {e}")),
                Ok(_) => match serde_json::from_str::<Answer<Box<Frame>>>(&line) {
                    Ok(Answer::Granted(f)) => Feed::Frame(f),
                    Ok(Answer::Refused(r)) => Feed::Ended(format!("the keeper said: {}", r.error)),
                    Err(e) => {
                        Feed::Ended(format!("a frame it could not read ({e}): {}", line.trim()))
                    }
                },
            };
            let last = matches!(feed, Feed::Ended(_));
            if tx.send(feed).is_err() || last {
                return;
            }
        }
    });
    Ok(rx)
}

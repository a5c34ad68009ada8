//! The signals a daemon's users send, and what the keeper does with each (docs/run.md):
//!
//! - SIGTERM (systemd's stop), SIGINT (Ctrl-C), SIGQUIT (Ctrl-\): everything undone, then the
//!   exit;
//! - SIGHUP (`systemctl reload`, a closed terminal, a dropped SSH session): the policy read
//!   again, as `keeper reload` does;
//! - every other signal whose default action would end the process (SIGUSR1, SIGUSR2,
//!   SIGALRM, SIGIO, SIGPWR, ...): logged and ignored. Nothing but SIGKILL (and a crash) ends
//!   the keeper without its undo; the next keeper's start replays the journal then.
//!
//! They are caught before the start, so that one sent during the start waits for the loop.

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

/// What a caught signal asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Undo everything and exit.
    Stop(&'static str),
    /// Read the policy again.
    Reload(&'static str),
    /// Nothing: logged.
    Ignored(&'static str),
}

/// The caught signals, in the order they came.
pub struct Signals {
    heard: mpsc::UnboundedReceiver<Heard>,
}

/// The signals the keeper handles, by number, with what each asks.
fn table() -> Vec<(libc::c_int, Heard)> {
    use Heard::*;
    vec![
        (libc::SIGTERM, Stop("SIGTERM")),
        (libc::SIGINT, Stop("SIGINT")),
        (libc::SIGQUIT, Stop("SIGQUIT")),
        (libc::SIGHUP, Reload("SIGHUP")),
        (libc::SIGUSR1, Ignored("SIGUSR1")),
        (libc::SIGUSR2, Ignored("SIGUSR2")),
        (libc::SIGALRM, Ignored("SIGALRM")),
        (libc::SIGVTALRM, Ignored("SIGVTALRM")),
        (libc::SIGPROF, Ignored("SIGPROF")),
        (libc::SIGIO, Ignored("SIGIO")),
        (libc::SIGPWR, Ignored("SIGPWR")),
        (libc::SIGSTKFLT, Ignored("SIGSTKFLT")),
        (libc::SIGXCPU, Ignored("SIGXCPU")),
        (libc::SIGXFSZ, Ignored("SIGXFSZ")),
    ]
}

/// Catches every signal of [`table`] from now on (inside the runtime).
pub fn catch() -> std::io::Result<Signals> {
    let (tx, heard) = mpsc::unbounded_channel();
    for (number, what) in table() {
        let mut caught = signal(SignalKind::from_raw(number))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while caught.recv().await.is_some() {
                if tx.send(what).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Signals { heard })
}

impl Signals {
    /// The next signal caught.
    pub async fn next(&mut self) -> Option<Heard> {
        self.heard.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each signal whose default action ends the process (see signal(7)), but SIGKILL and
    /// SIGSTOP (which cannot be caught) and those a fault raises (SIGSEGV, SIGBUS, SIGFPE,
    /// SIGILL, SIGABRT, SIGSYS, SIGTRAP: a crash is a crash), is in the table; SIGPIPE is
    /// ignored by Rust's runtime already.
    #[test]
    fn every_signal_that_would_end_the_keeper_is_handled() {
        let handled: Vec<_> = table().into_iter().map(|(n, _)| n).collect();
        for n in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGPWR,
            libc::SIGSTKFLT,
            libc::SIGXCPU,
            libc::SIGXFSZ,
        ] {
            assert!(handled.contains(&n), "signal {n} not handled");
        }
    }
}

//! The control socket's serving end (the daemon's; [`super::client`] is the CLI's): a unix
//! socket (mode 0600, peer credentials checked: root only by default) taking one JSON request
//! per connection and answering one JSON line; each request goes to the loop as a [`Call`].
//!
//! The requests and answers are the typed [`crate::interface`]: `{"command":"status"}`,
//! `{"command":"interaction","state":"start"|"stop"}`, `{"command":"reload"}`,
//! `{"command":"report"}`; answers `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//! `{"command":"watch"}` is answered by a frame a second until the client hangs up.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{mpsc, oneshot},
};

use super::{Reply, Request};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// A request with the channel its answer goes back on.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: another keeper is listening there")]
    InUse { path: PathBuf },
}

/// Binds the socket (replacing a stale one), mode 0600, and serves it until the receiver of
/// the returned channel is dropped.
pub fn serve(path: &Path, allowed_uids: Vec<u32>) -> Result<mpsc::Receiver<Call>, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                // Out of descriptors (EMFILE, ENFILE) or memory, accept fails at once: a
                // retry at once would spin on the loop's thread. Said once per spell.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "control socket: accept failed; trying again every 100 ms");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            failing = false;
            let conn_tx = tx.clone();
            let allowed = allowed_uids.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &allowed, conn_tx).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    Ok(rx)
}

async fn handle(stream: UnixStream, allowed: &[u32], tx: mpsc::Sender<Call>) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read first, even from a peer that will be refused: closing on a client
    // that is still writing would make it see a broken pipe instead of the refusal.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let request = if !allowed.contains(&uid) {
        tracing::warn!(uid, "control socket: refused a peer that is not allowed");
        Err(refusal(format!(
            "uid {uid} is not allowed on this socket (allowed: {allowed:?})"
        )))
    } else {
        match read {
            Err(_) => Err(refusal("no request within 5 s".into())),
            Ok(Err(e)) => Err(refusal(format!("reading the request: {e}"))),
            Ok(Ok(_)) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => {
                Err(refusal(format!("request longer than {MAX_REQUEST} bytes")))
            }
            Ok(Ok(_)) => Request::parse(line.trim()).map_err(refusal),
        }
    };
    match request {
        Err(answer) => write_line(&mut write, &answer).await?,
        Ok(Request::Watch) => return stream_frames(&mut write, &tx).await,
        Ok(request) => write_line(&mut write, &ask(&tx, request).await).await?,
    }
    write.shutdown().await
}

/// The loop's answer to one request.
async fn ask(tx: &mpsc::Sender<Call>, request: Request) -> Reply {
    let (reply, rx) = oneshot::channel();
    if tx.send(Call { request, reply }).await.is_err() {
        return refusal("the keeper is shutting down".into());
    }
    rx.await.unwrap_or_else(|_| refusal("no answer".into()))
}

/// `watch`: a frame a second, taken by the loop between its other work, until the client
/// hangs up or the keeper stops (its last line then says so).
async fn stream_frames(write: &mut OwnedWriteHalf, tx: &mpsc::Sender<Call>) -> io::Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let frame = ask(tx, Request::Watch).await;
        let last = matches!(frame, Reply::Refused(_));
        write_line(write, &frame).await?;
        if last {
            return write.shutdown().await;
        }
    }
}

async fn write_line(write: &mut OwnedWriteHalf, answer: &Reply) -> io::Result<()> {
    let mut text = serde_json::to_string(answer)
        .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"answer not written: {e}"}}"#));
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

fn refusal(error: String) -> Reply {
    Reply::refused(error)
}

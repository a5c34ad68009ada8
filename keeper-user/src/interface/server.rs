//! The control socket's serving end (the daemon's; [`super::client`] is the CLI's): a unix
//! socket taking one JSON request per connection and answering one JSON line; each request
//! goes to the loop as a [`Call`]. Who may use it is an [`Access`]: root alone (mode 0600) by
//! default; uids named by `--allow-uid` (mode 0666, each peer's uid checked); the members of
//! the group `--allow-group` names (the socket's group, mode 0660: the kernel lets only them
//! connect, and each peer's groups are checked again).
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
    #[error(
        "control socket {path}: cannot give it to group {gid} ({source}): the keeper must be a member of that group (the unit's SupplementaryGroups=) or hold CAP_CHOWN"
    )]
    Group {
        path: PathBuf,
        gid: u32,
        source: io::Error,
    },
}

/// Who may use the control socket: root, the uids given, the members of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    uids: Vec<u32>,
    gid: Option<u32>,
}

impl Access {
    /// Root and `uids`, and the members of group `gid`.
    pub fn new(uids: &[u32], gid: Option<u32>) -> Access {
        let mut all = vec![0];
        all.extend(uids.iter().filter(|u| **u != 0));
        Access { uids: all, gid }
    }

    /// The socket's mode: only as open as the access needs (the peer is checked anyway). An
    /// allowed uid outside the group needs it open to all (before, `--allow-group` with
    /// `--allow-uid` made it 0660: the uid was allowed and could not connect).
    fn mode(&self) -> u32 {
        match (self.gid, self.uids.len()) {
            (_, n) if n > 1 => 0o666,
            (Some(_), _) => 0o660,
            (None, _) => 0o600,
        }
    }

    /// Whether a peer (its uid, primary gid and pid, from `SO_PEERCRED`) may ask: an allowed
    /// uid, or a member of the group (its primary group, or one of the groups
    /// `/proc/<pid>/status` lists).
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        self.uids.contains(&uid)
            || self
                .gid
                .is_some_and(|g| g == gid || pid.is_some_and(|p| in_group(p, g)))
    }

    /// Who is allowed, in words (for a refusal).
    fn said(&self) -> String {
        match self.gid {
            Some(g) => format!("uids {:?} and group {g}", self.uids),
            None => format!("uids {:?}", self.uids),
        }
    }
}

/// Whether process `pid`'s supplementary groups hold `gid`.
fn in_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        (s.lines())
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    })
}

/// Binds the socket (replacing a stale one) with the mode and group `access` needs, and serves
/// it until the receiver of the returned channel is dropped.
pub fn serve(path: &Path, access: Access) -> Result<mpsc::Receiver<Call>, ControlError> {
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
    // The group first: the mode opens the socket to the group only once it is the right one.
    if let Some(gid) = access.gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| ControlError::Group {
            path: path.to_path_buf(),
            gid,
            source,
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode()))
        .map_err(io_err)?;
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
            let allowed = access.clone();
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

async fn handle(stream: UnixStream, allowed: &Access, tx: mpsc::Sender<Call>) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let (read, mut write) = stream.into_split();
    // The request is read first, even from a peer that will be refused: closing on a client
    // that is still writing would make it see a broken pipe instead of the refusal.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let request = if !allowed.allows(uid, cred.gid(), cred.pid()) {
        tracing::warn!(uid, "control socket: refused a peer that is not allowed");
        Err(refusal(format!(
            "uid {uid} is not allowed on this socket (allowed: {})",
            allowed.said()
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

#[cfg(test)]
mod access_tests {
    use super::Access;

    #[test]
    fn the_socket_is_as_open_as_its_access_needs() {
        assert_eq!(Access::new(&[], None).mode(), 0o600);
        assert_eq!(Access::new(&[0], None).mode(), 0o600);
        assert_eq!(Access::new(&[], Some(997)).mode(), 0o660);
        assert_eq!(Access::new(&[1000], None).mode(), 0o666);
        // A uid beside a group: the uid may not be in the group, so open to all (the peer's
        // uid and groups are checked inside).
        assert_eq!(Access::new(&[1000], Some(997)).mode(), 0o666);
        let a = Access::new(&[1000], Some(997));
        assert!(a.allows(1000, 1000, None) && a.allows(0, 0, None) && a.allows(5, 997, None));
        assert!(!a.allows(5, 5, None));
    }
}

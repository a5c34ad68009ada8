//! A QEMU Machine Protocol client for ballooning: greeting, `qmp_capabilities`, then one or a
//! few commands, and the socket is closed again — Proxmox lets one client at a time in, so the
//! keeper never holds it. Every read and write has a timeout; a dead socket, a refused
//! command or a reply that is not QMP is an error naming the socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

/// Where Proxmox puts the VMs' QMP sockets (`<dir>/<vmid>.qmp`).
pub const DEFAULT_QMP_DIR: &str = "/var/run/qemu-server";

/// The socket of `vmid` under `dir`.
pub fn socket_of(dir: &Path, vmid: u32) -> PathBuf {
    dir.join(format!("{vmid}.qmp"))
}

/// How long a session may wait for QEMU at each step.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: no such socket (is the VM running? see --qmp-dir)")]
    NoSocket { path: PathBuf },
    #[error("QMP {path}: cannot connect: {source} (a dead VM leaves its socket behind)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("QMP {path}: no answer within {}s while {what} (QEMU busy or hung)", QMP_TIMEOUT.as_secs())]
    Timeout { path: PathBuf, what: &'static str },
    #[error("QMP {path}: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("QMP {path}: `{command}` refused: {class}: {desc}")]
    Refused {
        path: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
}

impl QmpError {
    /// An I/O error; one that ran out of time ([`QMP_TIMEOUT`]) says so.
    fn io(path: &Path, what: &'static str, source: std::io::Error) -> QmpError {
        let path = path.to_path_buf();
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                QmpError::Timeout { path, what }
            }
            _ => QmpError::Io { path, what, source },
        }
    }
}

/// One QMP session on a VM's socket.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let path = path.to_path_buf();
        if !path.exists() {
            return Err(QmpError::NoSocket { path });
        }
        let stream = UnixStream::connect(&path).map_err(|source| QmpError::Connect {
            path: path.clone(),
            source,
        })?;
        Qmp::over(stream, &path)
    }

    /// The session on a connected `stream` (the socket at `path`): greeting, then
    /// capabilities negotiation.
    pub(crate) fn over(stream: UnixStream, path: &Path) -> Result<Qmp, QmpError> {
        let path = path.to_path_buf();
        let io = |what| {
            let path = path.clone();
            move |source| QmpError::Io { path, what, source }
        };
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(io("setting a timeout"))?;
        stream
            .set_write_timeout(Some(QMP_TIMEOUT))
            .map_err(io("setting a timeout"))?;
        let writer = stream.try_clone().map_err(io("cloning the socket"))?;
        let mut qmp = Qmp {
            path,
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn protocol(&self, what: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            what,
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::io(&self.path, "reading", source))?;
        if n == 0 {
            return Err(self.protocol("QEMU closed the connection".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| self.protocol(format!("not JSON ({e}): {line:.200}")))
    }

    /// Runs one command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::io(&self.path, "writing", source))?;
        loop {
            let reply = self.read_message()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Refused {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            // An asynchronous event (BALLOON_CHANGE, ...): not our answer.
        }
    }

    /// Whether the machine has a device of that id (`qom-list /machine/peripheral`: the
    /// devices given an id, on the command line or by `device_add`).
    pub fn has_device(&mut self, id: &str) -> Result<bool, QmpError> {
        let list = self.execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))?;
        let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(items.iter().any(|i| i["name"] == id))
    }

    /// The guest's current memory as the balloon leaves it, in bytes.
    pub fn balloon_actual(&mut self) -> Result<u64, QmpError> {
        let r = self.execute("query-balloon", None)?;
        r["actual"]
            .as_u64()
            .ok_or_else(|| self.protocol(format!("query-balloon without `actual`: {r}")))
    }

    /// Asks the balloon driver to leave the guest `bytes` of memory.
    pub fn set_balloon(&mut self, bytes: u64) -> Result<(), QmpError> {
        self.execute("balloon", Some(json!({ "value": bytes })))
            .map(|_| ())
    }

    /// `running`, `paused`, `prelaunch`, ...
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None)?;
        Ok(r["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// The memory the VM was started with (its balloon's ceiling), in bytes.
    pub fn max_memory(&mut self) -> Result<u64, QmpError> {
        let r = self.execute("query-memory-size-summary", None)?;
        r["base-memory"].as_u64().ok_or_else(|| {
            self.protocol(format!(
                "query-memory-size-summary without `base-memory`: {r}"
            ))
        })
    }
}
#[cfg(test)]
mod fuzz_tests;

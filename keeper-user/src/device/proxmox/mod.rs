//! The Proxmox VE API client, for what QMP cannot do: settings that must persist (the VM's
//! `balloon` in its configuration) and stopping a VM so that it can be started again with its
//! memory state (hibernation), on this node or a remote one.
//!
//! Set up by a small YAML file (`--proxmox FILE`, see docs/vms.md):
//!
//! ```yaml
//! url: https://127.0.0.1:8006
//! node: pve1
//! token_file: /etc/keeper/pve-token     # 0600, one line: USER@REALM!TOKENID=UUID
//! ca_file: /etc/pve/pve-root-ca.pem     # or: fingerprint: "AB:CD:…" (sha256 of the node's certificate)
//! timeout: 5s
//! ```
//!
//! Every call is one HTTPS request with `Authorization: PVEAPIToken=…`; an HTTP error is
//! reported with PVE's own message (its status line), a timeout or a certificate that does not
//! match is an error naming the URL. Nothing is retried: the caller decides.

pub mod https;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use https::{Endpoint, PinVerifier, Request, Trust};

/// How long one API call may take, unless the file says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxmoxError {
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Located {
        path: PathBuf,
        line: u64,
        col: u64,
        message: String,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("{method} {url}: no answer within {after:?}")]
    Timeout {
        method: &'static str,
        url: String,
        after: Duration,
    },
    #[error(
        "{url}: the node's certificate (sha256 {seen}) does not match the pinned fingerprint {pinned}: nothing sent"
    )]
    PinMismatch {
        url: String,
        seen: String,
        pinned: String,
    },
    #[error("{method} {url}: {source}")]
    Connection {
        method: &'static str,
        url: String,
        source: std::io::Error,
    },
    #[error("{method} {url}: HTTP {status} {reason}{detail}")]
    Http {
        method: &'static str,
        url: String,
        status: u16,
        reason: String,
        /// PVE's per-parameter `errors`, when it sent some.
        detail: String,
    },
    #[error("{method} {url}: unexpected answer: {message}")]
    Answer {
        method: &'static str,
        url: String,
        message: String,
    },
}

impl ProxmoxError {
    /// 401/403: the token is wrong or lacks a privilege.
    /// No answer came (a timeout, a connection lost mid-call): the node may have begun the
    /// task all the same.
    pub fn may_have_acted(&self) -> bool {
        matches!(
            self,
            ProxmoxError::Timeout { .. } | ProxmoxError::Connection { .. }
        )
    }

    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ProxmoxError::Http {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// The `--proxmox` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    url: String,
    node: String,
    token_file: PathBuf,
    ca_file: Option<PathBuf>,
    fingerprint: Option<String>,
    timeout: Option<String>,
}

/// A node's API, ready to call.
pub struct Client {
    endpoint: Endpoint,
    node: String,
    /// `PVEAPIToken=USER@REALM!TOKENID=UUID` (never logged or printed).
    authorization: String,
    token_id: String,
    tls: Arc<rustls::ClientConfig>,
    pin: Option<Arc<PinVerifier>>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.endpoint.url())
            .field("node", &self.node)
            .field("token", &format_args!("{}=<secret>", self.token_id))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A VM as `GET /nodes/{node}/qemu/{vmid}/status/current` describes it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct VmStatus {
    #[serde(default, deserialize_with = "lenient_u32")]
    pub vmid: u32,
    /// `running` or `stopped`.
    pub status: String,
    /// QEMU's own state: `running`, `paused`, `prelaunch`…
    #[serde(default)]
    pub qmpstatus: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The VM's memory in bytes.
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub maxmem: Option<u64>,
    /// The guest's memory as the balloon leaves it, in bytes (only with a balloon driver).
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub balloon: Option<u64>,
    /// `suspended` after a hibernation, `backup`, `migrate`…
    #[serde(default)]
    pub lock: Option<String>,
}

impl Client {
    /// Reads the `--proxmox` file and the token file it names; checks the token file's mode.
    pub fn from_file(path: &Path) -> Result<Client, ProxmoxError> {
        let cfg_err = |message: String| ProxmoxError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| cfg_err(e.to_string()))?;
        let raw: RawConfig =
            crate::policy::load::parse_yaml(&text).map_err(|d| ProxmoxError::Located {
                path: path.to_path_buf(),
                line: d.pos.line.max(1),
                col: d.pos.col.max(1),
                message: d.message,
            })?;
        let endpoint = Endpoint::parse(&raw.url).map_err(|m| cfg_err(format!("url: {m}")))?;
        if raw.node.is_empty()
            || !raw
                .node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(cfg_err(format!(
                "node: `{}` is not a Proxmox node name",
                raw.node
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let trust = match (&raw.ca_file, &raw.fingerprint) {
            (Some(ca), None) => Trust::CaFile(base.join(ca)),
            (None, Some(fp)) => Trust::Pin(
                https::parse_fingerprint(fp).map_err(|m| cfg_err(format!("fingerprint: {m}")))?,
            ),
            (Some(_), Some(_)) => {
                return Err(cfg_err(
                    "give ca_file or fingerprint, not both: one way to trust the node".into(),
                ));
            }
            (None, None) => {
                return Err(cfg_err(
                    "no ca_file and no fingerprint: the keeper does not talk to an unverified node"
                        .into(),
                ));
            }
        };
        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => {
                humantime::parse_duration(t).map_err(|e| cfg_err(format!("timeout: `{t}`: {e}")))?
            }
        };
        let (token_id, secret) = read_token(&base.join(&raw.token_file))?;
        Client::new(endpoint, raw.node, &token_id, &secret, &trust, timeout)
    }

    /// A client from its parts (tests and `from_file`).
    pub fn new(
        endpoint: Endpoint,
        node: String,
        token_id: &str,
        secret: &str,
        trust: &Trust,
        timeout: Duration,
    ) -> Result<Client, ProxmoxError> {
        let (tls, pin) = https::client_config(trust)?;
        Ok(Client {
            endpoint,
            node,
            authorization: format!("PVEAPIToken={token_id}={secret}"),
            token_id: token_id.to_string(),
            tls,
            pin,
            timeout,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn url(&self) -> String {
        self.endpoint.url()
    }

    /// The node's VMs: `GET /nodes/{node}/qemu`.
    pub fn vms(&self) -> Result<Vec<VmStatus>, ProxmoxError> {
        let path = format!("/nodes/{}/qemu", self.node);
        let data = self.call("GET", &path, None)?;
        let mut list: Vec<VmStatus> = self.decode("GET", &path, data)?;
        list.sort_by_key(|v| v.vmid);
        Ok(list)
    }

    /// `GET /nodes/{node}/qemu/{vmid}/status/current`.
    pub fn status(&self, vmid: u32) -> Result<VmStatus, ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/status/current", self.node);
        let data = self.call("GET", &path, None)?;
        let mut s: VmStatus = self.decode("GET", &path, data)?;
        s.vmid = vmid;
        Ok(s)
    }

    /// `PUT /nodes/{node}/qemu/{vmid}/config` with `balloon=MIB`: the VM's balloon target, kept
    /// in its configuration (PVE also applies it to a running VM).
    pub fn set_balloon(&self, vmid: u32, mib: u64) -> Result<(), ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/config", self.node);
        self.call(
            "PUT",
            &path,
            Some(&https::form(&[("balloon", &mib.to_string())])),
        )?;
        Ok(())
    }

    /// `GET …/config`: one key of the VM's configuration (`hostpci0`), if it is set.
    pub fn config_value(&self, vmid: u32, key: &str) -> Result<Option<String>, ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/config", self.node);
        let data = self.call("GET", &path, None)?;
        Ok(data.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
    }

    /// `PUT …/config`: `key=value` set in the VM's configuration, or `key` deleted (`None`).
    pub fn set_config(
        &self,
        vmid: u32,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/config", self.node);
        let form = match value {
            Some(v) => https::form(&[(key, v)]),
            None => https::form(&[("delete", key)]),
        };
        self.call("PUT", &path, Some(&form))?;
        Ok(())
    }

    /// Hibernates the VM: `POST …/status/suspend` with `todisk=1` (its memory goes to disk and
    /// is given back to the host; `start` resumes it). Returns the task's UPID.
    pub fn hibernate(&self, vmid: u32) -> Result<String, ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/status/suspend", self.node);
        let data = self.call("POST", &path, Some(&https::form(&[("todisk", "1")])))?;
        self.decode("POST", &path, data)
    }

    /// Shuts the VM down: `POST …/status/shutdown` (the guest's ACPI power button), stopped
    /// by force after `timeout_s` (`forceStop=1`). Returns the task's UPID.
    pub fn shutdown(&self, vmid: u32, timeout_s: u64) -> Result<String, ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/status/shutdown", self.node);
        let timeout = timeout_s.to_string();
        let form = https::form(&[("forceStop", "1"), ("timeout", &timeout)]);
        let data = self.call("POST", &path, Some(&form))?;
        self.decode("POST", &path, data)
    }

    /// `POST …/status/start` (resumes a hibernated VM from its saved state). Returns the UPID.
    pub fn start(&self, vmid: u32) -> Result<String, ProxmoxError> {
        let path = format!("/nodes/{}/qemu/{vmid}/status/start", self.node);
        let data = self.call("POST", &path, Some(""))?;
        self.decode("POST", &path, data)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        data: Value,
    ) -> Result<T, ProxmoxError> {
        serde_json::from_value(data).map_err(|e| ProxmoxError::Answer {
            method,
            url: self.full(path),
            message: e.to_string(),
        })
    }

    fn full(&self, path: &str) -> String {
        format!("{}/api2/json{path}", self.endpoint.url())
    }

    /// One request; the answer's `data`.
    fn call(
        &self,
        method: &'static str,
        path: &str,
        form: Option<&str>,
    ) -> Result<Value, ProxmoxError> {
        let url = self.full(path);
        let req = Request {
            method,
            path,
            authorization: &self.authorization,
            form,
        };
        let started = std::time::Instant::now();
        let resp = https::exchange(&self.endpoint, &self.tls, &req, self.timeout)
            .map_err(|source| self.io_error(method, &url, source))?;
        tracing::debug!(
            method,
            url,
            status = resp.status,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "proxmox API"
        );
        let body: Option<Value> = serde_json::from_slice(&resp.body).ok();
        if !(200..300).contains(&resp.status) {
            let detail = body
                .as_ref()
                .and_then(|b| b.get("errors"))
                .and_then(Value::as_object)
                .map(|errs| {
                    let list: Vec<_> = errs
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?").trim()))
                        .collect();
                    format!(" ({})", list.join("; "))
                })
                .unwrap_or_default();
            return Err(ProxmoxError::Http {
                method,
                url,
                status: resp.status,
                reason: resp.reason.trim().to_string(),
                detail,
            });
        }
        let body = body.ok_or_else(|| ProxmoxError::Answer {
            method,
            url: url.clone(),
            message: "the body is not JSON".into(),
        })?;
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    fn io_error(&self, method: &'static str, url: &str, source: std::io::Error) -> ProxmoxError {
        if let Some(pin) = &self.pin {
            let seen = pin.seen.lock().ok().and_then(|s| *s);
            if let Some(seen) = seen
                && is_cert_error(&source)
            {
                return ProxmoxError::PinMismatch {
                    url: self.endpoint.url(),
                    seen: https::fingerprint_text(&seen),
                    pinned: pin_text(pin),
                };
            }
        }
        match source.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                ProxmoxError::Timeout {
                    method,
                    url: url.to_string(),
                    after: self.timeout,
                }
            }
            _ => ProxmoxError::Connection {
                method,
                url: url.to_string(),
                source,
            },
        }
    }
}

fn pin_text(pin: &PinVerifier) -> String {
    https::fingerprint_text(pin.pinned())
}

fn is_cert_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// Reads `USER@REALM!TOKENID=SECRET` from a file that only its owner can read.
pub fn read_token(path: &Path) -> Result<(String, String), ProxmoxError> {
    let err = |message: String| ProxmoxError::Config {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("token file: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "token file has mode {mode:04o}: others can read the secret; `chmod 600` it"
        )));
    }
    // Its owner could put another token (another user's rights) in the keeper's hands.
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(err(format!(
            "token file is owned by uid {}: it must be root's (or the keeper's own)",
            meta.uid()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("token file: {e}")))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [line] = lines.as_slice() else {
        return Err(err(format!(
            "token file: expected one line `USER@REALM!TOKENID=SECRET`, found {} lines",
            lines.len()
        )));
    };
    let line = line.strip_prefix("PVEAPIToken=").unwrap_or(line);
    let parsed = line.split_once('=').and_then(|(id, secret)| {
        let (user, token) = id.split_once('!')?;
        let ok = user.contains('@')
            && !token.is_empty()
            && !secret.is_empty()
            && !line.contains(char::is_whitespace);
        ok.then(|| (id.to_string(), secret.to_string()))
    });
    parsed.ok_or_else(|| {
        err(
            "token file: expected `USER@REALM!TOKENID=SECRET` (e.g. keeper@pve!enforcer=<uuid>)"
                .into(),
        )
    })
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(lenient_opt_u64(d)?.unwrap_or(0) as u32)
}

/// PVE sends numbers, and in older versions some as strings.
fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(match v {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

//! A local HTTPS stand-in for a Proxmox VE node's API (pveproxy), for the keeper's Proxmox
//! client. It answers the calls the keeper makes the way PVE does: the `Authorization:
//! PVEAPIToken=USER@REALM!TOKENID=SECRET` header checked exactly (401 `No ticket` without
//! one, 401 `invalid token value!` for a wrong one), paths under `/api2/json/nodes/{node}/…`,
//! form fields of `application/x-www-form-urlencoded` bodies checked against the schema
//! (400 `Parameter verification failed.` with per-field `errors`), errors in the status line
//! with `{"data":null}`. Its certificate is signed by its own CA (like pve-ssl.pem by
//! pve-root-ca.pem). It can be told to fail with 500 or to hang, and records every request.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const MIB: u64 = 1 << 20;

/// One VM of the stub node.
#[derive(Clone, Debug, PartialEq)]
pub struct StubVm {
    pub status: &'static str,
    pub maxmem: u64,
    /// The guest's memory as its balloon leaves it (bytes).
    pub balloon_actual: u64,
    /// `balloon:` in its configuration (MiB), if set.
    pub config_balloon: Option<u64>,
    pub lock: Option<&'static str>,
    /// The `hostpciN` keys of its configuration.
    pub hostpci: BTreeMap<String, String>,
}

impl StubVm {
    pub fn running(maxmem: u64) -> Self {
        StubVm {
            status: "running",
            maxmem,
            balloon_actual: maxmem,
            config_balloon: None,
            lock: None,
            hostpci: BTreeMap::new(),
        }
    }

    /// A stopped VM (not hibernated) of `maxmem` bytes.
    pub fn stopped(maxmem: u64) -> Self {
        StubVm {
            status: "stopped",
            ..StubVm::running(maxmem)
        }
    }

    /// With `hostpci0: value` in its configuration.
    pub fn with_gpu(mut self, value: &str) -> Self {
        self.hostpci.insert("hostpci0".into(), value.into());
        self
    }
}

/// What the stub does with a request that passes authentication.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Normal,
    /// 500 for everything (a broken pveproxy, a cluster without quorum).
    Fail500,
    /// Read the request, never answer.
    Hang,
    /// Answer reads; carry out a write (the VM changes state) and never answer it: a node
    /// that began the task but whose answer is lost.
    HangAfterWrite,
}

/// One request as the stub saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub form: BTreeMap<String, String>,
}

pub struct StubState {
    pub node: String,
    /// The full header value PVE would accept.
    pub authorization: String,
    pub vms: BTreeMap<u32, StubVm>,
    pub mode: Mode,
    pub seen: Vec<Seen>,
    upids: u32,
}

pub struct PveStub {
    pub addr: SocketAddr,
    /// The CA that signed the node certificate (PEM), as in /etc/pve/pve-root-ca.pem.
    pub ca_pem: String,
    /// The sha256 of the node certificate (DER), as `pvenode cert info` prints it (raw bytes).
    pub fingerprint: [u8; 32],
    pub state: Arc<Mutex<StubState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub const TOKEN_ID: &str = "keeper@pve!enforcer";
pub const SECRET: &str = "5e1f1d2a-8c3b-4b7e-9a41-0c2d6f7e8a90";

impl PveStub {
    /// Starts the stub on 127.0.0.1 for `node` with these VMs.
    pub fn start(node: &str, vms: impl IntoIterator<Item = (u32, StubVm)>) -> PveStub {
        // Bounded: the stub lives at most 10 minutes even if a test forgets it.
        PveStub::start_for(node, vms, Duration::from_secs(600))
    }

    /// The same, serving for at most `lifetime` (the chaos suite runs for as long as asked).
    pub fn start_for(
        node: &str,
        vms: impl IntoIterator<Item = (u32, StubVm)>,
        lifetime: Duration,
    ) -> PveStub {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Proxmox Virtual Environment");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{node}.local"));
        let leaf = params.signed_by(&key, &ca).unwrap();
        let leaf_der = leaf.der().to_vec();
        let fingerprint = {
            let d = ring::digest::digest(&ring::digest::SHA256, &leaf_der);
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_der.into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let server = Arc::new(server);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(StubState {
            node: node.to_string(),
            authorization: format!("PVEAPIToken={TOKEN_ID}={SECRET}"),
            vms: vms.into_iter().collect(),
            mode: Mode::Normal,
            seen: Vec::new(),
            upids: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + lifetime;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            let (state, stop, server) =
                                (state.clone(), stop.clone(), server.clone());
                            std::thread::spawn(move || serve(sock, server, &state, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        PveStub {
            addr,
            ca_pem: ca.pem(),
            fingerprint,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn mode(&self) -> Mode {
        self.state.lock().unwrap().mode
    }

    pub fn vm(&self, vmid: u32) -> StubVm {
        self.state.lock().unwrap().vms[&vmid].clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Writes a `--proxmox` file for this stub in `dir` (with a 0600 token file beside it),
    /// trusting the stub's CA, or pinning `pin` (its own fingerprint, or another one).
    pub fn write_config(&self, dir: &std::path::Path, pin: Option<[u8; 32]>) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("pve-root-ca.pem"), &self.ca_pem).unwrap();
        let token = dir.join("pve-token");
        std::fs::write(&token, format!("{TOKEN_ID}={SECRET}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let trust = match pin {
            None => "ca_file: pve-root-ca.pem".to_string(),
            Some(p) => format!(
                "fingerprint: \"{}\"",
                p.iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":")
            ),
        };
        let file = dir.join("proxmox.yaml");
        let node = self.state.lock().unwrap().node.clone();
        std::fs::write(
            &file,
            format!(
                "url: {}\nnode: {node}\ntoken_file: pve-token\n{trust}\ntimeout: 2s\n",
                self.url()
            ),
        )
        .unwrap();
        file
    }

    /// Requests that changed something (PUT/POST).
    pub fn writes(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET")
            .collect()
    }
}

impl Drop for PveStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    sock: TcpStream,
    server: Arc<rustls::ServerConfig>,
    state: &Mutex<StubState>,
    stop: &AtomicBool,
) {
    sock.set_nonblocking(false).ok();
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(conn) = rustls::ServerConnection::new(server) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return, // handshake refused by the client, or it went away
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let length = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if raw.len() >= end + 4 + length {
            break (head, raw[end + 4..end + 4 + length].to_vec());
        }
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let seen = Seen {
        method: method.clone(),
        path: path.clone(),
        authorization: header(&head, "authorization"),
        content_type: header(&head, "content-type"),
        form: parse_form(&String::from_utf8_lossy(&body)),
    };
    let mode = {
        let mut s = state.lock().unwrap();
        s.seen.push(seen.clone());
        s.mode
    };
    let hang = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (status, reason, data) = match mode {
        Mode::Hang => return hang(stop),
        Mode::HangAfterWrite if seen.method != "GET" => {
            let _ = answer(&seen, state, Mode::Normal);
            return hang(stop);
        }
        Mode::HangAfterWrite => answer(&seen, state, Mode::Normal),
        _ => answer(&seen, state, mode),
    };
    let body = data.to_string();
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nCache-Control: max-age=0\r\nConnection: close\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nServer: pve-api-daemon/3.0\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(resp.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

type Answer = (u16, String, Value);

fn err(status: u16, reason: impl Into<String>) -> Answer {
    (status, reason.into(), json!({ "data": null }))
}

fn ok(data: Value) -> Answer {
    (200, "OK".into(), json!({ "data": data }))
}

fn bad_params(errors: Value) -> Answer {
    (
        400,
        "Parameter verification failed.".into(),
        json!({ "data": null, "errors": errors }),
    )
}

fn answer(seen: &Seen, state: &Mutex<StubState>, mode: Mode) -> Answer {
    let mut s = state.lock().unwrap();
    match &seen.authorization {
        None => return err(401, "No ticket"),
        Some(a) if *a != s.authorization => return err(401, "invalid token value!"),
        Some(_) => {}
    }
    if mode == Mode::Fail500 {
        return err(500, "cluster not ready - no quorum?");
    }
    let Some(rest) = seen.path.strip_prefix("/api2/json/nodes/") else {
        return err(
            501,
            format!("Method '{} {}' not implemented", seen.method, seen.path),
        );
    };
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.first() != Some(&s.node.as_str()) {
        return err(
            500,
            format!(
                "hostname lookup '{}' failed - failed to get address info",
                segs[0]
            ),
        );
    }
    if seen.method != "GET"
        && seen.content_type.as_deref() != Some("application/x-www-form-urlencoded")
    {
        return err(415, "Unsupported Media Type");
    }
    let node = s.node.clone();
    let no_vm = |vmid: &str| {
        err(
            500,
            format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"),
        )
    };
    match (seen.method.as_str(), &segs[1..]) {
        ("GET", ["qemu"]) => {
            let list: Vec<Value> = s
                .vms
                .iter()
                .map(|(id, vm)| {
                    json!({"vmid": id, "status": vm.status, "maxmem": vm.maxmem, "name": format!("vm{id}")})
                })
                .collect();
            ok(Value::Array(list))
        }
        ("GET", ["qemu", vmid, "status", "current"]) => {
            let Some(vm) = vmid.parse().ok().and_then(|id: u32| s.vms.get(&id)) else {
                return no_vm(vmid);
            };
            let mut d = json!({
                "vmid": vmid.parse::<u32>().unwrap_or(0),
                "status": vm.status,
                "name": format!("vm{vmid}"),
                "maxmem": vm.maxmem,
                "qmpstatus": if vm.status == "running" { "running" } else { "stopped" },
            });
            if vm.status == "running" {
                d["balloon"] = json!(vm.balloon_actual);
            }
            if let Some(l) = vm.lock {
                d["lock"] = json!(l);
            }
            ok(d)
        }
        ("GET", ["qemu", vmid, "config"]) => {
            let Some(vm) = vmid.parse().ok().and_then(|id: u32| s.vms.get(&id)) else {
                return no_vm(vmid);
            };
            let mut c: serde_json::Map<String, Value> = (vm.hostpci.iter())
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            c.insert("memory".into(), json!((vm.maxmem / MIB).to_string()));
            if let Some(b) = vm.config_balloon {
                c.insert("balloon".into(), json!(b));
            }
            ok(Value::Object(c))
        }
        ("PUT", ["qemu", vmid, "config"]) if is_hostpci_write(&seen.form) => {
            let Some(vm) = vmid.parse().ok().and_then(|id: u32| s.vms.get_mut(&id)) else {
                return no_vm(vmid);
            };
            // PVE keeps a running VM's device changes pending until its next start; the stub
            // applies them at once (the keeper moves devices between stopped VMs only).
            for (k, v) in &seen.form {
                if k == "delete" {
                    for key in v.split(',') {
                        vm.hostpci.remove(key);
                    }
                } else {
                    vm.hostpci.insert(k.clone(), v.clone());
                }
            }
            ok(Value::Null)
        }
        ("PUT", ["qemu", vmid, "config"]) => {
            let Some(vm) = vmid.parse().ok().and_then(|id: u32| s.vms.get_mut(&id)) else {
                return no_vm(vmid);
            };
            let mut errors = serde_json::Map::new();
            for k in seen.form.keys().filter(|k| *k != "balloon") {
                errors.insert(k.clone(), json!("property is not defined in schema and the schema does not allow additional properties"));
            }
            let balloon = seen.form.get("balloon").map(|v| v.parse::<u64>());
            if let Some(Err(_)) = balloon {
                errors.insert(
                    "balloon".into(),
                    json!(format!(
                        "type check ('integer') failed - got '{}'",
                        seen.form["balloon"]
                    )),
                );
            }
            if !errors.is_empty() {
                return bad_params(Value::Object(errors));
            }
            let Some(Ok(mib)) = balloon else {
                return bad_params(json!({"balloon": "no change requested"}));
            };
            if mib * MIB > vm.maxmem {
                return err(
                    500,
                    "balloon value too large (must be smaller than assigned memory)",
                );
            }
            vm.config_balloon = Some(mib);
            if vm.status == "running" && mib > 0 {
                vm.balloon_actual = mib * MIB;
            }
            ok(Value::Null)
        }
        (
            "POST",
            [
                "qemu",
                vmid,
                "status",
                action @ ("suspend" | "start" | "shutdown"),
            ],
        ) => {
            let id: u32 = vmid.parse().unwrap_or(0);
            let Some(vm) = s.vms.get_mut(&id) else {
                return no_vm(vmid);
            };
            if *action == "suspend" {
                if seen.form.get("todisk").map(String::as_str) != Some("1") {
                    return bad_params(json!({"todisk": "the keeper's stub only hibernates"}));
                }
                if vm.status != "running" {
                    return err(500, format!("VM {id} not running"));
                }
                vm.status = "stopped";
                vm.lock = Some("suspended");
            } else if *action == "shutdown" {
                if seen.form.get("forceStop").map(String::as_str) != Some("1") {
                    return bad_params(json!({"forceStop": "the keeper always forces the stop"}));
                }
                if vm.status != "running" {
                    return err(500, format!("VM {id} not running"));
                }
                vm.status = "stopped";
                vm.lock = None;
            } else {
                if vm.status == "running" {
                    return err(500, format!("VM {id} already running"));
                }
                vm.status = "running";
                vm.lock = None;
            }
            s.upids += 1;
            let kind = match *action {
                "suspend" => "qmsuspend",
                "shutdown" => "qmshutdown",
                _ => "qmstart",
            };
            ok(json!(format!(
                "UPID:{node}:0000{:04X}:00000000:00000000:{kind}:{id}:{TOKEN_ID}:",
                s.upids
            )))
        }
        _ => err(
            501,
            format!("Method '{} {}' not implemented", seen.method, seen.path),
        ),
    }
}

/// A configuration write of `hostpciN` keys (set, or `delete=hostpciN`) only.
fn is_hostpci_write(form: &BTreeMap<String, String>) -> bool {
    let hostpci = |k: &str| {
        k.strip_prefix("hostpci")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    !form.is_empty()
        && form.iter().all(|(k, v)| match k.as_str() {
            "delete" => v.split(',').all(hostpci),
            k => hostpci(k),
        })
}

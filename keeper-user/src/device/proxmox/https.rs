//! One HTTPS request per connection to a Proxmox node: rustls (ring) trusting either the PVE
//! CA file or a sha256 pin of the node's certificate, HTTP/1.1 with `Connection: close`, one
//! deadline over connect, handshake, request and response. Nothing here knows the API; see
//! [`super::Client`].

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use super::ProxmoxError;

/// What the node's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A PEM file of CA certificates (`/etc/pve/pve-root-ca.pem`): chain, dates and name.
    CaFile(std::path::PathBuf),
    /// The SHA-256 of the node certificate (what `pvenode cert info` prints as fingerprint):
    /// that certificate and no other; the handshake signature is still verified.
    Pin([u8; 32]),
}

/// Parses `AB:CD:…` (PVE's form), or 64 hex digits, into the 32 bytes of a sha256 pin.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not a sha256 fingerprint (32 bytes in hex, `AB:CD:…` as `pvenode cert info` prints it)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// `AB:CD:…`, the way PVE prints fingerprints.
pub fn fingerprint_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The sha256 fingerprint of a DER certificate.
pub fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client configuration for `trust`, and, for a pin, the verifier (it remembers the
/// fingerprint it saw, for the error message).
pub fn client_config(
    trust: &Trust,
) -> Result<(Arc<ClientConfig>, Option<Arc<PinVerifier>>), ProxmoxError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxmoxError::Tls(e.to_string()))?;
    match trust {
        Trust::CaFile(path) => {
            let roots = read_ca_file(path)?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ProxmoxError::Config {
                    path: path.clone(),
                    message: format!("CA file unusable: {e}"),
                })?;
            let config = builder.with_webpki_verifier(verifier).with_no_client_auth();
            Ok((Arc::new(config), None))
        }
        Trust::Pin(pin) => {
            let verifier = Arc::new(PinVerifier {
                pin: *pin,
                seen: Mutex::new(None),
                provider,
            });
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            Ok((Arc::new(config), Some(verifier)))
        }
    }
}

fn read_ca_file(path: &Path) -> Result<RootCertStore, ProxmoxError> {
    let err = |message: String| ProxmoxError::Config {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the CA file: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("certificate refused as a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in the CA file".into()));
    }
    Ok(roots)
}

/// Accepts exactly the pinned certificate (no chain, name or date checks: a PVE node's own
/// certificate is self-signed by its cluster CA), and checks that the peer holds its key.
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    /// The fingerprint of the last certificate presented.
    pub seen: Mutex<Option<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn pinned(&self) -> &[u8; 32] {
        &self.pin
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint_of(end_entity);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(seen);
        }
        // A certificate's fingerprint is public: a plain comparison.
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where requests go: `https://HOST:PORT`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `https://host[:port][/]` (port 8006 when left out; `[::1]` for IPv6).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("`{url}`: the API URL must start with https://"))?;
        let rest = rest.trim_end_matches('/');
        let rest = rest.strip_suffix("/api2/json").unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "`{url}`: expected https://HOST[:PORT] (the keeper adds /api2/json itself)"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("`{url}`: `{p}` is not a port"))?,
            None => 8006,
        };
        Ok(Self { host, port })
    }

    /// `host:port`, `[v6]:port`: the Host header and the URL's authority.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.host_port())
    }
}

/// An HTTP response: status code, reason phrase (PVE puts its error message there) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

/// The pieces of one request.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: &'a str,
    /// `application/x-www-form-urlencoded` body, if any.
    pub form: Option<&'a str>,
}

/// The addresses of `endpoint`'s host, within `timeout`: getaddrinfo has no timeout of its
/// own, so it runs on a thread of its own that is left behind when it takes too long.
fn resolve(endpoint: &Endpoint, timeout: Duration) -> io::Result<Vec<std::net::SocketAddr>> {
    if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
        return Ok(vec![(ip, endpoint.port).into()]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let target = (endpoint.host.clone(), endpoint.port);
    std::thread::Builder::new()
        .name("keeper-dns".into())
        .spawn(move || {
            crate::device::run_at_normal_priority();
            let found = target.to_socket_addrs().map(|a| a.collect::<Vec<_>>());
            let _ = tx.send(found);
        })?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no address for {} within {timeout:?} (DNS)", endpoint.host),
        ))
    })
}

/// Sends `req` over a fresh TLS connection and reads the whole answer, all within `timeout`
/// (the name lookup included).
pub fn exchange(
    endpoint: &Endpoint,
    tls: &Arc<ClientConfig>,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, io::Error> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve(endpoint, timeout)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    let mut tcp = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let tcp = tcp.ok_or(last)?;
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!(
        "{} /api2/json{} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nAccept: application/json\r\nUser-Agent: the-keeper/{}\r\nConnection: close\r\n",
        req.method,
        req.path,
        endpoint.host_port(),
        req.authorization,
        env!("CARGO_PKG_VERSION"),
    );
    let body = req.form.unwrap_or("");
    if req.form.is_some() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body);
    set_timeouts(&stream.sock, deadline)?;
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        set_timeouts(&stream.sock, deadline)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A peer closing without close_notify after a complete answer is common.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
        if raw.len() > MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer larger than 16 MiB",
            ));
        }
        if let Some(resp) = parse_response(&raw, false)? {
            return Ok(resp);
        }
    }
    parse_response(&raw, true)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before a whole HTTP answer came",
        )
    })
}

fn set_timeouts(sock: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))
}

/// The largest answer read from the API (the whole response, and so any chunk of it).
const MAX_ANSWER: usize = 16 << 20;

/// A complete response in `raw`, or `None` while more is needed (Content-Length or chunked;
/// without either, the body runs until the peer closes: `closed`).
fn parse_response(raw: &[u8], closed: bool) -> io::Result<Option<Response>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("HTTP head is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("not an HTTP answer: `{status_line}`")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("no status code in `{status_line}`")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        match dechunk(rest).map_err(|m| bad(&m))? {
            Some(b) => b,
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if rest.len() < n {
            return Ok(None);
        }
        rest[..n].to_vec()
    } else if closed {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        reason,
        body,
    }))
}

/// The body of a complete chunked encoding, or `None` while the last chunk has not come.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|s| *s <= MAX_ANSWER)
            .ok_or_else(|| format!("bad chunk size `{size_text}` (at most 16 MiB)"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_pve_form_and_plain_hex() {
        let text = (0..32)
            .map(|i| format!("{i:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let bytes = parse_fingerprint(&text).unwrap();
        assert_eq!(bytes[31], 31);
        assert_eq!(parse_fingerprint(&text.replace(':', "")).unwrap(), bytes);
        assert_eq!(fingerprint_text(&bytes), text.to_uppercase());
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn endpoints_default_to_port_8006() {
        let e = Endpoint::parse("https://pve1").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("pve1", 8006));
        let e = Endpoint::parse("https://127.0.0.1:9443/api2/json/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 9443));
        let e = Endpoint::parse("https://[::1]:8006").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8006));
        assert_eq!(e.url(), "https://[::1]:8006");
        assert!(Endpoint::parse("http://pve1").is_err());
        assert!(Endpoint::parse("https://pve1/other").is_err());
        assert!(Endpoint::parse("https://pve1:x").is_err());
    }

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let r = parse_response(
            b"HTTP/1.1 401 No ticket\r\nContent-Length: 13\r\n\r\n{\"data\":null}",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (401, "No ticket"));
        assert_eq!(r.body, b"{\"data\":null}");
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{", false)
                .unwrap()
                .is_none()
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"da\r\n5\r\nta\":1\r\n1\r\n}\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, b"{\"data\":1}");
        // A chunk size near usize::MAX is an error, not an overflow.
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{";
        let err = parse_response(huge, false).unwrap_err().to_string();
        assert!(err.contains("bad chunk size `ffffffffffffffff`"), "{err}");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        // No length: the body is what came before the peer closed.
        let open = b"HTTP/1.0 200 OK\r\n\r\n{\"data\":2}";
        assert!(parse_response(open, false).unwrap().is_none());
        assert_eq!(
            parse_response(open, true).unwrap().unwrap().body,
            b"{\"data\":2}"
        );
    }

    #[test]
    fn forms_are_url_encoded() {
        assert_eq!(
            form(&[("balloon", "512"), ("x", "a b&c")]),
            "balloon=512&x=a+b%26c"
        );
    }
}

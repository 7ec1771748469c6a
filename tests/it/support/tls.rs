//! Helpers for the TLS tests: a `switchyard` child with an HTTPS listener on ports chosen
//! beforehand (Pebble must know them) that can be restarted in the same directory, HTTPS
//! clients that trust one given root, and a small async rustls client (no tokio-rustls in
//! our dependencies) that keeps one connection open, pins protocol versions and ALPN, reads
//! the peer certificate, and speaks HTTP/1.1 or a minimal HTTP/2.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{free_ports, RawResponse};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// switchyard's three listeners, all on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct TlsPorts {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

impl TlsPorts {
    pub fn free() -> TlsPorts {
        let p = free_ports(3);
        let a = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
        TlsPorts {
            http: a(p[0]),
            https: a(p[1]),
            admin: a(p[2]),
        }
    }
}

/// The head of a TLS test config: `[listen]` with the `{http}`, `{https}` and `{admin}`
/// placeholders, and `[state]`.
pub const TLS_BASE: &str = r#"[listen]
http = "{http}"
https = "{https}"
admin = "{admin}"

[state]
dir = "state"
"#;

/// A `switchyard run` child in a directory owned by the test (so that a restart finds
/// the same `certs/` and `state/`). Killed on drop.
pub struct TlsProxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub ports: TlsPorts,
    pub client: reqwest::Client,
}

impl TlsProxy {
    /// Writes `config_toml` (placeholders replaced) to `dir/switchyard.toml` and starts
    /// switchyard there; ready when admin `/health` answers 200 and both the http and the
    /// https listeners accept.
    pub async fn start(dir: &Path, config_toml: &str, ports: TlsPorts) -> TlsProxy {
        let config = config_toml
            .replace("{http}", &ports.http.to_string())
            .replace("{https}", &ports.https.to_string())
            .replace("{admin}", &ports.admin.to_string());
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let log = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("spawn switchyard");
        let mut proxy = TlsProxy {
            child: Some(child),
            dir: dir.to_path_buf(),
            ports,
            client: super::client(),
        };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let health = format!("http://{}/health", self.ports.admin);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "switchyard exited before becoming ready: {status}\n{}",
                    self.logs()
                );
            }
            let admin_ok = matches!(
                probe.get(&health).send().await,
                Ok(r) if r.status() == reqwest::StatusCode::OK
            );
            if admin_ok
                && TcpStream::connect(self.ports.http).await.is_ok()
                && TcpStream::connect(self.ports.https).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard not ready after {READY_TIMEOUT:?} (admin /health 200: {admin_ok})\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the child and waits until its https port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(self.ports.https).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "https port still open after kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "----- switchyard stdout -----\n{}\n----- switchyard stderr -----\n{}\n-----",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    pub fn token(&self) -> String {
        let path = self.dir.join("state/admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// `GET /v1/certs` → the `certs` array.
    pub async fn certs(&self) -> Vec<serde_json::Value> {
        let url = format!("http://{}/v1/certs", self.ports.admin);
        let resp = self
            .client
            .get(&url)
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/certs: {e:?}\n{}", self.logs()));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET /v1/certs: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/v1/certs ({e}): {body}"));
        json["certs"]
            .as_array()
            .unwrap_or_else(|| panic!("/v1/certs has no `certs` array: {body}"))
            .clone()
    }

    /// The `/v1/certs` entry of `host` (panics if absent).
    pub async fn cert(&self, host: &str) -> serde_json::Value {
        let certs = self.certs().await;
        certs
            .iter()
            .find(|c| c["host"] == host)
            .cloned()
            .unwrap_or_else(|| panic!("/v1/certs has no entry for {host}: {certs:?}"))
    }

    /// Polls `/v1/certs` until `host` has a certificate whose serial satisfies `ok`;
    /// returns the entry. Panics with the last entry and the logs after `timeout`.
    pub async fn wait_cert(
        &self,
        host: &str,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let entry = self.cert(host).await;
            if ok(&entry) {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: {what} not reached after {timeout:?}; last /v1/certs entry: {entry}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /v1/certs/renew {"hosts": hosts}` → (status, body).
    pub async fn renew(&self, hosts: &[&str]) -> (u16, serde_json::Value) {
        let url = format!("http://{}/v1/certs/renew", self.ports.admin);
        let resp = self
            .client
            .post(&url)
            .bearer_auth(self.token())
            .json(&serde_json::json!({ "hosts": hosts }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/certs/renew: {e:?}\n{}", self.logs()));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.ports.admin);
        let resp = self.client.get(&url).send().await.expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
        resp.text().await.unwrap()
    }

    /// A reqwest client for `https://HOST:HTTPS/…` that trusts only `root_pem` and sends
    /// `host` to this proxy's https listener.
    pub fn https_client(&self, root_pem: &str, host: &str) -> reqwest::Client {
        https_client(root_pem, host, self.ports.https)
    }

    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.ports.https.port())
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reqwest client that trusts only `root_pem` (no built-in roots, no environment proxy)
/// and resolves `host` to `addr`.
pub fn https_client(root_pem: &str, host: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(root_pem.as_bytes()).expect("root PEM"),
        )
        .resolve(host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The permission bits of a file (`0o600`…).
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The serial of a DER certificate, formatted as switchyard's `/v1/certs` does
/// (x509-parser's `raw_serial_as_string`).
pub fn serial_of(der: &[u8]) -> String {
    let (_, x509) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    x509.raw_serial_as_string()
}

/// The serial of the first certificate of a PEM file.
pub fn serial_of_pem_file(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", path.display()))
        .unwrap();
    serial_of(&der)
}

/// A rustls client config trusting only the certificates of `root_pem`, limited to
/// `versions`, offering `alpn`.
pub fn client_config(
    root_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        let der: CertificateDer<'static> = der.expect("root PEM");
        roots.add(der).expect("add root");
    }
    assert!(!roots.is_empty(), "no certificate in the root PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One client TLS connection driven by hand over a tokio `TcpStream`.
pub struct TlsConn {
    tcp: TcpStream,
    conn: ClientConnection,
    /// Plaintext received and not consumed yet.
    buf: Vec<u8>,
}

impl TlsConn {
    /// Connects to `addr` with SNI `server_name` and completes the handshake (the server
    /// certificate is verified against the config's roots).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> anyhow::Result<TlsConn> {
        let name = ServerName::try_from(server_name.to_string()).context("server name")?;
        let conn = ClientConnection::new(config, name).context("client connection")?;
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let mut c = TlsConn {
            tcp,
            conn,
            buf: Vec::new(),
        };
        tokio::time::timeout(IO_TIMEOUT, async {
            while c.conn.is_handshaking() {
                c.flush().await?;
                if c.conn.is_handshaking() && !c.recv().await? {
                    bail!("the server closed the connection during the handshake");
                }
            }
            c.flush().await
        })
        .await
        .context("TLS handshake timed out")??;
        Ok(c)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        while self.conn.wants_write() {
            let mut out = Vec::new();
            self.conn.write_tls(&mut out)?;
            self.tcp.write_all(&out).await?;
        }
        Ok(())
    }

    /// Reads TLS records from the socket and processes them; false at EOF.
    async fn recv(&mut self) -> anyhow::Result<bool> {
        let mut raw = vec![0u8; 16 * 1024];
        let n = self.tcp.read(&mut raw).await?;
        if n == 0 {
            return Ok(false);
        }
        let mut slice = &raw[..n];
        while !slice.is_empty() {
            self.conn.read_tls(&mut slice)?;
            self.conn.process_new_packets()?;
        }
        self.flush().await?;
        Ok(true)
    }

    /// Appends more plaintext to `buf`; errors at EOF.
    async fn fill(&mut self) -> anyhow::Result<()> {
        loop {
            let mut plain = vec![0u8; 16 * 1024];
            match self.conn.reader().read(&mut plain) {
                Ok(0) => bail!("the server closed the TLS connection (close_notify)"),
                Ok(n) => {
                    self.buf.extend_from_slice(&plain[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.recv().await? {
                        bail!("the server closed the TCP connection");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.conn.writer().write_all(data)?;
        self.flush().await
    }

    /// The serial of the certificate the server presented.
    pub fn peer_serial(&self) -> String {
        let certs = self.conn.peer_certificates().expect("peer certificates");
        serial_of(&certs[0])
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.alpn_protocol().map(|p| p.to_vec())
    }

    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// `GET path` with `Host: host` over HTTP/1.1, keeping the connection open.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<RawResponse> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        tokio::time::timeout(IO_TIMEOUT, async {
            self.send(req.as_bytes()).await?;
            self.read_response().await
        })
        .await
        .context("HTTP/1.1 request timed out")?
    }

    /// Waits for more plaintext from the server and returns everything buffered (errors
    /// when the server closes the connection).
    pub async fn recv_plain(&mut self) -> anyhow::Result<Vec<u8>> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads one HTTP/1.1 response (after requests written with `send`), within 15 s.
    pub async fn response(&mut self) -> anyhow::Result<RawResponse> {
        tokio::time::timeout(IO_TIMEOUT, self.read_response())
            .await
            .context("HTTP/1.1 response timed out")?
    }

    /// Waits at most `timeout` for the server to close the connection (close_notify, EOF,
    /// a reset or a TLS error), discarding what it sends meanwhile. Returns the plaintext
    /// received (including what was buffered) when it closed, `None` if still open.
    pub async fn closed_within(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let mut got = std::mem::take(&mut self.buf);
        let closed = tokio::time::timeout(timeout, async {
            loop {
                let mut plain = vec![0u8; 16 * 1024];
                loop {
                    match self.conn.reader().read(&mut plain) {
                        Ok(0) => return,
                        Ok(n) => got.extend_from_slice(&plain[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                }
                match self.recv().await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                }
            }
        })
        .await;
        closed.ok().map(|()| got)
    }

    async fn read_response(&mut self) -> anyhow::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await.context("reading the response head")?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().context("content-length")?;
            while self.buf.len() < len {
                self.fill().await.context("reading the body")?;
            }
            self.buf.drain(..len).collect()
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let mut out = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_str = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                    .with_context(|| format!("bad chunk size {size_str:?}"))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // No trailers from our backends: the final CRLF.
                    while self.buf.len() < 2 {
                        self.fill().await?;
                    }
                    self.buf.drain(..2);
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                out.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
            out
        } else {
            bail!("response without a length on a keep-alive connection: {head}");
        };
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// A single `GET path` over HTTP/2 on a connection that negotiated `h2` (a minimal
    /// client: one stream, HPACK literals without Huffman coding, no flow control needed
    /// for small bodies). Returns (status, body).
    pub async fn h2_get(&mut self, authority: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        tokio::time::timeout(IO_TIMEOUT, self.h2_get_inner(authority, path))
            .await
            .context("HTTP/2 request timed out")?
    }

    async fn h2_get_inner(
        &mut self,
        authority: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
        let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
        hpack_literal(&mut block, 4, path.as_bytes()); // :path
        hpack_literal(&mut block, 1, authority.as_bytes()); // :authority
        out.extend(h2_frame(
            H2_HEADERS,
            H2_END_STREAM | H2_END_HEADERS,
            1,
            &block,
        ));
        self.send(&out).await?;

        let mut status = None;
        let mut body = Vec::new();
        loop {
            while self.buf.len() < 9 {
                self.fill().await.context("reading an HTTP/2 frame")?;
            }
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            while self.buf.len() < 9 + len {
                self.fill().await.context("reading an HTTP/2 frame")?;
            }
            let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
            let (ty, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[9..];
            match ty {
                H2_SETTINGS if flags & H2_ACK == 0 => {
                    self.send(&h2_frame(H2_SETTINGS, H2_ACK, 0, &[])).await?
                }
                H2_PING if flags & H2_ACK == 0 => {
                    self.send(&h2_frame(H2_PING, H2_ACK, 0, payload)).await?
                }
                H2_GOAWAY => bail!("GOAWAY from the server: {payload:?}"),
                H2_RST_STREAM if stream == 1 => bail!("RST_STREAM on the request: {payload:?}"),
                H2_HEADERS if stream == 1 => {
                    let mut p = payload;
                    if flags & H2_PADDED != 0 {
                        let pad = p[0] as usize;
                        p = &p[1..p.len() - pad];
                    }
                    if flags & H2_PRIORITY != 0 {
                        p = &p[5..];
                    }
                    if status.is_none() {
                        status = Some(
                            hpack_status(p)
                                .with_context(|| format!("cannot decode :status from {p:?}"))?,
                        );
                    }
                    if flags & H2_END_STREAM != 0 {
                        break;
                    }
                }
                H2_DATA if stream == 1 => {
                    let mut p = payload;
                    if flags & H2_PADDED != 0 {
                        let pad = p[0] as usize;
                        p = &p[1..p.len() - pad];
                    }
                    body.extend_from_slice(p);
                    if flags & H2_END_STREAM != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok((status.context("no HEADERS frame")?, body))
    }
}

const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_END_STREAM: u8 = 0x1;
const H2_ACK: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
const H2_PADDED: u8 = 0x8;
const H2_PRIORITY: u8 = 0x20;

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing — indexed name" (RFC 7541 §6.2.2), the
/// value as a raw string. Names and values here are short (< 15 / < 127 bytes).
fn hpack_literal(block: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    assert!(name_index < 15 && value.len() < 127);
    block.push(name_index);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

/// The `:status` of a response header block, which must come first (RFC 9113 §8.3).
/// Handles the indexed static-table statuses and literals with a raw or Huffman-coded
/// three-digit value.
pub fn hpack_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let name_index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = (len_byte & 0x7f) as usize;
    let value = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 == 0 {
        String::from_utf8(value.to_vec()).ok()?
    } else {
        huffman_digits(value)?
    };
    digits.parse().ok()
}

/// Decodes a Huffman-coded (RFC 7541 Appendix B) string of decimal digits.
fn huffman_digits(data: &[u8]) -> Option<String> {
    // '0'..'2' are 5-bit codes 0..2, '3'..'9' 6-bit codes 0x19..0x1f.
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    let mut input = data.iter();
    loop {
        while nbits < 6 {
            match input.next() {
                Some(b) => {
                    bits = (bits << 8) | *b as u32;
                    nbits += 8;
                }
                None => break,
            }
        }
        if nbits < 5 {
            return Some(out); // padding (all ones) of fewer than 5 bits
        }
        let five = (bits >> (nbits - 5)) & 0x1f;
        if five <= 2 {
            out.push((b'0' + five as u8) as char);
            nbits -= 5;
        } else if nbits >= 6 {
            let six = (bits >> (nbits - 6)) & 0x3f;
            if !(0x19..=0x1f).contains(&six) {
                return if six == 0x3f && input.len() == 0 && nbits < 8 {
                    Some(out)
                } else {
                    None
                };
            }
            out.push((b'3' + (six - 0x19) as u8) as char);
            nbits -= 6;
        } else {
            return if five == 0x1f { Some(out) } else { None };
        }
        bits &= (1u32 << nbits) - 1;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A ClientHello that offers TLS 1.1 at most (legacy version 0x0302, no
/// supported_versions extension), with ECDHE CBC suites, an SNI, and the extensions a
/// TLS 1.2 server needs to get as far as its version check.
pub fn tls11_client_hello(sni: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 6] = [0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut exts = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    push_ext(&mut exts, 0x0000, &sn);
    // supported_groups: secp256r1, x25519
    push_ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x17, 0x00, 0x1d]);
    // ec_point_formats: uncompressed
    push_ext(&mut exts, 0x000b, &[1, 0]);
    // signature_algorithms (TLS 1.2's, which rustls requires before it looks at the
    // version): ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256. With it, the
    // only reason left to refuse this hello is the version.
    push_ext(
        &mut exts,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

fn push_ext(exts: &mut Vec<u8>, ty: u16, data: &[u8]) {
    exts.extend_from_slice(&ty.to_be_bytes());
    exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
    exts.extend_from_slice(data);
}

#[test]
fn huffman_status_digits() {
    // "200" Huffman-coded: 00010 00000 00000 + 1-bit padding = 0x10 0x01.
    assert_eq!(huffman_digits(&[0x10, 0x01]).as_deref(), Some("200"));
    // "502": 011011 00000 00010 → 0110 1100 0000 0010 = 0x6c 0x02
    assert_eq!(huffman_digits(&[0x6c, 0x02]).as_deref(), Some("502"));
    assert_eq!(hpack_status(&[0x88]), Some(200));
    assert_eq!(hpack_status(&[0x08, 0x03, b'5', b'0', b'2']), Some(502));
}

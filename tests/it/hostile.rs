//! The edge against hostile clients (SPEC "Edge limits (hostile clients)" and "Routing",
//! issue 10): chunked bodies that must arrive whole, strict HTTP/1 framing, Host and path
//! checks, `Connection` abuse, the `[limits]` timeouts, sizes and connection cap, and the
//! `switchyard_rejected_requests_total{reason}` counter.
//!
//! The clients are raw TCP (or raw TLS) connections that misbehave on purpose; the
//! backend is `Recorder`, a raw HTTP/1.1 server that keeps every byte it receives, so
//! "nothing of a refused request reaches a backend" is checked on the bytes, not on what a
//! well-behaved HTTP server would report. No service has a health check, so a recorder
//! receives only what the proxy forwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::support::recorder::{fnv, pattern, Recorder};
use crate::support::tls::{
    client_config, hpack_status, tls11_client_hello, TlsConn, TlsPorts, TlsProxy, TLS_BASE,
};
use crate::support::{metric_lines, metric_value, poll_until, Proxy, RawResponse, BASE};

const HOST: &str = "hostile.test";
/// Bound on any single read or write of a test.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a refused connection may take to be closed after its answer.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
const REJECTED: &str = "switchyard_rejected_requests_total";

// ---------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------

/// `hostile.test` and `*.wild.test` routed to `rec`; `limits` is put verbatim (e.g.
/// `"[limits]\nheader_timeout_s = 2"`).
fn config(rec: &Recorder, limits: &str) -> String {
    format!(
        r#"{BASE}
{limits}

[[route]]
host = "{HOST}"
service = "app"

[[route]]
host = "*.wild.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        rec.addr
    )
}

/// The same routes with TLS from the internal CA (the http listener redirects to https).
fn tls_config(rec: &Recorder, limits: &str) -> String {
    format!(
        r#"{TLS_BASE}
{limits}

[tls]
issuer = "internal"
cert_dir = "certs"

[[route]]
host = "{HOST}"
service = "app"

[[route]]
host = "*.wild.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        rec.addr
    )
}

/// A TLS proxy in a fresh directory and the PEM of its internal CA.
async fn tls_env(rec: &Recorder, limits: &str) -> (TlsProxy, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TlsProxy::start(dir.path(), &tls_config(rec, limits), TlsPorts::free()).await;
    let ca = std::fs::read_to_string(proxy.cert_dir().join("ca.crt")).expect("certs/ca.crt");
    (proxy, dir, ca)
}

// ---------------------------------------------------------------------------------------
// A raw client connection
// ---------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The start of `bytes`, for messages.
fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(400)];
    let more = if bytes.len() > 400 {
        format!("… ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", String::from_utf8_lossy(shown))
}

/// One client connection to the proxy (Nagle off, so each write is its own segment);
/// bytes read past one response stay buffered for the next.
struct Conn {
    r: OwnedReadHalf,
    /// `None` once a test took it to write from another task.
    w: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
    /// EOF or a read error was seen.
    eof: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect to the proxy timed out")
            .expect("connect to the proxy");
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Conn {
            r,
            w: Some(w),
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes all of `bytes`; an error when the proxy closed or reset the connection (or
    /// stopped reading for 15 s).
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.w.as_mut().expect("the writer was taken");
        match tokio::time::timeout(IO_TIMEOUT, w.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the proxy stopped reading for 15 s",
            )),
        }
    }

    async fn send_ok(&mut self, bytes: &[u8]) {
        self.send(bytes).await.expect("write to the proxy");
    }

    async fn read_more(&mut self) -> Result<usize, String> {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.r.read(&mut chunk).await {
            Ok(0) => {
                self.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) => {
                self.eof = true;
                Err(format!("read error ({e})"))
            }
        }
    }

    async fn more_or(&mut self, what: &str) -> Result<(), String> {
        match self.read_more().await {
            Ok(0) => Err(format!(
                "the proxy closed the connection {what}; got {}",
                preview(&self.buf)
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{e} {what}; got {}", preview(&self.buf))),
        }
    }

    /// One complete response within `within`, or what happened instead.
    async fn try_response(&mut self, within: Duration) -> Result<RawResponse, String> {
        match tokio::time::timeout(within, self.read_response()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no complete response within {within:?}; got {}",
                preview(&self.buf)
            )),
        }
    }

    async fn response(&mut self) -> RawResponse {
        self.try_response(IO_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn read_response(&mut self) -> Result<RawResponse, String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.more_or("before a complete response head").await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?} (head {head:?})"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if matches!(status, 100..=199 | 204 | 304) {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.more_or("in a chunked response body").await?;
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size line in a response: {line:?}"))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    loop {
                        let e = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            self.more_or("in response trailers").await?;
                        };
                        self.buf.drain(..e + 2);
                        if e == 0 {
                            return Ok(resp);
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    self.more_or("in a response chunk").await?;
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad response content-length {len:?}"))?;
            while self.buf.len() < len {
                self.more_or("in a response body").await?;
            }
            resp.body = self.buf.drain(..len).collect();
            Ok(resp)
        } else {
            // Delimited by the end of the connection.
            while !self.eof {
                let _ = self.read_more().await;
            }
            resp.body = std::mem::take(&mut self.buf);
            Ok(resp)
        }
    }

    /// Ok when the proxy closes the connection (EOF or a reset) within `within` without
    /// sending anything more.
    async fn closed_within(&mut self, within: Duration) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unexpected bytes after the response: {}",
                preview(&self.buf)
            ));
        }
        if self.eof {
            return Ok(());
        }
        match tokio::time::timeout(within, self.read_more()).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            Ok(Ok(_)) => Err(format!(
                "the proxy sent more bytes instead of closing: {}",
                preview(&self.buf)
            )),
            Err(_) => Err(format!("the connection is still open after {within:?}")),
        }
    }

    /// Waits until the proxy closes the connection (at most `within`), collecting what it
    /// sends meanwhile; `None` if it is still open.
    async fn bytes_until_close(&mut self, within: Duration) -> Option<Vec<u8>> {
        let done = tokio::time::timeout(within, async {
            while !self.eof {
                let _ = self.read_more().await;
            }
        })
        .await;
        done.ok().map(|()| std::mem::take(&mut self.buf))
    }
}

/// Sends `wire` on a new connection and checks that it gets `want` and that the
/// connection is then closed; Err describes the first thing that went wrong.
async fn check_refused(addr: SocketAddr, wire: &[u8], want: u16) -> Result<(), String> {
    let mut c = Conn::open(addr).await;
    // The proxy may answer and close before it read everything: a failed write is fine.
    let _ = c.send(wire).await;
    let r = c.try_response(IO_TIMEOUT).await?;
    if r.status != want {
        return Err(format!(
            "got {} instead of {want}: {}",
            r.status,
            preview(&r.body)
        ));
    }
    c.closed_within(CLOSE_WITHIN)
        .await
        .map_err(|e| format!("after the {want}: {e}"))
}

/// Panics listing every failure, if any.
fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// `GET path` with Host `HOST` on a new connection; the response.
async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    let mut c = Conn::open(addr).await;
    c.send_ok(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    c.response().await
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

fn rejected_in(text: &str, reason: &str) -> f64 {
    metric_value(text, REJECTED, &[("reason", reason)]).unwrap_or(0.0)
}

async fn rejected(proxy: &Proxy, reason: &str) -> f64 {
    rejected_in(&proxy.metrics().await, reason)
}

/// Waits (at most 5 s) until `switchyard_rejected_requests_total{reason}` is `want`.
async fn assert_rejected(proxy: &Proxy, reason: &str, want: f64, what: &str) {
    let ok = poll_until(Duration::from_secs(5), || async {
        (rejected(proxy, reason).await == want).then_some(())
    })
    .await;
    if ok.is_none() {
        let text = proxy.metrics().await;
        panic!(
            "{what}: {REJECTED}{{reason=\"{reason}\"}} is {}, want {want}; all samples:\n{}",
            rejected_in(&text, reason),
            metric_lines(&text, REJECTED).join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Chunked request bodies arrive whole (issue 10, defect 1)
// ---------------------------------------------------------------------------------------

/// xorshift64: deterministic "random" chunk sizes and split points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// The writes of `body` sent chunked, as (bytes, pause after): chunks of random sizes (up
/// to `max_chunk`, a few tiny), every chunk-size line cut in two writes at a random point
/// (also between CR and LF) with a pause between, chunk data in writes of at most
/// `max_write`, and the last-chunk line cut from the final CRLF; with `trailer`, a trailer
/// field cut in two as well.
fn chunked_writes(
    body: &[u8],
    seed: u64,
    max_chunk: usize,
    max_write: usize,
    trailer: bool,
) -> Vec<(Vec<u8>, bool)> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let size = if rng.range(0, 7) == 0 {
            rng.range(1, 16)
        } else {
            rng.range(1, max_chunk)
        }
        .min(rest.len());
        let line = format!("{size:x}\r\n").into_bytes();
        let cut = rng.range(1, line.len() - 1);
        out.push((line[..cut].to_vec(), true));
        out.push((line[cut..].to_vec(), rng.range(0, 3) == 0));
        for piece in rest[..size].chunks(max_write) {
            out.push((piece.to_vec(), false));
        }
        out.push((b"\r\n".to_vec(), false));
        rest = &rest[size..];
    }
    out.push((b"0\r\n".to_vec(), true));
    if trailer {
        out.push((b"X-Check".to_vec(), true));
        out.push((b"sum: 1\r\n".to_vec(), true));
    }
    out.push((b"\r\n".to_vec(), false));
    out
}

/// Checks one echo of the recorder against the body sent.
fn assert_echo(what: &str, resp: &RawResponse, path: &str, body: &[u8]) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
    let json = resp.json();
    assert_eq!(json["path"], path, "{what}: {json}");
    assert_eq!(
        json["body_len"].as_u64(),
        Some(body.len() as u64),
        "{what}: the backend got a body of another length: {json}"
    );
    assert_eq!(
        json["body_fnv"].as_str(),
        Some(format!("{:016x}", fnv(body)).as_str()),
        "{what}: the backend got other body bytes: {json}"
    );
}

/// Checks that the recorder got exactly the two uploads, whole.
fn assert_two_uploads(rec: &Recorder, first: &[u8], second: &[u8]) {
    let reqs = rec.requests();
    assert_eq!(
        reqs.len(),
        2,
        "the backend must get exactly the two requests sent; it got {:?}",
        rec.summaries()
    );
    for (req, (path, body)) in reqs.iter().zip([("/upload", first), ("/second", second)]) {
        assert_eq!(req.method, "POST", "{}", req.summary());
        assert_eq!(req.path(), path, "{}", req.summary());
        assert!(
            req.body.len() == body.len() && fnv(&req.body) == fnv(body),
            "{path}: the backend got {} body bytes (fnv {:016x}), sent {} (fnv {:016x})",
            req.body.len(),
            fnv(&req.body),
            body.len(),
            fnv(body)
        );
    }
    assert_eq!(
        rec.stray_bytes(),
        0,
        "the backend got bytes outside the two requests: {}",
        rec.raw_preview()
    );
}

fn upload_head(path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_20mb_upload_with_split_chunk_lines_arrives_whole_http() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let first = pattern(20 << 20, 0x5eed);
    let second = pattern(100_000, 0xbeef);

    let mut c = Conn::open(proxy.http_addr).await;
    for (path, body, seed, max_chunk, trailer) in [
        ("/upload", &first, 11, 64 * 1024, false),
        ("/second", &second, 12, 4096, true),
    ] {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(120), async {
            c.send_ok(upload_head(path).as_bytes()).await;
            for (piece, pause) in chunked_writes(body, seed, max_chunk, 64 * 1024, trailer) {
                c.send(&piece).await.unwrap_or_else(|e| {
                    panic!(
                        "{path}: the proxy stopped taking the upload ({e}); the backend got {:?}",
                        rec.summaries()
                    )
                });
                if pause {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: the upload did not finish in 120 s"));
        let resp = c.response().await;
        eprintln!("{path}: {} bytes in {:?}", body.len(), started.elapsed());
        assert_echo(path, &resp, path, body);
    }
    assert_two_uploads(&rec, &first, &second);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_20mb_upload_with_split_chunk_lines_arrives_whole_https_h1() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) = tls_env(&rec, "").await;
    let first = pattern(20 << 20, 0x5eed);
    let second = pattern(100_000, 0xbeef);

    let mut c = TlsConn::connect(
        proxy.ports.https,
        HOST,
        client_config(&ca, &[&TLS13, &TLS12], &[b"http/1.1"]),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake: {e:?}\n{}", proxy.logs()));
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
    for (path, body, seed, trailer) in [
        ("/upload", &first, 21, false),
        ("/second", &second, 22, true),
    ] {
        tokio::time::timeout(Duration::from_secs(120), async {
            c.send(upload_head(path).as_bytes())
                .await
                .expect("send head");
            // Writes of at most 16 KiB: one TLS record each (and within rustls' buffer).
            for (piece, pause) in chunked_writes(body, seed, 48 * 1024, 16 * 1024, trailer) {
                c.send(&piece).await.unwrap_or_else(|e| {
                    panic!(
                        "{path}: the proxy stopped taking the upload ({e:?}); the backend got {:?}",
                        rec.summaries()
                    )
                });
                if pause {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: the upload did not finish in 120 s"));
        let resp = c
            .response()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}; backend got {:?}", rec.summaries()));
        assert_echo(path, &resp, path, body);
    }
    assert_two_uploads(&rec, &first, &second);
}

// ---------------------------------------------------------------------------------------
// Strict HTTP/1 framing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_400_and_closed_and_nothing_reaches_the_backend() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let before = rejected(&proxy, "bad_framing").await;

    let post = |headers: &str, body: &str| {
        format!("POST /smuggle HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n{body}")
    };
    let get_next = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{get_next}"),
            ),
        ),
        (
            "Transfer-Encoding and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
                &format!("0\r\n\r\n{get_next}"),
            ),
        ),
        (
            "two different Content-Lengths",
            post("Content-Length: 5\r\nContent-Length: 7\r\n", "hellowo"),
        ),
        (
            "Content-Length: 5, 5",
            post("Content-Length: 5, 5\r\n", "hello"),
        ),
        (
            "two identical Content-Length lines",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        ),
        ("Content-Length: +5", post("Content-Length: +5\r\n", "hello")),
        ("Content-Length: 0x5", post("Content-Length: 0x5\r\n", "hello")),
        ("Content-Length:  5 x", post("Content-Length:  5 x\r\n", "hello")),
        ("Content-Length: -1", post("Content-Length: -1\r\n", "hello")),
        ("an empty Content-Length", post("Content-Length: \r\n", "hello")),
        (
            "a Content-Length that overflows",
            post("Content-Length: 184467440737095516160\r\n", "hello"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "two Transfer-Encoding lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /smuggle HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "whitespace before the colon (Transfer-Encoding)",
            post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "a tab before the colon (Content-Length)",
            post("Content-Length\t: 5\r\n", "hello"),
        ),
        (
            "whitespace before the colon (other header)",
            format!("GET /smuggle HTTP/1.1\r\nHost: {HOST}\r\nX-Foo : bar\r\n\r\n"),
        ),
        (
            "obs-fold (space)",
            format!("GET /smuggle HTTP/1.1\r\nHost: {HOST}\r\nX-Foo: a\r\n b\r\n\r\n"),
        ),
        (
            "obs-fold (tab) of Transfer-Encoding",
            post("Transfer-Encoding:\r\n\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, wire) in &cases {
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), 400).await {
            failures.push(format!("{what}: {e}"));
        }
        if rec.raw_bytes() > 0 {
            failures.push(format!(
                "{what}: reached the backend: {}",
                rec.raw_preview()
            ));
            break;
        }
    }
    assert_no_failures("framing", &failures);
    rec.assert_untouched("after the framing cases");
    assert_rejected(
        &proxy,
        "bad_framing",
        before + cases.len() as f64,
        "one bad_framing per framing 400",
    )
    .await;

    // The proxy keeps serving.
    let r = get(proxy.http_addr, "/after").await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(rec.count(), 1, "{:?}", rec.summaries());

    // On a kept-alive connection, a good request and a smuggling one in the same write:
    // the first is served, the second refused and the connection closed; the backend gets
    // the first request and not one byte more.
    let mut c = Conn::open(proxy.http_addr).await;
    let wire = format!(
        "GET /good HTTP/1.1\r\nHost: {HOST}\r\n\r\n{}",
        post(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            &format!("0\r\n\r\n{get_next}")
        )
    );
    c.send_ok(wire.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["path"], "/good");
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the pipelined smuggling request: {e}"));
    assert_eq!(
        r.status,
        400,
        "the pipelined smuggling request: {}",
        r.body_str()
    );
    c.closed_within(CLOSE_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("after the pipelined 400: {e}"));
    assert_eq!(rec.count(), 2, "{:?}", rec.summaries());
    assert_eq!(
        rec.stray_bytes(),
        0,
        "bytes of the smuggling request reached the backend: {}",
        rec.raw_preview()
    );
    assert_rejected(
        &proxy,
        "bad_framing",
        before + cases.len() as f64 + 1.0,
        "the pipelined 400",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_chunk_size_is_400_and_closed_and_never_a_complete_request_upstream() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let before = rejected(&proxy, "bad_framing").await;

    let head =
        format!("POST /chunks HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let cases: &[(&str, &str)] = &[
        ("zz as the first chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("0x5 as a chunk size", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "a chunk size that overflows",
            "10000000000000000000\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "zz after a good chunk",
            "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        ("chunk data not followed by CRLF", "5\r\nhelloXX0\r\n\r\n"),
        ("a NUL in a chunk extension", "5;\0\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF after a chunk size", "5\nhello\r\n0\r\n\r\n"),
        (
            "a trailer name with a space",
            "5\r\nhello\r\n0\r\nX Bad: 1\r\n\r\n",
        ),
        (
            "a trailer line without a colon",
            "5\r\nhello\r\n0\r\nXBad\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, body)) in cases.iter().enumerate() {
        if let Err(e) =
            check_refused(proxy.http_addr, format!("{head}{body}").as_bytes(), 400).await
        {
            failures.push(format!("{what}: {e}"));
        }
        if rec.count() > 0 {
            failures.push(format!(
                "{what}: the backend got a complete request: {:?}",
                rec.summaries()
            ));
            break;
        }
        // The first chunk line comes in the same segment as the head: nothing of such a
        // request is forwarded at all.
        if i == 0 && rec.raw_bytes() > 0 {
            failures.push(format!(
                "{what}: {} bytes reached the backend: {}",
                rec.raw_bytes(),
                rec.raw_preview()
            ));
        }
    }
    assert_no_failures("bad chunk sizes", &failures);
    assert_rejected(
        &proxy,
        "bad_framing",
        before + cases.len() as f64,
        "one bad_framing per bad chunk",
    )
    .await;
    let r = get(proxy.http_addr, "/after").await;
    assert_eq!(r.status, 200, "{}", r.body_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn unusual_but_valid_clients_are_served() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let addr = proxy.http_addr;

    // Two pipelined requests, head and body, written a byte at a time: every split point
    // of request lines, header lines, the empty line and the body.
    let body = pattern(300, 4);
    let mut wire = format!(
        "POST /bytewise HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(format!("GET /bytewise-2 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    let mut c = Conn::open(addr).await;
    for b in &wire {
        c.send_ok(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_echo(
        "a request written byte by byte",
        &c.response().await,
        "/bytewise",
        &body,
    );
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["path"], "/bytewise-2");

    // Chunk extensions and upper-case hex digits are valid chunked framing.
    let mut c = Conn::open(addr).await;
    c.send_ok(
        format!(
            "{}5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
            upload_head("/ext")
        )
        .as_bytes(),
    )
    .await;
    assert_echo(
        "chunk extensions and upper-case hex",
        &c.response().await,
        "/ext",
        b"hello0123456789",
    );

    assert_eq!(rec.count(), 3, "{:?}", rec.summaries());
    assert_eq!(rec.stray_bytes(), 0, "{}", rec.raw_preview());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_heads_are_400_closed_and_not_forwarded() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let text = proxy.metrics().await;
    let before = rejected_in(&text, "bad_framing") + rejected_in(&text, "bad_request");

    let get = |extra: &str| format!("GET /m HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n");
    let cases: Vec<(&str, String)> = vec![
        ("a bare CR in a header value", get("X-A: a\rb\r\n")),
        ("a NUL in a header value", get("X-A: a\0b\r\n")),
        (
            "a header name with a non-token character",
            get("X(A): 1\r\n"),
        ),
        ("a header line without a colon", get("X-A 1\r\n")),
        (
            "a space inside the target",
            format!("GET /a b HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        ),
        (
            "a control character in the target",
            format!("GET /a\x01 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        ),
        (
            "an unknown HTTP version",
            format!("GET / HTTP/1.7\r\nHost: {HOST}\r\n\r\n"),
        ),
        (
            "bare LF line ends",
            format!("GET /m HTTP/1.1\nHost: {HOST}\n\n"),
        ),
        (
            "one bare LF among CRLFs",
            format!("GET /m HTTP/1.1\r\nHost: {HOST}\nX-A: 1\r\n\r\n"),
        ),
        (
            "a Host label starting with '-'",
            format!("GET /m HTTP/1.1\r\nHost: -x.{HOST}\r\n\r\n"),
        ),
        (
            "a request line of garbage",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n".to_string(),
        ),
    ];
    let mut failures = Vec::new();
    for (what, wire) in &cases {
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), 400).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert_no_failures("malformed heads", &failures);
    rec.assert_untouched("after the malformed heads");
    let ok = poll_until(Duration::from_secs(5), || async {
        let text = proxy.metrics().await;
        let now = rejected_in(&text, "bad_framing") + rejected_in(&text, "bad_request");
        (now - before == cases.len() as f64).then_some(())
    })
    .await;
    let text = proxy.metrics().await;
    assert!(
        ok.is_some(),
        "{} malformed heads, counted as:\n{}",
        cases.len(),
        metric_lines(&text, REJECTED).join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_beyond_max_header_bytes_in_total_are_all_served() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "[limits]\nmax_header_bytes = 4096")).await;

    // 200 requests of ~1 KB heads, with a 100 KB POST body in the middle, in one write:
    // each head is within max_header_bytes, together they are 50 times over it.
    let body = pattern(100_000, 8);
    let mut wire = Vec::new();
    for i in 0..200 {
        if i == 100 {
            wire.extend_from_slice(
                format!(
                    "POST /p-body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            wire.extend_from_slice(&body);
        }
        wire.extend_from_slice(
            format!(
                "GET /p{i} HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(1000)
            )
            .as_bytes(),
        );
    }
    // Written from another task while the responses are read: neither side stalls.
    let mut c = Conn::open(proxy.http_addr).await;
    let mut w = c.w.take().unwrap();
    let writer = tokio::spawn(async move { w.write_all(&wire).await.map(|()| w) });
    for i in 0..200 {
        if i == 100 {
            assert_echo("the pipelined POST", &c.response().await, "/p-body", &body);
        }
        let r = c
            .try_response(IO_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("pipelined request {i}: {e}"));
        assert_eq!(r.status, 200, "pipelined request {i}: {}", r.body_str());
        assert_eq!(r.json()["path"], format!("/p{i}"));
    }
    writer.await.unwrap().expect("write the pipelined requests");
    assert_eq!(rec.count(), 201, "{:?}", rec.summaries().len());
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_target_goes_upstream_in_origin_form_and_never_routes_one_host_but_forwards_another(
) {
    let exact = Recorder::start("exact").await;
    let wild = Recorder::start("wild").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
service = "exact"

[[route]]
host = "*.wild.test"
service = "wild"

[service.exact]
backends = ["{}"]

[service.wild]
backends = ["{}"]
"#,
        exact.addr, wild.addr
    );
    let proxy = Proxy::start(&cfg).await;

    // The same authority as Host: served, in origin form on the wire (a hyper backend would
    // hide an absolute-form target; the recorder sees the request line as sent). Without
    // dot-segments, so that no path normalisation rewrites the target anyway.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET http://{HOST}/abs?x=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let req = exact.requests().pop().expect("the absolute-form request");
    assert_eq!(req.target, "/abs?x=1", "{}", req.summary());

    // Another authority than Host: refused, or routed and forwarded consistently (the
    // backend's Host is the host it was routed by, the target in origin form).
    let exact_before = exact.raw_bytes();
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(b"GET http://x.wild.test/abs2 HTTP/1.1\r\nHost: hostile.test\r\n\r\n")
        .await;
    let r = c.response().await;
    match r.status {
        400 => {
            assert_eq!(
                (exact.raw_bytes(), wild.raw_bytes()),
                (exact_before, 0),
                "refused, yet forwarded: {:?} {:?}",
                exact.summaries(),
                wild.summaries()
            );
        }
        200 => {
            let backend = r.json()["backend"].as_str().unwrap_or_default().to_string();
            let rec = if backend == "wild" { &wild } else { &exact };
            let req = rec.requests().pop().expect("the forwarded request");
            let want_host = if backend == "wild" {
                "x.wild.test"
            } else {
                HOST
            };
            assert_eq!(req.target, "/abs2", "{}", req.summary());
            assert_eq!(
                req.header("host").as_deref(),
                Some(want_host),
                "routed to {backend} but forwarded as {}",
                req.summary()
            );
        }
        other => panic!("absolute-form with another Host: {other} {}", r.body_str()),
    }
}

// ---------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------

/// Hosts that are not a valid hostname or IP literal (under the wildcard route).
const BAD_HOSTS: &[&str] = &[
    "evil%2ecom/x.wild.test",
    "a%2fb.wild.test",
    "a/b.wild.test",
    "\"a\".wild.test",
    "a b.wild.test",
    "user@x.wild.test",
    "x.wild.test/",
    "x.wild.test\\",
    "<x>.wild.test",
    "hostile.test%00",
];

#[tokio::test(flavor = "multi_thread")]
async fn missing_duplicate_or_invalid_host_is_400_and_closed() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let bad_request_before = rejected(&proxy, "bad_request").await;
    let framing_before = rejected(&proxy, "bad_framing").await;

    let mut cases: Vec<(String, String)> = vec![
        (
            "HTTP/1.1 without Host".into(),
            "GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n".into(),
        ),
        (
            "two identical Host lines".into(),
            format!("GET /twohosts HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"),
        ),
        (
            "two different Host lines".into(),
            format!("GET /twohosts HTTP/1.1\r\nHost: {HOST}\r\nHost: x.wild.test\r\n\r\n"),
        ),
    ];
    for host in BAD_HOSTS {
        cases.push((
            format!("Host: {host}"),
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        ));
    }
    let mut failures = Vec::new();
    for (what, wire) in &cases {
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), 400).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert_no_failures("Host", &failures);
    rec.assert_untouched("after the bad Hosts");

    // Every one counted; those with an invalid Host as bad_request.
    let text = proxy.metrics().await;
    let bad_request = rejected_in(&text, "bad_request") - bad_request_before;
    let framing = rejected_in(&text, "bad_framing") - framing_before;
    assert!(
        bad_request >= BAD_HOSTS.len() as f64 && bad_request + framing == cases.len() as f64,
        "bad_request +{bad_request}, bad_framing +{framing} for {} bad Hosts and {} requests:\n{}",
        BAD_HOSTS.len(),
        cases.len(),
        metric_lines(&text, REJECTED).join("\n")
    );

    // Valid Hosts are still served: names with ports, under the wildcard, IP literals.
    for (host, want) in [
        ("x.wild.test", 200),
        ("X.Wild.Test:8080", 200),
        ("hostile.test:80", 200),
        ("127.0.0.1", 404),
        ("[::1]:8080", 404),
    ] {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send_ok(format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await;
        let r = c.response().await;
        assert_eq!(r.status, want, "Host: {host}: {}", r.body_str());
    }
    assert_eq!(rec.count(), 3, "{:?}", rec.summaries());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_host_is_400_never_a_redirect_and_not_over_https_either() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) = tls_env(&rec, "").await;
    let https_port = proxy.ports.https.port();

    // The http listener redirects routed hosts…
    let mut c = Conn::open(proxy.ports.http).await;
    c.send_ok(b"GET /r?q=1 HTTP/1.1\r\nHost: a.wild.test\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.wild.test:{https_port}/r?q=1").as_str())
    );

    // … but never with an invalid Host in the Location.
    let mut failures = Vec::new();
    for host in BAD_HOSTS {
        let mut c = Conn::open(proxy.ports.http).await;
        let _ = c
            .send(format!("GET /r HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await;
        match c.try_response(IO_TIMEOUT).await {
            Ok(r) if r.status == 400 => {
                if let Err(e) = c.closed_within(CLOSE_WITHIN).await {
                    failures.push(format!("http, Host: {host}: after the 400: {e}"));
                }
            }
            Ok(r) => failures.push(format!(
                "http, Host: {host}: {} (location {:?}) instead of 400",
                r.status,
                r.header("location")
            )),
            Err(e) => failures.push(format!("http, Host: {host}: {e}")),
        }
    }

    // Over https (SNI fine, Host not): 400 too.
    for host in BAD_HOSTS {
        let mut t = TlsConn::connect(
            proxy.ports.https,
            HOST,
            client_config(&ca, &[&TLS13], &[b"http/1.1"]),
        )
        .await
        .unwrap_or_else(|e| panic!("handshake: {e:?}\n{}", proxy.logs()));
        t.send(format!("GET /s HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("send");
        match t.response().await {
            Ok(r) if r.status == 400 => {
                if t.closed_within(CLOSE_WITHIN).await.is_none() {
                    failures.push(format!("https, Host: {host}: still open after the 400"));
                }
            }
            Ok(r) => failures.push(format!(
                "https, Host: {host}: {} instead of 400: {}",
                r.status,
                r.body_str()
            )),
            Err(e) => failures.push(format!("https, Host: {host}: {e:?}")),
        }
    }
    assert_no_failures("invalid Host with TLS", &failures);
    rec.assert_untouched("after the bad Hosts");
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn paths_are_normalised_before_routing_and_climbing_is_400() {
    let public = Recorder::start("public").await;
    let root = Recorder::start("root").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
path_prefix = "/public"
service = "public"

[[route]]
host = "{HOST}"
service = "root"

[service.public]
backends = ["{}"]

[service.root]
backends = ["{}"]
"#,
        public.addr, root.addr
    );
    let proxy = Proxy::start(&cfg).await;

    // (target sent, backend, forwarded paths accepted, forwarded query)
    let served: &[(&str, &str, &[&str], Option<&str>)] = &[
        ("/public/../secret", "root", &["/secret"], None),
        ("/public/%2e%2e/secret", "root", &["/secret"], None),
        ("/public/%2E%2E/secret", "root", &["/secret"], None),
        ("/public/./x", "public", &["/public/x"], None),
        ("/public/x/../y", "public", &["/public/y"], None),
        ("/public/a/b/../../c", "public", &["/public/c"], None),
        (
            "/public/../secret?next=/../a/%2e%2e&x=1",
            "root",
            &["/secret"],
            Some("next=/../a/%2e%2e&x=1"),
        ),
        (
            "/public/x?p=../../etc",
            "public",
            &["/public/x"],
            Some("p=../../etc"),
        ),
        ("//a", "root", &["//a", "/a"], None),
    ];
    let mut failures = Vec::new();
    for (target, backend, paths, query) in served {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send_ok(format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        let r = match c.try_response(IO_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{target}: {e}"));
                continue;
            }
        };
        if r.status != 200 {
            failures.push(format!("{target}: {} {}", r.status, r.body_str()));
            continue;
        }
        let json = r.json();
        let got_path = json["path"].as_str().unwrap_or_default();
        if json["backend"] != *backend
            || !paths.contains(&got_path)
            || json["query"].as_str() != *query
        {
            failures.push(format!(
                "{target}: went to {} with path {got_path:?} query {}; want {backend} with {paths:?} query {query:?}",
                json["backend"], json["query"]
            ));
        }
    }
    assert!(
        public
            .requests()
            .iter()
            .all(|r| !r.path().contains("secret")),
        "the /public service served a path outside /public: {:?}",
        public.summaries()
    );

    let before = rejected(&proxy, "bad_request").await;
    let (public_before, root_before) = (public.raw_bytes(), root.raw_bytes());
    let climbing = [
        "/../secret",
        "/a/../../b",
        "/public/../../secret",
        "/%2e%2e/secret",
        "/public/%2E%2E/%2e%2e/secret",
        "/..",
    ];
    for target in climbing {
        let wire = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), 400).await {
            failures.push(format!("{target}: {e}"));
        }
    }
    assert_no_failures("paths", &failures);
    assert_eq!(
        (public.raw_bytes(), root.raw_bytes()),
        (public_before, root_before),
        "a climbing path reached a backend: public {:?} root {:?}",
        public.summaries(),
        root.summaries()
    );
    assert_rejected(
        &proxy,
        "bad_request",
        before + climbing.len() as f64,
        "one bad_request per climbing path",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Headers an attacker controls
// ---------------------------------------------------------------------------------------

/// Sends `wire` on a new connection, expects a 200 from the recorder, and returns what the
/// recorder got for it.
async fn forwarded(
    addr: SocketAddr,
    rec: &Recorder,
    wire: &str,
) -> crate::support::recorder::RecRequest {
    let n = rec.count();
    let mut c = Conn::open(addr).await;
    c.send_ok(wire.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{wire:?}: {}", r.body_str());
    let reqs = rec.requests();
    assert_eq!(
        reqs.len(),
        n + 1,
        "{wire:?}: want one more request at the backend; it has {:?}",
        rec.summaries()
    );
    reqs[n].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_header_cannot_strip_host_framing_or_forwarded_headers() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let addr = proxy.http_addr;

    let req = forwarded(
        addr,
        &rec,
        &format!("GET /c-host HTTP/1.1\r\nHost: {HOST}\r\nConnection: host\r\n\r\n"),
    )
    .await;
    assert_eq!(
        req.header("host").as_deref(),
        Some(HOST),
        "{}",
        req.summary()
    );
    assert_eq!(
        req.header("x-forwarded-host").as_deref(),
        Some(HOST),
        "{}",
        req.summary()
    );

    let req = forwarded(
        addr,
        &rec,
        &format!(
            "POST /c-cl HTTP/1.1\r\nHost: {HOST}\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"
        ),
    )
    .await;
    assert_eq!(req.body, b"hello", "{}", req.summary());

    let req = forwarded(
        addr,
        &rec,
        &format!(
            "POST /c-te HTTP/1.1\r\nHost: {HOST}\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(req.body, b"hello", "{}", req.summary());

    let req = forwarded(
        addr,
        &rec,
        &format!(
            "GET /c-xff HTTP/1.1\r\nHost: {HOST}\r\nConnection: x-forwarded-for, x-forwarded-proto, x-forwarded-host\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(
        req.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{}",
        req.summary()
    );
    assert_eq!(
        req.header("x-forwarded-proto").as_deref(),
        Some("http"),
        "{}",
        req.summary()
    );
    assert_eq!(
        req.header("x-forwarded-host").as_deref(),
        Some(HOST),
        "{}",
        req.summary()
    );

    // Two Connection lines: both take effect.
    let req = forwarded(
        addr,
        &rec,
        &format!(
            "GET /c-two HTTP/1.1\r\nHost: {HOST}\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\nConnection: x-b\r\nX-C: 3\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(req.header("x-a"), None, "{}", req.summary());
    assert_eq!(req.header("x-b"), None, "{}", req.summary());
    assert_eq!(req.header("x-c").as_deref(), Some("3"), "{}", req.summary());

    // Two X-Forwarded-For lines: both kept, in order, then the client.
    let req = forwarded(
        addr,
        &rec,
        &format!(
            "GET /xff HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(
        req.header("x-forwarded-for").as_deref(),
        Some("1.1.1.1, 2.2.2.2, 127.0.0.1"),
        "{}",
        req.summary()
    );

    // Upgrade: h2c is served as a plain request, without the Upgrade; the connection stays
    // HTTP/1.1.
    let mut c = Conn::open(addr).await;
    c.send_ok(
        format!(
            "GET /h2c HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "Upgrade: h2c: {r:?}");
    let req = rec.requests().pop().expect("the h2c request");
    assert_eq!(req.path(), "/h2c", "{}", req.summary());
    assert_eq!(req.header("upgrade"), None, "{}", req.summary());
    assert_eq!(req.header("http2-settings"), None, "{}", req.summary());
    c.send_ok(format!("GET /after-h2c HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "after Upgrade: h2c: {r:?}");
    assert_eq!(r.json()["path"], "/after-h2c");

    // Any other Upgrade token is not forwarded either.
    let req = forwarded(
        addr,
        &rec,
        &format!(
            "GET /tls-upgrade HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: TLS/1.0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(req.header("upgrade"), None, "{}", req.summary());
}

// ---------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431_or_414_with_default_limits() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "")).await;
    let before = rejected(&proxy, "too_large").await;

    let big_header = format!(
        "GET /big HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let fifty: String = (0..50)
        .map(|i| format!("X-H{i:02}: {}\r\n", "b".repeat(1400)))
        .collect();
    let fifty = format!("GET /fifty HTTP/1.1\r\nHost: {HOST}\r\n{fifty}\r\n");
    let headers_101: String = (0..100).map(|i| format!("X-N{i}: v\r\n")).collect();
    let headers_101 = format!("GET /h101 HTTP/1.1\r\nHost: {HOST}\r\n{headers_101}\r\n");
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
        "p".repeat(70 * 1024)
    );
    let cases: [(&str, &str, u16); 4] = [
        ("a 100 KiB header", &big_header, 431),
        ("50 headers of 1.4 KB (a 70 KB head)", &fifty, 431),
        ("101 headers", &headers_101, 431),
        ("a 70 KiB request line", &long_line, 414),
    ];
    let mut failures = Vec::new();
    for (what, wire, want) in cases {
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), want).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert_no_failures("oversized heads", &failures);
    rec.assert_untouched("after the oversized heads");
    assert_rejected(
        &proxy,
        "too_large",
        before + cases.len() as f64,
        "one too_large per 431/414",
    )
    .await;

    // Within the limits: a 60 000-byte header, and 100 headers in all (Host included).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        format!(
            "GET /60k HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
            "c".repeat(60_000)
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "a 60 000-byte header: {}", preview(&r.body));
    let headers_100: String = (0..99).map(|i| format!("X-N{i}: v\r\n")).collect();
    c.send_ok(format!("GET /h100 HTTP/1.1\r\nHost: {HOST}\r\n{headers_100}\r\n").as_bytes())
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "100 headers: {}", preview(&r.body));
    let reqs = rec.requests();
    assert_eq!(reqs.len(), 2, "{:?}", rec.summaries());
    assert_eq!(reqs[0].header("x-big").map(|v| v.len()), Some(60_000));
    assert_eq!(reqs[1].header("x-n98").as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_body_bytes_gives_413_before_forwarding() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "[limits]\nmax_body_bytes = 1000")).await;
    let before = rejected(&proxy, "too_large").await;

    // Content-Length beyond: 413 on the head alone, before any body is sent.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        format!("POST /cl HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000\r\n\r\n").as_bytes(),
    )
    .await;
    let r = c
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("Content-Length 2000 > max_body_bytes 1000: {e}"));
    assert_eq!(r.status, 413, "{}", r.body_str());
    c.closed_within(CLOSE_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("after the 413: {e}"));
    rec.assert_untouched("Content-Length beyond max_body_bytes");

    // With Expect: 100-continue: the 413 comes instead of the 100 (as nginx does).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        format!(
            "POST /expect HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let r = c
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("Expect: 100-continue with Content-Length 2000: {e}"));
    assert_eq!(r.status, 413, "Expect: 100-continue: {}", r.body_str());
    c.closed_within(CLOSE_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("after the 413 to Expect: 100-continue: {e}"));
    rec.assert_untouched("Expect: 100-continue beyond max_body_bytes");

    // Chunked beyond: 413, and the backend never gets a complete request.
    let mut c = Conn::open(proxy.http_addr).await;
    let chunk = format!("258\r\n{}\r\n", "d".repeat(600));
    c.send_ok(
        format!(
            "POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
        )
        .as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = c.send(chunk.as_bytes()).await;
    let r = c
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("a chunked body over max_body_bytes: {e}"));
    assert_eq!(r.status, 413, "{}", r.body_str());
    c.closed_within(CLOSE_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("after the chunked 413: {e}"));
    // Were the end of the body sent now, it must not complete a request upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rec.count(),
        0,
        "a body over max_body_bytes reached the backend whole: {:?}",
        rec.summaries()
    );
    assert_rejected(&proxy, "too_large", before + 3.0, "three 413s").await;

    // Within the limit: exactly 1000 bytes, either way.
    let body = pattern(1000, 3);
    let mut c = Conn::open(proxy.http_addr).await;
    let mut wire = format!("POST /ok-cl HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n")
        .into_bytes();
    wire.extend_from_slice(&body);
    c.send_ok(&wire).await;
    assert_echo(
        "1000 bytes by Content-Length",
        &c.response().await,
        "/ok-cl",
        &body,
    );
    let mut wire = upload_head("/ok-chunked").into_bytes();
    for (piece, _) in chunked_writes(&body, 5, 300, 300, false) {
        wire.extend_from_slice(&piece);
    }
    c.send_ok(&wire).await;
    assert_echo(
        "1000 bytes chunked",
        &c.response().await,
        "/ok-chunked",
        &body,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_head_limits_are_enforced() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(
        &rec,
        "[limits]\nmax_header_bytes = 4096\nmax_headers = 20",
    ))
    .await;
    let before = rejected(&proxy, "too_large").await;

    let head = |line: &str, headers: &str| format!("{line}\r\nHost: {HOST}\r\n{headers}\r\n");
    let n_headers = |n: usize| -> String { (0..n).map(|i| format!("X-N{i}: v\r\n")).collect() };
    let cases = [
        (
            "a 5000-byte header",
            head(
                "GET /h HTTP/1.1",
                &format!("X-Big: {}\r\n", "a".repeat(5000)),
            ),
            431,
        ),
        ("21 headers", head("GET /h HTTP/1.1", &n_headers(20)), 431),
        (
            "a 5000-byte request line",
            head(&format!("GET /{} HTTP/1.1", "p".repeat(5000)), ""),
            414,
        ),
    ];
    let mut failures = Vec::new();
    for (what, wire, want) in &cases {
        if let Err(e) = check_refused(proxy.http_addr, wire.as_bytes(), *want).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert_no_failures("configured head limits", &failures);
    rec.assert_untouched("heads over the configured limits");
    assert_rejected(
        &proxy,
        "too_large",
        before + cases.len() as f64,
        "one too_large per 431/414",
    )
    .await;

    // Within them: a 3000-byte header, 20 headers (Host included).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        head(
            "GET /3k HTTP/1.1",
            &format!("X-Big: {}\r\n", "c".repeat(3000)),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response().await.status, 200, "a 3000-byte header");
    c.send_ok(head("GET /20 HTTP/1.1", &n_headers(19)).as_bytes())
        .await;
    assert_eq!(c.response().await.status, 200, "20 headers");
    assert_eq!(rec.count(), 2, "{:?}", rec.summaries());
}

// ---------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------

/// Reads what the proxy sends until it closes (at most `within`) and checks it is nothing
/// or a 408; Err otherwise. Returns whether a 408 came.
async fn closed_with_nothing_or_408(c: &mut Conn, within: Duration) -> Result<bool, String> {
    let Some(got) = c.bytes_until_close(within).await else {
        return Err(format!(
            "still open after {within:?} (got {})",
            preview(&c.buf)
        ));
    };
    if got.is_empty() {
        Ok(false)
    } else if got.starts_with(b"HTTP/1.1 408") || got.starts_with(b"HTTP/1.0 408") {
        Ok(true)
    } else {
        Err(format!(
            "answered something other than a 408: {}",
            preview(&got)
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_head_is_cut_at_header_timeout() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "[limits]\nheader_timeout_s = 2")).await;
    let before = rejected(&proxy, "timeout").await;

    // One byte every 300 ms: each read would restart a per-read timer; the whole-head
    // deadline must not. The head takes ~20 s to send in full.
    let head = format!(
        "GET /slowloris HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {}\r\n\r\n",
        "s".repeat(30)
    );
    let mut slow = Conn::open(proxy.http_addr).await;
    let started = Instant::now();
    let mut w = slow.w.take().unwrap();
    let writer = tokio::spawn(async move {
        for b in head.as_bytes() {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    // A connection that sends nothing at all is cut too (counted from the accept).
    let mut silent = Conn::open(proxy.http_addr).await;
    let silent_started = Instant::now();

    let (slow_res, silent_res) = tokio::join!(
        async {
            let r = closed_with_nothing_or_408(&mut slow, Duration::from_secs(6)).await;
            (r, started.elapsed())
        },
        async {
            let r = closed_with_nothing_or_408(&mut silent, Duration::from_secs(6)).await;
            (r, silent_started.elapsed())
        }
    );
    writer.abort();
    let (slow_408, slow_after) = match slow_res {
        (Ok(got_408), after) => (got_408, after),
        (Err(e), after) => panic!("a head trickled at 1 byte/300 ms, after {after:?}: {e}"),
    };
    assert!(
        slow_after >= Duration::from_millis(1500),
        "the trickled head was cut after {slow_after:?}, before header_timeout_s = 2"
    );
    match silent_res {
        (Ok(_), after) => assert!(
            after >= Duration::from_millis(1500),
            "a silent connection was cut after {after:?}, before header_timeout_s = 2"
        ),
        (Err(e), after) => panic!("a connection that sends nothing, after {after:?}: {e}"),
    }
    rec.assert_untouched("a trickled head");
    if slow_408 {
        assert_rejected(&proxy, "timeout", before + 1.0, "the 408").await;
    }

    // The deadline is per request head, from its first byte: a keep-alive connection
    // idle longer than header_timeout_s between two requests is still served.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /first HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.response().await.status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.send_ok(format!("GET /second HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a request after 3 s of keep-alive idle: {e}"));
    assert_eq!(r.status, 200);

    // And the next head on that connection, trickled, is cut ~2 s after its first byte.
    let mut w = c.w.take().unwrap();
    let trickle_from = Instant::now();
    let writer = tokio::spawn(async move {
        for b in format!(
            "GET /third HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: {}\r\n\r\n",
            "t".repeat(30)
        )
        .bytes()
        {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let got = closed_with_nothing_or_408(&mut c, Duration::from_secs(6)).await;
    let after = trickle_from.elapsed();
    writer.abort();
    if let Err(e) = got {
        panic!("a second head trickled on a keep-alive connection, after {after:?}: {e}");
    }
    assert!(
        after >= Duration::from_millis(1500),
        "the trickled second head was cut after {after:?}, before header_timeout_s = 2"
    );
    assert!(
        rec.requests().iter().all(|r| r.path() != "/third"),
        "{:?}",
        rec.summaries()
    );

    // The deadline is for the head only: a backend slower than header_timeout_s is fine.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /sleep/3000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a 3 s backend answer with header_timeout_s = 2: {e}"));
    assert_eq!(r.status, 200, "{}", r.body_str());

    // A head sent in pieces well within the deadline is served.
    let mut c = Conn::open(proxy.http_addr).await;
    for piece in [
        "GET /pieces HTTP/1.1\r\n",
        "Host: hostile.test\r\n",
        "X-A: 1\r\n",
        "\r\n",
    ] {
        c.send_ok(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(c.response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connection_is_closed_after_idle_timeout() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "[limits]\nidle_timeout_s = 2")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /one HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.response().await.status, 200);
    let idle_from = Instant::now();
    let got = closed_with_nothing_or_408(&mut c, Duration::from_secs(6)).await;
    let after = idle_from.elapsed();
    if let Err(e) = got {
        panic!("an idle keep-alive connection (idle_timeout_s = 2): {e}");
    }
    assert!(
        after >= Duration::from_millis(1500),
        "the idle connection was closed after {after:?}, before idle_timeout_s = 2"
    );

    // A backend slower than idle_timeout_s: the request is not idle, it is served.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /sleep/3000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a 3 s backend answer with idle_timeout_s = 2: {e}"));
    assert_eq!(r.status, 200, "{}", r.body_str());

    // Idle for less than the timeout: still served.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.response().await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.send_ok(format!("GET /b HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a request after 1 s idle (idle_timeout_s = 2): {e}"));
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn trickled_body_gets_408_at_body_timeout() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(&rec, "[limits]\nbody_timeout_s = 2")).await;
    let before = rejected(&proxy, "timeout").await;

    // One byte a second (by Content-Length), one 1-byte chunk a second (chunked): under
    // 1 KiB of progress, so the timer never restarts.
    let cases = [
        (
            "Content-Length",
            format!("POST /trickle HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n"),
            "x",
        ),
        ("chunked", upload_head("/trickle-chunked"), "1\r\nx\r\n"),
        (
            "stalled (no body byte at all)",
            format!("POST /stalled HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n"),
            "",
        ),
    ];
    for (what, head, piece) in &cases {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send_ok(head.as_bytes()).await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                tokio::select! {
                    r = c.read_response() => return r,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                // The proxy may already have closed: a failed write is not the test's concern.
                if !piece.is_empty() {
                    let _ = c.send(piece.as_bytes()).await;
                }
            }
        })
        .await;
        let after = started.elapsed();
        let r = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{what} body trickled, after {after:?}: {e}"),
            Err(_) => {
                panic!("{what} body trickled (body_timeout_s = 2): no answer in 6 s")
            }
        };
        assert_eq!(r.status, 408, "{what}, after {after:?}: {}", r.body_str());
        assert!(
            after >= Duration::from_millis(1500),
            "{what}: 408 after {after:?}, before body_timeout_s = 2"
        );
        c.closed_within(CLOSE_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{what}: after the 408: {e}"));
        assert_eq!(
            rec.count(),
            0,
            "{what}: the trickled request reached the backend whole: {:?}",
            rec.summaries()
        );
    }
    assert_rejected(&proxy, "timeout", before + 3.0, "the body 408s").await;

    // A complete body and a backend slower than body_timeout_s: served (the body timer
    // ends with the body).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        format!("POST /sleep/3000 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    )
    .await;
    let r = c
        .try_response(IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("a 3 s backend answer with body_timeout_s = 2: {e}"));
    assert_eq!(r.status, 200, "{}", r.body_str());

    // A body that keeps coming (2 KiB every second, 6 s in all) is not cut: the timer
    // restarts with each KiB.
    let body = pattern(12 * 1024, 9);
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(
        format!(
            "POST /steady HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    for piece in body.chunks(2048) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(piece).await.unwrap_or_else(|e| {
            panic!("a steady body (2 KiB/s) was cut: {e}; {}", preview(&c.buf))
        });
    }
    assert_echo("a steady body", &c.response().await, "/steady", &body);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_silent_and_garbage_clients_do_not_stop_others_being_served() {
    let rec = Recorder::start("app").await;
    let mut proxy = Proxy::start(&config(&rec, "")).await;
    let addr = proxy.http_addr;

    // 150 connections held open by clients that stall: in the head, in the body, or
    // before their first byte.
    let mut stalled = Vec::new();
    for i in 0..150 {
        let mut c = Conn::open(addr).await;
        let wire = match i % 3 {
            0 => format!("GET /stalled-head-{i} HTTP/1.1\r\nHost: {HOST}\r\nX-A: "),
            1 => format!(
                "POST /stalled-body-{i} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000000\r\n\r\nxxxx"
            ),
            _ => String::new(),
        };
        c.send_ok(wire.as_bytes()).await;
        stalled.push(c);
    }
    // 50 more send random bytes and go away.
    for seed in 0..50u64 {
        let mut c = Conn::open(addr).await;
        let _ = c.send(&pattern(2000, seed + 1)).await;
    }

    // Ordinary clients are still served, each promptly.
    for i in 0..20 {
        let started = Instant::now();
        let mut c = Conn::open(addr).await;
        c.send_ok(format!("GET /ok-{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        let r = c
            .try_response(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("an ordinary request among stalled clients: {e}"));
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "an ordinary request took {:?} among stalled clients",
            started.elapsed()
        );
    }
    assert!(
        proxy.wait_exit(Duration::ZERO).await.is_none(),
        "switchyard exited:\n{}",
        proxy.logs()
    );
    let complete: Vec<String> = rec
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| !p.starts_with("/ok-"))
        .collect();
    assert!(
        complete.is_empty(),
        "incomplete requests reached the backend whole: {complete:?}"
    );
    drop(stalled);
}

// ---------------------------------------------------------------------------------------
// Connection cap
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_new_connections_until_one_closes() {
    let rec = Recorder::start("app").await;
    let proxy = Proxy::start(&config(
        &rec,
        "[limits]\nmax_connections = 2\nheader_timeout_s = 30",
    ))
    .await;

    // A and B: served, then idle on keep-alive.
    let mut a = Conn::open(proxy.http_addr).await;
    a.send_ok(format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = a
        .try_response(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("first connection: {e}"));
    assert_eq!(r.status, 200);
    // B is served once too, so it surely holds its slot before C connects (connections
    // accepted together race for the slots, as in a kernel backlog).
    let mut b = Conn::open(proxy.http_addr).await;
    b.send_ok(format!("GET /b HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = b
        .try_response(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("second connection: {e}"));
    assert_eq!(r.status, 200);

    // C: accepted by the kernel (connect succeeds) but not served while A and B are open.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send_ok(format!("GET /c HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    if let Ok(r) = c.try_response(Duration::from_secs(1)).await {
        panic!(
            "a third connection was served ({}) while max_connections = 2 were open",
            r.status
        );
    }
    assert_eq!(rec.count(), 2, "{:?}", rec.summaries());

    // A closes: C is served.
    drop(a);
    let r = c
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the waiting connection after one closed: {e}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/c");

    // B closes too: a new connection is served right away.
    drop(b);
    let mut d = Conn::open(proxy.http_addr).await;
    d.send_ok(format!("GET /d HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = d
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("a new connection after two closed: {e}"));
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------------------
// HTTP/2 over TLS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h2_client_without_preface_or_idle_after_settings_is_closed() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) = tls_env(
        &rec,
        "[limits]\nheader_timeout_s = 2\nidle_timeout_s = 2\nh2_max_concurrent_streams = 7",
    )
    .await;
    let h2 = || client_config(&ca, &[&TLS13, &TLS12], &[b"h2"]);

    let mut silent = TlsConn::connect(proxy.ports.https, HOST, h2())
        .await
        .unwrap_or_else(|e| panic!("handshake: {e:?}\n{}", proxy.logs()));
    assert_eq!(silent.alpn().as_deref(), Some(&b"h2"[..]));
    let silent_from = Instant::now();

    let mut idle = TlsConn::connect(proxy.ports.https, HOST, h2())
        .await
        .unwrap_or_else(|e| panic!("handshake: {e:?}\n{}", proxy.logs()));
    assert_eq!(idle.alpn().as_deref(), Some(&b"h2"[..]));
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
    idle.send(&preface).await.expect("send the preface");
    let idle_from = Instant::now();

    let (silent_closed, idle_closed) = tokio::join!(
        async {
            let r = silent.closed_within(Duration::from_secs(6)).await;
            (r.is_some(), silent_from.elapsed())
        },
        async {
            let r = idle.closed_within(Duration::from_secs(6)).await;
            (r, idle_from.elapsed())
        }
    );
    let mut failures = Vec::new();
    match silent_closed {
        (true, after) if after < Duration::from_millis(1500) => failures.push(format!(
            "no preface: closed after {after:?}, before header_timeout_s = 2"
        )),
        (true, _) => {}
        (false, _) => {
            failures.push("no preface: still open after 6 s (header_timeout_s = 2)".into())
        }
    }
    let (idle_bytes, idle_after) = idle_closed;
    match (idle_bytes.is_some(), idle_after) {
        (true, after) if after < Duration::from_millis(1500) => failures.push(format!(
            "idle after SETTINGS: closed after {after:?}, before idle_timeout_s = 2"
        )),
        (true, _) => {}
        (false, _) => {
            failures.push("idle after SETTINGS: still open after 6 s (idle_timeout_s = 2)".into())
        }
    }
    // The server's SETTINGS announce h2_max_concurrent_streams.
    if let Some(bytes) = &idle_bytes {
        let streams =
            h2_settings(bytes).and_then(|s| s.iter().find(|(id, _)| *id == 0x3).map(|(_, v)| *v));
        if streams != Some(7) {
            failures.push(format!(
                "SETTINGS_MAX_CONCURRENT_STREAMS from the server: {streams:?}, want Some(7) (h2_max_concurrent_streams = 7)"
            ));
        }
    }
    assert_no_failures("HTTP/2 timeouts", &failures);
    rec.assert_untouched("h2 clients that sent no request");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_handshake_that_never_completes_is_closed_at_header_timeout() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, _ca) = tls_env(&rec, "[limits]\nheader_timeout_s = 2").await;

    // No ClientHello at all, and one cut short: no request head can come before
    // header_timeout_s, counted from the accept.
    let mut silent = Conn::open(proxy.ports.https).await;
    let mut partial = Conn::open(proxy.ports.https).await;
    partial.send_ok(&tls11_client_hello(HOST)[..20]).await;
    let started = Instant::now();
    let (silent_closed, partial_closed) = tokio::join!(
        async {
            let r = silent.bytes_until_close(Duration::from_secs(6)).await;
            (r.is_some(), started.elapsed())
        },
        async {
            let r = partial.bytes_until_close(Duration::from_secs(6)).await;
            (r.is_some(), started.elapsed())
        }
    );
    let mut failures = Vec::new();
    for (what, (closed, after)) in [
        ("no ClientHello", silent_closed),
        ("a partial ClientHello", partial_closed),
    ] {
        if !closed {
            failures.push(format!(
                "{what}: still open after 6 s (header_timeout_s = 2)"
            ));
        } else if after < Duration::from_millis(1500) {
            failures.push(format!(
                "{what}: closed after {after:?}, before header_timeout_s = 2"
            ));
        }
    }
    assert_no_failures("unfinished TLS handshakes", &failures);
}

// ---------------------------------------------------------------------------------------
// HTTP/2 requests get the same body limits
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/2 client over `TlsConn` (ALPN h2): requests as HPACK literals without
/// indexing or Huffman coding, small bodies (no flow control needed).
struct H2 {
    t: TlsConn,
    buf: Vec<u8>,
}

/// How the server ended a stream.
#[derive(Debug, PartialEq)]
enum H2End {
    /// A response head with this :status.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY, or the connection closed.
    Gone(String),
}

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a `prefix_bits`-bit prefix (RFC 7541 §5.1); `first` holds the
/// bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    let mut n = n - max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// HPACK "literal header field without indexing — new name", raw strings.
fn hpack_field(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    hpack_int(block, 7, 0, name.len());
    block.extend_from_slice(name.as_bytes());
    hpack_int(block, 7, 0, value.len());
    block.extend_from_slice(value.as_bytes());
}

impl H2 {
    async fn open(addr: SocketAddr, ca: &str) -> H2 {
        let mut t = TlsConn::connect(addr, HOST, client_config(ca, &[&TLS13, &TLS12], &[b"h2"]))
            .await
            .expect("h2 handshake");
        assert_eq!(t.alpn().as_deref(), Some(&b"h2"[..]));
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        t.send(&out).await.expect("send the preface");
        H2 { t, buf: Vec::new() }
    }

    /// HEADERS for a request on `stream` (END_HEADERS; END_STREAM when `end`).
    async fn request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        self.request_to(stream, HOST, method, path, extra, end)
            .await
    }

    async fn request_to(
        &mut self,
        stream: u32,
        authority: &str,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        let mut block = Vec::new();
        hpack_field(&mut block, ":method", method);
        hpack_field(&mut block, ":scheme", "https");
        hpack_field(&mut block, ":path", path);
        hpack_field(&mut block, ":authority", authority);
        for (k, v) in extra {
            hpack_field(&mut block, k, v);
        }
        let flags = 0x4 | if end { 0x1 } else { 0 };
        self.t
            .send(&h2_frame(0x1, flags, stream, &block))
            .await
            .expect("send HEADERS");
    }

    /// DATA on `stream`; false when the server already closed the connection.
    async fn data(&mut self, stream: u32, bytes: &[u8], end: bool) -> bool {
        let flags = if end { 0x1 } else { 0 };
        self.t
            .send(&h2_frame(0x0, flags, stream, bytes))
            .await
            .is_ok()
    }

    /// The next frame (type, flags, stream, payload), answering SETTINGS and PING.
    async fn frame(&mut self) -> anyhow::Result<(u8, u8, u32, Vec<u8>)> {
        loop {
            let (ty, flags, stream, payload) = self.raw_frame().await?;
            match ty {
                0x4 if flags & 0x1 == 0 => self.t.send(&h2_frame(0x4, 0x1, 0, &[])).await?,
                0x6 if flags & 0x1 == 0 => self.t.send(&h2_frame(0x6, 0x1, 0, &payload)).await?,
                _ => return Ok((ty, flags, stream, payload)),
            }
        }
    }

    /// Waits for the server's SETTINGS (answered) and its ACK of ours, so that nothing
    /// needs answering while a test holds a header block open (any frame but CONTINUATION
    /// would then be a connection error, RFC 9113 §6.10).
    async fn settle(&mut self) {
        tokio::time::timeout(IO_TIMEOUT, async {
            let (mut settings, mut ack) = (false, false);
            while !(settings && ack) {
                let (ty, flags, _, _) = self.raw_frame().await.expect("an HTTP/2 frame");
                if ty == 0x4 && flags & 0x1 == 0 {
                    self.t
                        .send(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("SETTINGS ACK");
                    settings = true;
                } else if ty == 0x4 {
                    ack = true;
                }
            }
        })
        .await
        .expect("no SETTINGS exchange with the server");
    }

    /// The next frame as it comes.
    async fn raw_frame(&mut self) -> anyhow::Result<(u8, u8, u32, Vec<u8>)> {
        {
            while self.buf.len() < 9 {
                let more = self.t.recv_plain().await?;
                self.buf.extend_from_slice(&more);
            }
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            while self.buf.len() < 9 + len {
                let more = self.t.recv_plain().await?;
                self.buf.extend_from_slice(&more);
            }
            let f: Vec<u8> = self.buf.drain(..9 + len).collect();
            let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
            Ok((f[3], f[4], stream, f[9..].to_vec()))
        }
    }

    /// How `stream` ends (its response head, a reset, or the connection going), within
    /// `within`; `None` when nothing came.
    async fn end_of(&mut self, stream: u32, within: Duration) -> Option<H2End> {
        tokio::time::timeout(within, async {
            loop {
                let (ty, flags, s, payload) = match self.frame().await {
                    Ok(f) => f,
                    Err(e) => return H2End::Gone(format!("{e:#}")),
                };
                match ty {
                    0x7 => return H2End::Gone(format!("GOAWAY {payload:?}")),
                    0x3 if s == stream => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        return H2End::Reset(code);
                    }
                    0x1 if s == stream => {
                        let mut p = &payload[..];
                        if flags & 0x8 != 0 {
                            let pad = p[0] as usize;
                            p = &p[1..p.len() - pad];
                        }
                        if flags & 0x20 != 0 {
                            p = &p[5..];
                        }
                        let status = hpack_status(p).unwrap_or(0);
                        return H2End::Status(status);
                    }
                    _ => {}
                }
            }
        })
        .await
        .ok()
    }

    /// The DATA of `stream` up to END_STREAM (after its head was read by `end_of`).
    async fn body_of(&mut self, stream: u32) -> Vec<u8> {
        let mut body = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, async {
            loop {
                let (ty, flags, s, payload) = self.frame().await.expect("an HTTP/2 frame");
                if s != stream {
                    continue;
                }
                if ty == 0x0 {
                    body.extend_from_slice(&payload);
                }
                if flags & 0x1 != 0 && (ty == 0x0 || ty == 0x1) {
                    return;
                }
                assert_ne!(ty, 0x3, "RST_STREAM in the response body");
            }
        })
        .await
        .expect("HTTP/2 response body timed out");
        body
    }
}

/// An HTTP/2 request reaches an HTTP/1.1 backend as one: Host from :authority, the
/// X-Forwarded-* and X-Request-Id headers, split Cookie fields joined into one, and a body
/// without content-length framed in chunks, whole — also when one DATA frame carries it all.
#[tokio::test(flavor = "multi_thread")]
async fn h2_requests_reach_http1_backends_whole() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) = tls_env(&rec, "").await;
    let addr = proxy.ports.https;

    let mut h = H2::open(addr, &ca).await;
    let cookies = [("cookie", "a=1"), ("cookie", "b=2"), ("x-note", "kept")];
    h.request(1, "GET", "/h2-get?q=1", &cookies, true).await;
    match h.end_of(1, IO_TIMEOUT).await {
        Some(H2End::Status(200)) => {}
        other => panic!("an HTTP/2 GET: {other:?}\n{}", proxy.logs()),
    }
    let body = pattern(3000, 7);
    h.request(3, "POST", "/h2-post", &[], false).await;
    h.data(3, &body[..1000], false).await;
    h.data(3, &body[1000..], true).await;
    match h.end_of(3, IO_TIMEOUT).await {
        Some(H2End::Status(200)) => {}
        other => panic!(
            "an HTTP/2 POST without content-length: {other:?}\n{}",
            proxy.logs()
        ),
    }
    // The whole body in one DATA frame that ends the stream (read before anything goes
    // upstream): still framed.
    h.request(5, "POST", "/h2-one", &[], false).await;
    h.data(5, b"one frame", true).await;
    match h.end_of(5, IO_TIMEOUT).await {
        Some(H2End::Status(200)) => {}
        other => panic!(
            "an HTTP/2 POST in one DATA frame: {other:?}\n{}",
            proxy.logs()
        ),
    }
    assert!(rec.wait_count(3, IO_TIMEOUT).await, "{:?}", rec.summaries());
    let reqs = rec.requests();
    let one = reqs
        .iter()
        .find(|r| r.path() == "/h2-one")
        .expect("the one-frame POST");
    assert_eq!(one.body, b"one frame", "{}", one.summary());
    let get = reqs
        .iter()
        .find(|r| r.path() == "/h2-get")
        .expect("the GET upstream");
    assert_eq!(get.version, "HTTP/1.1", "{}", get.summary());
    assert_eq!(get.target, "/h2-get?q=1", "{}", get.summary());
    let host = get.header("host").unwrap_or_default();
    assert!(host.starts_with(HOST), "Host {host:?}: {}", get.summary());
    assert_eq!(get.header("x-forwarded-host"), Some(host.clone()));
    assert_eq!(get.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(get.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(get.header("x-note").as_deref(), Some("kept"));
    let cookie_lines: Vec<_> = get
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookie_lines, ["a=1; b=2"], "{}", get.summary());
    assert_eq!(get.header("x-request-id").map(|v| v.len()), Some(32));
    let post = reqs
        .iter()
        .find(|r| r.path() == "/h2-post")
        .expect("the POST upstream");
    assert_eq!(
        post.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "{}",
        post.summary()
    );
    assert_eq!(post.header("content-length"), None, "{}", post.summary());
    assert_eq!(post.body, body, "the body upstream: {}", post.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_requests_get_max_body_bytes_and_body_timeout_too() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) =
        tls_env(&rec, "[limits]\nmax_body_bytes = 1000\nbody_timeout_s = 2").await;
    let addr = proxy.ports.https;
    let mut failures = Vec::new();

    // A body within the limit is served.
    let mut h = H2::open(addr, &ca).await;
    h.request(1, "POST", "/h2-ok", &[("content-length", "500")], false)
        .await;
    h.data(1, &pattern(500, 1), true).await;
    match h.end_of(1, IO_TIMEOUT).await {
        Some(H2End::Status(200)) => {
            let body = h.body_of(1).await;
            let json: serde_json::Value = serde_json::from_slice(&body).expect("backend JSON");
            assert_eq!(json["body_len"], 500, "{json}");
        }
        other => panic!("a 500-byte HTTP/2 body: {other:?}\n{}", proxy.logs()),
    }
    assert_eq!(rec.count(), 1, "{:?}", rec.summaries());

    // content-length beyond the limit: 413 before anything is forwarded.
    let raw_before = rec.raw_bytes();
    let mut h = H2::open(addr, &ca).await;
    h.request(1, "POST", "/h2-big", &[("content-length", "2000")], false)
        .await;
    match h.end_of(1, Duration::from_secs(5)).await {
        Some(H2End::Status(413)) => {}
        other => failures.push(format!(
            "HTTP/2 content-length 2000 > max_body_bytes 1000: {other:?}, want a 413"
        )),
    }
    if rec.raw_bytes() != raw_before {
        failures.push(format!(
            "HTTP/2 content-length 2000: reached the backend: {:?}",
            rec.summaries()
        ));
    }

    // No content-length, DATA beyond the limit: refused (413 or a reset), never a complete
    // request upstream.
    let mut h = H2::open(addr, &ca).await;
    h.request(1, "POST", "/h2-stream", &[], false).await;
    h.data(1, &pattern(600, 2), false).await;
    h.data(1, &pattern(600, 3), false).await;
    match h.end_of(1, Duration::from_secs(5)).await {
        Some(H2End::Status(413)) | Some(H2End::Reset(_)) | Some(H2End::Gone(_)) => {}
        other => failures.push(format!(
            "HTTP/2 DATA beyond max_body_bytes: {other:?}, want a 413 or a reset"
        )),
    }
    let _ = h.data(1, b"end", true).await;

    // A body that never comes (headers without END_STREAM, then nothing): 408 or a reset
    // after ~body_timeout_s, as over HTTP/1.
    let mut h = H2::open(addr, &ca).await;
    h.request(
        1,
        "POST",
        "/h2-stalled",
        &[("content-length", "100")],
        false,
    )
    .await;
    let started = Instant::now();
    let end = h.end_of(1, Duration::from_secs(6)).await;
    let after = started.elapsed();
    match end {
        Some(H2End::Status(408)) | Some(H2End::Reset(_)) | Some(H2End::Gone(_))
            if after >= Duration::from_millis(1500) => {}
        other => failures.push(format!(
            "HTTP/2 body that never comes (body_timeout_s = 2): {other:?} after {after:?}, want a 408 or a reset after ~2 s"
        )),
    }

    // A body trickled a byte a second: 408 or a reset after ~body_timeout_s.
    let mut h = H2::open(addr, &ca).await;
    h.request(
        1,
        "POST",
        "/h2-trickle",
        &[("content-length", "100")],
        false,
    )
    .await;
    let started = Instant::now();
    let mut end = None;
    while started.elapsed() < Duration::from_secs(6) {
        if let Some(e) = h.end_of(1, Duration::from_secs(1)).await {
            end = Some(e);
            break;
        }
        if !h.data(1, b"x", false).await {
            end = Some(H2End::Gone("write failed".into()));
            break;
        }
    }
    let after = started.elapsed();
    match end {
        Some(H2End::Status(408)) | Some(H2End::Reset(_)) | Some(H2End::Gone(_))
            if after >= Duration::from_millis(1500) => {}
        other => failures.push(format!(
            "HTTP/2 body trickled at 1 byte/s (body_timeout_s = 2): {other:?} after {after:?}, want a 408 or a reset after ~2 s"
        )),
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    let complete: Vec<String> = rec
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| p != "/h2-ok")
        .collect();
    if !complete.is_empty() {
        failures.push(format!(
            "refused HTTP/2 requests reached the backend whole: {complete:?}"
        ));
    }
    assert_no_failures("HTTP/2 body limits", &failures);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_unfinished_or_endless_header_blocks_are_cut() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) = tls_env(
        &rec,
        "[limits]\nheader_timeout_s = 2\nidle_timeout_s = 2\nmax_header_bytes = 4096",
    )
    .await;
    let addr = proxy.ports.https;
    let mut failures = Vec::new();

    let mut block = Vec::new();
    hpack_field(&mut block, ":method", "GET");
    hpack_field(&mut block, ":scheme", "https");
    hpack_field(&mut block, ":path", "/h2-unfinished");
    hpack_field(&mut block, ":authority", HOST);

    // HEADERS without END_HEADERS, then silence: the head never completes.
    let mut h = H2::open(addr, &ca).await;
    h.settle().await;
    h.t.send(&h2_frame(0x1, 0x1, 1, &block))
        .await
        .expect("send HEADERS");
    let started = Instant::now();
    let end = h.end_of(1, Duration::from_secs(6)).await;
    let after = started.elapsed();
    match end {
        Some(H2End::Reset(_)) | Some(H2End::Gone(_)) | Some(H2End::Status(408))
            if after >= Duration::from_millis(1500) => {}
        other => failures.push(format!(
            "an unfinished HTTP/2 header block (header_timeout_s = 2): {other:?} after {after:?}, want the stream or connection cut after ~2 s"
        )),
    }

    // CONTINUATION frames without end, far past max_header_bytes: cut promptly.
    let mut h = H2::open(addr, &ca).await;
    h.settle().await;
    h.t.send(&h2_frame(0x1, 0x1, 1, &block))
        .await
        .expect("send HEADERS");
    let mut filler = Vec::new();
    hpack_field(&mut filler, "x-flood", &"f".repeat(1000));
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..200 {
        if h.t.send(&h2_frame(0x9, 0, 1, &filler)).await.is_err() {
            break;
        }
        sent += 1;
    }
    let end = h.end_of(1, Duration::from_secs(5)).await;
    match end {
        Some(H2End::Reset(_)) | Some(H2End::Gone(_)) | Some(H2End::Status(431)) => {}
        other => failures.push(format!(
            "{sent} CONTINUATION frames of 1 KB (max_header_bytes = 4096): {other:?} after {:?}, want a 431 or the stream or connection cut",
            started.elapsed()
        )),
    }
    if rec.raw_bytes() > 0 {
        failures.push(format!(
            "unfinished header blocks reached the backend: {:?}",
            rec.summaries()
        ));
    }
    assert_no_failures("HTTP/2 header blocks", &failures);
}

/// (what, :authority, :path, other headers, statuses accepted).
type H2Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a [u16],
);

#[tokio::test(flavor = "multi_thread")]
async fn h2_requests_get_head_limits_host_and_path_checks_too() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) =
        tls_env(&rec, "[limits]\nmax_header_bytes = 4096\nmax_headers = 20").await;
    let addr = proxy.ports.https;
    let mut failures = Vec::new();

    let big = "a".repeat(5000);
    let many: Vec<(String, String)> = (0..21)
        .map(|i| (format!("x-n{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // (what, authority, path, extra headers, accepted outcomes)
    let refused: [H2Case; 5] = [
        (
            "a 5000-byte header",
            HOST,
            "/h2-big-header",
            vec![("x-big", big.as_str())],
            &[431],
        ),
        ("21 headers", HOST, "/h2-many", many, &[431]),
        (
            "an invalid :authority",
            "a b.wild.test",
            "/h2-host",
            vec![],
            &[400],
        ),
        (
            "an :authority with a slash",
            "evil.com/x.wild.test",
            "/h2-host",
            vec![],
            &[400],
        ),
        (
            "a climbing path",
            HOST,
            "/public/../../secret",
            vec![],
            &[400],
        ),
    ];
    for (what, authority, path, extra, want) in &refused {
        let mut h = H2::open(addr, &ca).await;
        h.request_to(1, authority, "GET", path, extra, true).await;
        match h.end_of(1, Duration::from_secs(5)).await {
            Some(H2End::Status(code)) if want.contains(&code) => {}
            // A stream or connection error is a refusal too for an oversized head.
            // A stream error is a refusal too: for an oversized head, and for a malformed
            // :authority the HTTP/2 layer rejects before any routing (RFC 9113 §8.1.1).
            Some(H2End::Reset(_)) | Some(H2End::Gone(_))
                if want.contains(&431) || authority.contains([' ', '/']) => {}
            other => failures.push(format!("HTTP/2 {what}: {other:?}, want {want:?}")),
        }
    }
    if rec.raw_bytes() > 0 {
        failures.push(format!(
            "refused HTTP/2 requests reached the backend: {:?}",
            rec.summaries()
        ));
    }

    // Within the limits: served. And a path with dot-segments is normalised and routed
    // like over HTTP/1 (the host comes from :authority here, not from a Host header).
    let ok_headers: Vec<(String, String)> = (0..15)
        .map(|i| (format!("x-n{i}"), "v".to_string()))
        .collect();
    let mut extra: Vec<(&str, &str)> = ok_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let value = "c".repeat(3000);
    extra.push(("x-big", value.as_str()));
    for (what, path, extra, want_path) in [
        ("16 headers and 3000 bytes", "/ok", &extra[..], "/ok"),
        ("a path with dot-segments", "/public/../ok", &[][..], "/ok"),
        ("a path with %2e%2e", "/public/%2e%2e/ok", &[][..], "/ok"),
    ] {
        let mut h = H2::open(addr, &ca).await;
        h.request(1, "GET", path, extra, true).await;
        match h.end_of(1, IO_TIMEOUT).await {
            Some(H2End::Status(200)) => {
                let body = h.body_of(1).await;
                let json: serde_json::Value = serde_json::from_slice(&body).expect("backend JSON");
                if json["path"] != want_path {
                    failures.push(format!(
                        "HTTP/2 {what}: {path} forwarded as {}, want {want_path}",
                        json["path"]
                    ));
                }
            }
            Some(H2End::Status(code)) => {
                let body = h.body_of(1).await;
                failures.push(format!(
                    "HTTP/2 {what} ({path}): {code} {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            other => failures.push(format!("HTTP/2 {what} ({path}): {other:?}")),
        }
    }
    assert_no_failures("HTTP/2 heads", &failures);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_counts_http_and_https_together() {
    let rec = Recorder::start("app").await;
    let (proxy, _dir, ca) =
        tls_env(&rec, "[limits]\nmax_connections = 2\nheader_timeout_s = 30").await;

    // One https connection (served, kept alive) and one plain one (served, kept alive).
    let mut t = TlsConn::connect(
        proxy.ports.https,
        HOST,
        client_config(&ca, &[&TLS13], &[b"http/1.1"]),
    )
    .await
    .expect("handshake");
    let r = t.get(HOST, "/tls").await.expect("https request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let mut a = Conn::open(proxy.ports.http).await;
    // The http listener redirects routed hosts to https: a 308 is an answer all the same.
    a.send_ok(format!("GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let r = a
        .try_response(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the plain connection: {e}"));
    assert_eq!(r.status, 308);

    // A third (plain) connection waits.
    let mut c = Conn::open(proxy.ports.http).await;
    c.send_ok(format!("GET /c HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    if let Ok(r) = c.try_response(Duration::from_secs(1)).await {
        panic!(
            "a third connection was answered ({}) while an http and an https connection were open (max_connections = 2)",
            r.status
        );
    }
    // The https one closes: the third is answered.
    drop(t);
    let r = c
        .try_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the waiting connection after the https one closed: {e}"));
    assert_eq!(r.status, 308);
}

/// The parameters of the first non-ACK SETTINGS frame in `bytes` (HTTP/2 frames from the
/// server), as (identifier, value).
fn h2_settings(mut bytes: &[u8]) -> Option<Vec<(u16, u32)>> {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let (kind, flags) = (bytes[3], bytes[4]);
        let payload = bytes.get(9..9 + len)?;
        if kind == 0x4 && flags & 0x1 == 0 {
            return Some(
                payload
                    .chunks_exact(6)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                        )
                    })
                    .collect(),
            );
        }
        bytes = &bytes[9 + len..];
    }
    None
}

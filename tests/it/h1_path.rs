//! The HTTP/1 request path (`src/h1.rs`, `src/upstream.rs`) end to end: request and
//! response bodies (Content-Length, chunked, close-delimited), HEAD/204/304, `Expect:
//! 100-continue`, the per-thread upstream pool (reuse, stale connections, `Connection:
//! close`), upstream failures, malformed requests and clients that go away.
//!
//! Most tests run against `Upstream`, a purpose-built HTTP/1.1 server in this file: a tokio
//! `TcpListener` speaking raw HTTP whose answers a test scripts per request, which counts
//! the connections it accepts and reports what happens on them through a channel (so a
//! test waits on the upstream's side instead of sleeping). The client side is `Conn`, a raw
//! keep-alive HTTP/1.1 connection to the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::release::service_status;
use crate::support::{metric_lines, metric_value, poll_until, Proxy, RawResponse, BASE};

const HOST: &str = "h1.test";
const IO_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Bodies and digests
// ---------------------------------------------------------------------------------------

/// `len` bytes that are not a repeating pattern (xorshift), so a lost, duplicated or
/// reordered piece changes the digest.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, 64 bits.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What the upstream answers for an echo: the body's length and digest.
fn digest_line(data: &[u8]) -> String {
    format!("len={} fnv={:016x}", data.len(), fnv(data))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete response with a Content-Length body.
fn response(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn ok(body: &str) -> Vec<u8> {
    response("200 OK", "Content-Type: text/plain\r\n", body.as_bytes())
}

// ---------------------------------------------------------------------------------------
// The purpose-built upstream
// ---------------------------------------------------------------------------------------

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Which accepted connection (0, 1, …) and which request on it (0, 1, …).
    conn: usize,
    nth: usize,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream does with a request.
enum Reply {
    /// Writes the bytes and waits for the next request on the connection.
    Send(Vec<u8>),
    /// Writes the bytes, then closes the connection.
    SendClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Writes `head`, then `chunk` every `every` until a write fails (the proxy closed the
    /// connection: reported as `Ev::WriteFailed`) or `max` chunks were sent.
    Trickle {
        head: Vec<u8>,
        chunk: Vec<u8>,
        every: Duration,
        max: usize,
    },
    /// Waits, then does the inner reply.
    Delay(Duration, Box<Reply>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    /// A request was read (connection, request number on it).
    Request(usize, usize),
    /// The upstream closed the connection itself after the response (`SendClose`) or without
    /// one (`Close`).
    ClosedByUs(usize),
    /// The proxy closed the connection (EOF or error while reading the next request).
    PeerClosed(usize),
    /// A write of a trickled body failed: the proxy closed the connection.
    WriteFailed(usize),
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Req>>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Ev>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Handler = Arc::new(handler);
        let (acc, reqs) = (accepts.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(
                    stream,
                    conn,
                    handler.clone(),
                    reqs.clone(),
                    tx.clone(),
                ));
            }
        });
        Upstream {
            addr,
            accepts,
            requests,
            events: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// Connections accepted so far.
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Every request read so far, in arrival order.
    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) for `want`, skipping other events.
    async fn wait_for(&self, want: Ev) {
        let mut rx = self.events.lock().await;
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = rx.recv().await {
                if ev == want {
                    return true;
                }
                seen.push(ev);
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "the upstream never reported {want:?}; it reported {seen:?}"
        );
    }

    /// The next `Ev::Request` reported within `within`, skipping other events; `None` when
    /// none came (the bounded chance a test gives the proxy to send something again).
    async fn next_request_within(&self, within: Duration) -> Option<Ev> {
        let mut rx = self.events.lock().await;
        tokio::time::timeout(within, async {
            while let Some(ev) = rx.recv().await {
                if matches!(ev, Ev::Request(..)) {
                    return Some(ev);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    mut s: TcpStream,
    conn: usize,
    handler: Handler,
    log: Arc<Mutex<Vec<Req>>>,
    events: mpsc::UnboundedSender<Ev>,
) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let Some(mut req) = read_request(&mut s, &mut buf).await else {
            let _ = events.send(Ev::PeerClosed(conn));
            return;
        };
        req.conn = conn;
        req.nth = nth;
        let mut reply = handler(&req);
        log.lock().unwrap().push(req);
        let _ = events.send(Ev::Request(conn, nth));
        loop {
            match reply {
                Reply::Delay(d, inner) => {
                    tokio::time::sleep(d).await;
                    reply = *inner;
                }
                Reply::Send(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        let _ = events.send(Ev::WriteFailed(conn));
                        return;
                    }
                    break;
                }
                Reply::SendClose(bytes) => {
                    let _ = s.write_all(&bytes).await;
                    let _ = s.shutdown().await;
                    drop(s);
                    let _ = events.send(Ev::ClosedByUs(conn));
                    return;
                }
                Reply::Close => {
                    drop(s);
                    let _ = events.send(Ev::ClosedByUs(conn));
                    return;
                }
                Reply::Trickle {
                    head,
                    chunk,
                    every,
                    max,
                } => {
                    if s.write_all(&head).await.is_err() {
                        let _ = events.send(Ev::WriteFailed(conn));
                        return;
                    }
                    for _ in 0..max {
                        tokio::time::sleep(every).await;
                        if s.write_all(&chunk).await.is_err() {
                            let _ = events.send(Ev::WriteFailed(conn));
                            return;
                        }
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                    break;
                }
            }
        }
    }
}

/// Reads one request (head and body: Content-Length or chunked); `None` on EOF or a read
/// error before a complete request.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Req> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        read_some(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (
        first.next()?.to_string(),
        first.next()?.to_string(),
        first.next()?.to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut req = Req {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        conn: 0,
        nth: 0,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                read_some(s, buf).await?;
            };
            let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) up to the empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(buf, b"\r\n") {
                            break i;
                        }
                        read_some(s, buf).await?;
                    };
                    buf.drain(..end + 2);
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                read_some(s, buf).await?;
            }
            req.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().ok()?;
        while buf.len() < len {
            read_some(s, buf).await?;
        }
        req.body = buf.drain(..len).collect();
    }
    Some(req)
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// `h1.test` routed to `upstream`; `extra` goes into the service's section.
fn config(upstream: &Upstream, extra: &str) -> String {
    format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
service = "h1"

[service.h1]
backends = ["{}"]
{extra}
"#,
        upstream.addr
    )
}

// ---------------------------------------------------------------------------------------
// A raw keep-alive client
// ---------------------------------------------------------------------------------------

/// One client connection to the proxy, kept open across requests; bytes read past one
/// response stay buffered for the next.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect to the proxy timed out")
            .expect("connect to the proxy");
        Conn { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_TIMEOUT, self.s.write_all(bytes))
            .await
            .expect("write to the proxy timed out")
            .expect("write to the proxy");
    }

    /// `GET path` with Host h1.test, and its response.
    async fn get(&mut self, path: &str) -> RawResponse {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        self.response(false).await
    }

    async fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = self.s.read(&mut chunk).await.expect("read from the proxy");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response head within `timeout`: (status, headers).
    async fn head(&mut self, timeout: Duration) -> (u16, Vec<(String, String)>) {
        tokio::time::timeout(timeout, async {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                let n = self.read_more().await;
                assert!(
                    n > 0,
                    "the proxy closed the connection before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
            self.buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            assert!(
                status_line.starts_with("HTTP/1."),
                "not a status line: {status_line:?} (head {head:?})"
            );
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let headers = lines
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_string(), v.trim().to_string()))
                })
                .collect();
            (status, headers)
        })
        .await
        .expect("no response head from the proxy in time")
    }

    /// Reads one final response; `no_body` for a response to HEAD. Bodies are framed by
    /// Content-Length, chunked encoding, or the end of the connection.
    async fn response(&mut self, no_body: bool) -> RawResponse {
        let (status, headers) = self.head(IO_TIMEOUT).await;
        let resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let body = tokio::time::timeout(IO_TIMEOUT, self.body(&resp, no_body))
            .await
            .expect("response body from the proxy timed out");
        RawResponse { body, ..resp }
    }

    async fn body(&mut self, resp: &RawResponse, no_body: bool) -> Vec<u8> {
        if no_body || matches!(resp.status, 100..=199 | 204 | 304) {
            return Vec::new();
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let mut out = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(self.read_more().await > 0, "EOF in a chunked body");
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    loop {
                        let end = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            assert!(self.read_more().await > 0, "EOF in chunked trailers");
                        };
                        self.buf.drain(..end + 2);
                        if end == 0 {
                            return out;
                        }
                    }
                }
                while self.buf.len() < size + 2 {
                    assert!(self.read_more().await > 0, "EOF in a chunk");
                }
                out.extend_from_slice(&self.buf[..size]);
                assert_eq!(
                    &self.buf[size..size + 2],
                    b"\r\n",
                    "chunk not followed by CRLF"
                );
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            while self.buf.len() < len {
                let n = self.read_more().await;
                assert!(n > 0, "EOF after {} of {len} body bytes", self.buf.len());
            }
            self.buf.drain(..len).collect()
        } else {
            while self.read_more().await > 0 {}
            std::mem::take(&mut self.buf)
        }
    }

    /// Whether the proxy closes the connection (EOF, or a reset) within `timeout` without
    /// sending anything more.
    async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(timeout, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(n)) => panic!(
                "unexpected bytes from the proxy: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(_) => false,
        }
    }
}

/// In-flight requests of service h1, summed over its colors (`GET /v1/status`).
async fn inflight(proxy: &Proxy) -> i64 {
    let svc = service_status(proxy, "h1").await;
    svc["inflight"]
        .as_object()
        .unwrap_or_else(|| panic!("no inflight map in the status: {svc}"))
        .values()
        .map(|v| v.as_i64().unwrap_or(0))
        .sum()
}

/// An upstream that echoes what it read: method, target and the body's length and digest.
fn echo(req: &Req) -> Reply {
    Reply::Send(ok(&format!(
        "{} {} {}",
        req.method,
        req.target,
        digest_line(&req.body)
    )))
}

// ---------------------------------------------------------------------------------------
// 1–4: bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_post_content_length_body_reaches_upstream_intact() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let body = pattern(200 * 1024, 1);
    let resp = proxy
        .client
        .post(proxy.url("/upload?x=1"))
        .header("host", HOST)
        .body(body.clone())
        .send()
        .await
        .expect("POST via the proxy");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(text, format!("POST /upload?x=1 {}", digest_line(&body)));

    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].header("content-length"), Some("204800"));
    assert_eq!(reqs[0].header("transfer-encoding"), None);
    assert_eq!(reqs[0].body, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_chunked_request_body_reaches_upstream_intact() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let body = pattern(150_000, 2);
    // Uneven chunks, one with an extension; the last chunk carries the rest.
    let sizes = [1usize, 7, 1000, 65536, 3, 40000];
    let mut wire =
        format!("POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    let mut at = 0;
    for (i, size) in sizes
        .iter()
        .copied()
        .chain(std::iter::once(body.len() - sizes.iter().sum::<usize>()))
        .enumerate()
    {
        let ext = if i == 2 { ";name=value" } else { "" };
        wire.extend_from_slice(format!("{size:x}{ext}\r\n").as_bytes());
        wire.extend_from_slice(&body[at..at + size]);
        wire.extend_from_slice(b"\r\n");
        at += size;
    }
    wire.extend_from_slice(b"0\r\n\r\n");

    let mut c = Conn::open(proxy.http_addr).await;
    // Sent in pieces, as a streaming client would.
    for piece in wire.chunks(10_000) {
        c.send(piece).await;
    }
    let resp = c.response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(
        resp.body_str(),
        format!("POST /chunked {}", digest_line(&body))
    );
    assert_eq!(up.requests()[0].body, body);

    // The request's framing was consumed exactly: the connection still works.
    let resp = c.get("/after").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), format!("GET /after {}", digest_line(b"")));
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_chunked_response_arrives_intact_and_connection_stays_usable() {
    let content = pattern(100_000, 3);
    let sizes = [1usize, 10, 4096, 17, 50_000];
    let mut wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut at = 0;
    for size in sizes
        .iter()
        .copied()
        .chain(std::iter::once(content.len() - sizes.iter().sum::<usize>()))
    {
        wire.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        wire.extend_from_slice(&content[at..at + size]);
        wire.extend_from_slice(b"\r\n");
        at += size;
    }
    wire.extend_from_slice(b"0\r\n\r\n");

    let up = Upstream::start(move |req| {
        if req.target == "/chunked" {
            Reply::Send(wire.clone())
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    for round in 0..2 {
        let resp = c.get("/chunked").await;
        assert_eq!(resp.status, 200, "round {round}");
        assert_eq!(resp.body.len(), content.len(), "round {round}");
        assert!(resp.body == content, "round {round}: the body differs");
        let resp = c.get(&format!("/next{round}")).await;
        assert_eq!(resp.status, 200, "round {round}");
        assert_eq!(
            resp.body_str(),
            format!("GET /next{round} {}", digest_line(b""))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_large_content_length_response_streams_intact() {
    let content = pattern(4 * 1024 * 1024, 4);
    let wire = response(
        "200 OK",
        "Content-Type: application/octet-stream\r\n",
        &content,
    );
    let up = Upstream::start(move |_| Reply::Send(wire.clone())).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    for _ in 0..2 {
        let resp = proxy.get(HOST, "/big").await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some("4194304")
        );
        let got = resp.bytes().await.expect("read the 4 MiB body");
        assert_eq!(got.len(), content.len());
        assert_eq!(fnv(&got), fnv(&content), "the 4 MiB body differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_close_delimited_upstream_body_arrives_intact() {
    // No Content-Length, no chunking: the body ends when the upstream closes.
    let content = pattern(300_000, 5);
    let mut wire =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            .to_vec();
    wire.extend_from_slice(&content);
    let up = Upstream::start(move |req| {
        if req.target == "/eof" {
            Reply::SendClose(wire.clone())
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    let resp = c.get("/eof").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), content.len());
    assert!(resp.body == content, "the close-delimited body differs");
    // Whatever the proxy did with the client connection, it keeps serving.
    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_truncated_upstream_body_is_not_passed_off_as_complete() {
    // The upstream promises 100 000 bytes, sends 1 000 and closes.
    let content = pattern(1000, 6);
    let mut wire =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            .to_vec();
    wire.extend_from_slice(&content);
    let up = Upstream::start(move |req| {
        if req.target == "/short" {
            Reply::SendClose(wire.clone())
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    c.send(format!("GET /short HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let (status, headers) = c.head(IO_TIMEOUT).await;
    assert_eq!(status, 200);
    let cl = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    assert_eq!(cl, Some("100000"), "{headers:?}");
    // The client must see the connection end before the promised length.
    let got = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            let mut chunk = [0u8; 16384];
            match c.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return c.buf.len(),
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the proxy kept the client connection open after the upstream cut the body");
    assert!(
        got < 100_000,
        "got {got} bytes of a 1000-byte truncated body"
    );
    assert!(c.buf.starts_with(&content));

    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
}

// ---------------------------------------------------------------------------------------
// 5: HEAD, 204, 304
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_head_204_304_have_no_body_and_keep_the_connection() {
    let up = Upstream::start(|req| match (req.method.as_str(), req.target.as_str()) {
        // The length a GET would have, no body.
        ("HEAD", _) => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n".to_vec(),
        ),
        (_, "/204") => Reply::Send(b"HTTP/1.1 204 No Content\r\nX-Kind: nothing\r\n\r\n".to_vec()),
        (_, "/304") => Reply::Send(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n"
                .to_vec(),
        ),
        // A 304 may carry the representation's Content-Length; still no body.
        (_, "/304-cl") => Reply::Send(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 5000\r\n\r\n".to_vec(),
        ),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    for round in 0..2 {
        c.send(format!("HEAD /page HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        let resp = c.response(true).await;
        assert_eq!(resp.status, 200, "HEAD, round {round}");
        assert_eq!(
            resp.header("content-length"),
            Some("1234"),
            "HEAD: {resp:?}"
        );
        // Any body bytes after the HEAD response would garble this next response.
        let resp = c.get(&format!("/after-head{round}")).await;
        assert_eq!(resp.status, 200, "after HEAD: {resp:?}");
        assert_eq!(
            resp.body_str(),
            format!("GET /after-head{round} {}", digest_line(b""))
        );

        let resp = c.get("/204").await;
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("x-kind"), Some("nothing"));
        let resp = c.get("/after-204").await;
        assert_eq!(resp.status, 200, "after 204: {resp:?}");
        assert_eq!(
            resp.body_str(),
            format!("GET /after-204 {}", digest_line(b""))
        );

        c.send(
            format!("GET /304 HTTP/1.1\r\nHost: {HOST}\r\nIf-None-Match: \"v1\"\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 304);
        assert_eq!(resp.header("etag"), Some("\"v1\""));
        let resp = c.get("/after-304").await;
        assert_eq!(resp.status, 200, "after 304: {resp:?}");

        let resp = c.get("/304-cl").await;
        assert_eq!(resp.status, 304);
        let resp = c.get("/after-304-cl").await;
        assert_eq!(resp.status, 200, "after 304 with Content-Length: {resp:?}");
        assert_eq!(
            resp.body_str(),
            format!("GET /after-304-cl {}", digest_line(b""))
        );
    }
    // One client connection, one upstream connection: nothing was torn down.
    assert_eq!(up.accepts(), 1, "the upstream connection was not reused");
}

// ---------------------------------------------------------------------------------------
// 6: Expect: 100-continue
// ---------------------------------------------------------------------------------------

/// Sends a POST header with `Expect: 100-continue`, waits (at most 5 s) for the 100, then
/// sends the body and returns the final response.
async fn post_expecting_continue(c: &mut Conn, path: &str, body: &[u8]) -> RawResponse {
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // Nothing of the body was sent yet: the 100 must come first.
    let (status, _) = c.head(Duration::from_secs(5)).await;
    assert_eq!(
        status, 100,
        "POST {path}: wanted 100 Continue before the body"
    );
    c.send(body).await;
    c.response(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_expect_100_continue_is_answered_before_the_body() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let body = pattern(64 * 1024, 7);
    for round in 0..3 {
        let mut c = Conn::open(proxy.http_addr).await;
        let path = format!("/expect{round}");
        let resp = post_expecting_continue(&mut c, &path, &body).await;
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        assert_eq!(
            resp.body_str(),
            format!("POST {path} {}", digest_line(&body))
        );
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.body, body, "{} reached the upstream altered", r.target);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_expect_100_continue_keeps_the_client_connection() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let body = pattern(64 * 1024, 7);
    let mut c = Conn::open(proxy.http_addr).await;
    let resp = post_expecting_continue(&mut c, "/expect", &body).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("connection").map(str::to_ascii_lowercase),
        Some("keep-alive".to_string()),
        "{resp:?}"
    );
    let resp = c.get("/after").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_expect_100_continue_then_upstream_failure_is_502() {
    let up = Upstream::start(|req| {
        if req.target == "/die" {
            Reply::Close
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let body = pattern(10_000, 8);
    let mut c = Conn::open(proxy.http_addr).await;
    // The upstream reads the whole request and closes without answering: after the 100,
    // the client is still owed a final response.
    let resp = post_expecting_continue(&mut c, "/die", &body).await;
    up.wait_for(Ev::ClosedByUs(0)).await;
    assert_eq!(resp.status, 502, "{resp:?}");

    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
}

// ---------------------------------------------------------------------------------------
// 7–9: the upstream pool
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_stale_pooled_connection_is_replaced() {
    // Connection 0 answers its first request with keep-alive, then the upstream closes it.
    let up = Upstream::start(|req| {
        if req.conn == 0 {
            Reply::SendClose(ok(&format!("conn {} req {}", req.conn, req.nth)))
        } else {
            Reply::Send(ok(&format!("conn {} req {}", req.conn, req.nth)))
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    let resp = c.get("/one").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "conn 0 req 0");
    up.wait_for(Ev::ClosedByUs(0)).await;

    // Same client connection, so the same proxy thread and its pooled (now closed) one.
    let resp = c.get("/two").await;
    assert_eq!(
        resp.status, 200,
        "after the pooled connection closed: {resp:?}"
    );
    assert_eq!(resp.body_str(), "conn 1 req 0");
    let resp = c.get("/three").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "conn 1 req 1");
    assert_eq!(up.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_stale_pooled_connection_is_not_used_for_a_request_with_a_body() {
    // As above, but the request after the close has a body, which the proxy can't replay.
    let up = Upstream::start(|req| {
        let reply = ok(&format!("conn {} {}", req.conn, digest_line(&req.body)));
        if req.conn == 0 {
            Reply::SendClose(reply)
        } else {
            Reply::Send(reply)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/one").await.status, 200);
    up.wait_for(Ev::ClosedByUs(0)).await;

    let body = pattern(30_000, 9);
    let mut wire = format!(
        "PUT /two HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    c.send(&wire).await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), format!("conn 1 {}", digest_line(&body)));
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_pooled_connection_closed_on_the_next_request_is_retried() {
    // Connection 0 answers one request, then reads the next one and closes without an
    // answer (an upstream's keep-alive timeout firing as the request arrives).
    let up = Upstream::start(|req| match (req.conn, req.nth) {
        (0, 0) => Reply::Send(ok("first")),
        (0, _) => Reply::Close,
        _ => Reply::Send(ok(&format!("conn {} req {}", req.conn, req.nth))),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    let resp = c.get("/one").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "first");
    let resp = c.get("/two").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), "conn 1 req 0");
    // The retry went through the pooled connection first.
    up.wait_for(Ev::Request(0, 1)).await;
    assert_eq!(up.accepts(), 2);
    let two: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.target == "/two")
        .map(|r| (r.conn, r.nth))
        .collect();
    assert_eq!(two, vec![(0, 1), (1, 0)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_upstream_connection_close_each_time_keeps_the_client_connection() {
    let up = Upstream::start(|req| {
        let body = format!("conn {} {}", req.conn, req.target);
        Reply::SendClose(response(
            "200 OK",
            "Connection: close\r\nContent-Type: text/plain\r\n",
            body.as_bytes(),
        ))
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    for i in 0..6 {
        let resp = c.get(&format!("/r{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.body_str(), format!("conn {i} /r{i}"));
        // The upstream's Connection: close is hop-by-hop; the client connection stays open.
        assert!(
            !resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "request {i}: the upstream's close leaked to the client: {resp:?}"
        );
    }
    assert_eq!(up.accepts(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_upstream_keepalive_connection_is_reused() {
    let up = Upstream::start(|req| Reply::Send(ok(&format!("conn {}", req.conn)))).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    for i in 0..20 {
        let resp = c.get(&format!("/r{i}")).await;
        assert_eq!(resp.status, 200, "request {i}");
    }
    let accepts = up.accepts();
    assert!(
        accepts <= 2,
        "20 sequential requests opened {accepts} upstream connections"
    );
    assert_eq!(up.requests().len(), 20);

    // A POST with a body leaves the connection reusable too.
    let body = pattern(5000, 10);
    for _ in 0..5 {
        let mut wire = format!(
            "POST /p HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(&body);
        c.send(&wire).await;
        assert_eq!(c.response(false).await.status, 200);
    }
    assert_eq!(
        up.accepts(),
        accepts,
        "POSTs opened new upstream connections"
    );
}

// ---------------------------------------------------------------------------------------
// 10: upstream failures
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_upstream_failures_are_502_and_the_proxy_keeps_serving() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/close" => Reply::Close,
        "/bad-status" => Reply::SendClose(b"HTTP/1.1 abc Whatever\r\n\r\n".to_vec()),
        "/not-http" => Reply::SendClose(b"hello there\r\n\r\n".to_vec()),
        "/bad-header" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nthis is not a header\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    for round in 0..2 {
        for path in ["/close", "/bad-status", "/not-http", "/bad-header"] {
            let mut c = Conn::open(proxy.http_addr).await;
            let resp = c.get(path).await;
            assert_eq!(resp.status, 502, "round {round}, GET {path}: {resp:?}");
            // Then a good request, on a new client connection.
            let mut c = Conn::open(proxy.http_addr).await;
            let resp = c.get("/fine").await;
            assert_eq!(resp.status, 200, "after {path}: {resp:?}");
        }
    }
    // A POST with a body to an upstream that closes: 502 as well.
    let mut c = Conn::open(proxy.http_addr).await;
    c.send(
        format!("POST /close HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    )
    .await;
    assert_eq!(c.response(false).await.status, 502);

    // Each failure is counted as an upstream read error and a 502; a request is counted
    // just after its response went out, so wait for the counts.
    let counted = poll_until(Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        let read_errors = metric_value(
            &m,
            "switchyard_upstream_errors_total",
            &[("service", "h1"), ("kind", "read")],
        );
        let bad_gateway = metric_value(
            &m,
            "switchyard_requests_total",
            &[("service", "h1"), ("code", "502")],
        );
        (read_errors == Some(9.0) && bad_gateway == Some(9.0)).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "wanted 9 read errors and 9 502s:\n{}",
        proxy.metrics().await
    );
}

// ---------------------------------------------------------------------------------------
// 11–12: odd and malformed requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_http10_requests() {
    let up = Upstream::start(|req| {
        Reply::Send(ok(&format!(
            "{} {} host={}",
            req.version,
            req.target,
            req.header("host").unwrap_or("-")
        )))
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // Without Host there is nothing to route on: the proxy's own 404 (by design).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send(b"GET /nohost HTTP/1.0\r\n\r\n").await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(
        resp.body_str().contains("no route for this host"),
        "{resp:?}"
    );
    assert!(
        up.requests().is_empty(),
        "an unrouted request went upstream"
    );

    // With Host: proxied, and the connection closes after the response (1.0 default).
    let mut c = Conn::open(proxy.http_addr).await;
    c.send(format!("GET /withhost HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body_str().ends_with(&format!("/withhost host={HOST}")),
        "{resp:?}"
    );
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "an HTTP/1.0 connection without keep-alive stayed open"
    );

    // HTTP/1.0 with keep-alive: two requests on one connection.
    let mut c = Conn::open(proxy.http_addr).await;
    for i in 0..2 {
        c.send(
            format!("GET /ka{i} HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 200, "keep-alive request {i}: {resp:?}");
        assert!(resp.body_str().contains(&format!("/ka{i} ")), "{resp:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    let bad: &[(&str, &[u8])] = &[
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("no target", b"GET\r\nHost: h1.test\r\n\r\n"),
        ("bad version", b"GET / HTTP/9.9\r\nHost: h1.test\r\n\r\n"),
        (
            "header without a colon",
            b"GET / HTTP/1.1\r\nHost h1.test\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        ),
        (
            "non-chunked final Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            b"POST / HTTP/1.0\r\nHost: h1.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, wire) in bad {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send(wire).await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");

        let mut c = Conn::open(proxy.http_addr).await;
        let resp = c.get("/ok").await;
        assert_eq!(resp.status, 200, "after {what}: {resp:?}");
    }
    assert!(
        up.requests().iter().all(|r| r.target == "/ok"),
        "a malformed request reached the upstream: {:?}",
        up.requests()
    );
}

// ---------------------------------------------------------------------------------------
// 13: clients that go away
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn h1_client_gone_mid_body_frees_everything() {
    let mut chunk = b"400\r\n".to_vec();
    chunk.extend_from_slice(&pattern(1024, 11));
    chunk.extend_from_slice(b"\r\n");
    let up = Upstream::start(move |req| {
        if req.target == "/slow" {
            Reply::Trickle {
                head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                chunk: chunk.clone(),
                every: Duration::from_millis(20),
                // 30 s: far longer than the test waits.
                max: 1500,
            }
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "read_timeout_ms = 60000")).await;

    for round in 0..3 {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send(format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        let (status, _) = c.head(IO_TIMEOUT).await;
        assert_eq!(status, 200);
        // Some of the body, then hang up.
        tokio::time::timeout(IO_TIMEOUT, async {
            while c.buf.len() < 4096 {
                assert!(c.read_more().await > 0, "EOF mid-body");
            }
        })
        .await
        .expect("the slow body never started");
        assert_eq!(inflight(&proxy).await, 1, "round {round}: the slow request");
        drop(c);

        // The proxy notices on its next write and closes the upstream connection…
        up.wait_for(Ev::WriteFailed(round)).await;
        // …and nothing stays counted in flight.
        let drained = poll_until(Duration::from_secs(10), || async {
            (inflight(&proxy).await == 0).then_some(())
        })
        .await;
        assert!(
            drained.is_some(),
            "round {round}: in flight stuck at {}",
            inflight(&proxy).await
        );
    }
    // Still serving.
    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
    // The three cut-short responses had started (200) and the last one is whole; a request
    // is counted just after its response went out, so wait for the count.
    let counted = poll_until(Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        let v = metric_value(
            &m,
            "switchyard_requests_total",
            &[("service", "h1"), ("code", "200")],
        );
        (v == Some(4.0)).then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", proxy.metrics().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_client_gone_before_the_response_frees_in_flight() {
    let up = Upstream::start(|req| {
        if req.target == "/think" {
            // Far beyond what the test waits, well within read_timeout_ms.
            Reply::Delay(Duration::from_secs(30), Box::new(Reply::Send(ok("late"))))
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "read_timeout_ms = 60000")).await;

    let mut c = Conn::open(proxy.http_addr).await;
    c.send(format!("GET /think HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    up.wait_for(Ev::Request(0, 0)).await;
    assert_eq!(inflight(&proxy).await, 1);
    drop(c);

    // pingora-proxy (and nginx) notice the client closing while they wait for the upstream
    // and abort the upstream request.
    let drained = poll_until(Duration::from_secs(5), || async {
        (inflight(&proxy).await == 0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "in flight stuck at {} after the client left",
        inflight(&proxy).await
    );
}

// ---------------------------------------------------------------------------------------
// 14: from review — no replay of a timeout or a bad answer, CONNECT, HTTP/1.0 clients,
// close-delimited bodies, cut bodies counted, malformed chunked request bodies
// ---------------------------------------------------------------------------------------

/// A chunked response carrying `content` in uneven chunks.
fn chunked_response(content: &[u8]) -> Vec<u8> {
    let mut wire =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in content.chunks(7_000) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

/// Upstream errors counted for service h1, every kind summed.
fn h1_upstream_errors(metrics: &str) -> f64 {
    metric_lines(metrics, "switchyard_upstream_errors_total")
        .into_iter()
        .filter(|l| l.contains("service=\"h1\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_read_timeout_on_a_reused_connection_is_not_replayed() {
    let up = Upstream::start(|req| {
        if req.target == "/hang" {
            // Reads the request and does not answer (far beyond the 1 s read timeout).
            Reply::Delay(Duration::from_secs(60), Box::new(Reply::Send(ok("late"))))
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "read_timeout_ms = 1000")).await;

    // Request 1 leaves its upstream connection in the pool of this client's proxy thread.
    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/fast").await.status, 200);
    up.wait_for(Ev::Request(0, 0)).await;

    // Request 2 goes over that pooled connection, and times out there.
    c.send(format!("GET /hang HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    up.wait_for(Ev::Request(0, 1)).await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 504, "{resp:?}");

    // A timeout is the backend's own answer: the request must not go again.
    let again = up.next_request_within(Duration::from_millis(1500)).await;
    assert_eq!(
        again,
        None,
        "the timed-out GET was sent again: {:?}",
        up.requests()
    );
    let hangs: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.target == "/hang")
        .map(|r| (r.conn, r.nth))
        .collect();
    assert_eq!(hangs, vec![(0, 1)], "{:?}", up.requests());
    assert_eq!(up.accepts(), 1, "a new upstream connection was opened");
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_malformed_answer_on_a_reused_connection_is_not_replayed() {
    // Answers that are not HTTP, on a connection the upstream keeps open (so the proxy sees
    // a bad answer, not a connection closed under it).
    let up = Upstream::start(|req| match req.target.as_str() {
        "/not-http" => Reply::Send(b"hello there\r\n\r\n".to_vec()),
        "/bad-header" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nthis is not a header\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // Each round: a good request puts a connection in the pool, the bad answer comes on
    // it. No upstream connection survives a round, so round i runs on upstream connection i.
    for (round, path) in ["/not-http", "/bad-header"].into_iter().enumerate() {
        let mut c = Conn::open(proxy.http_addr).await;
        assert_eq!(c.get("/fast").await.status, 200, "round {round}");
        up.wait_for(Ev::Request(round, 0)).await;

        c.send(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await;
        up.wait_for(Ev::Request(round, 1)).await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 502, "GET {path}: {resp:?}");

        let again = up.next_request_within(Duration::from_millis(1500)).await;
        assert_eq!(
            again,
            None,
            "GET {path} was sent again after a malformed answer: {:?}",
            up.requests()
        );
        let copies: Vec<_> = up
            .requests()
            .into_iter()
            .filter(|r| r.target == path)
            .map(|r| (r.conn, r.nth))
            .collect();
        assert_eq!(copies, vec![(round, 1)], "GET {path}");
        assert_eq!(
            up.accepts(),
            round + 1,
            "GET {path}: a new upstream connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_connect_is_405_and_nothing_reaches_the_backend() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // (A CONNECT whose Host differs from its target is malformed: pingora answers 400.)
    let cases = [
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n".to_string(),
        "CONNECT example.test:443 HTTP/1.1\r\n\r\n".to_string(),
        // The host of a routed service: without the check it would be proxied.
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
    ];
    for wire in &cases {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send(wire.as_bytes()).await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 405, "{wire:?}: {resp:?}");
        // Whatever the client meant to tunnel is not read as requests: the connection ends.
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{wire:?}: the connection stayed open after the 405"
        );
    }

    // A routed GET afterwards is the first thing the backend ever reads.
    let mut c = Conn::open(proxy.http_addr).await;
    let resp = c.get("/after").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    up.wait_for(Ev::Request(0, 0)).await;
    let reqs: Vec<_> = up
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(reqs, vec!["GET /after".to_string()]);
    assert_eq!(up.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_http10_client_gets_http11_upstream_and_an_unchunked_body() {
    let content = pattern(50_000, 12);
    let wire = chunked_response(&content);
    let up = Upstream::start(move |_| Reply::Send(wire.clone())).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    for (i, extra) in ["", "Connection: keep-alive\r\n"].into_iter().enumerate() {
        let what = if extra.is_empty() {
            "HTTP/1.0"
        } else {
            "HTTP/1.0 keep-alive"
        };
        let mut c = Conn::open(proxy.http_addr).await;
        c.send(format!("GET /ten{i} HTTP/1.0\r\nHost: {HOST}\r\n{extra}\r\n").as_bytes())
            .await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 200, "{what}: {:?}", resp.headers);

        // The backend read an HTTP/1.1 request.
        let req = up
            .requests()
            .into_iter()
            .find(|r| r.target == format!("/ten{i}"))
            .unwrap_or_else(|| panic!("{what}: the request never reached the backend"));
        assert_eq!(req.version, "HTTP/1.1", "{what}: {req:?}");
        assert_eq!(req.header("host"), Some(HOST), "{what}: {req:?}");

        // No chunked framing for a 1.0 client: the plain bytes, ended by the close.
        assert!(
            !resp
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
            "{what}: chunked framing sent to an HTTP/1.0 client: {:?}",
            resp.headers
        );
        assert_eq!(resp.header("content-length"), None, "{what}");
        assert_eq!(resp.body.len(), content.len(), "{what}: body length");
        assert!(resp.body == content, "{what}: the body differs");
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{what}: the connection stayed open after a body ended by the close"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_close_delimited_upstream_body_is_rechunked_and_keeps_the_client_connection() {
    let content = pattern(120_000, 13);
    let with_close = {
        let mut w =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                .to_vec();
        w.extend_from_slice(&content);
        w
    };
    // The same without `Connection: close`: still ended by the close (RFC 9112 §6.3).
    let bare = {
        let mut w = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        w.extend_from_slice(&content);
        w
    };
    let up = Upstream::start(move |req| match req.target.as_str() {
        "/eof-close" => Reply::SendClose(with_close.clone()),
        "/eof-bare" => Reply::SendClose(bare.clone()),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // One client connection throughout.
    let mut c = Conn::open(proxy.http_addr).await;
    for (round, path) in ["/eof-close", "/eof-bare", "/eof-close"]
        .into_iter()
        .enumerate()
    {
        let resp = c.get(path).await;
        assert_eq!(resp.status, 200, "round {round} {path}: {resp:?}");
        assert_eq!(
            resp.header("transfer-encoding")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("chunked"),
            "round {round} {path}: {:?}",
            resp.headers
        );
        assert_eq!(resp.header("content-length"), None, "round {round} {path}");
        assert!(
            !resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "round {round} {path}: the client connection is being closed: {:?}",
            resp.headers
        );
        assert_eq!(resp.body.len(), content.len(), "round {round} {path}");
        assert!(
            resp.body == content,
            "round {round} {path}: the body differs"
        );

        // The same client connection serves the next request.
        let next = format!("/next{round}");
        let resp = c.get(&next).await;
        assert_eq!(resp.status, 200, "after {path}, round {round}: {resp:?}");
        assert_eq!(resp.body_str(), format!("GET {next} {}", digest_line(b"")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_upstream_body_cut_short_is_counted_as_an_upstream_error() {
    // Headers promise 100 000 bytes; 10 come, then the backend closes.
    let content = pattern(10, 14);
    let mut wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".to_vec();
    wire.extend_from_slice(&content);
    let up = Upstream::start(move |req| {
        if req.target == "/cut" {
            Reply::SendClose(wire.clone())
        } else {
            echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let before = h1_upstream_errors(&proxy.metrics().await);

    let mut c = Conn::open(proxy.http_addr).await;
    c.send(format!("GET /cut HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let (status, headers) = c.head(IO_TIMEOUT).await;
    assert_eq!(status, 200);
    let cl = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    assert_eq!(cl, Some("100000"), "{headers:?}");
    // The connection ends after the 10 bytes there are.
    tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            let mut chunk = [0u8; 16384];
            match c.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the proxy kept the client connection open after the upstream cut the body");
    assert_eq!(
        c.buf, content,
        "the client got other bytes than the 10 sent"
    );
    up.wait_for(Ev::ClosedByUs(0)).await;

    // The cut body is one upstream error of service h1.
    let counted = poll_until(Duration::from_secs(5), || async {
        (h1_upstream_errors(&proxy.metrics().await) == before + 1.0).then_some(())
    })
    .await;
    let metrics = proxy.metrics().await;
    assert!(
        counted.is_some(),
        "wanted {} upstream errors for h1 (was {before}):\n{}",
        before + 1.0,
        metric_lines(&metrics, "switchyard_upstream_errors_total").join("\n")
    );
    // And only one: a good request later leaves the count where it is.
    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
    let metrics = proxy.metrics().await;
    assert_eq!(
        h1_upstream_errors(&metrics),
        before + 1.0,
        "{}",
        metric_lines(&metrics, "switchyard_upstream_errors_total").join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_malformed_chunked_request_body_is_400() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // (what, body, whether the header goes upstream): the first piece of a body is read
    // before the header is sent, so a body broken from its first chunk never reaches the
    // backend at all; a later break reaches it as a request the proxy then drops.
    let cases: &[(&str, &str, bool)] = &[
        ("invalid chunk size", "zz\r\nhello\r\n0\r\n\r\n", false),
        (
            "invalid size after a good chunk",
            "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
            true,
        ),
        (
            "chunk data not followed by CRLF",
            "5\r\nhelloXX0\r\n\r\n",
            false,
        ),
    ];
    let mut upstream_conns = 0;
    for (i, (what, body, reaches)) in cases.iter().enumerate() {
        let mut c = Conn::open(proxy.http_addr).await;
        c.send(
            format!(
                "POST /chunky{i} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        if *reaches {
            // The backend never gets a complete request: the proxy drops its connection.
            up.wait_for(Ev::PeerClosed(upstream_conns)).await;
            upstream_conns += 1;
        }
    }
    assert!(
        up.requests().is_empty(),
        "a broken request body reached the backend whole: {:?}",
        up.requests()
    );

    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn h1_pipelined_requests_are_answered_in_order() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;

    // Three requests in one write: the proxy reads them together and must serve each.
    let mut c = Conn::open(proxy.http_addr).await;
    let mut burst = Vec::new();
    for path in ["/p1", "/p2", "/p3"] {
        burst.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    }
    c.send(&burst).await;
    for path in ["/p1", "/p2", "/p3"] {
        let resp = c.response(false).await;
        assert_eq!(resp.status, 200, "{path}");
        let body = String::from_utf8_lossy(&resp.body).to_string();
        assert!(
            body.starts_with(&format!("GET {path} ")),
            "{path}: got {body:?}"
        );
    }
    // And the connection is still usable afterwards.
    assert_eq!(c.get("/after").await.status, 200);
}

/// A response head goes to the client as the backend wrote it — names in its case, lines in
/// its order, repeated fields apart — less the hop-by-hop headers (and the ones its
/// Connection names), with the proxy's own Date, Connection and X-Request-Id; and the
/// connection serves the next request.
#[tokio::test(flavor = "multi_thread")]
async fn h1_response_head_keeps_the_backends_lines_less_hop_by_hop() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/plain" => Reply::Send(response(
            "200 Fine",
            "X-Mixed-CASE: 1\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
             Trailer: X-T\r\nUpgrade: h2c\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             X-Between: 2\r\nSet-Cookie: b=2\r\n",
            b"abc",
        )),
        "/names" => Reply::Send(response(
            "404 Not Found",
            "Connection: X-Secret\r\nX-Secret: s\r\nX-Request-Id: from-backend\r\n",
            b"",
        )),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let mut c = Conn::open(proxy.http_addr).await;

    let resp = c.get("/plain").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"abc");
    let names: Vec<&str> = resp.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "Content-Length",
            "X-Mixed-CASE",
            "Set-Cookie",
            "Date",
            "X-Between",
            "Set-Cookie",
            "x-request-id",
            "Connection"
        ],
        "{:?}",
        resp.headers
    );
    let cookies: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(k, _)| k == "Set-Cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_ne!(resp.header("date"), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    let id = resp.header("x-request-id").expect("an X-Request-Id");
    assert_eq!(up.requests()[0].header("x-request-id"), Some(id));

    let resp = c.get("/names").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("x-secret"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("x-request-id"), Some("from-backend"));
    assert_eq!(resp.header("connection"), Some("keep-alive"));

    let resp = c.get("/next").await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.accepts(), 1, "the backend connection was not reused");
}

/// A request head reaches the backend with the client's lines as sent — names in its case,
/// in its order, repeated fields apart — less the hop-by-hop ones, with the proxy's
/// X-Forwarded-* and X-Request-Id after them; the client's spelling of names stays when a
/// route's `request_headers` edits the head (in the header's order then).
#[tokio::test(flavor = "multi_thread")]
async fn h1_request_head_keeps_the_clients_lines_less_hop_by_hop() {
    let up = Upstream::start(echo).await;
    let config = format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
service = "h1"

[[route]]
host = "edit.test"
service = "h1"
request_headers = {{ "X-Env" = "prod" }}

[service.h1]
backends = ["{}"]
"#,
        up.addr
    );
    let proxy = Proxy::start(&config).await;
    let mut c = Conn::open(proxy.http_addr).await;

    let names = send_lines(&mut c, &up, HOST).await;
    assert_eq!(
        names,
        [
            "user-agent",
            "X-Mixed-CASE",
            "HOST",
            "ACCEPT",
            "x-mixed-case",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
            "X-Request-Id",
        ]
    );

    // Edited: a name the client sent keeps its (first) spelling; the proxy's own are
    // lower case.
    let mut names = send_lines(&mut c, &up, "edit.test").await;
    names.sort();
    let mut want = [
        "user-agent",
        "X-Mixed-CASE",
        "X-Mixed-CASE",
        "HOST",
        "ACCEPT",
        "x-forwarded-for",
        "x-forwarded-proto",
        "X-Forwarded-Host",
        "x-request-id",
        "x-env",
    ];
    want.sort();
    assert_eq!(names, want);
}

/// Sends a head of mixed-case, repeated and hop-by-hop lines for `host`; the names of the
/// lines the backend got.
async fn send_lines(c: &mut Conn, up: &Upstream, host: &str) -> Vec<String> {
    let head = format!(
        "GET /lines HTTP/1.1\r\nuser-agent: t/1\r\nX-Mixed-CASE: a\r\nHOST: {host}\r\n\
         Connection: keep-alive\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\n\
         ACCEPT: */*\r\nx-mixed-case: b\r\nProxy-Authorization: Basic eDp5\r\n\
         X-Forwarded-Host: spoofed.test\r\n\r\n"
    );
    c.send(head.as_bytes()).await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 200, "{host}");
    let seen = up.requests().pop().unwrap();
    let mixed: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-mixed-case"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(mixed, ["a", "b"], "{host}");
    assert_eq!(seen.header("x-forwarded-host"), Some(host));
    seen.headers.into_iter().map(|(k, _)| k).collect()
}

/// Empty lines before a request line are allowed (RFC 9112 §2.2). With more header lines
/// than the session keeps the places of, the head's lines are found by a scan: that scan
/// must not take the empty line for the request line, or the head would go upstream without
/// Host and Content-Length and its body be read as a second request (smuggling).
#[tokio::test(flavor = "multi_thread")]
async fn h1_leading_empty_line_and_many_headers_smuggle_nothing() {
    let up = Upstream::start(echo).await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let mut c = Conn::open(proxy.http_addr).await;

    let smuggled = format!("GET /admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut req = format!(
        "\r\nPOST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n",
        smuggled.len()
    );
    for i in 0..20 {
        req.push_str(&format!("X-Extra-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&smuggled);
    c.send(req.as_bytes()).await;
    let resp = c.response(false).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let resp = c.get("/next").await;
    assert_eq!(resp.status, 200);

    let seen = up.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/form", "/next"], "a body became a request");
    let form = &seen[0];
    assert_eq!(form.header("host"), Some(HOST));
    assert_eq!(form.header("x-extra-19"), Some("v"));
    assert_eq!(form.body, smuggled.as_bytes());
}

/// A backend response whose framing a proxy would have to guess at — Content-Length with
/// Transfer-Encoding, or a coding that does not end in chunked — is a 502, as nginx answers
/// it, and nothing of its body reaches the client.
#[tokio::test(flavor = "multi_thread")]
async fn h1_response_with_ambiguous_framing_is_a_502() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/both" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/gzip" => Reply::SendClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot framed".to_vec(),
        ),
        _ => echo(req),
    })
    .await;
    let proxy = Proxy::start(&config(&up, "")).await;
    for path in ["/both", "/gzip"] {
        let mut c = Conn::open(proxy.http_addr).await;
        let resp = c.get(path).await;
        assert_eq!(resp.status, 502, "{path}: {:?}", resp.headers);
        assert!(resp.body.is_empty(), "{path}: {}", resp.body_str());
    }
    let mut c = Conn::open(proxy.http_addr).await;
    assert_eq!(c.get("/next").await.status, 200);
}

//! Edge middlewares (SPEC "Edge middlewares", issue 14) over real sockets: a route's
//! security and custom headers, compression (each coding decoded back to the backend's
//! bytes), per-client rate limits, and the client address — PROXY protocol v1 and v2 from
//! allowed sources only (written by hand, and by a real HAProxy's `send-proxy` and
//! `send-proxy-v2`), trusted proxies' X-Forwarded-For — over plain HTTP/1 and over TLS with
//! HTTP/2.
//!
//! Clients leave from distinct loopback addresses (127.0.0.x), their sockets bound before
//! connecting, so the proxy sees each as its own client.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::tls::{client_config, TlsPorts, TlsProxy, TLS_BASE};
use crate::support::{
    free_ports, metric_value, poll_until, read_response, text_body, Backend, Proxy, RawResponse,
    BASE,
};

const HOST: &str = "mw.test";
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const REJECTED: &str = "switchyard_rejected_requests_total";
const REQUESTS: &str = "switchyard_requests_total";

fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A TCP connection to `to` leaving from `src` (bound before it connects).
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src.into(), 0)).unwrap();
    let s = tokio::time::timeout(IO_TIMEOUT, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `prefix` then an HTTP/1.1 `GET path` (with `headers`, `Connection: close`) from
/// `src`, and reads the response.
async fn get_from(
    src: Ipv4Addr,
    to: SocketAddr,
    prefix: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut s = connect_from(src, to).await;
    let mut req = prefix.to_vec();
    req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes());
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    s.write_all(&req).await.unwrap();
    tokio::time::timeout(IO_TIMEOUT, read_response(&mut s))
        .await
        .expect("response timed out")
}

/// What the connection got before the proxy closed it: every byte until EOF.
async fn bytes_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy kept the connection open");
    out
}

/// `text` without ANSI SGR sequences (the text log colours its field names).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A reqwest client whose connections leave from `ip`.
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .timeout(IO_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn proxy_v1(src: &str, sport: u16) -> Vec<u8> {
    let proto = if src.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if src.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {proto} {src} {dst} {sport} 80\r\n").into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header (`LOCAL` when `src` is `None`).
fn proxy_v2(src: Option<IpAddr>, sport: u16) -> Vec<u8> {
    let mut b = V2_SIGNATURE.to_vec();
    let mut body = Vec::new();
    let (cmd, family) = match src {
        None => (0x20, 0x00),
        Some(IpAddr::V4(ip)) => {
            body.extend_from_slice(&ip.octets());
            body.extend_from_slice(&[127, 0, 0, 1]);
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&80u16.to_be_bytes());
            (0x21, 0x11)
        }
        Some(IpAddr::V6(ip)) => {
            body.extend_from_slice(&ip.octets());
            body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            body.extend_from_slice(&sport.to_be_bytes());
            body.extend_from_slice(&80u16.to_be_bytes());
            (0x21, 0x21)
        }
    };
    // A TLV after the addresses (PP2_TYPE_AUTHORITY), as balancers send them.
    body.extend_from_slice(&[0x02, 0x00, 0x07]);
    body.extend_from_slice(b"mw.test");
    b.push(cmd);
    b.push(family);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

/// The X-Forwarded-For the backend got, from its JSON echo.
fn forwarded_for(resp: &RawResponse) -> String {
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    resp.json()["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("gzip decodes");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("br decodes");
        }
        "zstd" => out = zstd::decode_all(data).expect("zstd decodes"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

// ---------------------------------------------------------------------------------------
// Headers and compression over plain HTTP/1
// ---------------------------------------------------------------------------------------

fn headers_config(backend: &Backend) -> String {
    format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
service = "app"
security_headers = true
response_headers = {{ "Content-Security-Policy" = "default-src 'self'", "X-Backend-Secret" = "" }}
request_headers = {{ "X-Env" = "prod" }}
compress = true

[[route]]
host = "plain.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn route_headers_both_ways_over_http1() {
    let backend = Backend::start("app").await;
    let proxy = Proxy::start(&headers_config(&backend)).await;

    let resp = get_from(lo(1), proxy.http_addr, b"", "/", &[("X-Env", "dev")]).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        resp.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        resp.header("content-security-policy"),
        Some("default-src 'self'")
    );
    // The backend got the route's value, not the client's.
    assert_eq!(resp.json()["headers"]["x-env"], "prod");

    // A backend's own security header wins; a header set to "" is removed.
    let resp = get_from(
        lo(1),
        proxy.http_addr,
        b"",
        "/body/10?h=x-frame-options:DENY&h=x-backend-secret:s3cr3t",
        &[],
    )
    .await;
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert_eq!(resp.header("x-backend-secret"), None);
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));

    // A route without middlewares: none of it.
    let mut s = connect_from(lo(1), proxy.http_addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\nX-Env: dev\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-content-type-options"), None);
    assert_eq!(resp.json()["headers"]["x-env"], "dev");
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_bodies_decode_to_the_backends_bytes_over_http1() {
    let backend = Backend::start("app").await;
    let proxy = Proxy::start(&headers_config(&backend)).await;
    let want = text_body(200_000);

    for coding in ["gzip", "br", "zstd"] {
        let resp = get_from(
            lo(1),
            proxy.http_addr,
            b"",
            "/body/200000",
            &[("Accept-Encoding", coding)],
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-encoding"), Some(coding));
        assert_eq!(resp.header("content-length"), None, "{coding}");
        assert_eq!(
            resp.header("transfer-encoding"),
            Some("chunked"),
            "{coding}"
        );
        assert!(resp
            .header("vary")
            .is_some_and(|v| v.eq_ignore_ascii_case("accept-encoding")));
        assert!(
            resp.body.len() < want.len() / 4,
            "{coding}: {} bytes",
            resp.body.len()
        );
        assert!(
            decode(coding, &resp.body) == want,
            "{coding}: decoded body differs"
        );
        println!(
            "[middlewares] {coding}: 200000 bytes -> {} bytes",
            resp.body.len()
        );
    }

    // q-values choose; `*` stands for the rest; q=0 refuses.
    for (accept, coding) in [
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("zstd;q=0, *;q=0.3, gzip;q=0.2", "br"),
        ("deflate, gzip", "gzip"),
    ] {
        let resp = get_from(
            lo(1),
            proxy.http_addr,
            b"",
            "/body/5000",
            &[("Accept-Encoding", accept)],
        )
        .await;
        assert_eq!(resp.header("content-encoding"), Some(coding), "{accept}");
        assert!(
            decode(coding, &resp.body) == text_body(5000),
            "{accept}: decoded body differs"
        );
    }

    // Sent as the backend sent it: too small, not a compressible type, already encoded,
    // no-transform, a HEAD, a range, a client that accepts no coding we have.
    let plain: &[(&str, &[(&str, &str)])] = &[
        ("/body/1000", &[("Accept-Encoding", "gzip")]),
        (
            "/body/5000?type=image%2Fpng",
            &[("Accept-Encoding", "gzip")],
        ),
        ("/body/5000?encoding=br", &[("Accept-Encoding", "gzip")]),
        (
            "/body/5000?cache_control=no-transform",
            &[("Accept-Encoding", "gzip")],
        ),
        (
            "/body/5000",
            &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-99")],
        ),
        ("/body/5000", &[("Accept-Encoding", "deflate, identity")]),
        ("/body/5000", &[]),
    ];
    for (path, headers) in plain {
        let resp = get_from(lo(1), proxy.http_addr, b"", path, headers).await;
        assert_eq!(resp.status, 200, "{path} {headers:?}");
        let n: usize = path[6..].split('?').next().unwrap().parse().unwrap();
        assert!(
            resp.body == text_body(n),
            "{path} {headers:?}: body differs ({} bytes, content-encoding {:?})",
            resp.body.len(),
            resp.header("content-encoding")
        );
        assert_eq!(
            resp.header("content-length"),
            Some(n.to_string().as_str()),
            "{path} {headers:?}"
        );
        let expected_ce = path.contains("encoding=br").then_some("br");
        assert_eq!(resp.header("content-encoding"), expected_ce, "{path}");
    }
    let mut s = connect_from(lo(1), proxy.http_addr).await;
    s.write_all(
        format!(
            "HEAD /body/5000 HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = bytes_until_closed(&mut s).await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");

    // Keep-alive: two compressed bodies in a row on one connection, then a plain one.
    let mut s = connect_from(lo(1), proxy.http_addr).await;
    for (path, coding) in [
        ("/body/30000", Some("gzip")),
        ("/body/40000", Some("zstd")),
        ("/body/100", None),
    ] {
        let accept = coding.unwrap_or("gzip");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: {accept}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, read_response(&mut s))
            .await
            .unwrap();
        let n: usize = path[6..].parse().unwrap();
        let body = match coding {
            Some(c) => decode(c, &resp.body),
            None => resp.body.clone(),
        };
        assert!(body == text_body(n), "{path}: body differs");
    }

    // HTTP/1.0: no chunks; the compressed body ends with the connection.
    let mut s = connect_from(lo(1), proxy.http_addr).await;
    s.write_all(
        format!("GET /body/50000 HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: br\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let raw = bytes_until_closed(&mut s).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.contains("content-encoding: br"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(
        decode("br", &raw[split + 4..]) == text_body(50000),
        "HTTP/1.0 body differs"
    );
}

// ---------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn one_client_is_limited_while_another_is_served() {
    let backend = Backend::start("app").await;
    let config = format!(
        r#"{BASE}
[[route]]
host = "{HOST}"
service = "app"
rate_limit = {{ per_client_per_s = 1, burst = 3 }}
security_headers = true

[service.app]
blue = ["{}"]
green = ["{}"]
"#,
        backend.addr, backend.addr
    );
    let proxy = Proxy::start(&config).await;
    let url = proxy.url("/");
    let a = client_from(lo(2));
    let b = client_from(lo(3));

    let mut codes = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let resp = a.get(&url).header("host", HOST).send().await.unwrap();
        codes.push(resp.status().as_u16());
        if resp.status() == 429 {
            limited = Some(resp);
        }
    }
    // The burst of 3 (a token may come back meanwhile on a slow machine), then 429s.
    assert!(codes[..3].iter().all(|c| *c == 200), "{codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 429).count() >= 2,
        "{codes:?}"
    );
    let limited = limited.unwrap();
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(limited.headers()["x-frame-options"], "SAMEORIGIN");
    assert_eq!(backend.hits(), codes.iter().filter(|c| **c == 200).count());

    // Another client is served meanwhile.
    let resp = b.get(&url).header("host", HOST).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // And the first one again once its token is back (polled, within a few seconds).
    let back = poll_until(Duration::from_secs(5), || async {
        let r = a.get(&url).header("host", HOST).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "the limited client never got through again");

    let refused = codes.iter().filter(|c| **c == 429).count() as f64;
    let text = proxy.metrics().await;
    let counted = metric_value(&text, REJECTED, &[("reason", "rate_limited")]).unwrap();
    assert!(counted >= refused, "{counted} < {refused}");
    // Counted with the service and no color: in no color's figures (the SLO's).
    let no_color = metric_value(
        &text,
        REQUESTS,
        &[("service", "app"), ("color", ""), ("code", "429")],
    );
    assert!(no_color.is_some_and(|n| n >= refused), "{no_color:?}");
    for color in ["blue", "green"] {
        assert_eq!(
            metric_value(
                &text,
                REQUESTS,
                &[("service", "app"), ("color", color), ("code", "429")]
            ),
            None,
            "a 429 counted on {color}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------

fn proxy_protocol_config(backend: &Backend, extra_route: &str) -> String {
    format!(
        r#"[listen]
http = "{{http}}"
admin = "{{admin}}"
proxy_protocol_from = ["127.0.0.2"]

[state]
dir = "state"

[limits]
header_timeout_s = 2

[[route]]
host = "{HOST}"
service = "app"
{extra_route}

[service.app]
backends = ["{}"]
"#,
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_from_an_allowed_source_names_the_client() {
    let backend = Backend::start("app").await;
    let proxy = Proxy::start(&proxy_protocol_config(&backend, "")).await;
    let to = proxy.http_addr;

    let v1 = get_from(lo(2), to, &proxy_v1("203.0.113.7", 40000), "/", &[]).await;
    assert_eq!(forwarded_for(&v1), "203.0.113.7");
    let v1_6 = get_from(lo(2), to, &proxy_v1("2001:db8::7", 40000), "/", &[]).await;
    assert_eq!(forwarded_for(&v1_6), "2001:db8::7");
    let v2 = get_from(
        lo(2),
        to,
        &proxy_v2(Some("198.51.100.9".parse().unwrap()), 1),
        "/",
        &[],
    )
    .await;
    assert_eq!(forwarded_for(&v2), "198.51.100.9");
    let v2_6 = get_from(
        lo(2),
        to,
        &proxy_v2(Some("2001:db8::9".parse().unwrap()), 1),
        "/",
        &[],
    )
    .await;
    assert_eq!(forwarded_for(&v2_6), "2001:db8::9");
    // LOCAL (a balancer's health check) and UNKNOWN: the balancer itself.
    let local = get_from(lo(2), to, &proxy_v2(None, 0), "/", &[]).await;
    assert_eq!(forwarded_for(&local), "127.0.0.2");
    let unknown = get_from(lo(2), to, b"PROXY UNKNOWN\r\n", "/", &[]).await;
    assert_eq!(forwarded_for(&unknown), "127.0.0.2");

    // A header trickled a few bytes at a time still counts (within the header timeout),
    // and the client's X-Forwarded-For is kept, the PROXY source appended.
    let mut s = connect_from(lo(2), to).await;
    let mut bytes = proxy_v1("203.0.113.8", 1234);
    bytes.extend_from_slice(
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 192.0.2.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    for piece in bytes[..40].chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(&bytes[40..]).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(forwarded_for(&resp), "192.0.2.1, 203.0.113.8");
    assert_eq!(backend.hits(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_is_required_from_allowed_sources_and_ignored_from_others() {
    let backend = Backend::start("app").await;
    let proxy = Proxy::start(&proxy_protocol_config(&backend, "")).await;
    let to = proxy.http_addr;
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");

    // From the allowed source without a header, or with a broken one: closed, unanswered.
    for prefix in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 80\n",
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c",
    ] {
        let mut s = connect_from(lo(2), to).await;
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(get.as_bytes());
        s.write_all(&bytes).await.unwrap();
        let got = bytes_until_closed(&mut s).await;
        assert!(
            got.is_empty(),
            "{prefix:?}: answered {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // A header that never completes: closed after the header timeout (2 s).
    let mut s = connect_from(lo(2), to).await;
    s.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    let started = Instant::now();
    assert!(bytes_until_closed(&mut s).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // From another source, a PROXY header is not interpreted: it is a bad request line.
    let mut bytes = proxy_v1("203.0.113.7", 40000);
    bytes.extend_from_slice(get.as_bytes());
    let mut s = connect_from(lo(3), to).await;
    s.write_all(&bytes).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 400);
    let mut s = connect_from(lo(3), to).await;
    let mut bytes = proxy_v2(Some("203.0.113.7".parse().unwrap()), 1);
    bytes.extend_from_slice(get.as_bytes());
    s.write_all(&bytes).await.unwrap();
    let got = bytes_until_closed(&mut s).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(backend.hits(), 0, "something reached the backend");

    // That source is served as itself.
    let plain = get_from(lo(3), to, b"", "/", &[]).await;
    assert_eq!(forwarded_for(&plain), "127.0.0.3");

    let text = proxy.metrics().await;
    let refused = metric_value(&text, REJECTED, &[("reason", "proxy_protocol")]).unwrap();
    assert!(refused >= 3.0, "proxy_protocol refusals: {refused}");
    let timeouts = metric_value(&text, REJECTED, &[("reason", "timeout")]).unwrap();
    assert!(timeouts >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_key_on_the_proxy_protocol_source() {
    let backend = Backend::start("app").await;
    let route = "rate_limit = { per_client_per_s = 0.01, burst = 1 }";
    let proxy = Proxy::start(&proxy_protocol_config(&backend, route)).await;
    let to = proxy.http_addr;
    // All through one balancer (127.0.0.2): each client has its own bucket.
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let resp = get_from(lo(2), to, &proxy_v1(client, 1000), "/", &[]).await;
        assert_eq!(resp.status, 200, "{client}");
    }
    let again = get_from(lo(2), to, &proxy_v1("203.0.113.2", 1001), "/", &[]).await;
    assert_eq!(again.status, 429);
}

/// A real HAProxy (TCP mode) in front of switchyard, connecting from 127.0.0.4 with
/// `send-proxy` on one frontend and `send-proxy-v2` on the other.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(to: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2);
        let v1: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
        let v2: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
        let cfg = format!(
            r#"global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend v1
    bind {v1}
    default_backend sw_v1
frontend v2
    bind {v2}
    default_backend sw_v2
backend sw_v1
    server sw {to} send-proxy source 127.0.0.4
backend sw_v2
    server sw {to} send-proxy-v2 source 127.0.0.4
"#
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy (apt-get install haproxy; scripts/test.sh does)");
        let mut h = Haproxy {
            child,
            v1,
            v2,
            _dir: dir,
        };
        let up = poll_until(Duration::from_secs(10), || async {
            let a = TcpStream::connect(v1).await.is_ok();
            let b = TcpStream::connect(v2).await.is_ok();
            (a && b).then_some(())
        })
        .await;
        if up.is_none() {
            let log =
                std::fs::read_to_string(h._dir.path().join("haproxy.log")).unwrap_or_default();
            let _ = h.child.kill();
            panic!("haproxy did not listen on {v1} and {v2}:\n{log}");
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_send_proxy_v1_and_v2_name_the_client() {
    let backend = Backend::start("app").await;
    let config = proxy_protocol_config(&backend, "").replace(
        r#"proxy_protocol_from = ["127.0.0.2"]"#,
        r#"proxy_protocol_from = ["127.0.0.4"]"#,
    );
    let proxy = Proxy::start(&config).await;
    let haproxy = Haproxy::start(proxy.http_addr).await;
    for (version, front) in [("send-proxy", haproxy.v1), ("send-proxy-v2", haproxy.v2)] {
        let resp = get_from(lo(9), front, b"", "/", &[]).await;
        assert_eq!(forwarded_for(&resp), "127.0.0.9", "{version}");
        let resp = get_from(lo(10), front, b"", "/", &[]).await;
        assert_eq!(forwarded_for(&resp), "127.0.0.10", "{version}");
    }
}

// ---------------------------------------------------------------------------------------
// Trusted proxies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_forwarded_for_is_honoured_and_a_spoofed_one_is_not() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let config = format!(
        r#"[listen]
http = "{{http}}"
admin = "{{admin}}"
trusted_proxies = ["127.0.0.5"]

[state]
dir = "state"

[log]
access = true

[[route]]
host = "{HOST}"
service = "app"
rate_limit = {{ per_client_per_s = 0.01, burst = 1 }}

[[route]]
host = "sticky.test"
service = "app"

[service.app]
blue = ["{}"]
green = ["{}"]
sticky = true
"#,
        blue.addr, green.addr
    );
    let proxy = Proxy::start(&config).await;
    let to = proxy.http_addr;
    let xff = |v: &'static str| [("X-Forwarded-For", v)];

    // Through the trusted proxy: the client is the rightmost untrusted entry, and the last
    // entry the backend sees; the rate limit counts that client, not the proxy.
    let resp = get_from(lo(5), to, b"", "/", &xff("198.51.100.1, 203.0.113.77")).await;
    assert_eq!(forwarded_for(&resp), "198.51.100.1, 203.0.113.77");
    let resp = get_from(lo(5), to, b"", "/", &xff("203.0.113.77")).await;
    assert_eq!(resp.status, 429, "the same client through the proxy");
    let resp = get_from(lo(5), to, b"", "/", &xff("203.0.113.78, 127.0.0.5")).await;
    assert_eq!(forwarded_for(&resp), "203.0.113.78");

    // Not trusted: what it says is kept for the backend but not believed.
    let resp = get_from(lo(6), to, b"", "/", &xff("203.0.113.90")).await;
    assert_eq!(forwarded_for(&resp), "203.0.113.90, 127.0.0.6");
    let resp = get_from(lo(6), to, b"", "/", &xff("203.0.113.91")).await;
    assert_eq!(
        resp.status, 429,
        "a new spoofed address is still the same client"
    );

    // The access log names the client.
    let logged = poll_until(Duration::from_secs(5), || async {
        let logs = without_ansi(&proxy.logs());
        logs.lines()
            .any(|l| l.contains("client=203.0.113.78"))
            .then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "no access log line for 203.0.113.78:\n{}",
        proxy.logs()
    );

    // A sticky canary keeps each forwarded client on one color, though every request
    // comes from the same proxy.
    let token = crate::support::release::token(&proxy);
    let (code, body) = crate::support::release::admin_call(
        &proxy,
        reqwest::Method::POST,
        "/v1/canary",
        Some(&token),
        Some(serde_json::json!({ "color": "green", "steps": [50, 100], "interval_s": 600 })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut colors = std::collections::BTreeSet::new();
    for n in 1..=30u8 {
        let client = format!("203.0.113.{n}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let mut s = connect_from(lo(5), to).await;
            s.write_all(
                format!("GET / HTTP/1.1\r\nHost: sticky.test\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let resp = read_response(&mut s).await;
            assert_eq!(resp.status, 200);
            seen.insert(resp.json()["backend"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{client} saw {seen:?}");
        colors.extend(seen);
    }
    assert_eq!(colors.len(), 2, "30 clients at 50% all on {colors:?}");
}

// ---------------------------------------------------------------------------------------
// TLS + HTTP/2, with the PROXY header before the handshake
// ---------------------------------------------------------------------------------------

/// One HTTP/2 connection over TLS from `src`, after `prefix` (a PROXY header).
async fn h2_connect(
    src: Ipv4Addr,
    to: SocketAddr,
    prefix: &[u8],
    ca: &str,
) -> Result<h2::client::SendRequest<Bytes>, String> {
    let mut tcp = connect_from(src, to).await;
    tcp.write_all(prefix).await.unwrap();
    let config = client_config(ca, &[&TLS13, &TLS12], &[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(HOST.to_string()).unwrap();
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// `GET path` on an HTTP/2 connection: the response head and the whole body.
async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Vec<u8>) {
    let mut req = http::Request::builder().uri(format!("https://{HOST}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let ready = send.clone().ready().await.expect("h2 connection ready");
    *send = ready;
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = tokio::time::timeout(IO_TIMEOUT, resp)
        .await
        .expect("h2 response timed out")
        .expect("h2 response");
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (parts, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_and_http2_with_a_proxy_header_before_the_handshake() {
    let backend = Backend::start("app").await;
    let config = format!(
        r#"{TLS_BASE}
[tls]
issuer = "internal"
cert_dir = "certs"

[[route]]
host = "{HOST}"
service = "app"
security_headers = true
response_headers = {{ "Content-Security-Policy" = "default-src 'self'" }}
request_headers = {{ "X-Env" = "prod" }}
rate_limit = {{ per_client_per_s = 0.01, burst = 8 }}
compress = true

[service.app]
backends = ["{}"]
"#,
        backend.addr
    )
    .replace(
        "admin = \"{admin}\"",
        "admin = \"{admin}\"\nproxy_protocol_from = [\"127.0.0.2\"]",
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = TlsProxy::start(dir.path(), &config, TlsPorts::free()).await;
    let ca = std::fs::read_to_string(proxy.cert_dir().join("ca.crt")).unwrap();
    let https = proxy.ports.https;

    let v2 = proxy_v2(Some("203.0.113.50".parse().unwrap()), 5000);
    let mut send = h2_connect(lo(2), https, &v2, &ca)
        .await
        .expect("h2 after PROXY v2");
    let (head, body) = h2_get(&mut send, "/", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.version, http::Version::HTTP_2);
    let h = &head.headers;
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "SAMEORIGIN");
    assert_eq!(h["referrer-policy"], "strict-origin-when-cross-origin");
    assert_eq!(h["content-security-policy"], "default-src 'self'");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.50");
    assert_eq!(echo["headers"]["x-env"], "prod");

    let want = text_body(150_000);
    for coding in ["gzip", "br", "zstd"] {
        let (head, body) = h2_get(&mut send, "/body/150000", &[("accept-encoding", coding)]).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["content-encoding"], coding);
        assert!(head.headers.get("content-length").is_none());
        assert!(
            decode(coding, &body) == want,
            "{coding} over h2: body differs"
        );
    }
    let (head, body) = h2_get(&mut send, "/body/150000", &[]).await;
    assert!(head.headers.get("content-encoding").is_none());
    assert!(body == want, "plain body over h2 differs");

    // PROXY v1 on another connection: its own client, its own bucket (8 requests).
    let v1 = proxy_v1("203.0.113.51", 5001);
    let mut send = h2_connect(lo(2), https, &v1, &ca)
        .await
        .expect("h2 after PROXY v1");
    let (_, body) = h2_get(&mut send, "/", &[]).await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.51");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(h2_get(&mut send, "/", &[]).await.0.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    // The first client still has tokens left.
    let mut send = h2_connect(lo(2), https, &v2, &ca).await.unwrap();
    assert_eq!(h2_get(&mut send, "/", &[]).await.0.status, 200);

    // From the allowed source without a header: no handshake.
    assert!(h2_connect(lo(2), https, b"", &ca).await.is_err());
    // From another source, the header is not read: the TLS handshake fails on it.
    assert!(h2_connect(lo(3), https, &v2, &ca).await.is_err());
    // And without one, that source is served as itself.
    let mut send = h2_connect(lo(3), https, b"", &ca).await.unwrap();
    let (_, body) = h2_get(&mut send, "/", &[]).await;
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.3");
}

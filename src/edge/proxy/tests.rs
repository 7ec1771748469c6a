//! The per-request decisions without a socket: an `EdgeProxy` over a snapshot built from a
//! small config, fed request and response headers made by hand.

use std::net::SocketAddr;
use std::path::Path;

use pingora_core::ErrorSource;

use super::*;
use crate::core::color::Color;
use crate::core::config::Config;
use crate::core::release::{Canary, ReleaseState, ServiceRelease};
use crate::edge::client_h1::KeptLines;
use crate::runtime::metrics::NO_COLOR;
use crate::runtime::snapshot::{self, Overrides, Retained};

/// HTTP and HTTPS listeners, TLS with its redirect and HSTS on; `app` has three blue
/// backends and one green, `files` one pool and a wildcard host.
const CONFIG: &str = r#"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"

[tls]
issuer = "internal"
cert_dir = "certs"

[[route]]
host = "app.test"
service = "app"

[[route]]
host = "*.static.test"
service = "files"

[service.app]
blue = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"]
green = ["127.0.0.1:3101"]

[service.files]
backends = ["127.0.0.1:3201"]
"#;

/// The plain HTTP listener's view (`tls = false`) of `config` with `releases` applied.
struct Edge {
    proxy: EdgeProxy,
}

impl Edge {
    fn build(config: &str, releases: ReleaseState, overrides: Overrides) -> Edge {
        let config = Config::from_str("test.toml", config, Path::new("/tmp"))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let retained = Retained::default();
        let snap = snapshot::build(
            Arc::new(config),
            &releases,
            &overrides,
            &Default::default(),
            &retained,
        );
        Edge {
            proxy: EdgeProxy {
                shared: Shared::new(snap, retained),
                tls: false,
                certs: None,
                https_port: None,
            },
        }
    }

    fn new() -> Edge {
        Edge::build(CONFIG, ReleaseState::default(), Overrides::default())
    }

    fn with_release(service: &str, release: ServiceRelease) -> Edge {
        let mut releases = ReleaseState::default();
        releases.services.insert(service.to_string(), release);
        Edge::build(CONFIG, releases, Overrides::default())
    }

    /// The HTTPS listener's instance.
    fn https(mut self) -> Edge {
        self.proxy.tls = true;
        self.proxy.https_port = Some(8443);
        self
    }

    /// The HTTP listener of an instance that also listens for HTTPS on `port`.
    fn redirecting_to(mut self, port: u16) -> Edge {
        self.proxy.https_port = Some(port);
        self
    }

    fn admit(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<LocalResponse> {
        self.proxy
            .admit(req, Some(&client("192.0.2.7")), false, ctx)
    }

    /// Admits `req` and expects it to go upstream.
    fn routed(&self, req: &RequestHeader) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        if let Some(local) = self.admit(req, &mut ctx) {
            panic!("expected a route, got a local {}", local.status);
        }
        ctx
    }

    /// Admits `req` and expects the proxy to answer it itself.
    fn answered(&self, req: &RequestHeader) -> LocalResponse {
        let mut ctx = RequestCtx::new();
        let local = self.admit(req, &mut ctx).expect("a local answer");
        assert!(ctx.service.is_none(), "a local answer routes nowhere");
        local
    }

    fn pool_load(&self, service: &str, color: &'static str) -> Arc<PoolLoad> {
        self.proxy.shared.retained.load(service, color)
    }
}

fn client(ip: &str) -> ClientAddr {
    ClientAddr::Inet(SocketAddr::new(ip.parse().unwrap(), 50000))
}

fn request(target: &str, host: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
    if let Some(host) = host {
        req.insert_header(header::HOST, host).unwrap();
    }
    req
}

/// An HTTP/2 request as pingora hands it over: no Host, the authority in the URI.
fn h2(uri: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.set_uri(uri.parse().unwrap());
    req.set_version(http::Version::HTTP_2);
    req
}

fn get(host: &str, target: &str) -> RequestHeader {
    request(target, Some(host))
}

fn header_values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn backend_ports(ctx: &RequestCtx) -> Vec<u16> {
    let mut ports: Vec<u16> = ctx
        .pool()
        .unwrap()
        .backends
        .iter()
        .map(|b| b.addr.port())
        .collect();
    ports.sort();
    ports
}

struct Challenges;

impl Http01Answers for Challenges {
    fn http01_answer(&self, token: &str) -> Option<String> {
        (token == "tok3n").then(|| "tok3n.thumbprint".to_string())
    }
}

// ---- admit -------------------------------------------------------------------------------

#[test]
fn admit_answers_an_unknown_host_with_404() {
    let edge = Edge::new();
    for host in ["nope.test", "static.test", "app.test.evil"] {
        let local = edge.answered(&get(host, "/"));
        assert_eq!(local.status, 404, "{host}");
        assert_eq!(&local.body[..], b"no route for this host\n");
    }
    // No Host at all (an HTTP/1.0 request): nothing to route by.
    assert_eq!(edge.answered(&request("/", None)).status, 404);
}

#[test]
fn admit_refuses_a_host_that_is_not_a_hostname_with_400() {
    let edge = Edge::new();
    for host in [
        "app.test/x",
        "app test",
        "app.test:80x",
        "app.test:",
        "user@app.test",
        "[::1",
        "%61pp.test",
    ] {
        let local = edge.answered(&get(host, "/"));
        assert_eq!(local.status, 400, "{host}");
        assert_eq!(&local.body[..], b"bad host\n");
        assert_eq!(local.location, None);
    }
}

#[test]
fn admit_routes_by_host_case_insensitively_and_without_its_port() {
    let edge = Edge::new();
    for host in ["app.test", "APP.Test", "app.test:8080"] {
        let ctx = edge.routed(&get(host, "/x"));
        assert_eq!(ctx.service.as_ref().unwrap().name, "app", "{host}");
    }
    let ctx = edge.routed(&get("img.static.test", "/a.png"));
    assert_eq!(ctx.service.as_ref().unwrap().name, "files");
}

#[test]
fn admit_routes_an_http2_request_by_its_authority() {
    let edge = Edge::new();
    let ctx = edge.routed(&h2("https://app.test/x"));
    assert_eq!(ctx.service.as_ref().unwrap().name, "app");
    assert_eq!(edge.answered(&h2("https://nope.test/")).status, 404);
}

#[test]
fn admit_counts_a_routed_request_in_flight_until_its_context_drops() {
    let edge = Edge::new();
    let load = edge.pool_load("app", "blue");
    let ctx = edge.routed(&get("app.test", "/"));
    let ctx2 = edge.routed(&get("app.test", "/"));
    assert_eq!(load.inflight.load(Ordering::Relaxed), 2);
    drop(ctx);
    drop(ctx2);
    assert_eq!(load.inflight.load(Ordering::Relaxed), 0);
    // A request answered locally never counts.
    edge.answered(&get("nope.test", "/"));
    assert_eq!(load.inflight.load(Ordering::Relaxed), 0);
}

#[test]
fn admit_redirects_http_to_https_with_a_location_built_from_the_host() {
    let edge = Edge::new().redirecting_to(8443);
    let local = edge.answered(&get("APP.test:8080", "/a/b?c=1&d"));
    assert_eq!(local.status, 308);
    assert_eq!(
        local.location.as_deref(),
        Some("https://APP.test:8443/a/b?c=1&d")
    );
    let head = local.header().unwrap();
    assert_eq!(
        header(&head.headers, "location"),
        Some("https://APP.test:8443/a/b?c=1&d")
    );
    assert_eq!(
        header(&head.headers, "content-length"),
        Some(local.body.len().to_string().as_str())
    );

    // The default HTTPS port is left out.
    let edge = Edge::new().redirecting_to(443);
    let local = edge.answered(&get("app.test", "/"));
    assert_eq!(local.location.as_deref(), Some("https://app.test/"));
}

#[test]
fn admit_never_redirects_a_bad_or_unknown_host() {
    let edge = Edge::new().redirecting_to(8443);
    assert_eq!(edge.answered(&get("app.test/evil.test", "/")).status, 400);
    let local = edge.answered(&get("evil.test", "/"));
    assert_eq!((local.status, local.location), (404, None));
}

#[test]
fn admit_does_not_redirect_without_redirect_http_or_an_https_listener() {
    // redirect_http = false: plain HTTP is served.
    let config = CONFIG.replace(
        "cert_dir = \"certs\"",
        "cert_dir = \"certs\"\nredirect_http = false",
    );
    Edge::build(&config, ReleaseState::default(), Overrides::default())
        .redirecting_to(8443)
        .routed(&get("app.test", "/"));
    // No HTTPS port known to this listener: nowhere to redirect to.
    let edge = Edge::new();
    edge.routed(&get("app.test", "/"));
}

#[test]
fn admit_answers_acme_http01_before_routing_for_any_host() {
    let mut edge = Edge::new().redirecting_to(8443);
    edge.proxy.certs = Some(Arc::new(Challenges));
    for host in ["app.test", "unknown.test"] {
        let local = edge.answered(&get(host, "/.well-known/acme-challenge/tok3n"));
        assert_eq!(local.status, 200, "{host}");
        assert_eq!(local.content_type, "application/octet-stream");
        assert_eq!(&local.body[..], b"tok3n.thumbprint");
        assert_eq!(local.location, None, "a challenge is never redirected");
    }
    let local = edge.answered(&get("app.test", "/.well-known/acme-challenge/other"));
    assert_eq!(local.status, 404);
    assert_eq!(&local.body[..], b"no such challenge\n");

    // Not on the HTTPS listener: there the path is routed like any other.
    let mut edge = Edge::new().https();
    edge.proxy.certs = Some(Arc::new(Challenges));
    edge.routed(&get("app.test", "/.well-known/acme-challenge/tok3n"));
    // Nor without certificates.
    Edge::new().routed(&get("app.test", "/.well-known/acme-challenge/tok3n"));
}

#[test]
fn admit_sets_hsts_on_the_https_listener_only() {
    let https = Edge::new().https();
    let ctx = https.routed(&get("app.test", "/"));
    assert!(ctx.hsts);
    let plain = Edge::build(
        &CONFIG.replace(
            "cert_dir = \"certs\"",
            "cert_dir = \"certs\"\nredirect_http = false",
        ),
        ReleaseState::default(),
        Overrides::default(),
    );
    assert!(!plain.routed(&get("app.test", "/")).hsts);
    let off = Edge::build(
        &CONFIG.replace("cert_dir = \"certs\"", "cert_dir = \"certs\"\nhsts = false"),
        ReleaseState::default(),
        Overrides::default(),
    )
    .https();
    assert!(!off.routed(&get("app.test", "/")).hsts);
}

#[test]
fn client_response_adds_hsts_unless_the_backend_set_its_own() {
    let edge = Edge::new().https();
    let mut ctx = edge.routed(&get("app.test", "/"));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert_eq!(
        header(&resp.headers, "strict-transport-security"),
        Some("max-age=31536000")
    );

    let mut ctx = edge.routed(&get("app.test", "/"));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("strict-transport-security", "max-age=60")
        .unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert_eq!(
        header_values(&resp.headers, "strict-transport-security"),
        ["max-age=60"]
    );

    // Plain HTTP never sends it.
    let edge = Edge::new();
    let mut ctx = edge.routed(&get("app.test", "/"));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert!(!resp.headers.contains_key("strict-transport-security"));
}

#[test]
fn admit_sends_requests_to_the_active_color() {
    let edge = Edge::new();
    let ctx = edge.routed(&get("app.test", "/"));
    assert_eq!(ctx.pool().unwrap().color_label, "blue");
    assert_eq!(backend_ports(&ctx), [3001, 3002, 3003]);

    let edge = Edge::with_release(
        "app",
        ServiceRelease {
            active: Color::Green,
            previous: Some(Color::Blue),
            canary: None,
        },
    );
    let ctx = edge.routed(&get("app.test", "/"));
    assert_eq!(ctx.pool().unwrap().color_label, "green");
    assert_eq!(backend_ports(&ctx), [3101]);
    assert_eq!(
        edge.pool_load("app", "green")
            .inflight
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        edge.pool_load("app", "blue")
            .inflight
            .load(Ordering::Relaxed),
        0
    );
}

#[test]
fn admit_sends_a_canary_its_share() {
    let canary = |weight| ServiceRelease {
        active: Color::Blue,
        previous: None,
        canary: Some(Canary {
            color: Color::Green,
            weight,
            steps: vec![],
            interval_s: 30,
        }),
    };
    let colors = |edge: &Edge| -> Vec<&'static str> {
        (0..50)
            .map(|_| {
                edge.routed(&get("app.test", "/"))
                    .pool()
                    .unwrap()
                    .color_label
            })
            .collect()
    };
    assert!(colors(&Edge::with_release("app", canary(100)))
        .iter()
        .all(|c| *c == "green"));
    assert!(colors(&Edge::with_release("app", canary(0)))
        .iter()
        .all(|c| *c == "blue"));
}

#[test]
fn admit_keeps_a_sticky_client_on_one_color() {
    let config = CONFIG.replace(
        "green = [\"127.0.0.1:3101\"]",
        "green = [\"127.0.0.1:3101\"]\nsticky = true",
    );
    let mut releases = ReleaseState::default();
    releases.services.insert(
        "app".into(),
        ServiceRelease {
            active: Color::Blue,
            previous: None,
            canary: Some(Canary {
                color: Color::Green,
                weight: 50,
                steps: vec![],
                interval_s: 30,
            }),
        },
    );
    let edge = Edge::build(&config, releases, Overrides::default());
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40u8 {
        let addr = client(&format!("198.51.100.{i}"));
        let color = || {
            let mut ctx = RequestCtx::new();
            assert!(edge
                .proxy
                .admit(&get("app.test", "/"), Some(&addr), false, &mut ctx)
                .is_none());
            ctx.pool().unwrap().color_label
        };
        let first = color();
        assert!((0..9).all(|_| color() == first), "client {i} moved");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "40 clients at 50% all landed on {seen:?}");
}

#[test]
fn admit_uses_the_one_pool_of_a_service_without_colors() {
    let edge = Edge::new();
    let ctx = edge.routed(&get("a.static.test", "/"));
    assert_eq!(ctx.pool().unwrap().color_label, NO_COLOR);
    assert_eq!(backend_ports(&ctx), [3201]);
}

#[test]
fn client_roll_is_stable_and_below_100() {
    for ip in ["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:10.0.0.1"] {
        let addr = ip.parse().ok();
        let roll = client_roll(addr);
        assert!(roll < 100, "{ip}: {roll}");
        assert_eq!(roll, client_roll(addr), "{ip}");
    }
    assert_eq!(client_roll(None), 0);
}

// ---- pick_backend ------------------------------------------------------------------------

#[test]
fn pick_backend_goes_round_robin_over_the_pool() {
    let edge = Edge::new();
    let mut ctx = edge.routed(&get("app.test", "/"));
    let picks: Vec<u16> = (0..6)
        .map(|_| edge.proxy.pick_backend(&mut ctx).unwrap().port())
        .collect();
    let mut first_three = picks[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, [3001, 3002, 3003], "{picks:?}");
    assert_eq!(picks[..3], picks[3..], "the same order again: {picks:?}");
    assert_eq!(ctx.backend.map(|b| b.port()), Some(picks[5]));
}

#[test]
fn pick_backend_on_a_retry_skips_the_backend_that_failed() {
    let edge = Edge::new();
    for _ in 0..6 {
        let mut ctx = edge.routed(&get("app.test", "/"));
        let failed = edge.proxy.pick_backend(&mut ctx).unwrap();
        assert!(ctx.may_retry_elsewhere());
        ctx.retry_elsewhere(UpstreamErrorKind::ConnectRefused);
        let next = edge.proxy.pick_backend(&mut ctx).unwrap();
        assert_ne!(next, failed);
        assert_eq!(ctx.backend, Some(next));
        // Once only.
        assert!(!ctx.may_retry_elsewhere());
    }
}

#[test]
fn a_pool_of_one_backend_is_not_retried() {
    let edge = Edge::new();
    let mut ctx = edge.routed(&get("x.static.test", "/"));
    edge.proxy.pick_backend(&mut ctx).unwrap();
    assert!(!ctx.may_retry_elsewhere());
}

#[test]
fn pick_backend_without_a_backend_is_none() {
    let edge = Edge::new();
    // Not routed: no pool.
    assert_eq!(edge.proxy.pick_backend(&mut RequestCtx::new()), None);

    // A color whose backends were all taken away (`releasectl backends`).
    let mut overrides = Overrides::default();
    overrides
        .entry("app".into())
        .or_default()
        .insert(Color::Green, vec![]);
    let mut releases = ReleaseState::default();
    releases.services.insert(
        "app".into(),
        ServiceRelease {
            active: Color::Green,
            previous: None,
            canary: None,
        },
    );
    let edge = Edge::build(CONFIG, releases, overrides);
    let mut ctx = edge.routed(&get("app.test", "/"));
    assert_eq!(edge.proxy.pick_backend(&mut ctx), None);
    assert_eq!(ctx.backend, None);
    assert!(!ctx.may_retry_elsewhere());
}

// ---- upstream_request / client_response --------------------------------------------------

/// `req` as the upstream gets it, from a client at 192.0.2.7 on the plain listener.
fn upstream(edge: &Edge, req: &RequestHeader, upgrade: bool) -> (RequestHeader, RequestCtx) {
    let mut ctx = edge.routed(req);
    let mut up = req.clone();
    edge.proxy
        .upstream_request(&mut up, upgrade, &mut ctx)
        .unwrap();
    (up, ctx)
}

#[test]
fn upstream_request_strips_hop_by_hop_headers() {
    let mut req = get("app.test", "/");
    for (name, value) in [
        ("connection", "keep-alive, close"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic eDp5"),
        ("proxy-authenticate", "Basic"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("upgrade", "websocket"),
        ("accept", "*/*"),
        ("authorization", "Bearer t"),
    ] {
        req.append_header(name, value).unwrap();
    }
    let (up, _) = upstream(&Edge::new(), &req, false);
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!up.headers.contains_key(gone), "{gone} crossed the proxy");
    }
    assert_eq!(header(&up.headers, "accept"), Some("*/*"));
    assert_eq!(header(&up.headers, "authorization"), Some("Bearer t"));
    assert_eq!(header(&up.headers, "host"), Some("app.test"));
}

#[test]
fn upstream_request_keeps_a_websocket_upgrade() {
    let mut req = get("app.test", "/ws");
    req.insert_header("connection", "Upgrade, x-hop").unwrap();
    req.insert_header("upgrade", "websocket").unwrap();
    req.insert_header("x-hop", "1").unwrap();
    req.insert_header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .unwrap();
    let (up, _) = upstream(&Edge::new(), &req, true);
    assert_eq!(header(&up.headers, "connection"), Some("upgrade"));
    assert_eq!(header(&up.headers, "upgrade"), Some("websocket"));
    assert!(up.headers.contains_key("sec-websocket-key"));
    assert!(!up.headers.contains_key("x-hop"), "named in Connection");
}

#[test]
fn connection_removes_what_it_names_but_never_a_protected_header() {
    let mut req = get("app.test", "/");
    req.append_header(
        "connection",
        "x-one, Host, content-length, Transfer-Encoding",
    )
    .unwrap();
    // Every Connection line counts, not only the first.
    req.append_header(
        "connection",
        "X-Forwarded-For, x-forwarded-proto, x-forwarded-host, x-request-id, upgrade, x-two",
    )
    .unwrap();
    for (name, value) in [
        ("x-one", "1"),
        ("x-two", "2"),
        ("content-length", "5"),
        ("transfer-encoding", "chunked"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "spoofed.test"),
        ("x-request-id", "abc"),
    ] {
        req.insert_header(name, value).unwrap();
    }
    let (up, _) = upstream(&Edge::new(), &req, false);
    assert!(!up.headers.contains_key("x-one"));
    assert!(!up.headers.contains_key("x-two"));
    assert!(!up.headers.contains_key("connection"));
    assert_eq!(header(&up.headers, "host"), Some("app.test"));
    assert_eq!(header(&up.headers, "content-length"), Some("5"));
    assert_eq!(header(&up.headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(
        header(&up.headers, "x-forwarded-for"),
        Some("203.0.113.9, 192.0.2.7")
    );
    assert_eq!(header(&up.headers, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&up.headers, "x-forwarded-host"), Some("app.test"));
    assert_eq!(header(&up.headers, "x-request-id"), Some("abc"));
}

#[test]
fn x_forwarded_for_joins_every_line_the_client_sent_then_the_client() {
    let mut req = get("app.test", "/");
    req.append_header("x-forwarded-for", "203.0.113.1, 203.0.113.2")
        .unwrap();
    req.append_header("x-forwarded-for", "203.0.113.3").unwrap();
    let (up, _) = upstream(&Edge::new(), &req, false);
    assert_eq!(
        header_values(&up.headers, "x-forwarded-for"),
        ["203.0.113.1, 203.0.113.2, 203.0.113.3, 192.0.2.7"]
    );

    // None sent: the client alone; an IPv6 client without brackets.
    let edge = Edge::new();
    let req = get("app.test", "/");
    let mut ctx = RequestCtx::new();
    assert!(edge
        .proxy
        .admit(&req, Some(&client("2001:db8::7")), false, &mut ctx)
        .is_none());
    let mut up = req.clone();
    edge.proxy
        .upstream_request(&mut up, false, &mut ctx)
        .unwrap();
    assert_eq!(header(&up.headers, "x-forwarded-for"), Some("2001:db8::7"));
}

#[test]
fn x_forwarded_proto_and_host_say_how_the_client_came() {
    let (up, _) = upstream(&Edge::new(), &get("App.Test:8080", "/"), false);
    assert_eq!(header(&up.headers, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(&up.headers, "x-forwarded-host"),
        Some("App.Test:8080")
    );

    let (up, _) = upstream(&Edge::new().https(), &get("app.test", "/"), false);
    assert_eq!(header(&up.headers, "x-forwarded-proto"), Some("https"));

    // HTTP/2: the host comes in :authority; the HTTP/1 upstream needs a Host header.
    let (up, _) = upstream(&Edge::new().https(), &h2("https://app.test/x"), false);
    assert_eq!(header(&up.headers, "host"), Some("app.test"));
    assert_eq!(header(&up.headers, "x-forwarded-host"), Some("app.test"));
}

#[test]
fn x_request_id_is_kept_when_sent_and_returned_to_the_client() {
    let mut req = get("app.test", "/");
    req.insert_header("x-request-id", "client-chosen-1")
        .unwrap();
    let edge = Edge::new();
    let (up, mut ctx) = upstream(&edge, &req, false);
    assert_eq!(header(&up.headers, "x-request-id"), Some("client-chosen-1"));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert_eq!(
        header(&resp.headers, "x-request-id"),
        Some("client-chosen-1")
    );
}

#[test]
fn x_request_id_is_generated_when_missing_or_empty() {
    let edge = Edge::new();
    let mut empty = get("app.test", "/");
    empty.insert_header("x-request-id", "").unwrap();
    let mut ids = Vec::new();
    for req in [get("app.test", "/"), empty] {
        let (up, mut ctx) = upstream(&edge, &req, false);
        let id = header_values(&up.headers, "x-request-id");
        assert_eq!(id.len(), 1);
        let id = id[0].clone();
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        // The client sees the same id, unless the backend answered with its own.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
        assert_eq!(header(&resp.headers, "x-request-id"), Some(id.as_str()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);

    let (_, mut ctx) = upstream(&edge, &get("app.test", "/"), false);
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("x-request-id", "backend-1").unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert_eq!(header_values(&resp.headers, "x-request-id"), ["backend-1"]);
}

#[test]
fn client_response_strips_hop_by_hop_headers() {
    let edge = Edge::new();
    let mut ctx = edge.routed(&get("app.test", "/"));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    for (name, value) in [
        ("connection", "close, x-internal, content-length"),
        ("keep-alive", "timeout=5"),
        ("x-internal", "secret"),
        ("upgrade", "h2c"),
        ("trailer", "x-sum"),
        ("content-length", "2"),
        ("content-type", "text/plain"),
    ] {
        resp.insert_header(name, value).unwrap();
    }
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    for gone in [
        "connection",
        "keep-alive",
        "x-internal",
        "upgrade",
        "trailer",
    ] {
        assert!(!resp.headers.contains_key(gone), "{gone} crossed the proxy");
    }
    assert_eq!(header(&resp.headers, "content-length"), Some("2"));
    assert_eq!(header(&resp.headers, "content-type"), Some("text/plain"));
    assert!(!ctx.is_upgraded());
}

#[test]
fn client_response_101_counts_an_upgraded_connection_and_keeps_its_headers() {
    let edge = Edge::new();
    let load = edge.pool_load("app", "blue");
    let mut ctx = edge.routed(&get("app.test", "/ws"));
    let mut resp = ResponseHeader::build(101, None).unwrap();
    resp.insert_header("connection", "upgrade").unwrap();
    resp.insert_header("upgrade", "websocket").unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert_eq!(header(&resp.headers, "connection"), Some("upgrade"));
    assert_eq!(header(&resp.headers, "upgrade"), Some("websocket"));
    assert!(ctx.is_upgraded());
    assert_eq!(load.upgraded.load(Ordering::Relaxed), 1);
    assert_eq!(load.inflight.load(Ordering::Relaxed), 1);
    assert!(check_drain(&ctx).is_ok());
    drop(ctx);
    assert_eq!(load.upgraded.load(Ordering::Relaxed), 0);
    assert_eq!(load.inflight.load(Ordering::Relaxed), 0);
}

#[test]
fn check_drain_closes_an_upgraded_connection_once_its_color_drained() {
    let edge = Edge::new();
    let load = edge.pool_load("app", "blue");
    let mut ctx = edge.routed(&get("app.test", "/ws"));
    let mut resp = ResponseHeader::build(101, None).unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    load.drain_deadline_ms.store(1, Ordering::Relaxed);
    let e = check_drain(&ctx).unwrap_err();
    assert_eq!(e.etype(), &ErrorType::InternalError);
    // A plain request is never cut by the drain.
    let plain = edge.routed(&get("app.test", "/"));
    assert!(check_drain(&plain).is_ok());
    load.drain_deadline_ms.store(0, Ordering::Relaxed);
}

// ---- sanitize_request --------------------------------------------------------------------

fn sanitized(mut req: RequestHeader) -> std::result::Result<RequestHeader, Refusal> {
    sanitize_request(&mut req, HeaderPresence::UNKNOWN).map(|()| req)
}

#[test]
fn sanitize_resolves_dot_segments_and_keeps_the_query() {
    for (target, want) in [
        ("/a/./b/../c?x=/../y", "/a/c?x=/../y"),
        ("/a/%2e%2E/b", "/b"),
        ("/a/%2e/", "/a/"),
        ("/a/..", "/"),
        ("/plain/path?q", "/plain/path?q"),
    ] {
        let req = sanitized(get("app.test", target)).unwrap();
        assert_eq!(req.uri.to_string(), want, "{target}");
        assert_eq!(req.raw_path(), want.as_bytes(), "{target}: on the wire");
    }
}

#[test]
fn sanitize_refuses_a_path_that_climbs_above_the_root() {
    for target in ["/..", "/../etc/passwd", "/a/../../b", "/%2e%2e/x"] {
        let refusal = sanitized(get("app.test", target)).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::new(400, Rejection::BadRequest),
            "{target}"
        );
    }
}

#[test]
fn sanitize_sends_an_absolute_form_target_on_in_origin_form() {
    let req = sanitized(get("app.test", "http://app.test/x/../y?q=1")).unwrap();
    assert_eq!(req.uri.to_string(), "/y?q=1");
    assert_eq!(req.raw_path(), b"/y?q=1");
    assert!(req.uri.authority().is_none());

    let req = sanitized(get("app.test", "http://app.test/y")).unwrap();
    assert_eq!(req.uri.to_string(), "/y");
    assert_eq!(req.raw_path(), b"/y");
}

#[test]
fn sanitize_keeps_an_http2_scheme_and_authority() {
    let req = sanitized(h2("https://app.test/a/../b")).unwrap();
    assert_eq!(req.uri.to_string(), "https://app.test/b");
    assert_eq!(req.uri.authority().unwrap().as_str(), "app.test");
}

#[test]
fn sanitize_drops_every_upgrade_but_websocket() {
    let mut req = get("app.test", "/");
    req.insert_header("upgrade", "h2c").unwrap();
    assert!(!sanitized(req).unwrap().headers.contains_key("upgrade"));
    let mut req = get("app.test", "/");
    req.insert_header("upgrade", "WebSocket").unwrap();
    let req = sanitized(req).unwrap();
    assert_eq!(header(&req.headers, "upgrade"), Some("WebSocket"));
}

#[test]
fn sanitize_puts_framing_headers_in_their_canonical_form() {
    let mut req = get("app.test", "/");
    req.insert_header("transfer-encoding", "Chunked ").unwrap();
    let req = sanitized(req).unwrap();
    assert_eq!(header(&req.headers, "transfer-encoding"), Some("chunked"));

    for (sent, want) in [("007", "7"), ("0", "0"), (" 12", "12"), ("12", "12")] {
        let mut req = get("app.test", "/");
        req.insert_header("content-length", sent).unwrap();
        let req = sanitized(req).unwrap();
        assert_eq!(
            header(&req.headers, "content-length"),
            Some(want),
            "{sent:?}"
        );
    }
    for bad in ["abc", "-1", "1 2", ""] {
        let mut req = get("app.test", "/");
        req.insert_header("content-length", bad).unwrap();
        assert_eq!(
            sanitized(req).unwrap_err(),
            Refusal::new(400, Rejection::BadFraming),
            "{bad:?}"
        );
    }
}

// ---- error_status ------------------------------------------------------------------------

fn from(source: ErrorSource, etype: ErrorType) -> ErrorStatus {
    let mut e = Error::new(etype);
    e.esource = source;
    error_status(&e)
}

fn upstream_error(etype: ErrorType) -> ErrorStatus {
    from(ErrorSource::Upstream, etype)
}

fn downstream_error(etype: ErrorType) -> ErrorStatus {
    from(ErrorSource::Downstream, etype)
}

#[test]
fn error_status_upstream_connect_failures_are_502() {
    for etype in [
        ErrorType::ConnectRefused,
        ErrorType::ConnectNoRoute,
        ErrorType::ConnectError,
        ErrorType::SocketError,
        ErrorType::BindError,
    ] {
        let verdict = upstream_error(etype.clone());
        assert_eq!(
            verdict,
            ErrorStatus::Upstream(UpstreamErrorKind::ConnectRefused),
            "{etype:?}"
        );
        assert_eq!(verdict.status(), Some(502), "{etype:?}");
    }
}

#[test]
fn error_status_upstream_timeouts_are_504() {
    let verdict = upstream_error(ErrorType::ConnectTimedout);
    assert_eq!(
        verdict,
        ErrorStatus::Upstream(UpstreamErrorKind::ConnectTimeout)
    );
    assert_eq!(verdict.status(), Some(504));
    let verdict = upstream_error(ErrorType::ReadTimedout);
    assert_eq!(
        verdict,
        ErrorStatus::Upstream(UpstreamErrorKind::ReadTimeout)
    );
    assert_eq!(verdict.status(), Some(504));
    // A backend too slow to take the request is a failed write, not a slow answer.
    let verdict = upstream_error(ErrorType::WriteTimedout);
    assert_eq!(verdict, ErrorStatus::Upstream(UpstreamErrorKind::Write));
    assert_eq!(verdict.status(), Some(502));
}

#[test]
fn error_status_upstream_read_write_and_protocol_errors_are_502() {
    for (etype, kind) in [
        (ErrorType::ReadError, UpstreamErrorKind::Read),
        (ErrorType::ConnectionClosed, UpstreamErrorKind::Read),
        (ErrorType::InvalidHTTPHeader, UpstreamErrorKind::Read),
        (ErrorType::WriteError, UpstreamErrorKind::Write),
        (ErrorType::H1Error, UpstreamErrorKind::Other),
        (ErrorType::H2Error, UpstreamErrorKind::Other),
        (ErrorType::TLSHandshakeFailure, UpstreamErrorKind::Other),
        (ErrorType::InternalError, UpstreamErrorKind::Other),
    ] {
        let verdict = upstream_error(etype.clone());
        assert_eq!(verdict, ErrorStatus::Upstream(kind), "{etype:?}");
        assert_eq!(verdict.status(), Some(502), "{etype:?}");
    }
}

#[test]
fn error_status_a_client_gone_gets_no_answer() {
    for etype in [
        ErrorType::ReadError,
        ErrorType::WriteError,
        ErrorType::ConnectionClosed,
    ] {
        let verdict = downstream_error(etype.clone());
        assert_eq!(verdict, ErrorStatus::ClientGone, "{etype:?}");
        assert_eq!(verdict.status(), None, "{etype:?}");
    }
}

#[test]
fn error_status_a_broken_request_is_400_or_408() {
    let verdict = downstream_error(ErrorType::ReadTimedout);
    assert_eq!(
        verdict,
        ErrorStatus::Refused(Refusal::new(408, Rejection::Timeout))
    );
    assert_eq!(verdict.status(), Some(408));
    for etype in [
        ErrorType::InvalidHTTPHeader,
        ErrorType::H1Error,
        ErrorType::H2Error,
        ErrorType::InvalidH2,
    ] {
        let verdict = downstream_error(etype.clone());
        assert_eq!(
            verdict,
            ErrorStatus::Refused(Refusal::new(400, Rejection::BadFraming)),
            "{etype:?}"
        );
        assert_eq!(verdict.status(), Some(400), "{etype:?}");
    }
}

#[test]
fn error_status_an_explicit_status_wins_from_any_side() {
    for source in [
        ErrorSource::Upstream,
        ErrorSource::Downstream,
        ErrorSource::Internal,
        ErrorSource::Unset,
    ] {
        for code in [408, 413, 431] {
            let verdict = from(source.clone(), ErrorType::HTTPStatus(code));
            assert_eq!(verdict, ErrorStatus::Status(code), "{source:?}");
            assert_eq!(verdict.status(), Some(code), "{source:?}");
        }
    }
}

#[test]
fn error_status_the_proxys_own_errors_are_500() {
    for source in [ErrorSource::Internal, ErrorSource::Unset] {
        for etype in [ErrorType::InternalError, ErrorType::ConnectRefused] {
            let verdict = from(source.clone(), etype.clone());
            assert_eq!(verdict, ErrorStatus::Internal, "{source:?} {etype:?}");
            assert_eq!(verdict.status(), Some(500));
        }
    }
}

#[test]
fn error_status_follows_into_up_and_into_down() {
    // The HTTP/1 path marks an error's side before asking.
    let e = Error::explain(ErrorType::ReadTimedout, "slow");
    assert_eq!(error_status(&e), ErrorStatus::Internal);
    let e = e.into_up();
    assert_eq!(error_status(&e).status(), Some(504));
    let e = e.into_down();
    assert_eq!(error_status(&e).status(), Some(408));
}

#[test]
fn status_sent_is_the_final_status_or_499() {
    assert_eq!(status_sent(None), 499);
    for (written, logged) in [
        (100u16, 499),
        (103, 499),
        (101, 101),
        (200, 200),
        (502, 502),
    ] {
        let status = http::StatusCode::from_u16(written).unwrap();
        assert_eq!(status_sent(Some(status)), logged, "{written}");
    }
}

// ---- edge middlewares --------------------------------------------------------------------

/// `app.test` with every middleware, `plain.test` with none; proxies in 10.0.0.0/8 trusted.
const MIDDLEWARES: &str = r#"
[listen]
http = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8"]

[[route]]
host = "app.test"
service = "app"
security_headers = true
response_headers = { "Content-Security-Policy" = "default-src 'self'", "Server" = "" }
request_headers = { "X-Env" = "prod" }
rate_limit = { per_client_per_s = 0.01, burst = 2 }
compress = true

[[route]]
host = "plain.test"
service = "app"

[service.app]
backends = ["127.0.0.1:3001"]
"#;

fn middlewares_edge() -> Edge {
    Edge::build(MIDDLEWARES, ReleaseState::default(), Overrides::default())
}

fn admit_from(edge: &Edge, req: &RequestHeader, peer: &str) -> (RequestCtx, Option<LocalResponse>) {
    let mut ctx = RequestCtx::new();
    let local = edge.proxy.admit(req, Some(&client(peer)), false, &mut ctx);
    (ctx, local)
}

#[test]
fn rate_limit_answers_429_with_retry_after_per_client() {
    let edge = middlewares_edge();
    let req = get("app.test", "/");
    for _ in 0..2 {
        assert!(admit_from(&edge, &req, "192.0.2.1").1.is_none());
    }
    let (ctx, local) = admit_from(&edge, &req, "192.0.2.1");
    let local = local.expect("the third request is refused");
    assert_eq!(local.status, 429);
    // One token per 100 s.
    assert!(
        (99..=100).contains(&local.retry_after.unwrap()),
        "{:?}",
        local.retry_after
    );
    assert!(ctx.service.is_none() && ctx.pool().is_none());
    let header = local_header(&local, &ctx).unwrap();
    assert_eq!(header.status, 429);
    assert!(header.headers.contains_key("retry-after"));
    // The route's response headers go on its 429 too.
    assert_eq!(header.headers.get("x-frame-options").unwrap(), "SAMEORIGIN");
    // Another client is served; a route without a limit is not limited.
    assert!(admit_from(&edge, &req, "192.0.2.2").1.is_none());
    for _ in 0..5 {
        assert!(admit_from(&edge, &get("plain.test", "/"), "192.0.2.1")
            .1
            .is_none());
    }
}

#[test]
fn a_trusted_proxy_names_the_client_and_a_spoofer_does_not() {
    let edge = middlewares_edge();
    let mut req = get("plain.test", "/");
    req.insert_header("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.5")
        .unwrap();

    // Through our proxies: the client is 203.0.113.9, and the last entry the backend sees.
    let (mut ctx, local) = admit_from(&edge, &req, "10.0.0.7");
    assert!(local.is_none());
    assert_eq!(ctx.client.ip, "203.0.113.9".parse().ok());
    let mut up = req.clone();
    edge.proxy
        .upstream_request(&mut up, false, &mut ctx)
        .unwrap();
    assert_eq!(
        header_values(&up.headers, "x-forwarded-for"),
        ["1.1.1.1, 203.0.113.9"]
    );

    // Straight from the internet: the peer, appended.
    let (mut ctx, _) = admit_from(&edge, &req, "198.51.100.4");
    assert_eq!(ctx.client.ip, "198.51.100.4".parse().ok());
    let mut up = req.clone();
    edge.proxy
        .upstream_request(&mut up, false, &mut ctx)
        .unwrap();
    assert_eq!(
        header_values(&up.headers, "x-forwarded-for"),
        ["1.1.1.1, 203.0.113.9, 10.0.0.5, 198.51.100.4"]
    );
}

#[test]
fn the_rate_limit_keys_on_the_forwarded_client() {
    let edge = middlewares_edge();
    let from = |ip: &str| {
        let mut req = get("app.test", "/");
        req.insert_header("x-forwarded-for", ip).unwrap();
        req
    };
    for _ in 0..2 {
        assert!(admit_from(&edge, &from("203.0.113.1"), "10.0.0.7")
            .1
            .is_none());
    }
    assert!(admit_from(&edge, &from("203.0.113.1"), "10.0.0.7")
        .1
        .is_some());
    // The same proxy, another client.
    assert!(admit_from(&edge, &from("203.0.113.2"), "10.0.0.7")
        .1
        .is_none());
}

#[test]
fn request_and_response_headers_of_the_route() {
    let edge = middlewares_edge();
    let mut req = get("app.test", "/");
    req.insert_header("x-env", "dev").unwrap();
    let (mut ctx, _) = admit_from(&edge, &req, "192.0.2.3");
    let mut up = req.clone();
    edge.proxy
        .upstream_request(&mut up, false, &mut ctx)
        .unwrap();
    assert_eq!(header_values(&up.headers, "x-env"), ["prod"]);

    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("server", "backend/1.0").unwrap();
    resp.insert_header("referrer-policy", "no-referrer")
        .unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    let h = &resp.headers;
    assert_eq!(
        header(h, "content-security-policy"),
        Some("default-src 'self'")
    );
    assert_eq!(header(h, "server"), None);
    assert_eq!(header(h, "referrer-policy"), Some("no-referrer"));
    assert_eq!(header(h, "x-content-type-options"), Some("nosniff"));

    // Nothing of it on a route without middlewares.
    let (mut ctx, _) = admit_from(&edge, &get("plain.test", "/"), "192.0.2.3");
    let mut resp = ResponseHeader::build(200, None).unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert!(!resp.headers.contains_key("x-content-type-options"));
}

#[test]
fn compress_picks_an_encoder_for_a_compressible_response() {
    let edge = middlewares_edge();
    let mut req = get("app.test", "/");
    req.insert_header("accept-encoding", "gzip, br").unwrap();
    let (mut ctx, _) = admit_from(&edge, &req, "192.0.2.4");
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "text/html").unwrap();
    resp.insert_header("content-length", "4096").unwrap();
    edge.proxy.client_response(&mut resp, &mut ctx).unwrap();
    assert!(ctx.encoder.is_some());
    assert_eq!(header(&resp.headers, "content-encoding"), Some("br"));
    assert_eq!(header(&resp.headers, "content-length"), None);
}

#[test]
fn the_rate_limit_survives_a_new_snapshot() {
    let edge = middlewares_edge();
    let req = get("app.test", "/");
    for _ in 0..2 {
        assert!(admit_from(&edge, &req, "192.0.2.9").1.is_none());
    }
    // A release or reload builds a new snapshot: the buckets stay.
    let shared = &edge.proxy.shared;
    let config = shared.snapshot.load().config.clone();
    let snap = snapshot::build(
        config,
        &ReleaseState::default(),
        &Overrides::default(),
        &Default::default(),
        &shared.retained,
    );
    shared.publish(snap);
    assert_eq!(
        admit_from(&edge, &req, "192.0.2.9").1.map(|l| l.status),
        Some(429)
    );
}

#[test]
fn ip_text_writes_an_address_as_its_display_does() {
    let mut ips: Vec<std::net::IpAddr> =
        ["2001:db8::7", "::ffff:192.0.2.1", "::1", "1:2:3:4:5:6:7:8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
    ips.push(std::net::Ipv6Addr::from(u128::MAX).into());
    for a in [0u8, 1, 9, 10, 99, 100, 199, 255] {
        ips.push(std::net::Ipv4Addr::new(a, 255 - a, a / 2, 7).into());
    }
    for ip in ips {
        let (text, len) = ip_text(ip);
        assert_eq!(&text[..len], ip.to_string().as_bytes(), "{ip}");
    }
}

// ---- upstream_head from the client's HTTP/1 head ---------------------------------------------

/// A client's HTTP/1 head as `edge::h1` takes it: checked, parsed once, then sanitised.
fn h1_request(head: &str) -> (Bytes, RequestHeader, ParsedLines) {
    let head = Bytes::copy_from_slice(head.as_bytes());
    let limits = crate::core::config::Limits::default();
    let parsed = crate::edge::client_h1::parse_request(&head, &limits).unwrap();
    let mut req = parsed.req;
    // As `edge::h1` does: what the parse noted spares the lookups of absent headers.
    sanitize_request(&mut req, parsed.presence).unwrap();
    let lines = ParsedLines {
        lines: parsed.lines,
        presence: parsed.presence,
    };
    (head, req, lines)
}

/// Where a parsed head's lines lie and which headers it has, as a session keeps them.
struct ParsedLines {
    lines: KeptLines,
    presence: HeaderPresence,
}

impl ParsedLines {
    fn over<'a>(&'a self, raw: &'a [u8]) -> RawHead<'a> {
        self.lines.over(raw, self.presence)
    }
}

/// The upstream head of `req` written by `upstream_head`, from `raw` when given.
fn head_upstream(
    edge: &Edge,
    req: &RequestHeader,
    raw: Option<RawHead<'_>>,
    upgrade: bool,
) -> String {
    let mut ctx = edge.routed(req);
    let mut out = Vec::new();
    assert!(edge
        .proxy
        .upstream_head(req, raw, upgrade, &mut ctx, &mut out));
    String::from_utf8(out).unwrap()
}

/// The header lines of a head, the X-Request-Id a proxy makes up blanked.
fn lines_of(head: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(": ") {
            Some((name, value))
                if name.eq_ignore_ascii_case("x-request-id") && value.len() == 32 =>
            {
                format!("{name}: -")
            }
            _ => l.to_string(),
        })
        .collect()
}

#[test]
fn upstream_head_keeps_the_clients_case_and_order() {
    let (raw, req, lines) = h1_request(
        "POST /up HTTP/1.1\r\nuser-agent: t/1\r\nHOST: app.test\r\nX-Custom-Thing:  a  b \r\nConnection: keep-alive\r\nAccept: */*\r\nx-custom-thing: second\r\nTE: trailers\r\nContent-Length: 007\r\nExpect: 100-continue\r\nX-Forwarded-For: 203.0.113.1\r\nCookie: a=1\r\ncookie: b=2\r\n\r\n",
    );
    let head = head_upstream(&Edge::new(), &req, Some(lines.over(&raw)), false);
    let scanned = head_upstream(&Edge::new(), &req, Some(RawHead::scanned(&raw)), false);
    assert_eq!(lines_of(&head), lines_of(&scanned));
    assert!(head.starts_with("POST /up HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        lines_of(&head),
        [
            "user-agent: t/1",
            "HOST: app.test",
            "X-Custom-Thing: a  b",
            "Accept: */*",
            "x-custom-thing: second",
            // The name as sent, the value canonical (`sanitize_request`).
            "Content-Length: 7",
            "Cookie: a=1",
            "cookie: b=2",
            "X-Forwarded-For: 203.0.113.1, 192.0.2.7",
            "X-Forwarded-Proto: http",
            "X-Forwarded-Host: app.test",
            "X-Request-Id: -",
        ]
    );
    assert!(head.ends_with("\r\n\r\n"));
}

#[test]
fn upstream_head_from_the_raw_head_drops_what_the_header_path_drops() {
    for (head, upgrade) in [
        ("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", false),
        (
            "GET /a/../b?q HTTP/1.1\r\nHost: app.test\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nProxy-Authorization: b\r\nProxy-Authenticate: c\r\nTrailer: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nX-Forwarded-Proto: ftp\r\nX-Forwarded-Host: evil\r\nX-Request-Id: mine\r\n\r\n",
            false,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: k\r\nX-Request-Id: \r\n\r\n",
            true,
        ),
        (
            "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:  Chunked \r\nExpect: 100-continue\r\n\r\n",
            false,
        ),
        (
            "GET http://app.test/abs HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.1\r\nx-forwarded-for: 203.0.113.2\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n", false),
    ] {
        let edge = Edge::new();
        let (raw, req, lines) = h1_request(head);
        assert_eq!(req.headers.contains_key(header::UPGRADE), upgrade, "{head:?}");
        let from_raw = head_upstream(&edge, &req, Some(lines.over(&raw)), upgrade);
        let from_map = head_upstream(&edge, &req, None, upgrade);
        let first = |h: &str| h.split("\r\n").next().unwrap().to_string();
        assert_eq!(first(&from_raw), first(&from_map), "{head:?}");
        // The same lines, names compared without their case (the map's order groups a
        // name's lines; the raw head's is the client's).
        let normal = |h: &str| {
            let mut lines: Vec<String> = lines_of(h)
                .into_iter()
                .map(|l| {
                    let (name, value) = l.split_once(": ").unwrap();
                    format!("{}: {value}", name.to_ascii_lowercase())
                })
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(normal(&from_raw), normal(&from_map), "{head:?}\n{from_raw}");
    }
}

#[test]
fn raw_line_follows_the_header_rules_for_every_name() {
    let names = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "expect",
        "x-request-id",
        "host",
        "accept",
        "cookie",
        "t",
        "tf",
        "x-request-ix",
        "x-forwarded-fox",
        "proxy-authorizatio",
        "content-lengths",
        "set-cookie",
    ];
    for name in names {
        let parsed = HeaderName::from_static(name);
        for upgrade in [false, true] {
            for keep_id in [false, true] {
                for spelled in [name.to_string(), name.to_ascii_uppercase()] {
                    let rule = raw_line(spelled.as_bytes(), upgrade, keep_id);
                    assert_eq!(
                        rule == RawLine::Drop,
                        dropped(&parsed, upgrade, keep_id),
                        "{spelled} upgrade={upgrade} keep_id={keep_id}"
                    );
                }
            }
        }
    }
    for name in ["Content-Length", "transfer-encoding"] {
        assert!(matches!(
            raw_line(name.as_bytes(), false, false),
            RawLine::Framing(_)
        ));
    }
    assert!(HOP_BY_HOP.iter().all(|h| names.contains(&h.as_str())));
}

#[test]
fn an_edited_head_keeps_the_clients_spelling_of_names() {
    let (raw, req, lines) =
        h1_request("GET / HTTP/1.1\r\nHOST: app.test\r\nX-Custom: 1\r\nuser-agent: t\r\n\r\n");
    let mut up = req.clone();
    up.insert_header("x-added", "2").unwrap();
    let mut out = Vec::new();
    edited_head(&up, Some(lines.over(&raw)), &mut out);
    let head = String::from_utf8(out).unwrap();
    assert_eq!(
        head,
        "GET / HTTP/1.1\r\nHOST: app.test\r\nX-Custom: 1\r\nuser-agent: t\r\nx-added: 2\r\n\r\n"
    );
}

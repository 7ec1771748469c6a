//! What the proxy decides per request.
//!
//! The decisions (route, ACME answer, redirect, color, backend, headers both ways, metrics)
//! live on `EdgeProxy` as plain functions; `crate::edge::relay` runs them for HTTP/1 and
//! HTTP/2 requests alike.
//!
//! Per request: one snapshot load, one route lookup, one `Arc` clone of the service, a
//! round-robin pick. Metrics handles come resolved from the snapshot; nothing here locks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::l4::socket::SocketAddr as ClientAddr;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::core::request_head::{self, normalize_path, Refusal, Rejection};
use crate::edge::client_addr::{self, forwarded_entries, Client, X_FORWARDED_FOR};
use crate::edge::client_h1::RawHead;
use crate::edge::middleware::compress::{self, Encoder, Negotiated};
use crate::edge::middleware::{headers, rate_limit};
use crate::edge::presence::HeaderPresence;
use crate::runtime::metrics::{self, UpstreamErrorKind};
use crate::runtime::pool::{Pool, PoolLoad};
use crate::runtime::seams::Http01Answers;
use crate::runtime::shared::Shared;
use crate::runtime::snapshot::{RouteEdge, ServiceRuntime};

/// How long an idle upstream connection stays in a thread's idle list (`crate::edge::upstream`).
pub(crate) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy. `Transfer-Encoding` is
/// left to the HTTP/1 sessions, which re-frame bodies themselves; `Upgrade` and `Connection` are kept on
/// upgrade requests so WebSockets pass.
/// Parsed once: a lookup by `&str` would parse and classify the name on every request.
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
];

#[derive(Clone)]
pub struct EdgeProxy {
    pub shared: Arc<Shared>,
    /// Set on the HTTPS listener's instance.
    pub tls: bool,
    /// Certificates and ACME challenge answers, when TLS is configured.
    pub certs: Option<Arc<dyn Http01Answers>>,
    /// The HTTPS port to redirect to (from the HTTP listener), when TLS is configured.
    pub https_port: Option<u16>,
}

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
pub(crate) static HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Counts a request as in flight on its pool until dropped with the request's context.
pub(crate) struct InflightGuard(Arc<PoolLoad>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an upgraded (WebSocket) connection until it closes.
pub(crate) struct UpgradedGuard(Arc<PoolLoad>);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RequestCtx {
    start: Instant,
    pub(crate) service: Option<Arc<ServiceRuntime>>,
    /// Index into `service.pools` of the color serving this request.
    pool: usize,
    retried: bool,
    /// The backend the current attempt goes to.
    backend: Option<SocketAddr>,
    /// The X-Request-Id sent upstream, for the response (`client_response`).
    pub(crate) request_id: Option<HeaderValue>,
    /// The response gets Strict-Transport-Security (`[tls] hsts`, over TLS).
    pub(crate) hsts: bool,
    upstream_error: Option<UpstreamErrorKind>,
    /// Who sent the request (`edge::client_addr`), set by `admit`.
    pub(crate) client: Client,
    /// The route's middlewares, when it has any.
    pub(crate) edge: Option<Arc<RouteEdge>>,
    /// The route's rate limit refused the request.
    rate_limited: bool,
    /// The request's side of `compress`.
    compress: Negotiated,
    /// The response body's compressor, once the response header chose one.
    pub(crate) encoder: Option<Box<Encoder>>,
    _inflight: Option<InflightGuard>,
    _upgraded: Option<UpgradedGuard>,
}

impl RequestCtx {
    pub(crate) fn new() -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            service: None,
            pool: 0,
            retried: false,
            backend: None,
            request_id: None,
            hsts: false,
            upstream_error: None,
            client: Client::default(),
            edge: None,
            rate_limited: false,
            compress: Negotiated::default(),
            encoder: None,
            _inflight: None,
            _upgraded: None,
        }
    }

    pub(crate) fn pool(&self) -> Option<&Arc<Pool>> {
        self.service.as_ref().map(|s| &s.pools[self.pool])
    }

    pub(crate) fn is_upgraded(&self) -> bool {
        self._upgraded.is_some()
    }

    /// Counts an upstream error on the request's pool and remembers it for the status.
    pub(crate) fn upstream_failed(&mut self, kind: UpstreamErrorKind) {
        if let Some(pool) = self.pool() {
            pool.metrics.upstream_error(kind);
        }
        self.upstream_error = Some(kind);
    }

    /// Counts a failed connect that will be retried once, on another backend of the pool.
    pub(crate) fn retry_elsewhere(&mut self, kind: UpstreamErrorKind) {
        if let Some(pool) = self.pool() {
            pool.metrics.upstream_error(kind);
        }
        self.retried = true;
    }

    /// Whether a failed connect may be retried once, on another backend of the pool.
    pub(crate) fn may_retry_elsewhere(&self) -> bool {
        // With a single backend a retry would only knock on the same closed door.
        !self.retried && self.pool().is_some_and(|p| p.backends.len() > 1)
    }
}

/// A response the proxy gives itself, without an upstream: 404, a redirect, an ACME answer,
/// a 429.
pub(crate) struct LocalResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub location: Option<String>,
    /// Seconds, for a 429.
    pub retry_after: Option<u64>,
}

impl LocalResponse {
    pub(crate) fn text(status: u16, body: &'static [u8]) -> LocalResponse {
        LocalResponse {
            status,
            content_type: "text/plain",
            body: Bytes::from_static(body),
            location: None,
            retry_after: None,
        }
    }

    pub(crate) fn header(&self) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(5))?;
        resp.insert_header(header::CONTENT_TYPE, self.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        if let Some(loc) = &self.location {
            resp.insert_header(header::LOCATION, loc.as_str())?;
        }
        if let Some(s) = self.retry_after {
            resp.insert_header(header::RETRY_AFTER, s)?;
        }
        Ok(resp)
    }
}

/// What an error means for the client's answer, on either request path: one mapping, so an
/// HTTP/1 and an HTTP/2 client get the same status for the same failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorStatus {
    /// The backend failed (connect, read, write, timeout): 502, or 504 for a timeout (as
    /// nginx does). Counted on the request's pool as this kind.
    Upstream(UpstreamErrorKind),
    /// The client's request broke off or was malformed: 408 for a timeout, else 400.
    Refused(Refusal),
    /// The client went away, or its connection broke: there is no one to answer.
    ClientGone,
    /// A status the proxy chose where it raised the error (`ErrorType::HTTPStatus`).
    Status(u16),
    /// Anything else: the proxy's own fault, a 500.
    Internal,
}

impl ErrorStatus {
    /// The status the client gets; `None` when nothing can be sent.
    pub(crate) fn status(self) -> Option<u16> {
        match self {
            ErrorStatus::Upstream(
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::ReadTimeout,
            ) => Some(504),
            ErrorStatus::Upstream(_) => Some(502),
            ErrorStatus::Refused(refusal) => Some(refusal.status),
            ErrorStatus::ClientGone => None,
            ErrorStatus::Status(code) => Some(code),
            ErrorStatus::Internal => Some(500),
        }
    }
}

/// How an error ends a request, by its type and the side it came from (pingora's
/// `ErrorSource`: the request path marks its errors with `into_up`/`into_down` before asking).
pub(crate) fn error_status(e: &Error) -> ErrorStatus {
    if let ErrorType::HTTPStatus(code) = e.etype() {
        return ErrorStatus::Status(*code);
    }
    match e.esource() {
        ErrorSource::Upstream => ErrorStatus::Upstream(error_kind(e)),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                ErrorStatus::ClientGone
            }
            ErrorType::ReadTimedout => ErrorStatus::Refused(Refusal::new(408, Rejection::Timeout)),
            _ => ErrorStatus::Refused(Refusal::new(400, Rejection::BadFraming)),
        },
        ErrorSource::Internal | ErrorSource::Unset => ErrorStatus::Internal,
    }
}

/// The status the client got, for metrics and the access log, from the response written to
/// it: 499 when no final response was (the client went away first, as nginx logs it).
pub(crate) fn status_sent(written: Option<http::StatusCode>) -> u16 {
    match written {
        Some(s) if !s.is_informational() || s == 101 => s.as_u16(),
        _ => 499,
    }
}

/// The Host of a request: the Host header, or the authority of an HTTP/2 request.
fn request_host(req: &RequestHeader) -> &str {
    if let Some(h) = req.headers.get(header::HOST) {
        return h.to_str().unwrap_or("");
    }
    req.uri.authority().map_or("", |a| a.as_str())
}

/// A stable number in 0..100 for the client's address: with `sticky`, a client whose roll is
/// below the canary weight stays on the canary as the weight grows.
fn client_roll(client: Option<std::net::IpAddr>) -> u8 {
    let Some(ip) = client else {
        return 0;
    };
    let x = match ip {
        std::net::IpAddr::V4(v4) => u32::from(v4) as u64,
        std::net::IpAddr::V6(v6) => {
            let b = v6.octets();
            u64::from_be_bytes(b[..8].try_into().unwrap())
                ^ u64::from_be_bytes(b[8..].try_into().unwrap())
        }
    };
    // Fibonacci hashing spreads neighbouring addresses over the range.
    ((x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100) as u8
}

fn new_request_id() -> HeaderValue {
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Nibble by nibble from the lowest, a byte at a time.
    for (pair, byte) in buf.chunks_exact_mut(2).zip(id.to_le_bytes()) {
        pair[0] = HEX[(byte & 0xf) as usize];
        pair[1] = HEX[(byte >> 4) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// The header of a response the proxy gives itself; a routed one (a 429) gets the route's
/// response headers too.
pub(crate) fn local_header(local: &LocalResponse, ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut resp = local.header()?;
    if let Some(edge) = &ctx.edge {
        headers::on_response(&edge.middlewares, &mut resp)?;
    }
    Ok(resp)
}

/// `https://host[:port]/path?query` for a redirect from the HTTP listener.
fn https_location(host: &str, port: u16, req: &RequestHeader) -> String {
    let host = crate::core::routing::strip_port(host);
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

pub(crate) fn error_kind(e: &Error) -> UpstreamErrorKind {
    match e.etype() {
        ErrorType::ConnectTimedout => UpstreamErrorKind::ConnectTimeout,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::SocketError
        | ErrorType::BindError => UpstreamErrorKind::ConnectRefused,
        ErrorType::ReadTimedout => UpstreamErrorKind::ReadTimeout,
        ErrorType::WriteTimedout | ErrorType::WriteError => UpstreamErrorKind::Write,
        ErrorType::ReadError | ErrorType::ConnectionClosed | ErrorType::InvalidHTTPHeader => {
            UpstreamErrorKind::Read
        }
        _ => UpstreamErrorKind::Other,
    }
}

impl EdgeProxy {
    /// Routes a request: sets the client, service and color in `ctx` and returns `None` when
    /// it goes upstream, or returns the answer the proxy gives itself. `peer` is the
    /// connection's (the PROXY header's source, when there was one). `host_checked`: the
    /// request's host passed `valid_host` already (`Downstream::host_checked`).
    pub(crate) fn admit(
        &self,
        req: &RequestHeader,
        peer: Option<&ClientAddr>,
        host_checked: bool,
        ctx: &mut RequestCtx,
    ) -> Option<LocalResponse> {
        let snapshot = self.shared.snapshot.load();
        let peer_ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
        let trusted = &snapshot.config.listen.trusted_proxies;
        ctx.client = client_addr::resolve(peer_ip, &req.headers, trusted);
        if !self.tls {
            if let (Some(certs), Some(token)) = (
                &self.certs,
                req.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX),
            ) {
                // http-01: answered before routing, for any host, like Caddy.
                return Some(match certs.http01_answer(token) {
                    Some(ka) => LocalResponse {
                        status: 200,
                        content_type: "application/octet-stream",
                        body: Bytes::from(ka),
                        location: None,
                        retry_after: None,
                    },
                    None => LocalResponse::text(404, b"no such challenge\n"),
                });
            }
        }
        let host = request_host(req);
        if !host_checked && !host.is_empty() && !request_head::valid_host(host) {
            // Never routed, never echoed into a redirect.
            metrics::global().rejected(Rejection::BadRequest);
            return Some(LocalResponse::text(400, b"bad host\n"));
        }
        let found = snapshot
            .routes
            .lookup(host, req.uri.path())
            .map(|i| &snapshot.compiled[i]);
        let Some(route) = found else {
            return Some(LocalResponse::text(404, b"no route for this host\n"));
        };
        let service = &snapshot.services[route.service];
        if let Some(tls) = &snapshot.config.tls {
            if self.tls {
                ctx.hsts = tls.hsts;
            } else if let (true, Some(port)) = (tls.redirect_http, self.https_port) {
                let mut local = LocalResponse::text(308, b"redirecting to https\n");
                local.location = Some(https_location(request_host(req), port, req));
                return Some(local);
            }
        }
        if let Some(edge) = &route.edge {
            ctx.edge = Some(edge.clone());
            if let Some(limiter) = &edge.limiter {
                if let Some(refused) = rate_limit::check(limiter, ctx.client.ip) {
                    ctx.rate_limited = true;
                    return Some(refused);
                }
            }
            if let Some(c) = &edge.middlewares.compress {
                ctx.compress = compress::negotiate(c, req);
            }
        }
        let client = ctx.client.ip;
        ctx.pool = service.pick_pool(|| client_roll(client));
        let pool = &service.pools[ctx.pool];
        pool.load.inflight.fetch_add(1, Ordering::Relaxed);
        ctx._inflight = Some(InflightGuard(pool.load.clone()));
        ctx.service = Some(service.clone());
        None
    }

    /// The next backend of the request's pool: round robin over the healthy ones, never the
    /// one that just failed when retrying.
    pub(crate) fn pick_backend(&self, ctx: &mut RequestCtx) -> Option<SocketAddr> {
        let pool = ctx.pool()?;
        let exclude = if ctx.retried { ctx.backend } else { None };
        let addr = pool.pick(exclude)?.addr;
        ctx.backend = Some(addr);
        Some(addr)
    }

    /// Turns the client's request header into the upstream's: hop-by-hop headers out,
    /// X-Forwarded-* and X-Request-Id in, then the route's `request_headers`. `upstream`
    /// starts as a copy of the client's; `admit` has set the client in `ctx`.
    pub(crate) fn upstream_request(
        &self,
        upstream: &mut RequestHeader,
        upgrade: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_hop_by_hop(upstream, upgrade)?;
        if upstream.version == http::Version::HTTP_2 {
            join_cookies(upstream)?;
        }

        if let Some(value) = forwarded_for(&upstream.headers, ctx.client) {
            upstream.insert_header(X_FORWARDED_FOR.clone(), value)?;
        }
        let proto = if self.tls { "https" } else { "http" };
        upstream.insert_header(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto))?;
        if let Some(host) = upstream.headers.get(header::HOST).cloned() {
            upstream.insert_header(X_FORWARDED_HOST.clone(), host)?;
        } else if let Some(auth) = upstream.uri.authority() {
            // HTTP/2 carries the host in :authority; HTTP/1 upstreams need a Host header.
            if let Ok(host) = HeaderValue::from_str(auth.as_str()) {
                upstream.insert_header(header::HOST, host.clone())?;
                upstream.insert_header(X_FORWARDED_HOST.clone(), host)?;
            }
        }
        let id = match upstream.headers.get(&X_REQUEST_ID) {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let id = new_request_id();
                upstream.insert_header(X_REQUEST_ID.clone(), id.clone())?;
                id
            }
        };
        ctx.request_id = Some(id);
        if let Some(edge) = &ctx.edge {
            headers::on_request(&edge.middlewares, upstream)?;
        }
        Ok(())
    }

    /// The upstream request head of a request, written straight from the client's
    /// header into `out` with the edits `upstream_request` makes (hop-by-hop out,
    /// X-Forwarded-* and X-Request-Id in, `HTTP/1.1`, no `Expect`) — without copying the
    /// header into a second map first. Returns `false`, writing nothing, for what only
    /// `upstream_request` handles: a route with `request_headers`, a `Connection` header
    /// naming other headers, an HTTP/1 request without Host. An HTTP/2 request's Host comes
    /// from its :authority, and its Cookie fields are joined into one.
    ///
    /// `raw`: the client's HTTP/1 head (`Downstream::raw_head`). Its header lines go on from
    /// it, in the client's order and spelling of names (as nginx does), the framing values
    /// from the header (`sanitize_request` may have made them canonical). Without it
    /// (HTTP/2), the lines come from the header's map.
    pub(crate) fn upstream_head(
        &self,
        req: &RequestHeader,
        raw: Option<RawHead<'_>>,
        upgrade: bool,
        ctx: &mut RequestCtx,
        out: &mut Vec<u8>,
    ) -> bool {
        if ctx
            .edge
            .as_ref()
            .is_some_and(|e| !e.middlewares.request_headers.is_empty())
        {
            return false;
        }
        // HTTP/2 carries the host in :authority; the backend gets it as Host, first.
        let (host, from_authority) = match req.headers.get(header::HOST) {
            Some(host) => (host.as_bytes(), false),
            None => match req.uri.authority() {
                Some(auth) if req.version == http::Version::HTTP_2 => {
                    (auth.as_str().as_bytes(), true)
                }
                _ => return false,
            },
        };
        let h2 = req.version == http::Version::HTTP_2;
        let presence = raw.map_or(HeaderPresence::UNKNOWN, |r| r.presence());
        let names_others = presence
            .get_all(&req.headers, HeaderPresence::CONNECTION, header::CONNECTION)
            .any(|v| {
                v.as_bytes().split(|&c| c == b',').any(|t| {
                    let t = t.trim_ascii();
                    !(t.is_empty()
                        || t.eq_ignore_ascii_case(b"close")
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || t.eq_ignore_ascii_case(b"upgrade"))
                })
            });
        if names_others {
            return false;
        }
        // The client's own X-Request-Id goes on as sent, unless it is empty.
        let client_id = presence
            .get(&req.headers, HeaderPresence::X_REQUEST_ID, &X_REQUEST_ID)
            .filter(|v| !v.is_empty());
        let keep_id = client_id.is_some();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if from_authority {
            line(out, b"Host", host);
        }
        if let Some(head) = raw {
            for (name, value) in head.lines() {
                match raw_line(name, upgrade, keep_id) {
                    RawLine::Keep => line(out, name, value),
                    RawLine::Drop => {}
                    RawLine::Framing(framing) => {
                        if let Some(value) = req.headers.get(framing) {
                            line(out, name, value.as_bytes());
                        }
                    }
                }
            }
        } else {
            let mut cased = req.case_header_iter();
            for (name, value) in req.headers.iter() {
                // The case map, when there is one, runs in step with the map (pingora's
                // order).
                let wire = cased.next().map(|(c, _)| c.as_slice());
                if !(dropped(name, upgrade, keep_id) || (h2 && name == header::COOKIE)) {
                    line(
                        out,
                        wire.unwrap_or(name.as_str().as_bytes()),
                        value.as_bytes(),
                    );
                }
            }
        }
        if h2 {
            // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one, joined with
            // "; " (RFC 9113 §8.2.3).
            let mut cookies = req.headers.get_all(header::COOKIE).iter();
            if let Some(first) = cookies.next() {
                out.extend_from_slice(b"cookie: ");
                out.extend_from_slice(first.as_bytes());
                for more in cookies {
                    out.extend_from_slice(b"; ");
                    out.extend_from_slice(more.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        if upgrade {
            line(out, b"Connection", b"upgrade");
        }
        // Written in place: no header value is made only to be copied out again.
        let mark = out.len();
        out.extend_from_slice(b"X-Forwarded-For: ");
        if forwarded_value(&req.headers, presence, ctx.client, out) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.truncate(mark);
        }
        line(
            out,
            b"X-Forwarded-Proto",
            if self.tls { b"https" } else { b"http" },
        );
        line(out, b"X-Forwarded-Host", host);
        let id = if let Some(id) = client_id {
            id.clone()
        } else {
            let id = new_request_id();
            line(out, b"X-Request-Id", id.as_bytes());
            id
        };
        out.extend_from_slice(b"\r\n");
        ctx.request_id = Some(id);
        true
    }

    /// Edits the upstream's response header for the client; counts a 101 as an upgraded
    /// connection of the request's color.
    pub(crate) fn client_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status == 101 {
            if let Some(pool) = ctx.pool() {
                pool.load.upgraded.fetch_add(1, Ordering::Relaxed);
                ctx._upgraded = Some(UpgradedGuard(pool.load.clone()));
            }
        } else {
            strip_hop_by_hop(resp, false)?;
        }
        if ctx.hsts && !resp.headers.contains_key(header::STRICT_TRANSPORT_SECURITY) {
            resp.insert_header(header::STRICT_TRANSPORT_SECURITY, HSTS.clone())?;
        }
        if let Some(id) = ctx.request_id.take() {
            if !resp.headers.contains_key(&X_REQUEST_ID) {
                resp.insert_header(X_REQUEST_ID.clone(), id)?;
            }
        }
        if let (Some(edge), false) = (&ctx.edge, ctx.is_upgraded()) {
            headers::on_response(&edge.middlewares, resp)?;
            if let Some(c) = &edge.middlewares.compress {
                ctx.encoder = compress::start(ctx.compress, c, resp).map(Box::new);
            }
        }
        Ok(())
    }

    /// Metrics, the SLO window and the access log, once per request. `status` is what the
    /// client got; 499 when no response was written (the client went away first, as nginx).
    pub(crate) fn record(
        &self,
        req: &RequestHeader,
        status: u16,
        e: Option<&Error>,
        ctx: &RequestCtx,
    ) {
        let elapsed = ctx.start.elapsed();
        match ctx.pool() {
            // An upgraded connection's "duration" is its WebSocket session: count it, but
            // keep it out of the latency figures (and so out of the SLO's p95).
            Some(pool) if ctx._upgraded.is_some() => pool.metrics.count(status),
            Some(pool) => {
                pool.metrics.record(status, elapsed.as_secs_f64());
                if let Some(slo) = pool.load.slo.get() {
                    slo.record(status, elapsed.as_millis() as u64);
                }
            }
            // A 429 of the route's rate limit: counted with the service and no color, so
            // it is in no color's figures and no SLO.
            None if ctx.rate_limited => {
                if let Some(edge) = &ctx.edge {
                    edge.refused.record(status, elapsed.as_secs_f64());
                }
            }
            None => metrics::global()
                .unrouted()
                .record(status, elapsed.as_secs_f64()),
        }
        if self.shared.access_log.load(Ordering::Relaxed) {
            tracing::info!(
                target: "access",
                method = %req.method,
                host = request_host(req),
                path = req.uri.path(),
                status,
                client = ctx.client.ip.map(tracing::field::display),
                service = ctx.service.as_ref().map_or("", |s| s.name.as_str()),
                color = ctx.pool().map_or("", |p| p.color_label),
                backend = ctx.backend.map(|b| b.to_string()).unwrap_or_default(),
                ms = elapsed.as_secs_f64() * 1000.0,
                error = e.map(|e| e.to_string()).unwrap_or_default(),
                "request"
            );
        }
    }
}

/// The compressor failed (it writes to memory: it does not).
pub(crate) fn compression_error(e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::InternalError, "compressing the response body", e)
}

/// Whether `upstream_head` leaves a client's header out: the hop-by-hop ones (Upgrade
/// unless the request upgrades), what the proxy sets itself (X-Forwarded-*, X-Request-Id
/// unless the client's is kept) and Expect (answered by the proxy).
fn dropped(name: &HeaderName, upgrade: bool, keep_id: bool) -> bool {
    name == header::CONNECTION
        || HOP_BY_HOP.contains(name)
        || (name == header::UPGRADE && !upgrade)
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == header::EXPECT
        || (name == X_REQUEST_ID && !keep_id)
}

/// What becomes of a client's HTTP/1 header line on its way upstream.
#[derive(Debug, PartialEq, Eq)]
enum RawLine {
    Keep,
    Drop,
    /// Content-Length or Transfer-Encoding: the name as sent, the value from the header.
    Framing(&'static HeaderName),
}

static CONTENT_LENGTH: HeaderName = header::CONTENT_LENGTH;
static TRANSFER_ENCODING: HeaderName = header::TRANSFER_ENCODING;

/// `dropped`'s rules by a name's bytes, in any case: cheaper than making every name of
/// every request a `HeaderName` first. The length picks the few names worth comparing.
fn raw_line(name: &[u8], upgrade: bool, keep_id: bool) -> RawLine {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    let drop = match name.len() {
        2 => is("te"),
        6 => is("expect"),
        7 => (is("upgrade") && !upgrade) || is("trailer"),
        10 => is("connection") || is("keep-alive"),
        12 => is("x-request-id") && !keep_id,
        14 if is("content-length") => return RawLine::Framing(&CONTENT_LENGTH),
        15 => is("x-forwarded-for"),
        16 => is("proxy-connection") || is("x-forwarded-host"),
        17 if is("transfer-encoding") => return RawLine::Framing(&TRANSFER_ENCODING),
        17 => is("x-forwarded-proto"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    };
    if drop {
        RawLine::Drop
    } else {
        RawLine::Keep
    }
}

/// An upstream request head from an edited copy of the client's header (`upstream_request`):
/// each name in the client's spelling when the client sent it (found in its HTTP/1 head,
/// `raw`), else as the header has it. From HTTP/1 only routes with `request_headers` and
/// requests whose Connection names other headers come here: a search per name is cheap
/// enough for them while the session kept the places of the head's lines (a few). A head
/// with more lines goes on with the header's names: a search per name through a scan of the
/// head would be quadratic in what a client sends, on a path any client can choose.
pub(crate) fn edited_head(req: &RequestHeader, raw: Option<RawHead<'_>>, out: &mut Vec<u8>) {
    let Some(raw) = raw.filter(RawHead::lines_kept) else {
        return crate::edge::upstream_h1::request_head(req, out);
    };
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        let wanted = name.as_str().as_bytes();
        let spelled = raw
            .lines()
            .find(|(sent, _)| sent.eq_ignore_ascii_case(wanted))
            .map_or(wanted, |(sent, _)| sent);
        out.extend_from_slice(spelled);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// X-Forwarded-For for the upstream: what the client sent with the client address appended,
/// or — when the address came from X-Forwarded-For itself, through trusted proxies — the
/// entries up to and including it, so the last entry a backend sees is always the client.
fn forwarded_for(headers: &http::HeaderMap, client: Client) -> Option<HeaderValue> {
    let mut buf = Vec::with_capacity(64);
    if !forwarded_value(headers, HeaderPresence::UNKNOWN, client, &mut buf) {
        return None;
    }
    Some(
        HeaderValue::from_maybe_shared(Bytes::from(buf))
            .expect("header values and an IP make a valid header value"),
    )
}

/// Appends X-Forwarded-For's value to `out` (see `forwarded_for`); `false`, appending
/// nothing, when the client's address is unknown.
fn forwarded_value(
    headers: &http::HeaderMap,
    presence: HeaderPresence,
    client: Client,
    out: &mut Vec<u8>,
) -> bool {
    let Some(ip) = client.ip else {
        return false;
    };
    match client.forwarded_entry {
        None => {
            // `prev, ip` or `ip`, where `prev` joins every X-Forwarded-For line the client
            // sent, in order.
            for p in presence.get_all(headers, HeaderPresence::X_FORWARDED_FOR, &X_FORWARDED_FOR) {
                out.extend_from_slice(p.as_bytes());
                out.extend_from_slice(b", ");
            }
            let (text, text_len) = ip_text(ip);
            out.extend_from_slice(&text[..text_len]);
        }
        Some(n) => {
            for (i, entry) in forwarded_entries(headers).take(n as usize).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(entry.trim_ascii());
            }
        }
    }
    true
}

/// An address as text and its length: IPv4 written here (`core::fmt` costs more than the
/// rest of X-Forwarded-For), IPv6 by its `Display`.
fn ip_text(ip: std::net::IpAddr) -> ([u8; 45], usize) {
    let mut text = [0u8; 45];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            let mut rest = &mut text[..];
            // At most 45 characters (39 for the longest IPv6 text).
            let _ = write!(rest, "{v6}");
            45 - rest.len()
        }
    };
    (text, len)
}

/// HTTP/2 may split Cookie into several fields; an HTTP/1.1 backend gets one, joined with
/// "; " (RFC 9113 §8.2.3).
fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    let mut cookies = req.headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for more in req.headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    let joined = HeaderValue::from_bytes(&joined)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid cookie"))?;
    req.insert_header(header::COOKIE, joined)
}

/// Makes a request unambiguous before it is routed, on both request paths: the path
/// normalised (what prefixes match and what the backend gets; `Err` when it climbs above
/// `/`), an Upgrade other than WebSocket dropped (h2c and friends are not proxied), framing
/// headers in their one canonical form (the head checks allow a little whitespace).
pub(crate) fn sanitize_request(
    req: &mut RequestHeader,
    presence: HeaderPresence,
) -> std::result::Result<(), Refusal> {
    const BAD: Refusal = Refusal::new(400, Rejection::BadRequest);
    let normalized = match req.uri.path_and_query() {
        Some(pq) => match normalize_path(pq.as_str())? {
            std::borrow::Cow::Owned(p) => Some(p),
            std::borrow::Cow::Borrowed(_) => None,
        },
        None => None,
    };
    // An absolute-form target (`GET http://a.test/x`) goes on in origin form: its authority
    // equals Host (pingora refuses it otherwise), and a backend must not route on another.
    // (pingora keeps an HTTP/1 absolute-form target verbatim for the wire and only its path
    // in the URI; `set_uri` below drops the verbatim copy.)
    let absolute = req.uri.path().starts_with('/')
        && !req.raw_path().starts_with(b"/")
        && req.headers.contains_key(header::HOST);
    if normalized.is_some() || absolute {
        let pq = match normalized {
            Some(p) => p.parse().map_err(|_| BAD)?,
            None => req
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        };
        let uri = if absolute {
            http::Uri::from(pq)
        } else {
            // HTTP/2 keeps its :scheme and :authority.
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            http::Uri::from_parts(parts).map_err(|_| BAD)?
        };
        req.set_uri(uri);
    }
    if let Some(up) = presence.get(&req.headers, HeaderPresence::UPGRADE, header::UPGRADE) {
        if !up.as_bytes().eq_ignore_ascii_case(b"websocket") {
            req.remove_header(&header::UPGRADE);
        }
    }
    let te = HeaderPresence::TRANSFER_ENCODING;
    if let Some(te) = presence.get(&req.headers, te, header::TRANSFER_ENCODING) {
        if te.as_bytes() != b"chunked" {
            let _ = req.insert_header(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    }
    let cl = HeaderPresence::CONTENT_LENGTH;
    if let Some(cl) = presence.get(&req.headers, cl, header::CONTENT_LENGTH) {
        let v = cl.as_bytes();
        let canonical =
            !v.is_empty() && v.iter().all(u8::is_ascii_digit) && (v[0] != b'0' || v.len() == 1);
        if !canonical {
            let n: u64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(Refusal::new(400, Rejection::BadFraming))?;
            let _ = req.insert_header(header::CONTENT_LENGTH, n);
        }
    }
    Ok(())
}

/// An upgraded connection stays on the color it opened on until it closes or that color's
/// drain timeout passes; then the next frame in either direction closes it.
#[inline]
pub(crate) fn check_drain(ctx: &RequestCtx) -> Result<()> {
    if let Some(UpgradedGuard(load)) = &ctx._upgraded {
        if load.drain_expired() {
            return Error::e_explain(
                ErrorType::InternalError,
                "drain timeout passed: closing the upgraded connection",
            );
        }
    }
    Ok(())
}

/// Header edits through pingora's own methods, which keep its case map in step.
trait EditHeaders {
    fn headers(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
}

impl EditHeaders for RequestHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
}

impl EditHeaders for ResponseHeader {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
}

/// Headers a `Connection` token may never remove: the message's own identity and framing,
/// and what the proxy itself sets (RFC 9110 §7.6.1 lets a sender name only hop-by-hop
/// fields; a client naming these is trying to confuse the backend).
fn protected(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == X_REQUEST_ID
}

fn strip_hop_by_hop(h: &mut impl EditHeaders, upgrade: bool) -> Result<()> {
    // One pass over the names first: most messages carry none of these, or only
    // Connection, and a lookup per name would hash each of them.
    let (mut connection, mut others) = (false, false);
    for name in h.headers().keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if (name == header::UPGRADE && !upgrade) || HOP_BY_HOP.contains(name) {
            others = true;
        }
    }
    if connection {
        // Headers named in Connection are hop-by-hop too (rare; allocation only then). Every
        // Connection line counts, not only the first.
        let listed: Vec<HeaderName> = h
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("upgrade")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !protected(n))
            .collect();
        for name in &listed {
            h.remove(name);
        }
        if upgrade {
            h.set(header::CONNECTION, HeaderValue::from_static("upgrade"))?;
        } else {
            h.remove(&header::CONNECTION);
        }
    }
    if others {
        for name in &HOP_BY_HOP {
            if h.headers().contains_key(name) {
                h.remove(name);
            }
        }
        if !upgrade && h.headers().contains_key(header::UPGRADE) {
            h.remove(&header::UPGRADE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

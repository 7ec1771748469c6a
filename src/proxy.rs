//! The request path: pingora's `ProxyHttp` over the routing snapshot.
//!
//! Per request: one snapshot load, one route lookup, one `Arc` clone of the service, a
//! round-robin pick. Metrics handles come resolved from the snapshot; nothing here locks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::prelude::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::metrics::{self, UpstreamErrorKind};
use crate::pool::{Pool, PoolLoad};
use crate::shared::Shared;
use crate::snapshot::ServiceRuntime;
use crate::tls::store::CertStore;

/// How long an idle upstream connection stays in pingora's pool.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy. `Transfer-Encoding` is
/// left to pingora, which re-frames bodies itself; `Upgrade` and `Connection` are kept on
/// upgrade requests so WebSockets pass.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

pub struct EdgeProxy {
    pub shared: Arc<Shared>,
    /// Set on the HTTPS listener's instance.
    pub tls: bool,
    /// Certificates and ACME challenge answers, when TLS is configured.
    pub certs: Option<Arc<CertStore>>,
    /// The HTTPS port to redirect to (from the HTTP listener), when TLS is configured.
    pub https_port: Option<u16>,
}

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
static HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Counts a request as in flight on its pool until dropped with the request's context.
struct InflightGuard(Arc<PoolLoad>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an upgraded (WebSocket) connection until it closes.
struct UpgradedGuard(Arc<PoolLoad>);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RequestCtx {
    start: Instant,
    service: Option<Arc<ServiceRuntime>>,
    /// Index into `service.pools` of the color serving this request.
    pool: usize,
    retried: bool,
    /// The backend the current attempt goes to.
    backend: Option<SocketAddr>,
    request_id: Option<HeaderValue>,
    hsts: bool,
    upstream_error: Option<UpstreamErrorKind>,
    _inflight: Option<InflightGuard>,
    _upgraded: Option<UpgradedGuard>,
}

impl RequestCtx {
    fn pool(&self) -> Option<&Arc<Pool>> {
        self.service.as_ref().map(|s| &s.pools[self.pool])
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
fn client_roll(session: &Session) -> u8 {
    let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) else {
        return 0;
    };
    let x = match addr.ip() {
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
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// Answers the client directly, keeping the connection open (unlike `respond_error`).
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    location: Option<&str>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if let Some(loc) = location {
        resp.insert_header(header::LOCATION, loc)?;
    }
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `https://host[:port]/path?query` for a redirect from the HTTP listener.
fn https_location(host: &str, port: u16, req: &RequestHeader) -> String {
    let host = crate::routing::strip_port(host);
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

fn error_kind(e: &Error) -> UpstreamErrorKind {
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

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            service: None,
            pool: 0,
            retried: false,
            backend: None,
            request_id: None,
            hsts: false,
            upstream_error: None,
            _inflight: None,
            _upgraded: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Keep-alive connections reuse the context type but not the value: restart the clock.
        ctx.start = Instant::now();
        let snapshot = self.shared.snapshot.load();
        let req = session.req_header();
        if !self.tls {
            if let (Some(certs), Some(token)) = (
                &self.certs,
                req.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX),
            ) {
                // http-01: answered before routing, for any host, like Caddy.
                let answer = certs.http_challenge(token);
                match answer {
                    Some(ka) => {
                        respond(
                            session,
                            200,
                            "application/octet-stream",
                            Bytes::from(ka),
                            None,
                        )
                        .await?
                    }
                    None => {
                        respond(
                            session,
                            404,
                            "text/plain",
                            Bytes::from_static(b"no such challenge\n"),
                            None,
                        )
                        .await?
                    }
                }
                return Ok(true);
            }
        }
        let found = snapshot
            .routes
            .lookup(request_host(req), req.uri.path())
            .map(|i| &snapshot.services[i]);
        let Some(service) = found else {
            respond(
                session,
                404,
                "text/plain",
                Bytes::from_static(b"no route for this host\n"),
                None,
            )
            .await?;
            return Ok(true);
        };
        if let Some(tls) = &snapshot.config.tls {
            if self.tls {
                ctx.hsts = tls.hsts;
            } else if let (true, Some(port)) = (tls.redirect_http, self.https_port) {
                let location = https_location(request_host(req), port, req);
                respond(
                    session,
                    308,
                    "text/plain",
                    Bytes::from_static(b"redirecting to https\n"),
                    Some(&location),
                )
                .await?;
                return Ok(true);
            }
        }
        ctx.pool = service.pick_pool(|| client_roll(session));
        let pool = &service.pools[ctx.pool];
        pool.load.inflight.fetch_add(1, Ordering::Relaxed);
        ctx._inflight = Some(InflightGuard(pool.load.clone()));
        ctx.service = Some(service.clone());
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let service = ctx
            .service
            .as_ref()
            .expect("request_filter set the service");
        let pool = &service.pools[ctx.pool];
        let exclude = if ctx.retried { ctx.backend } else { None };
        let Some(backend) = pool.pick(exclude) else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "the pool has no backend");
        };
        ctx.backend = Some(backend.addr);
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        let opts = &mut peer.options;
        opts.connection_timeout = Some(service.config.connect_timeout);
        opts.total_connection_timeout = Some(service.config.connect_timeout);
        opts.read_timeout = Some(service.config.read_timeout);
        opts.write_timeout = Some(service.config.read_timeout);
        opts.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = error_kind(&e);
        if let Some(pool) = ctx.pool() {
            pool.metrics.upstream_error(kind);
        }
        // One retry, on another backend; with a single backend a retry would only knock on
        // the same closed door.
        let others = ctx.pool().is_some_and(|p| p.backends.len() > 1);
        if !ctx.retried && others {
            ctx.retried = true;
            e.set_retry(true);
        } else {
            ctx.upstream_error = Some(kind);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let upgrade = session.is_upgrade_req();
        strip_hop_by_hop(upstream, upgrade)?;

        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            // One buffer, handed to the header without a copy: `prev, ip` or `ip`.
            let prev = upstream.headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes());
            let mut buf = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 45);
            if let Some(p) = prev {
                buf.extend_from_slice(p);
                buf.extend_from_slice(b", ");
            }
            let _ = write!(buf, "{}", addr.ip());
            let value = HeaderValue::from_maybe_shared(Bytes::from(buf))
                .expect("a header value plus an IP is a valid header value");
            upstream.insert_header(X_FORWARDED_FOR.clone(), value)?;
        }
        let proto = if self.tls { "https" } else { "http" };
        upstream.insert_header(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto))?;
        if let Some(host) = session.req_header().headers.get(header::HOST).cloned() {
            upstream.insert_header(X_FORWARDED_HOST.clone(), host)?;
        } else if let Some(auth) = session.req_header().uri.authority() {
            let host = HeaderValue::from_str(auth.as_str()).ok();
            if let Some(host) = host {
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
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
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
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream => {
                    let kind = error_kind(e);
                    if ctx.upstream_error.is_none() {
                        if let Some(pool) = ctx.pool() {
                            // Connect failures were counted in fail_to_connect.
                            pool.metrics.upstream_error(kind);
                        }
                    }
                    ctx.upstream_error = Some(kind);
                    match kind {
                        UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::ReadTimeout => 504,
                        _ => 502,
                    }
                }
                pingora_core::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // A response never written means the client went away first: 499, like nginx.
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
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
            None => metrics::global()
                .unrouted()
                .record(status, elapsed.as_secs_f64()),
        }
        if self.shared.access_log.load(Ordering::Relaxed) {
            let req = session.req_header();
            tracing::info!(
                target: "access",
                method = %req.method,
                host = request_host(req),
                path = req.uri.path(),
                status,
                service = ctx.service.as_ref().map_or("", |s| s.name.as_str()),
                color = ctx.pool().map_or("", |p| p.color_label),
                backend = ctx.backend.map(|b| b.to_string()).unwrap_or_default(),
                ms = elapsed.as_secs_f64() * 1000.0,
                error = e.map(|e| e.to_string()).unwrap_or_default(),
                "request"
            );
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        check_drain(ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        check_drain(ctx)?;
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Clients going away are routine at an edge; don't log them as errors.
        matches!(error.esource(), pingora_core::ErrorSource::Downstream)
    }
}

/// An upgraded connection stays on the color it opened on until it closes or that color's
/// drain timeout passes; then the next frame in either direction closes it.
#[inline]
fn check_drain(ctx: &RequestCtx) -> Result<()> {
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

fn strip_hop_by_hop(h: &mut impl EditHeaders, upgrade: bool) -> Result<()> {
    if let Some(conn) = h.headers().get(header::CONNECTION) {
        // Headers named in Connection are hop-by-hop too (rare; allocation only then).
        let listed: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("upgrade")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
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
    for name in HOP_BY_HOP {
        if h.headers().contains_key(*name) {
            h.remove(&HeaderName::from_static(name));
        }
    }
    if !upgrade && h.headers().contains_key(header::UPGRADE) {
        h.remove(&header::UPGRADE);
    }
    Ok(())
}

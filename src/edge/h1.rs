//! The HTTP/1 request path: switchyard proxies HTTP/1 clients itself, on its own HTTP/1
//! sessions (`edge::client_h1` toward the client, `edge::upstream_h1` toward the backend),
//! and hands HTTP/2 clients to pingora-proxy.
//!
//! Why: a request through pingora-proxy costs about twice the CPU of nginx on this machine,
//! and switchyard's own work is a small part of it. pingora-proxy runs each request as
//! joined sub-tasks talking over channels, through its module and cache phases, and its
//! upstream pool spawns a watcher task for every connection it takes back. Here a request is
//! one sequential `async fn`: read the header, route it, send it upstream, stream the body,
//! read the response, stream it back — and the upstream connection goes back to a
//! per-thread list (`crate::edge::upstream`). The decisions themselves (routing, colors, headers,
//! metrics) are `EdgeProxy`'s, shared with the HTTP/2 path; loadtests/README.md has the
//! figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::edge::upstream_h1::UpstreamSession;
use async_trait::async_trait;
use bytes::BytesMut;
use http::header;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::core::config::Limits;
use crate::core::request_head::{self, Refusal, Rejection};
use crate::edge::client_addr;
use crate::edge::client_h1::{BadHead, ClientSession};
use crate::edge::coalesce::Coalesced;
use crate::edge::proxy::{
    check_drain, compression_error, error_kind, error_status, local_header, status_sent, EdgeProxy,
    ErrorStatus, RequestCtx,
};
use crate::edge::replay::Replay;
use crate::edge::upstream;
use crate::runtime::metrics;
use crate::runtime::seams::ConnectionServer;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request body must bring at least this much per `body_timeout_s` (or end): the timer is
/// not restarted by a byte at a time, so a body trickled to hold a connection is cut off
/// (Apache's mod_reqtimeout MinRate, in spirit).
const BODY_PROGRESS_BYTES: u64 = 1024;

/// After a refusal, how long the proxy keeps reading (and discarding) what the client still
/// sends, so its unread bytes do not turn the close into a reset that destroys the response
/// (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// First read buffer of a request head; it grows up to `max_header_bytes`.
const HEAD_BUFFER: usize = 4096;

/// The client side of both proxy listeners: the connection cap, the request-head deadline and
/// checks (`crate::core::request_head`), keep-alive, and the hand-over of HTTP/2 connections to
/// pingora-proxy.
pub struct EdgeApp {
    edge: EdgeProxy,
    /// pingora-proxy over the same `EdgeProxy`, for HTTP/2 clients.
    h2: Arc<HttpProxy<EdgeProxy>>,
    /// `[limits] max_connections`, shared by every listener of the instance.
    connections: Arc<Semaphore>,
    /// Set when the listener stops; wakes keep-alive connections waiting for a request.
    closing: AtomicBool,
    closing_wakeup: Notify,
}

/// How reading a request head ended, when it did not give a head.
enum HeadEnd {
    /// The client closed, stayed idle past the keep-alive timeout, or the server is stopping:
    /// close without a word.
    Close,
    /// Refused: answer, linger, close.
    Refuse(Refusal),
}

impl EdgeApp {
    pub fn new(conf: &Arc<ServerConf>, edge: EdgeProxy, connections: Arc<Semaphore>) -> EdgeApp {
        let limits = edge.shared.snapshot.load().config.limits;
        let mut h2 = pingora_proxy::http_proxy(conf, edge.clone());
        let mut options = HttpServerOptions::default();
        // An HTTP/2 connection with no open stream is closed after the keep-alive timeout.
        options.h2_idle_timeout = Some(limits.idle_timeout);
        h2.server_options = Some(options);
        let mut h2_options = pingora_core::protocols::http::v2::server::default_h2_options();
        h2_options
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        h2.h2_options = Some(h2_options);
        EdgeApp {
            h2: Arc::new(h2),
            edge,
            connections,
            closing: AtomicBool::new(false),
            closing_wakeup: Notify::new(),
        }
    }

    fn wants_proxy_headers(&self) -> bool {
        !self
            .edge
            .shared
            .snapshot
            .load()
            .config
            .listen
            .proxy_protocol_from
            .is_empty()
    }

    /// Serves one client connection (TLS already terminated) until it closes. `accepted` is
    /// when it was accepted: the first request head must be complete by `header_timeout`
    /// after it.
    async fn serve_client(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        accepted: Instant,
    ) {
        let limits = self.edge.shared.snapshot.load().config.limits;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(stream, shutdown, &limits, accepted).await;
        }
        // A response's head and short body leave in one send (see `edge::coalesce`).
        let mut stream: Stream = Box::new(Coalesced::new(stream));
        let mut buf = BytesMut::new();
        let mut first = true;
        loop {
            let limits = if first {
                limits
            } else {
                self.edge.shared.snapshot.load().config.limits
            };
            let deadline = first.then(|| accepted + limits.header_timeout);
            let checked = match self
                .read_head(&mut stream, &mut buf, &limits, deadline)
                .await
            {
                Ok(checked) => checked,
                Err(HeadEnd::Close) => return,
                // Boxed: its linger buffer is not part of every idle connection.
                Err(HeadEnd::Refuse(refusal)) => return Box::pin(refuse(stream, refusal)).await,
            };
            // The checked head is parsed once more, into the header the proxy works on; what
            // follows it in `buf` is the start of the body or of pipelined requests.
            let session = match ClientSession::new(stream, std::mem::take(&mut buf), checked.len) {
                Ok(session) => session,
                Err(BadHead(stream)) => {
                    let refusal = Refusal::new(400, Rejection::BadRequest);
                    return Box::pin(refuse(stream, refusal)).await;
                }
            };
            // Boxed: the request's state (sessions, buffers, upstream I/O) exists while a
            // request does, and a connection idle between requests keeps only this loop.
            match Box::pin(self.serve(session, shutdown, &limits)).await {
                Some((next, rest)) => {
                    stream = next;
                    buf = rest.unwrap_or_default();
                    first = false;
                }
                None => return,
            }
        }
    }

    /// HTTP/2: the client's preface must arrive within `header_timeout`; pingora-proxy serves
    /// the connection from there (idle and stream limits set in `new`).
    async fn serve_h2(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
        limits: &Limits,
        accepted: Instant,
    ) {
        let mut preface = [0u8; H2_PREFACE.len()];
        let read = tokio::time::timeout_at(
            accepted + limits.header_timeout,
            stream.read_exact(&mut preface),
        )
        .await;
        match read {
            Ok(Ok(_)) if preface == H2_PREFACE => {}
            Err(_) => {
                metrics::global().rejected(Rejection::Timeout);
                return;
            }
            _ => {
                metrics::global().rejected(Rejection::BadFraming);
                return;
            }
        }
        let stream: Stream = Box::new(Replay::new(stream, &preface));
        let _ = ServerApp::process_new(&self.h2, stream, shutdown).await;
    }

    /// Reads one request head into `buf` (which may already hold pipelined bytes) and checks
    /// it. The wait for its first byte is the keep-alive idle time; from the first byte (or
    /// from `deadline`, for a connection's first request) the whole head must arrive within
    /// `header_timeout` — one deadline, not a timer per read, so a byte a second does not
    /// hold the connection (slowloris).
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        limits: &Limits,
        deadline: Option<Instant>,
    ) -> std::result::Result<request_head::CheckedHead, HeadEnd> {
        let mut deadline = deadline;
        if buf.is_empty() {
            let closing = self.closing_wakeup.notified();
            if self.closing.load(Ordering::Acquire) {
                return Err(HeadEnd::Close);
            }
            let wait = deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(wait, read_first(stream, buf)) => read,
                _ = closing => return Err(HeadEnd::Close),
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed or idle: nothing was asked, nothing to answer.
                _ => return Err(HeadEnd::Close),
            }
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
        let mut scanned = 0;
        loop {
            if let Some(end) = request_head::find_head_end(buf, scanned) {
                if end > limits.max_header_bytes {
                    return Err(HeadEnd::Refuse(request_head::oversized(
                        buf,
                        limits.max_header_bytes,
                    )));
                }
                return request_head::check_head(&buf[..end], limits).map_err(HeadEnd::Refuse);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(HeadEnd::Refuse(request_head::oversized(
                    buf,
                    limits.max_header_bytes,
                )));
            }
            scanned = buf.len();
            buf.reserve(
                HEAD_BUFFER
                    .min(limits.max_header_bytes + 1 - buf.len())
                    .max(1),
            );
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(HeadEnd::Close),
                Err(_) => {
                    return Err(HeadEnd::Refuse(Refusal::new(408, Rejection::Timeout)));
                }
            }
        }
    }

    /// One request on a connection whose head was checked: returns the connection (and any
    /// bytes read past this request) when it may serve another.
    async fn serve(
        &self,
        mut session: ClientSession,
        shutdown: &ShutdownWatch,
        limits: &Limits,
    ) -> Option<(Stream, Option<BytesMut>)> {
        // Requests sent before the previous response ended (pipelining, RFC 9112 §9.3.2) are
        // kept (`ClientSession::finish`) and served in order.
        if *shutdown.borrow() {
            // Finish this request, then close: the server is draining.
            session.set_keepalive(None);
        } else if session.get_keepalive() == Some(0) {
            // pingora reads "keep-alive" as "forever"; an idle client gets the idle timeout.
            session.set_keepalive(Some(limits.idle_timeout.as_secs()));
        }
        if let Err(refusal) = crate::edge::proxy::sanitize_request(session.req_header_mut()) {
            metrics::global().rejected(refusal.reason);
            session.set_keepalive(None);
            let _ = session.respond_error(refusal.status).await;
            self.edge.record(
                session.req_header(),
                refusal.status,
                None,
                &RequestCtx::new(),
            );
            return None;
        }
        // The body's reads are bounded by `BodyReader`; a client that stops reading its
        // response, by `edge::coalesce`'s send timeout.
        if session.req_header().method == http::Method::CONNECT {
            // A reverse proxy, not a forward one (pingora-proxy and nginx say 405 too).
            let _ = session.respond_error(405).await;
            self.edge
                .record(session.req_header(), 405, None, &RequestCtx::new());
            return None;
        }

        let mut ctx = RequestCtx::new();
        let body = BodyLimits {
            max_bytes: limits.max_body_bytes,
            timeout: limits.body_timeout,
        };
        let result = self.proxy(&mut session, &mut ctx, &body).await;
        let status = status_sent(session.response_written());
        self.edge.record(
            session.req_header(),
            status,
            result.as_ref().err().map(|e| e.as_ref()),
            &ctx,
        );
        drop(ctx); // the request is no longer in flight on its color
        if result.is_err() {
            return None; // dropping the session closes the connection
        }
        session.finish().await
    }

    /// One request, from its header to the end of its response. An `Err` closes the client's
    /// connection; a 502/504 has been sent when no response had started.
    async fn proxy(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
        body: &BodyLimits,
    ) -> Result<()> {
        if let Some(local) = self
            .edge
            .admit(session.req_header(), session.client_addr(), ctx)
        {
            let header = local_header(&local, ctx)?;
            session.write_response_header(Box::new(header)).await?;
            if !local.body.is_empty() {
                session.write_response_body(local.body, false).await?;
            }
            session.finish_body().await?;
            return Ok(());
        }

        let body_empty = session.is_body_done();
        let expect_continue = !body_empty && expects_continue(session.req_header());
        let mut reader = BodyReader::new(body);
        // The first piece of a body is read before anything goes upstream (unless the client
        // waits for a 100 Continue): a body broken from its first chunk, or one that never
        // comes, never costs a backend a request head.
        let mut first = None;
        let mut ended = body_empty;
        if !body_empty && !expect_continue {
            match reader.next(session).await? {
                Some(chunk) => first = Some(chunk),
                None => ended = true,
            }
        }
        let (mut up, backend) = self.send_header(session, ctx, body_empty).await?;

        if !body_empty {
            if expect_continue {
                // The client waits for this before it sends the body (nginx does the same).
                // A 100 is not "a response before the body was read": keep the connection.
                session.set_close_on_response_before_downstream_finish(false);
                session
                    .write_continue_response()
                    .await
                    .map_err(|e| e.into_down())?;
            }
            if let Some(chunk) = first {
                check_drain(ctx)?;
                if let Err(e) = up.write_body(&chunk).await {
                    return Err(self.upstream_error(session, ctx, e).await);
                }
            }
            while !ended {
                let Some(chunk) = reader.next(session).await? else {
                    ended = true;
                    continue;
                };
                check_drain(ctx)?;
                if let Err(e) = up.write_body(&chunk).await {
                    return Err(self.upstream_error(session, ctx, e).await);
                }
            }
            session.set_close_on_response_before_downstream_finish(true);
        }
        if let Err(e) = up.finish_body().await {
            return Err(self.upstream_error(session, ctx, e).await);
        }
        self.relay_response(session, ctx, up, backend).await
    }

    /// Picks a backend and sends the request header there: over an idle connection when the
    /// thread has one, else a new one. A connect failure moves once to another backend of the
    /// pool; a failure on an idle connection the upstream had closed meanwhile is retried on
    /// a new connection to the same backend, when no request body was read yet.
    async fn send_header(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
        body_empty: bool,
    ) -> Result<(UpstreamSession, std::net::SocketAddr)> {
        let (connect_timeout, read_timeout) = {
            let config = &ctx.service.as_ref().expect("admit set the service").config;
            (config.connect_timeout, config.read_timeout)
        };
        let mut backend = self.pick(session, ctx).await?;
        let mut head = Vec::new();
        // After a stale idle connection, the same backend gets a new connection.
        let mut fresh_only = false;
        loop {
            let idle = if fresh_only {
                None
            } else {
                upstream::take(backend)
            };
            let reused = idle.is_some();
            let stream = match idle {
                Some(stream) => stream,
                None => match upstream::connect(backend, connect_timeout).await {
                    Ok(stream) => stream,
                    Err(kind) if ctx.may_retry_elsewhere() => {
                        ctx.retry_elsewhere(kind);
                        backend = self.pick(session, ctx).await?;
                        fresh_only = false;
                        continue;
                    }
                    Err(kind) => {
                        let e =
                            Error::explain(ErrorType::ConnectError, "connecting to the backend");
                        let verdict = ErrorStatus::Upstream(kind);
                        return Err(self.give_up(session, ctx, verdict, e.into_up()).await);
                    }
                },
            };
            let mut up = UpstreamSession::new(stream);
            up.read_timeout = Some(read_timeout);
            up.write_timeout = Some(read_timeout);
            if head.is_empty() {
                // Once: a retry sends the same head (and the same X-Request-Id).
                head = self.upstream_head(session, ctx)?;
            }
            let sent = match up.write_request_head(&head, session.req_header()).await {
                // Without a body the response is awaited here, where a stale idle connection
                // can still be retried.
                Ok(_) if body_empty => read_response_watching(session, &mut up).await,
                other => other.map(|_| ()),
            };
            match sent {
                Ok(()) => return Ok((up, backend)),
                Err(e) if is_client_gone(&e) => return Err(e),
                // The upstream closed the idle connection as we took it: not its fault. Only
                // a request that is safe to send twice goes again (as nginx and Go do).
                Err(e)
                    if reused
                        && body_empty
                        && closed_under_us(&e)
                        && idempotent(session.req_header()) =>
                {
                    fresh_only = true
                }
                Err(e) => return Err(self.upstream_error(session, ctx, e).await),
            }
        }
    }

    /// The next backend of the request's pool, or a 502 when it has none.
    async fn pick(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
    ) -> Result<std::net::SocketAddr> {
        match self.edge.pick_backend(ctx) {
            Some(backend) => Ok(backend),
            None => {
                let e = Error::explain(ErrorType::ConnectNoRoute, "the pool has no backend");
                Err(self.upstream_error(session, ctx, e).await)
            }
        }
    }

    /// The client's request header made into the upstream's, as HTTP/1.1 bytes: written
    /// straight from the client's header when `EdgeProxy::upstream_head` can, else through
    /// a copy of it that `upstream_request` edits (request header middlewares, say).
    fn upstream_head(&self, session: &ClientSession, ctx: &mut RequestCtx) -> Result<Vec<u8>> {
        let mut head = Vec::with_capacity(512);
        let upgrade = session.is_upgrade_req();
        if !self
            .edge
            .upstream_head(session.req_header(), upgrade, ctx, &mut head)
        {
            let req = self.upstream_request(session, ctx)?;
            crate::edge::upstream_h1::request_head(&req, &mut head);
        }
        Ok(head)
    }

    /// The client's request header made into the upstream's.
    fn upstream_request(
        &self,
        session: &ClientSession,
        ctx: &mut RequestCtx,
    ) -> Result<Box<RequestHeader>> {
        let mut req = Box::new(session.req_header().clone());
        let upgrade = session.is_upgrade_req();
        self.edge.upstream_request(&mut req, upgrade, ctx)?;
        // Backends get HTTP/1.1 whatever the client spoke: keep-alive and chunked bodies work
        // the same for HTTP/1.0 clients (pingora-proxy and nginx do this too).
        req.set_version(http::Version::HTTP_11);
        if req.headers.contains_key(header::EXPECT) {
            // Answered here (see `proxy`); the body follows without waiting upstream.
            req.remove_header(&header::EXPECT);
        }
        Ok(req)
    }

    /// Reads the response header (unless `send_header` already has), sends it to the client
    /// and streams the body, or tunnels both ways after a 101.
    async fn relay_response(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
        mut up: UpstreamSession,
        backend: std::net::SocketAddr,
    ) -> Result<()> {
        // Without a request body, `send_header` has read the response header already.
        let mut need_header = up.resp_header().is_none();
        // 100 Continue and friends are skipped: the client got its own (see `proxy`).
        while need_header
            || up
                .resp_header()
                .is_some_and(|h| h.status.is_informational() && h.status != 101)
        {
            match read_response_watching(session, &mut up).await {
                Ok(()) => need_header = false,
                Err(e) if is_client_gone(&e) => return Err(e),
                Err(e) => return Err(self.upstream_error(session, ctx, e).await),
            }
        }
        let mut resp = Box::new(up.resp_header().expect("read above").clone());
        self.edge.client_response(&mut resp, ctx)?;
        // `compress` chose to compress this body: it has no Content-Length any more.
        let mut encoder = ctx.encoder.take();
        if needs_chunking(session, &resp) {
            // The backend ends this body by closing (or it is compressed); re-framed as
            // chunks, the client's connection survives it (pingora-proxy did the same).
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        } else if session.req_header().version == http::Version::HTTP_10
            && (resp.headers.contains_key(header::TRANSFER_ENCODING)
                || (encoder.is_some() && !resp.headers.contains_key(header::CONTENT_LENGTH)))
        {
            // An HTTP/1.0 client cannot read chunks: the body ends when the connection does.
            resp.remove_header(&header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        session
            .write_response_header(resp)
            .await
            .map_err(|e| e.into_down())?;

        if ctx.is_upgraded() {
            return tunnel(session, &mut up, ctx).await;
        }
        loop {
            let chunk = match up.read_body_bytes().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    // The status is out; the client sees a cut body. Count it all the same.
                    ctx.upstream_failed(error_kind(&e));
                    return Err(e.into_up());
                }
            };
            check_drain(ctx)?;
            let chunk = match encoder.as_mut() {
                Some(e) => e.encode(&chunk).map_err(compression_error)?,
                None => chunk,
            };
            if chunk.is_empty() {
                // Written to a chunked body, an empty piece would be its end.
                continue;
            }
            session
                .write_response_body(chunk, false)
                .await
                .map_err(|e| e.into_down())?;
        }
        if let Some(e) = encoder {
            let tail = e.finish().map_err(compression_error)?;
            session
                .write_response_body(tail, false)
                .await
                .map_err(|e| e.into_down())?;
        }
        session.finish_body().await.map_err(|e| e.into_down())?;
        if let Some(stream) = up.reuse().await {
            upstream::release(backend, stream);
        }
        Ok(())
    }

    /// An upstream failure before the response started: counted, answered 502 or 504.
    async fn upstream_error(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let e = e.into_up();
        let verdict = error_status(&e);
        self.give_up(session, ctx, verdict, e).await
    }

    /// Counts an upstream failure and answers it as `verdict` says (`error_status`, shared
    /// with the HTTP/2 path).
    async fn give_up(
        &self,
        session: &mut ClientSession,
        ctx: &mut RequestCtx,
        verdict: ErrorStatus,
        e: Box<Error>,
    ) -> Box<Error> {
        if let ErrorStatus::Upstream(kind) = verdict {
            ctx.upstream_failed(kind);
        }
        // Nothing final sent yet (a 100 Continue may have been): the client gets the error.
        if let Some(status) = verdict.status() {
            if session
                .response_written()
                .is_none_or(|r| r.status.is_informational())
            {
                let _ = session.respond_error(status).await;
            }
        }
        e
    }
}

/// After a 101: bytes both ways until either side closes, or the color's drain timeout
/// passes (checked at each frame, as on the HTTP/2 path).
async fn tunnel(
    session: &mut ClientSession,
    up: &mut UpstreamSession,
    ctx: &RequestCtx,
) -> Result<()> {
    up.maybe_upgrade_body_writer();
    let mut client_open = true;
    loop {
        tokio::select! {
            read = session.read_request_body(), if client_open => {
                match read.map_err(|e| e.into_down())? {
                    Some(chunk) if chunk.is_empty() => {}
                    Some(chunk) => {
                        check_drain(ctx)?;
                        up.write_body(&chunk).await.map_err(|e| e.into_up())?;
                    }
                    None => {
                        client_open = false;
                        up.finish_body().await.map_err(|e| e.into_up())?;
                    }
                }
            }
            read = up.read_body_bytes() => {
                let Some(chunk) = read.map_err(|e| e.into_up())? else { break };
                check_drain(ctx)?;
                session.write_response_body(chunk, false).await.map_err(|e| e.into_down())?;
            }
        }
    }
    session.finish_body().await.map_err(|e| e.into_down())?;
    Ok(())
}

/// Reads the upstream's response header while watching the client's connection: a client
/// that hangs up meanwhile ends the request at once (as with pingora-proxy and nginx) rather
/// than holding it in flight until the upstream answers or times out. The client's error
/// comes back marked as downstream (see `is_client_gone`), the upstream's as upstream.
async fn read_response_watching(
    session: &mut ClientSession,
    up: &mut UpstreamSession,
) -> Result<()> {
    tokio::select! {
        biased;
        read = up.read_response() => read.map(|_| ()).map_err(|e| e.into_up()),
        // The request body is done: this only returns when the client closes (or sends
        // bytes it should not).
        gone = session.read_body_or_idle(true) => Err(match gone {
            Err(e) => e.into_down(),
            Ok(_) => Error::explain(ErrorType::ConnectionClosed, "client went away").into_down(),
        }),
    }
}

/// The ways a kept-alive connection fails when the backend closed it as we sent on it:
/// nothing of a response was read, so sending again is safe (for idempotent requests).
/// A timeout or a malformed answer is the backend's own and is not replayed.
fn closed_under_us(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
}

/// A request body the client broke off or malformed, answered as `error_status` says: 408
/// for a timeout, 400 for bad framing, nothing when the client is gone.
async fn bad_request_body(session: &mut ClientSession, e: Box<Error>) -> Box<Error> {
    let e = e.into_down();
    if let ErrorStatus::Refused(refusal) = error_status(&e) {
        metrics::global().rejected(refusal.reason);
        session.set_keepalive(None);
        if session.response_written().is_none() {
            let _ = session.respond_error(refusal.status).await;
        }
    }
    e
}

/// A response whose body the backend ends by closing (no Content-Length, not chunked), to
/// an HTTP/1.1 client that can take chunks instead.
fn needs_chunking(session: &ClientSession, resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    let req = session.req_header();
    req.version == http::Version::HTTP_11
        && req.method != http::Method::HEAD
        && !(100..200).contains(&status)
        && status != 204
        && status != 304
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
        && !resp.headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_client_gone(e: &Error) -> bool {
    matches!(e.esource(), pingora_core::ErrorSource::Downstream)
}

/// RFC 9110 §9.2.2: methods a client may send twice with the effect of once.
fn idempotent(req: &RequestHeader) -> bool {
    use http::Method;
    matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What a request body may take: its size and time.
struct BodyLimits {
    max_bytes: u64,
    timeout: Duration,
}

/// Reads a request body under `BodyLimits`: no empty pieces, a size cap, and a deadline that
/// only real progress (`BODY_PROGRESS_BYTES`) moves.
struct BodyReader<'a> {
    limits: &'a BodyLimits,
    read: u64,
    progress_mark: u64,
    /// Set at the first read: a request without a body costs no clock read here.
    deadline: Option<Instant>,
}

impl<'a> BodyReader<'a> {
    fn new(limits: &'a BodyLimits) -> BodyReader<'a> {
        BodyReader {
            limits,
            read: 0,
            progress_mark: 0,
            deadline: None,
        }
    }

    /// The next piece of the body, `None` at its end; a refusal (400, 408, 413) has been
    /// answered when this fails.
    async fn next(&mut self, session: &mut ClientSession) -> Result<Option<bytes::Bytes>> {
        loop {
            let deadline = *self
                .deadline
                .get_or_insert_with(|| Instant::now() + self.limits.timeout);
            let next = tokio::time::timeout_at(deadline, session.read_request_body()).await;
            let chunk = match next {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(bad_request_body(session, e).await),
                Err(_) => {
                    let e = Error::explain(ErrorType::ReadTimedout, "request body too slow");
                    return Err(bad_request_body(session, e).await);
                }
            };
            // pingora's chunked reader yields an empty chunk when a chunk-size line is split
            // across reads; written upstream, it would be the body's terminator.
            if chunk.is_empty() {
                continue;
            }
            self.read += chunk.len() as u64;
            if self.limits.max_bytes > 0 && self.read > self.limits.max_bytes {
                // Only a chunked body gets here (a length is checked with the head). The
                // upstream connection is dropped unfinished: the backend never gets a whole
                // request.
                metrics::global().rejected(Rejection::TooLarge);
                session.set_keepalive(None);
                if session.response_written().is_none() {
                    let _ = session.respond_error(413).await;
                }
                return Err(
                    Error::explain(ErrorType::InvalidHTTPHeader, "body too large").into_down(),
                );
            }
            if self.read - self.progress_mark >= BODY_PROGRESS_BYTES {
                self.progress_mark = self.read;
                self.deadline = Some(Instant::now() + self.limits.timeout);
            }
            return Ok(Some(chunk));
        }
    }
}

/// Waits for a connection's next bytes without holding a buffer meanwhile: an idle
/// keep-alive connection costs no read buffer. The bytes are read on the stack, then copied
/// into `buf` (reserved to `HEAD_BUFFER`), which the rest of the head then fills.
async fn read_first(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut first = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_BUFFER];
        let mut read = tokio::io::ReadBuf::uninit(&mut first);
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read) {
            std::task::Poll::Ready(Ok(())) => {
                buf.reserve(HEAD_BUFFER);
                buf.extend_from_slice(read.filled());
                std::task::Poll::Ready(Ok(read.filled().len()))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Answers a refused request and closes the connection, reading what the client still sends
/// for a moment so the answer is not lost to a reset.
async fn refuse(mut stream: Stream, refusal: Refusal) {
    metrics::global().rejected(refusal.reason);
    let write = async {
        stream.write_all(refusal.response()).await?;
        stream.flush().await
    };
    if tokio::time::timeout(LINGER, write).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let linger = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// The HTTPS listener's TLS front hands its connections here.
#[async_trait]
impl ConnectionServer for EdgeApp {
    fn limits(&self) -> Limits {
        self.edge.shared.snapshot.load().config.limits
    }

    /// Beyond `max_connections`, accepted connections wait here, unread, until another
    /// closes.
    async fn admit_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().acquire_owned().await.ok()
    }

    /// `listen.proxy_protocol_from`: see `edge::client_addr::read_proxy_header`. The header
    /// counts against the first request head's deadline.
    async fn read_proxy_header(&self, tcp: &mut L4Stream, accepted: Instant) -> bool {
        // Held across the read: a counted reference, not an arc-swap guard.
        let snapshot = self.edge.shared.snapshot.load_full();
        let from = &snapshot.config.listen.proxy_protocol_from;
        if from.is_empty() {
            return true;
        }
        let deadline = accepted + snapshot.config.limits.header_timeout;
        client_addr::read_proxy_header(tcp, from, deadline).await
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        accepted: Instant,
    ) {
        self.serve_client(stream, shutdown, accepted).await
    }

    async fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_wakeup.notify_waiters();
        pingora_core::apps::HttpServerApp::http_cleanup(&*self.h2).await;
    }
}

/// The plain HTTP listener.
#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _permit = self.admit_connection().await?;
        let accepted = Instant::now();
        let io = if self.wants_proxy_headers() {
            // The PROXY header is read from the TCP stream itself (its digest then reports
            // the header's source as the peer).
            let Ok(mut tcp) = io.into_any().downcast::<L4Stream>() else {
                tracing::error!("HTTP listener got a stream that is not TCP");
                return None;
            };
            if !self.read_proxy_header(&mut tcp, accepted).await {
                return None;
            }
            tcp as Stream
        } else {
            io
        };
        self.serve_client(io, shutdown, accepted).await;
        None
    }

    async fn cleanup(&self) {
        self.stop().await;
    }
}

//! One request through the proxy, from the client's request header to the end of its
//! response, for HTTP/1 (`edge::h1`) and HTTP/2 (`edge::h2`) clients alike: admission and
//! routing (`EdgeProxy`'s decisions), the request body under its limits, our own HTTP/1.1
//! session to the backend (`edge::upstream_h1`) taken from the per-thread idle list
//! (`edge::upstream`), retries, the response with the route's middlewares, and the answer
//! to every failure.
//!
//! Why one path: what is checked, counted and answered must not depend on the protocol the
//! client spoke. It is one sequential `async fn` per request, without pingora-proxy's
//! sub-tasks, channels and phases (loadtests/README.md has the figures); the client's side is
//! the `Downstream` trait, statically dispatched.

use std::time::Duration;

use http::header;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::time::Instant;

use crate::core::config::Limits;
use crate::core::request_head::Rejection;
use crate::edge::downstream::Downstream;
use crate::edge::proxy::{
    check_drain, compression_error, error_kind, error_status, local_header, EdgeProxy, ErrorStatus,
    RequestCtx, HSTS,
};
use crate::edge::upstream;
use crate::edge::upstream_h1::{RawResponse, UpstreamSession};
use crate::runtime::metrics;

/// A request body must bring at least this much per `body_timeout_s` (or end): the timer is
/// not restarted by a byte at a time, so a body trickled to hold a connection is cut off
/// (Apache's mod_reqtimeout MinRate, in spirit).
const BODY_PROGRESS_BYTES: u64 = 1024;

impl EdgeProxy {
    /// One request, from its header to the end of its response. An `Err` closes the client's
    /// connection; a 502/504 has been sent when no response had started.
    pub(crate) async fn relay<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        body: &BodyLimits,
    ) -> Result<()> {
        let host_checked = session.host_checked();
        if let Some(local) = self.admit(
            session.req_header(),
            session.client_addr(),
            host_checked,
            ctx,
        ) {
            let header = local_header(&local, ctx)?;
            session.write_response_header(Box::new(header)).await?;
            if !local.body.is_empty() {
                session.write_response_body(local.body, false).await?;
            }
            session.finish_body().await?;
            return Ok(());
        }

        let body_empty = session.is_body_done();
        // pingora's HTTP/2 session sends no 1xx: an HTTP/2 client's body is awaited as any
        // other, and its Expect goes no further.
        let expect_continue = !body_empty
            && session.req_header().version != http::Version::HTTP_2
            && expects_continue(session.req_header());
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
    async fn send_header<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        body_empty: bool,
    ) -> Result<(UpstreamSession, std::net::SocketAddr)> {
        let (connect_timeout, read_timeout) = {
            let config = &ctx.service.as_ref().expect("admit set the service").config;
            (config.connect_timeout, config.read_timeout)
        };
        let mut backend = self.pick(session, ctx).await?;
        let mut head = Vec::new();
        let mut framing = None;
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
                (head, framing) = match self.backend_head(session, ctx, body_empty) {
                    Ok(made) => made,
                    Err(e) => {
                        let e = e.into_in();
                        return Err(self.give_up(session, ctx, ErrorStatus::Internal, e).await);
                    }
                };
            }
            let framed_by = framing.as_deref().unwrap_or(session.req_header());
            let sent = match up.write_request_head(&head, framed_by).await {
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
    async fn pick<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
    ) -> Result<std::net::SocketAddr> {
        match self.pick_backend(ctx) {
            Some(backend) => Ok(backend),
            None => {
                let e = Error::explain(ErrorType::ConnectNoRoute, "the pool has no backend");
                Err(self.upstream_error(session, ctx, e).await)
            }
        }
    }

    /// The client's request header made into the upstream's, as HTTP/1.1 bytes: written
    /// straight from the client's header when `EdgeProxy::upstream_head` can, else through
    /// a copy of it that `EdgeProxy::upstream_request` edits (request header middlewares,
    /// HTTP/2 requests). With the copy comes back the header whose framing the body follows.
    /// `body_empty`: the request had no body when it arrived (its first piece may have been
    /// read since, and with it the whole body).
    fn backend_head<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        body_empty: bool,
    ) -> Result<(Vec<u8>, Option<Box<RequestHeader>>)> {
        let mut head = Vec::with_capacity(512);
        let upgrade = session.is_upgrade_req();
        let req = session.req_header();
        // An HTTP/2 body of unannounced length goes in chunks: framing the copy decides.
        let unannounced = !body_empty
            && !req.headers.contains_key(header::CONTENT_LENGTH)
            && !req.headers.contains_key(header::TRANSFER_ENCODING);
        let raw = session.raw_head();
        if !unannounced && self.upstream_head(session.req_header(), raw, upgrade, ctx, &mut head) {
            return Ok((head, None));
        }
        let mut req = Box::new(session.req_header().clone());
        self.upstream_request(&mut req, upgrade, ctx)?;
        // Backends get HTTP/1.1 whatever the client spoke: keep-alive and chunked bodies work
        // the same for HTTP/1.0 and HTTP/2 clients (pingora-proxy and nginx do this too).
        req.set_version(http::Version::HTTP_11);
        if req.headers.contains_key(header::EXPECT) {
            // Answered here (see `relay`); the body follows without waiting upstream.
            req.remove_header(&header::EXPECT);
        }
        if unannounced {
            // Chunks to an HTTP/1.1 backend.
            req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        crate::edge::proxy::edited_head(&req, session.raw_head(), &mut head);
        Ok((head, Some(req)))
    }

    /// Reads the response header (unless `send_header` already has), sends it to the client
    /// and streams the body, or tunnels both ways after a 101.
    async fn relay_response<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        mut up: UpstreamSession,
        backend: std::net::SocketAddr,
    ) -> Result<()> {
        // Without a request body, `send_header` has read the response header already.
        let mut need_header = up.head_status().is_none();
        // 100 Continue and friends are skipped: the client got its own (see `relay`).
        while need_header
            || up
                .head_status()
                .is_some_and(|s| (100..200).contains(&s) && s != 101)
        {
            match read_response_watching(session, &mut up).await {
                Ok(()) => need_header = false,
                Err(e) if is_client_gone(&e) => return Err(e),
                Err(e) => return Err(self.upstream_error(session, ctx, e).await),
            }
        }
        let raw = up.take_head().expect("read above");
        if raw.status == 101 && !session.is_upgrade_req() {
            // Switching protocols on a request that asked for no switch: not an answer.
            let e = Error::explain(ErrorType::InvalidHTTPHeader, "a 101 to no upgrade request");
            return Err(self.upstream_error(session, ctx, e).await);
        }
        if S::WRITES_RAW_HEADS && writes_through(session, ctx, &raw) {
            self.write_raw_head(session, ctx, &raw).await?;
        } else {
            let resp = match raw.to_header() {
                Ok(resp) => resp,
                Err(e) => return Err(self.upstream_error(session, ctx, e).await),
            };
            drop(raw);
            self.write_edited_head(session, ctx, resp).await?;
        }
        // `compress` chose to compress this body: it has no Content-Length any more.
        let mut encoder = ctx.encoder.take();

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
            // The last piece ends an HTTP/2 stream with it, not with an empty frame after.
            let end = encoder.is_none() && up.is_body_done();
            session
                .write_response_body(chunk, end)
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

    /// The client's head made of the backend's through a header: `client_response`'s
    /// edits and the route's middlewares, re-framed as the client can take it.
    async fn write_edited_head<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        mut resp: Box<ResponseHeader>,
    ) -> Result<()> {
        self.client_response(&mut resp, ctx)?;
        let length = resp.headers.contains_key(header::CONTENT_LENGTH);
        let coded = resp.headers.contains_key(header::TRANSFER_ENCODING);
        if needs_chunking(session, resp.status.as_u16(), length, coded) {
            // The backend ends this body by closing (or it is compressed); re-framed as
            // chunks, the client's connection survives it (pingora-proxy did the same).
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        } else if session.req_header().version == http::Version::HTTP_10
            && (coded || (ctx.encoder.is_some() && !length))
        {
            // An HTTP/1.0 client cannot read chunks: the body ends when the connection does.
            resp.remove_header(&header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        session
            .write_response_header(resp)
            .await
            .map_err(|e| e.into_down())
    }

    /// The client's head written straight from the backend's (`writes_through` said it can
    /// be): the edits of `client_response` that apply without middlewares — hop-by-hop
    /// headers out (`RawResponse::write_client_lines`), Strict-Transport-Security and
    /// X-Request-Id in when the backend has none.
    async fn write_raw_head<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        raw: &RawResponse,
    ) -> Result<()> {
        let id = ctx.request_id.take();
        let mut extra: [(&[u8], &[u8]); 2] = [(b"", b""); 2];
        let mut n = 0;
        if ctx.hsts && !raw.has_hsts {
            extra[n] = (b"strict-transport-security", HSTS.as_bytes());
            n += 1;
        }
        if let (Some(id), false) = (&id, raw.has_request_id) {
            extra[n] = (b"x-request-id", id.as_bytes());
            n += 1;
        }
        session
            .write_raw_response_header(raw, &extra[..n])
            .await
            .map_err(|e| e.into_down())
    }

    /// An upstream failure before the response started: counted, answered 502 or 504.
    async fn upstream_error<S: Downstream>(
        &self,
        session: &mut S,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let e = e.into_up();
        let verdict = error_status(&e);
        self.give_up(session, ctx, verdict, e).await
    }

    /// Counts an upstream failure and answers it as `verdict` says (`error_status`).
    async fn give_up<S: Downstream>(
        &self,
        session: &mut S,
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
                .response_status()
                .is_none_or(|s| s.is_informational())
            {
                let _ = session.respond_error(status).await;
            }
        }
        e
    }
}

/// After a 101: bytes both ways until either side closes, or the color's drain timeout
/// passes (checked at each frame).
async fn tunnel<S: Downstream>(
    session: &mut S,
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
async fn read_response_watching<S: Downstream>(
    session: &mut S,
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
async fn bad_request_body<S: Downstream>(session: &mut S, e: Box<Error>) -> Box<Error> {
    let e = e.into_down();
    if let ErrorStatus::Refused(refusal) = error_status(&e) {
        metrics::global().rejected(refusal.reason);
        session.set_keepalive(None);
        if session.response_status().is_none() {
            let _ = session.respond_error(refusal.status).await;
        }
    }
    e
}

/// A response whose body the backend ends by closing (no Content-Length, not chunked), to
/// an HTTP/1.1 client that can take chunks instead.
fn needs_chunking<S: Downstream>(session: &S, status: u16, length: bool, coded: bool) -> bool {
    let req = session.req_header();
    req.version == http::Version::HTTP_11
        && req.method != http::Method::HEAD
        && !(100..200).contains(&status)
        && status != 204
        && status != 304
        && !length
        && !coded
}

/// A response whose head the client can get straight from the backend's
/// (`EdgeProxy::write_raw_head`): no middleware edits or compresses it, it is not a 101, its
/// Connection header names no other headers, and its framing suits the client as it is.
fn writes_through<S: Downstream>(session: &S, ctx: &RequestCtx, raw: &RawResponse) -> bool {
    let plain = ctx.edge.as_ref().is_none_or(|e| {
        let mw = &e.middlewares;
        !mw.security_headers && mw.response_headers.is_empty() && mw.compress.is_none()
    });
    plain
        && raw.status != 101
        && !raw.connection_names_others
        && !needs_chunking(
            session,
            raw.status.as_u16(),
            raw.length.is_some(),
            raw.coded,
        )
        && !(raw.coded && session.req_header().version == http::Version::HTTP_10)
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
pub(crate) struct BodyLimits {
    max_bytes: u64,
    timeout: Duration,
}

impl BodyLimits {
    pub(crate) fn new(limits: &Limits) -> BodyLimits {
        BodyLimits {
            max_bytes: limits.max_body_bytes,
            timeout: limits.body_timeout,
        }
    }
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
    async fn next<S: Downstream>(&mut self, session: &mut S) -> Result<Option<bytes::Bytes>> {
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
                // Only a body without a length gets here (a length is checked with the head). The
                // upstream connection is dropped unfinished: the backend never gets a whole
                // request.
                metrics::global().rejected(Rejection::TooLarge);
                session.set_keepalive(None);
                if session.response_status().is_none() {
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

//! HTTP/1 client connections: the request-head deadline and checks
//! (`crate::core::request_head`), keep-alive and pipelining, refusals with a lingering close,
//! and the hand-over of HTTP/2 connections to `edge::h2`. Each request goes on our own
//! HTTP/1 session (`edge::client_h1`) through the request path both protocols share
//! (`edge::relay`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::core::config::Limits;
use crate::core::request_head::{self, Refusal, Rejection};
use crate::edge::client_addr;
use crate::edge::client_h1::{BadHead, ClientSession};
use crate::edge::coalesce::Coalesced;
use crate::edge::h2::H2App;
use crate::edge::proxy::{status_sent, EdgeProxy, RequestCtx};
use crate::edge::relay::BodyLimits;
use crate::edge::replay::Replay;
use crate::runtime::metrics;
use crate::runtime::seams::ConnectionServer;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// After a refusal, how long the proxy keeps reading (and discarding) what the client still
/// sends, so its unread bytes do not turn the close into a reset that destroys the response
/// (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// First read buffer of a request head; it grows up to `max_header_bytes`.
const HEAD_BUFFER: usize = 4096;

/// The client side of both proxy listeners: the connection cap, the request-head deadline and
/// checks (`crate::core::request_head`), keep-alive, and the hand-over of HTTP/2 connections to
/// `edge::h2`.
pub struct EdgeApp {
    edge: EdgeProxy,
    /// HTTP/2 clients (`edge::h2`), on the same `EdgeProxy`.
    h2: Arc<H2App>,
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
    pub fn new(edge: EdgeProxy, connections: Arc<Semaphore>) -> EdgeApp {
        let limits = edge.shared.snapshot.load().config.limits;
        EdgeApp {
            h2: Arc::new(H2App::new(edge.clone(), &limits)),
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
            let end = match self
                .read_head(&mut stream, &mut buf, &limits, deadline)
                .await
            {
                Ok(end) => end,
                Err(HeadEnd::Close) => return,
                // Boxed: its linger buffer is not part of every idle connection.
                Err(HeadEnd::Refuse(refusal)) => return Box::pin(refuse(stream, refusal)).await,
            };
            // The head is checked and parsed once, into the header the proxy works on; what
            // follows it in `buf` is the start of the body or of pipelined requests.
            let head = buf.split_to(end).freeze();
            let rest = std::mem::take(&mut buf);
            let session = match ClientSession::new(stream, head, rest, &limits) {
                Ok(session) => session,
                Err(BadHead(stream, refusal)) => return Box::pin(refuse(stream, refusal)).await,
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

    /// HTTP/2: the client's preface must arrive within `header_timeout`; `edge::h2` serves
    /// the connection from there (idle and stream limits set in `H2App::new`).
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

    /// Reads one request head into `buf` (which may already hold pipelined bytes) and returns
    /// its length; `ClientSession::new` checks it. The wait for its first byte is the keep-alive idle time; from the first byte (or
    /// from `deadline`, for a connection's first request) the whole head must arrive within
    /// `header_timeout` — one deadline, not a timer per read, so a byte a second does not
    /// hold the connection (slowloris).
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        limits: &Limits,
        deadline: Option<Instant>,
    ) -> std::result::Result<usize, HeadEnd> {
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
                return Ok(end);
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
        let presence = session.presence();
        if let Err(refusal) =
            crate::edge::proxy::sanitize_request(session.req_header_mut(), presence)
        {
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
        let body = BodyLimits::new(limits);
        let result = self.edge.relay(&mut session, &mut ctx, &body).await;
        let status = status_sent(session.response_status());
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

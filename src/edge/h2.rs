//! HTTP/2 clients: pingora's HTTP/2 server (the h2 crate) runs the connection — settings,
//! flow control, stream limits, the idle timeout, GOAWAY on shutdown — and each stream is a
//! request on the same request path as HTTP/1 (`edge::relay`).
//!
//! Why not pingora-proxy: per request it ran joined sub-tasks over channels through its
//! module and cache phases, and moved futures of several KiB each (`memmove` was 7 % of the
//! profile); its upstream pool spawned a watcher per connection taken back. The HTTP/1 path
//! had already left it for the same reasons (loadtests/README.md, "Issue 15").

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::RequestHeader;

use crate::core::config::Limits;
use crate::core::request_head::{Refusal, Rejection};
use crate::edge::downstream::Downstream;
use crate::edge::presence::HeaderPresence;
use crate::edge::proxy::{sanitize_request, status_sent, EdgeProxy, RequestCtx};
use crate::edge::relay::BodyLimits;
use crate::runtime::metrics;

/// A client that does not take its response (flow control closed) for this long loses the
/// stream, as an HTTP/1 client that stops reading loses its connection (`edge::coalesce`).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP/2 side of both proxy listeners.
pub struct H2App {
    edge: EdgeProxy,
    server_options: HttpServerOptions,
    h2_options: H2Options,
}

impl H2App {
    pub fn new(edge: EdgeProxy, limits: &Limits) -> H2App {
        let mut server_options = HttpServerOptions::default();
        // An HTTP/2 connection with no open stream is closed after the keep-alive timeout.
        server_options.h2_idle_timeout = Some(limits.idle_timeout);
        let mut h2_options = pingora_core::protocols::http::v2::server::default_h2_options();
        h2_options
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        H2App {
            edge,
            server_options,
            h2_options,
        }
    }

    /// One stream: its head checked, then the request path.
    async fn serve_stream(&self, mut session: ServerSession) {
        let limits = self.edge.shared.snapshot.load().config.limits;
        session.set_write_timeout(Some(SEND_TIMEOUT));
        let checked = sanitize_request(session.req_header_mut(), HeaderPresence::UNKNOWN)
            .and_then(|()| head_limits(session.req_header(), &limits));
        if let Err(refusal) = checked {
            metrics::global().rejected(refusal.reason);
            let _ = session.respond_error(refusal.status).await;
            let ctx = RequestCtx::new();
            self.edge
                .record(session.req_header(), refusal.status, None, &ctx);
            return;
        }
        if session.req_header().method == http::Method::CONNECT {
            // A reverse proxy, not a forward one (as on HTTP/1).
            let _ = session.respond_error(405).await;
            self.edge
                .record(session.req_header(), 405, None, &RequestCtx::new());
            return;
        }
        let mut ctx = RequestCtx::new();
        let body = BodyLimits::new(&limits);
        let result = self.edge.relay(&mut session, &mut ctx, &body).await;
        let status = status_sent(Downstream::response_status(&session));
        self.edge.record(
            session.req_header(),
            status,
            result.as_ref().err().map(|e| e.as_ref()),
            &ctx,
        );
        if result.is_err() {
            // An unfinished response must not look whole: the stream is reset.
            session.shutdown().await;
        }
    }
}

#[async_trait]
impl HttpServerApp for H2App {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.serve_stream(session).await;
        None
    }

    fn h2_options(&self) -> Option<H2Options> {
        Some(self.h2_options.clone())
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}

/// The head limits of an HTTP/2 request (HTTP/1 heads are checked as they are read, in
/// `crate::edge::h1`): the header count, and a content-length beyond `max_body_bytes`. The
/// header list's size is bounded by the h2 settings (`max_header_list_size`).
fn head_limits(req: &RequestHeader, limits: &Limits) -> Result<(), Refusal> {
    if req.headers.len() > limits.max_headers {
        return Err(Refusal::new(431, Rejection::TooLarge));
    }
    let size: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if size > limits.max_header_bytes {
        return Err(Refusal::new(431, Rejection::TooLarge));
    }
    if limits.max_body_bytes > 0 {
        let length = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|n| n > limits.max_body_bytes) {
            return Err(Refusal::new(413, Rejection::TooLarge));
        }
    }
    Ok(())
}

//! The client's side of one request, as the request path (`edge::relay`) sees it: an HTTP/1
//! request on our own session (`edge::client_h1`), or an HTTP/2 stream on pingora's.
//!
//! Why a trait: both protocols go through the same request path — routing, body limits,
//! the upstream session, retries, responses, metrics — so that what is checked and counted
//! cannot differ between them. Static dispatch: each protocol gets its own copy of the path.

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::edge::client_h1::{ClientSession, RawHead};
use crate::edge::upstream_h1::RawResponse;

/// What the request path needs of a client session. The names and meanings are pingora's
/// `ServerSession`'s, which `ClientSession` follows.
pub(crate) trait Downstream: Send {
    fn req_header(&self) -> &RequestHeader;
    /// The request head as the client sent it, when it came as HTTP/1 bytes (`None` for
    /// HTTP/2): the backend's header lines are written from it, in the client's order and
    /// case. `req_header` differs from it only by what `proxy::sanitize_request` edits.
    fn raw_head(&self) -> Option<RawHead<'_>>;
    /// The request's host (what `EdgeProxy::admit` routes by) passed
    /// `core::request_head::valid_host` already, so routing need not check it again.
    fn host_checked(&self) -> bool;
    /// The peer: the TCP peer, or the PROXY header's source.
    fn client_addr(&self) -> Option<&SocketAddr>;
    /// An HTTP/1.1 request with an Upgrade header (never an HTTP/2 stream).
    fn is_upgrade_req(&self) -> bool;
    /// The request body has been read to its end, or there is none.
    fn is_body_done(&mut self) -> bool;
    /// `None`: the connection closes after this response (HTTP/1 only).
    fn set_keepalive(&mut self, seconds: Option<u64>);
    fn set_close_on_response_before_downstream_finish(&mut self, close: bool);
    /// The status of the last response head written, informational or final.
    fn response_status(&self) -> Option<http::StatusCode>;
    /// Takes `write_raw_response_header` (HTTP/1): a backend's head written on without a
    /// header map.
    const WRITES_RAW_HEADS: bool;
    /// The next piece of the request body, `None` at its end. The caller bounds it in time.
    async fn read_request_body(&mut self) -> Result<Option<Bytes>>;
    /// Once the body is read: returns only when the client goes away (an error).
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>>;
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>) -> Result<()>;
    /// A final response head straight from the backend's, with `extra` lines (only when
    /// `WRITES_RAW_HEADS`).
    async fn write_raw_response_header(
        &mut self,
        raw: &RawResponse,
        extra: &[(&[u8], &[u8])],
    ) -> Result<()>;
    /// `end`: this is the body's last piece (HTTP/2 then ends the stream with it).
    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()>;
    async fn finish_body(&mut self) -> Result<()>;
    /// `status` with an empty body; an HTTP/1 connection closes after it.
    async fn respond_error(&mut self, status: u16) -> Result<()>;
    async fn write_continue_response(&mut self) -> Result<()>;
}

impl Downstream for ClientSession {
    fn req_header(&self) -> &RequestHeader {
        ClientSession::req_header(self)
    }
    fn raw_head(&self) -> Option<RawHead<'_>> {
        Some(ClientSession::raw_head(self))
    }
    /// `check_head` checked the Host header, and an HTTP/1 request is routed by it (an
    /// absolute-form target must name the same host, `client_h1::parse_request`).
    fn host_checked(&self) -> bool {
        true
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        ClientSession::client_addr(self)
    }
    fn is_upgrade_req(&self) -> bool {
        ClientSession::is_upgrade_req(self)
    }
    fn is_body_done(&mut self) -> bool {
        ClientSession::is_body_done(self)
    }
    fn set_keepalive(&mut self, seconds: Option<u64>) {
        ClientSession::set_keepalive(self, seconds)
    }
    fn set_close_on_response_before_downstream_finish(&mut self, close: bool) {
        ClientSession::set_close_on_response_before_downstream_finish(self, close)
    }
    fn response_status(&self) -> Option<http::StatusCode> {
        ClientSession::response_status(self)
    }
    const WRITES_RAW_HEADS: bool = true;
    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        ClientSession::read_request_body(self).await
    }
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        ClientSession::read_body_or_idle(self, no_body_expected).await
    }
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        ClientSession::write_response_header(self, resp).await
    }
    async fn write_raw_response_header(
        &mut self,
        raw: &RawResponse,
        extra: &[(&[u8], &[u8])],
    ) -> Result<()> {
        ClientSession::write_raw_response_header(self, raw, extra).await
    }
    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        ClientSession::write_response_body(self, data, end).await
    }
    async fn finish_body(&mut self) -> Result<()> {
        ClientSession::finish_body(self).await
    }
    async fn respond_error(&mut self, status: u16) -> Result<()> {
        ClientSession::respond_error(self, status).await
    }
    async fn write_continue_response(&mut self) -> Result<()> {
        ClientSession::write_continue_response(self).await
    }
}

/// pingora's session, used here for HTTP/2 streams only (`edge::h2`).
impl Downstream for ServerSession {
    fn req_header(&self) -> &RequestHeader {
        ServerSession::req_header(self)
    }
    fn raw_head(&self) -> Option<RawHead<'_>> {
        None
    }
    /// :authority or Host: checked by `admit`.
    fn host_checked(&self) -> bool {
        false
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        ServerSession::client_addr(self)
    }
    fn is_upgrade_req(&self) -> bool {
        ServerSession::is_upgrade_req(self)
    }
    fn is_body_done(&mut self) -> bool {
        ServerSession::is_body_done(self)
    }
    fn set_keepalive(&mut self, seconds: Option<u64>) {
        ServerSession::set_keepalive(self, seconds)
    }
    fn set_close_on_response_before_downstream_finish(&mut self, close: bool) {
        ServerSession::set_close_on_response_before_downstream_finish(self, close)
    }
    fn response_status(&self) -> Option<http::StatusCode> {
        ServerSession::response_written(self).map(|r| r.status)
    }
    const WRITES_RAW_HEADS: bool = false;
    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        ServerSession::read_request_body(self).await
    }
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        ServerSession::read_body_or_idle(self, no_body_expected).await
    }
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        ServerSession::write_response_header(self, resp).await
    }
    async fn write_raw_response_header(
        &mut self,
        _: &RawResponse,
        _: &[(&[u8], &[u8])],
    ) -> Result<()> {
        Error::e_explain(
            ErrorType::InternalError,
            "HTTP/2 responses are written from a header",
        )
    }
    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        ServerSession::write_response_body(self, data, end).await
    }
    async fn finish_body(&mut self) -> Result<()> {
        ServerSession::finish_body(self).await
    }
    async fn respond_error(&mut self, status: u16) -> Result<()> {
        ServerSession::respond_error(self, status).await
    }
    async fn write_continue_response(&mut self) -> Result<()> {
        ServerSession::write_continue_response(self).await
    }
}

//! HTTP/1 toward a client: the request head (already read and checked by `edge::h1`) parsed
//! once into a header, the request body read by its framing, the response written with one
//! serialisation, and keep-alive and pipelining decided here.
//!
//! Why not pingora's server session: the head was parsed twice (our checks, then its own
//! parse), every write went through a timer wrapper, and the response head through several
//! buffers; that was most of the user-space cost left per request (loadtests/README.md,
//! "Performance"). The interface is the subset the request path (`edge::relay`) uses of pingora's, with the same
//! error types, so the request path reads the same.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::http::date::get_cached_date;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::{SocketDigest, Stream};
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::config::Limits;
use crate::core::request_head::{self, parse_length, Refusal, Rejection};
use crate::edge::body::BodyFraming;
use crate::edge::chunked::{encode_chunk, ChunkedDecoder, Step};
use crate::edge::presence::HeaderPresence;
use crate::edge::upstream_h1::RawResponse;

/// A client that closes inside its body (pingora's name for it).
const PREMATURE_BODY_END: ErrorType = ErrorType::new("PrematureBodyEnd");
/// Read size for bodies and what follows them.
const READ_CHUNK: usize = 16 * 1024;
/// Room for a read while the client should be sending nothing (see `read_body_or_idle`).
const IDLE_READ: usize = 1024;

/// Where the request body stands (`UntilClose`: an upgraded connection).
type RequestBody = BodyFraming;

/// How the response body goes to the client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ResponseBody {
    /// No final response head yet.
    Unset,
    /// No body (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Ends with the connection (no length, or after a 101).
    UntilClose,
    /// The body is complete.
    Done,
}

pub struct ClientSession {
    stream: Stream,
    digest: Option<Arc<SocketDigest>>,
    /// Bytes read past the request head: the body, then any pipelined request.
    buf: BytesMut,
    /// The request head as it came (`req`'s values are views into it).
    head: Bytes,
    /// Where its header lines lie.
    lines: KeptLines,
    presence: HeaderPresence,
    req: RequestHeader,
    body: RequestBody,
    /// `Some`: the connection may serve another request (the value is pingora's
    /// keep-alive seconds, 0 for "no limit"); `None`: it closes after this response.
    keepalive: Option<u64>,
    /// The status of the last response head written.
    status: Option<http::StatusCode>,
    writer: ResponseBody,
    close_on_early_response: bool,
    half_closed: bool,
}

/// The client's request head was refused: the connection, and what to answer before closing it.
pub struct BadHead(pub Stream, pub Refusal);

impl ClientSession {
    /// A session for the request whose head is `head` (complete, up to its blank line, from
    /// `edge::h1`): checked by `core::request_head::check_head`, then made into the header the
    /// proxy works on from the same parse. `buf` holds what followed the head: the start of
    /// its body or of pipelined requests.
    pub fn new(
        stream: Stream,
        head: Bytes,
        buf: BytesMut,
        limits: &Limits,
    ) -> std::result::Result<ClientSession, BadHead> {
        let ParsedRequest {
            req,
            body,
            keepalive,
            lines,
            presence,
        } = match parse_request(&head, limits) {
            Ok(parsed) => parsed,
            Err(refusal) => return Err(BadHead(stream, refusal)),
        };
        let keepalive = keepalive.then_some(0);
        let digest = stream.get_socket_digest();
        Ok(ClientSession {
            stream,
            digest,
            buf,
            head,
            lines,
            presence,
            req,
            body,
            keepalive,
            status: None,
            writer: ResponseBody::Unset,
            close_on_early_response: true,
            half_closed: false,
        })
    }

    /// The request head as the client sent it (see `Downstream::raw_head`).
    pub(crate) fn raw_head(&self) -> RawHead<'_> {
        self.lines.over(&self.head, self.presence)
    }

    /// Which of the request path's headers the head has (see `edge::presence`).
    pub(crate) fn presence(&self) -> HeaderPresence {
        self.presence
    }

    pub fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    pub fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    /// The peer: the TCP peer, or the PROXY header's source.
    pub fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest.as_ref()?.peer_addr()
    }

    /// An HTTP/1.1 request with an Upgrade header (pingora's rule).
    pub fn is_upgrade_req(&self) -> bool {
        self.req.version == http::Version::HTTP_11
            && self
                .presence
                .get(&self.req.headers, HeaderPresence::UPGRADE, header::UPGRADE)
                .is_some()
    }

    /// The request body has been read to its end (or there is none).
    pub fn is_body_done(&self) -> bool {
        self.body == RequestBody::Done
    }

    pub fn set_keepalive(&mut self, seconds: Option<u64>) {
        self.keepalive = seconds;
    }

    pub fn get_keepalive(&self) -> Option<u64> {
        self.keepalive
    }

    /// A final response written before the request body was read closes the connection
    /// (what is left of the body cannot be told from the next request).
    pub fn set_close_on_response_before_downstream_finish(&mut self, close: bool) {
        self.close_on_early_response = close;
    }

    /// The status of the last response head written, informational or final.
    pub fn response_status(&self) -> Option<http::StatusCode> {
        self.status
    }

    async fn read_more(&mut self) -> Result<usize> {
        self.read_into(READ_CHUNK).await
    }

    /// Reads what comes into `buf`, with room for at least `room` bytes; 0 at the end.
    async fn read_into(&mut self, room: usize) -> Result<usize> {
        self.buf.reserve(room);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .or_err(ErrorType::ReadError, "reading from the client")
    }

    /// The next piece of the request body, `None` at its end. The caller bounds it in time.
    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let step = self.body.next(&mut self.buf);
            match step.map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e))? {
                Step::Data(piece) => return Ok(Some(piece)),
                Step::End => return Ok(None),
                Step::NeedMore => {
                    if self.read_more().await? == 0 && !self.body.peer_closed() {
                        return Error::e_explain(
                            PREMATURE_BODY_END,
                            "the client closed before the end of its body",
                        );
                    }
                }
            }
        }
    }

    /// With the request body read: returns only when the client closes (an error) and
    /// stays pending otherwise; bytes it sends meanwhile are kept as the next pipelined
    /// request. Before that, the body's next piece, as `read_request_body`.
    pub async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if !(no_body_expected || self.is_body_done()) {
            return self.read_request_body().await;
        }
        // Room for a few bytes is enough to see a close: the buffer left after the head
        // usually has it, so waiting on the client allocates nothing.
        if self.half_closed || self.read_into(IDLE_READ).await? == 0 {
            self.half_closed = true;
            self.keepalive = None;
            return Error::e_explain(ErrorType::ConnectionClosed, "the client closed");
        }
        // Bytes of a pipelined request: kept for it. Nothing more is read for this one (as
        // pingora), so a client cannot make this buffer grow.
        std::future::pending().await
    }

    /// Answers `status` with an empty body and closes the connection after it.
    pub async fn respond_error(&mut self, status: u16) -> Result<()> {
        self.keepalive = None;
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
        resp.insert_header(header::CACHE_CONTROL, "private, no-store")?;
        self.write_response_header(Box::new(resp)).await?;
        self.finish_body().await
    }

    /// `100 Continue`, unless a response was written already.
    pub async fn write_continue_response(&mut self) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        self.flush().await
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.stream
            .write_all(data)
            .await
            .or_err(ErrorType::WriteError, "writing to the client")
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream
            .flush()
            .await
            .or_err(ErrorType::WriteError, "flushing to the client")
    }

    /// Writes a response head: an informational one as it is; a final one with Date and
    /// Connection set, choosing how its body is framed (as pingora's session did).
    pub async fn write_response_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        if self.final_written() {
            return Ok(()); // one final response per request
        }
        let status = resp.status.as_u16();
        let informational = (100..200).contains(&status) && status != 101;
        if !informational {
            let length = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| parse_length(v.as_bytes()));
            let coded = resp.headers.contains_key(header::TRANSFER_ENCODING);
            self.frame_response(status, coded, length);
        }
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(match resp.version {
            http::Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        head.extend_from_slice(resp.status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(
            resp.get_reason_phrase()
                .or(resp.status.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        );
        head.extend_from_slice(b"\r\n");
        // A 101 keeps its own `Connection: upgrade` (pingora adds these to no 1xx either).
        let ours = (status >= 200).then_some(OwnHeaders {
            keepalive: self.keepalive.is_some(),
        });
        write_header_lines(&resp, ours, &mut head);
        head.extend_from_slice(b"\r\n");
        self.send_head(&head, resp.status).await
    }

    /// Writes a final response head (not a 101) straight from the backend's
    /// (`RawResponse::write_client_lines`), with `extra` lines after its own: what
    /// `write_response_header` writes for the same response through a header, without
    /// building one. The request path takes this way when no middleware edits the response.
    pub async fn write_raw_response_header(
        &mut self,
        raw: &RawResponse,
        extra: &[(&[u8], &[u8])],
    ) -> Result<()> {
        if self.final_written() {
            return Ok(());
        }
        self.frame_response(raw.status.as_u16(), raw.coded, raw.length);
        let mut head = Vec::with_capacity(256);
        raw.write_status_line(&mut head);
        let date = get_cached_date();
        let dated = raw.write_client_lines(date.as_bytes(), &mut head);
        let mut line = |name: &[u8], value: &[u8]| {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        };
        for (name, value) in extra {
            line(name, value);
        }
        if !dated {
            line(b"Date", date.as_bytes());
        }
        let connection: &[u8] = if self.keepalive.is_some() {
            b"keep-alive"
        } else {
            b"close"
        };
        line(b"Connection", connection);
        head.extend_from_slice(b"\r\n");
        self.send_head(&head, raw.status).await
    }

    /// A final response was written (a 1xx other than 101 is not one).
    fn final_written(&self) -> bool {
        self.status
            .is_some_and(|s| !s.is_informational() || s == http::StatusCode::SWITCHING_PROTOCOLS)
    }

    /// How a final response's body goes to the client, and whether the connection survives
    /// it. `coded`: it has Transfer-Encoding; `length`: its Content-Length.
    fn frame_response(&mut self, status: u16, coded: bool, length: Option<u64>) {
        if self.close_on_early_response && !self.is_body_done() {
            self.keepalive = None;
        }
        self.writer = if status == 101 {
            self.keepalive = None;
            if self.is_upgrade_req() {
                // Both ways are now raw bytes until either side closes.
                self.body = RequestBody::UntilClose;
            }
            ResponseBody::UntilClose
        } else if status == 204 || status == 304 || self.req.method == http::Method::HEAD {
            ResponseBody::None
        } else if coded {
            ResponseBody::Chunked
        } else if let Some(n) = length {
            if n == 0 {
                ResponseBody::Done
            } else {
                ResponseBody::Length(n)
            }
        } else {
            ResponseBody::UntilClose
        };
        if self.writer == ResponseBody::UntilClose {
            self.keepalive = None;
        }
    }

    /// Sends a response head whose status is `status`.
    async fn send_head(&mut self, head: &[u8], status: http::StatusCode) -> Result<()> {
        self.write(head).await?;
        // As pingora: a head whose body comes in real time (1xx, no length) goes out now;
        // otherwise it waits for the body, to leave in the same send (`edge::coalesce`).
        if !matches!(self.writer, ResponseBody::Length(_)) {
            self.flush().await?;
        }
        self.status = Some(status);
        Ok(())
    }

    /// A piece of the response body, framed as its head said.
    pub async fn write_response_body(&mut self, data: Bytes, _end: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self.writer {
            ResponseBody::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                self.write(&data[..n]).await?;
                let left = left - n as u64;
                self.writer = if left == 0 {
                    self.flush().await?;
                    ResponseBody::Done
                } else {
                    ResponseBody::Length(left)
                };
                Ok(())
            }
            ResponseBody::Chunked => {
                self.write(&encode_chunk(&data)).await?;
                self.flush().await
            }
            ResponseBody::UntilClose => {
                self.write(&data).await?;
                self.flush().await
            }
            ResponseBody::None | ResponseBody::Done => Ok(()),
            ResponseBody::Unset => {
                Error::e_explain(ErrorType::InternalError, "a response body before its head")
            }
        }
    }

    /// Ends the response body: the last chunk, or the flush of what waits.
    pub async fn finish_body(&mut self) -> Result<()> {
        match self.writer {
            ResponseBody::Chunked => {
                self.writer = ResponseBody::Done;
                self.write(b"0\r\n\r\n").await?;
            }
            ResponseBody::Length(_) => {
                // The backend sent less than it announced: the client must not take this
                // connection for a complete response.
                self.keepalive = None;
            }
            _ => {}
        }
        self.flush().await
    }

    /// After a response: the connection and the bytes read past this request, when it may
    /// serve another; `None` when it closes (then closed here).
    pub async fn finish(mut self) -> Option<(Stream, Option<BytesMut>)> {
        let complete = matches!(self.writer, ResponseBody::Done | ResponseBody::None);
        // A body left unread is not drained (a client could make that last): the
        // connection closes instead, and the next request cannot start inside it.
        if self.keepalive.is_none() || !complete || self.half_closed || !self.is_body_done() {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
            return None;
        }
        let rest = (!self.buf.is_empty()).then_some(self.buf);
        Some((self.stream, rest))
    }
}

/// The headers a final response head gets from the proxy itself, whatever the header says.
#[derive(Clone, Copy)]
struct OwnHeaders {
    keepalive: bool,
}

/// Writes the header lines of `resp` as `ResponseHeader::header_to_h1_wire` does (the case
/// map's names when there is one, else pingora's title case for the names it knows), with
/// `ours` replacing the header's own Date and Connection: in the first one's place, or after
/// the others (as inserting them into the header, then serialising it, did).
fn write_header_lines(resp: &ResponseHeader, ours: Option<OwnHeaders>, out: &mut Vec<u8>) {
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let date = ours.map(|_| get_cached_date());
    let date = date.as_ref().map_or(&b""[..], |d| d.as_bytes());
    let connection: &[u8] = match ours {
        Some(OwnHeaders { keepalive: true }) => b"keep-alive",
        _ => b"close",
    };
    let (mut date_done, mut connection_done) = (ours.is_none(), ours.is_none());
    let mut cased = resp.case_header_iter();
    for (name, value) in resp.headers.iter() {
        // The case map, when there is one, runs in step with the map (pingora's order).
        let wire = cased.next().map(|(c, _)| c.as_slice());
        if ours.is_some() && name == header::DATE {
            if !date_done {
                date_done = true;
                line(b"Date", date);
            }
        } else if ours.is_some() && name == header::CONNECTION {
            if !connection_done {
                connection_done = true;
                line(b"Connection", connection);
            }
        } else {
            let name = wire.unwrap_or_else(|| titled_name(name).as_bytes());
            line(name, value.as_bytes());
        }
    }
    if !date_done {
        line(b"Date", date);
    }
    if !connection_done {
        line(b"Connection", connection);
    }
}

/// pingora's title case for the header names it knows (`case_header_name`), else the name.
fn titled_name(name: &HeaderName) -> &str {
    match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    }
}

/// Checks a request head (`core::request_head::check_head`) and builds the header the proxy
/// works on from the same parse, with the body's framing. Beyond the checks, a 400 for what
/// a proxy cannot take: an absolute-form target whose authority is not Host, a method or
/// target the URI type refuses.
///
/// The header keeps no case map: the client's spelling of each name is in the head, which
/// the session keeps, and `EdgeProxy::upstream_head` writes the backend's header lines from
/// it (a case map cost more than any other part of building the header).
pub(crate) fn parse_request(head: &Bytes, limits: &Limits) -> Result<ParsedRequest, Refusal> {
    const BAD: Refusal = Refusal::new(400, Rejection::BadRequest);
    let mut slots = request_head::header_slots();
    let (checked, parsed) = request_head::check_head(head, limits, &mut slots)?;
    let method = parsed.method.ok_or(BAD)?;
    let path = parsed.path.ok_or(BAD)?;
    let version_11 = parsed.version == Some(1);
    let mut req = new_header(head, method, path, parsed.headers.len()).ok_or(BAD)?;
    req.set_version(if version_11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    });
    let lines = KeptLines::of(head, parsed.headers);
    let mut presence = HeaderPresence::NONE;
    for h in parsed.headers.iter() {
        presence.note(h.name.as_bytes());
        let name = head.slice_ref(h.name.as_bytes());
        // A view into the head, not a copy.
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value)).map_err(|_| BAD)?;
        req.append_header(name, value).map_err(|_| BAD)?;
    }
    // An absolute-form target names the host itself: it must be the Host header's.
    if let Some(authority) = absolute_form_authority(req.raw_path()) {
        let host = req.headers.get(header::HOST).ok_or(BAD)?.as_bytes();
        if !authority.eq_ignore_ascii_case(host) {
            return Err(BAD);
        }
    }
    let body = match checked.body {
        request_head::BodyFraming::None => RequestBody::Done,
        request_head::BodyFraming::Length(n) => RequestBody::Length(n),
        request_head::BodyFraming::Chunked => RequestBody::Chunked(ChunkedDecoder::default()),
    };
    let connection = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value);
    let keepalive = client_keepalive(version_11, connection);
    Ok(ParsedRequest {
        req,
        body,
        keepalive,
        lines,
        presence,
    })
}

/// A request header without case map, before its header lines. An origin-form target
/// (nearly every request) becomes the URI as a view into the head: `build_no_case` copies
/// it and goes through the URI builder, a third of the cost of building the header. Other
/// forms (absolute, `*`, a fragment to strip) take pingora's rules.
fn new_header(head: &Bytes, method: &str, path: &str, headers: usize) -> Option<RequestHeader> {
    if !path.starts_with('/') || path.contains('#') {
        return RequestHeader::build_no_case(method, path.as_bytes(), Some(headers)).ok();
    }
    let target =
        http::uri::PathAndQuery::from_maybe_shared(head.slice_ref(path.as_bytes())).ok()?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = http::Method::from_bytes(method.as_bytes()).ok()?;
    parts.uri = http::Uri::from(target);
    parts.headers.reserve(headers);
    Some(RequestHeader::from(parts))
}

/// A checked request head made into what the session works on.
pub(crate) struct ParsedRequest {
    pub req: RequestHeader,
    pub body: RequestBody,
    /// The client wants the connection kept (`client_keepalive`).
    pub keepalive: bool,
    pub lines: KeptLines,
    /// Which of the request path's headers the head has.
    pub presence: HeaderPresence,
}

/// How many header lines' places a session keeps: most requests have fewer.
const KEPT_LINES: usize = 16;

/// Where a header line's name and value lie in the head (offsets: kept only for heads
/// within 64 KiB, so the array stays small).
#[derive(Clone, Copy, Default)]
pub(crate) struct LineSpan {
    name: (u16, u16),
    value: (u16, u16),
}

/// Where the header lines of a head lie, from its one parse: the backend's head is written
/// from them (`EdgeProxy::upstream_head`) without a second scan of the head. A head with more
/// lines than `KEPT_LINES`, or beyond 64 KiB, keeps none and is scanned again instead
/// (`core::request_head::header_lines`).
#[derive(Clone, Copy)]
pub(crate) struct KeptLines {
    /// `None`: not kept.
    count: Option<u8>,
    spans: [LineSpan; KEPT_LINES],
}

impl KeptLines {
    fn of(head: &[u8], headers: &[httparse::Header]) -> KeptLines {
        let mut kept = KeptLines {
            count: None,
            spans: [LineSpan::default(); KEPT_LINES],
        };
        if headers.len() > KEPT_LINES || head.len() > usize::from(u16::MAX) {
            return kept;
        }
        let base = head.as_ptr() as usize;
        // httparse's slices are views into `head`; an empty value may not point into it,
        // and needs no place.
        let span = |part: &[u8]| -> Option<(u16, u16)> {
            if part.is_empty() {
                return Some((0, 0));
            }
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            let end = start + part.len();
            (end <= head.len()).then_some((start as u16, end as u16))
        };
        for (slot, h) in kept.spans.iter_mut().zip(headers) {
            let (Some(name), Some(value)) = (span(h.name.as_bytes()), span(h.value)) else {
                return kept;
            };
            *slot = LineSpan { name, value };
        }
        kept.count = Some(headers.len() as u8);
        kept
    }

    /// The head these places are in, with them.
    pub(crate) fn over<'a>(&'a self, head: &'a [u8], presence: HeaderPresence) -> RawHead<'a> {
        RawHead {
            head,
            spans: self.count.map(|n| &self.spans[..usize::from(n)]),
            presence,
        }
    }
}

/// A client's HTTP/1 request head as it came, and where its header lines lie when known.
#[derive(Clone, Copy)]
pub(crate) struct RawHead<'a> {
    head: &'a [u8],
    spans: Option<&'a [LineSpan]>,
    presence: HeaderPresence,
}

impl<'a> RawHead<'a> {
    /// A head whose lines are found by scanning it (a head `check_head` accepted).
    #[cfg(test)]
    pub(crate) fn scanned(head: &'a [u8]) -> RawHead<'a> {
        RawHead {
            head,
            spans: None,
            presence: HeaderPresence::UNKNOWN,
        }
    }

    /// Which of the request path's headers the head has (see `edge::presence`).
    pub(crate) fn presence(&self) -> HeaderPresence {
        self.presence
    }

    /// The places of its lines were kept from the parse (`KeptLines`): `lines` reads them
    /// without scanning the head.
    pub(crate) fn lines_kept(&self) -> bool {
        self.spans.is_some()
    }

    /// Its header lines in the client's order: each name as sent, each value without the
    /// whitespace around it.
    pub(crate) fn lines(self) -> RawLines<'a> {
        match self.spans {
            Some(spans) => RawLines::Kept(self.head, spans.iter()),
            None => RawLines::Scanned(request_head::header_lines(self.head)),
        }
    }
}

/// See `RawHead::lines`.
pub(crate) enum RawLines<'a> {
    Kept(&'a [u8], std::slice::Iter<'a, LineSpan>),
    Scanned(request_head::HeaderLines<'a>),
}

impl<'a> Iterator for RawLines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RawLines::Kept(head, spans) => {
                let span = spans.next()?;
                let at = |(start, end): (u16, u16)| &head[usize::from(start)..usize::from(end)];
                Some((at(span.name), at(span.value)))
            }
            RawLines::Scanned(lines) => lines.next(),
        }
    }
}

/// The authority of an absolute-form target (`http://host:port/path`), if it is one.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&c| c == b'/' || c == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Whether the client wants the connection kept: `Connection: close` never,
/// `Connection: keep-alive` yes, else HTTP/1.1 yes and HTTP/1.0 no. `connection`: the
/// values of its Connection lines.
fn client_keepalive<'a>(version_11: bool, connection: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut keep = version_11;
    for value in connection {
        for token in value.split(|&c| c == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                keep = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write_response_header` wrote before: Date and Connection inserted into the
    /// header, then the header serialised by pingora.
    fn through_the_map(resp: &ResponseHeader, keepalive: bool) -> Vec<u8> {
        let mut resp = resp.clone();
        resp.insert_header(header::DATE, get_cached_date()).unwrap();
        let connection = if keepalive { "keep-alive" } else { "close" };
        resp.insert_header(header::CONNECTION, connection).unwrap();
        let mut out = Vec::new();
        resp.header_to_h1_wire(&mut out);
        out
    }

    fn written(resp: &ResponseHeader, ours: Option<OwnHeaders>) -> Vec<u8> {
        let mut out = Vec::new();
        write_header_lines(resp, ours, &mut out);
        out
    }

    /// The Date line's value blanked (the cached date may turn between two reads).
    fn dateless(wire: &[u8]) -> String {
        let text = String::from_utf8(wire.to_vec()).unwrap();
        text.split("\r\n")
            .map(|l| {
                if l.starts_with("Date: ") {
                    "Date: -"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn no_case(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build_no_case(200, None).unwrap();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            resp.append_header(name, *value).unwrap();
        }
        resp
    }

    fn cased(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    #[test]
    fn own_date_and_connection_are_written_as_inserting_them_did() {
        let sets: &[&[(&str, &str)]] = &[
            &[],
            &[("server", "nginx"), ("content-length", "3")],
            &[
                ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("X-One", "1"),
                ("x-two", "2"),
            ],
            &[
                ("x-a", "1"),
                ("connection", "upgrade"),
                ("date", "x"),
                ("x-a", "2"),
            ],
            &[
                ("date", "a"),
                ("x-b", "b"),
                ("date", "c"),
                ("Set-Cookie", "s=1"),
            ],
            &[
                ("Content-Type", "text/plain"),
                ("cache-control", "no-store"),
            ],
        ];
        for headers in sets {
            for keepalive in [true, false] {
                let ours = Some(OwnHeaders { keepalive });
                for resp in [no_case(headers), cased(headers)] {
                    assert_eq!(
                        dateless(&written(&resp, ours)),
                        dateless(&through_the_map(&resp, keepalive)),
                        "{headers:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_informational_head_keeps_its_own_headers() {
        let headers = [
            ("Connection", "upgrade"),
            ("Upgrade", "websocket"),
            ("date", "d"),
        ];
        for resp in [no_case(&headers), cased(&headers)] {
            let mut wire = Vec::new();
            resp.header_to_h1_wire(&mut wire);
            assert_eq!(written(&resp, None), wire);
        }
    }

    fn parsed(head: &str) -> std::result::Result<(RequestHeader, RequestBody), Refusal> {
        let head = Bytes::copy_from_slice(head.as_bytes());
        parse_request(&head, &Limits::default()).map(|p| (p.req, p.body))
    }

    #[test]
    fn a_head_is_checked_and_built_from_one_parse() {
        let (req, body) = parsed(
            "POST /p?q HTTP/1.1\r\nHost: a.test\r\nX-Mixed: v\r\nx-mixed: w\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.raw_path(), b"/p?q");
        assert_eq!(req.version, http::Version::HTTP_11);
        assert_eq!(body, RequestBody::Length(5));
        let mixed: Vec<&[u8]> = req
            .headers
            .get_all("x-mixed")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(mixed, [b"v", b"w"]);
        // The client's case lives in its head, not in a case map.
        assert!(!req.has_case());
        let (_, body) = parsed("POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(body, RequestBody::Done);
        let (req, body) =
            parsed("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(body, RequestBody::Chunked(_)));
        assert_eq!(req.version, http::Version::HTTP_11);
    }

    #[test]
    fn refusals_are_the_checks_then_what_a_proxy_cannot_take() {
        let refused = |head: &str| parsed(head).map(|_| ()).unwrap_err();
        let framing = Refusal::new(400, Rejection::BadFraming);
        let bad = Refusal::new(400, Rejection::BadRequest);
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            framing
        );
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), bad);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..Limits::default().max_headers {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(refused(&many), Refusal::new(431, Rejection::TooLarge));
        // Absolute form naming another host than Host.
        assert_eq!(
            refused("GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            bad
        );
        parsed("GET http://A.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    }

    #[test]
    fn every_target_form_reads_as_pingora_reads_it() {
        for target in [
            "/",
            "/a/b?x=1&y=%20",
            "/a/../b",
            "/x#frag",
            "*",
            "http://a.test/p?q",
            "http://a.test",
        ] {
            let method = if target == "*" { "OPTIONS" } else { "GET" };
            let head = format!("{method} {target} HTTP/1.1\r\nHost: a.test\r\nX: 1\r\n\r\n");
            let (req, _) = parsed(&head).unwrap();
            let pingora = RequestHeader::build_no_case(method, target.as_bytes(), None).unwrap();
            assert_eq!(req.method, pingora.method, "{target}");
            assert_eq!(req.uri, pingora.uri, "{target}");
            assert_eq!(req.raw_path(), pingora.raw_path(), "{target}");
            assert_eq!(req.version, http::Version::HTTP_11);
            assert!(!req.has_case());
        }
    }

    #[test]
    fn keepalive_follows_the_version_and_connection() {
        let keeps = |head: &str| {
            let head = Bytes::copy_from_slice(head.as_bytes());
            parse_request(&head, &Limits::default()).unwrap().keepalive
        };
        assert!(keeps("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n"));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n"
        ));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nCONNECTION: close\r\n\r\n"
        ));
    }

    #[test]
    fn kept_lines_are_the_scanned_lines() {
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..KEPT_LINES {
            many.push_str(&format!("X-{i}: v{i}\r\n"));
        }
        many.push_str("\r\n");
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:a\r\nX-Empty:\r\nx-tab:\t v\t\r\nX-Colon: a:b: c \r\nX-Last:   \r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            many.as_str(),
        ] {
            let bytes = Bytes::copy_from_slice(head.as_bytes());
            let parsed = parse_request(&bytes, &Limits::default()).unwrap();
            let kept = parsed.lines.over(&bytes, parsed.presence);
            assert_eq!(
                kept.spans.is_some(),
                head != many,
                "lines kept up to KEPT_LINES only"
            );
            let kept: Vec<_> = kept.lines().collect();
            let scanned: Vec<_> = RawHead::scanned(&bytes).lines().collect();
            assert_eq!(kept, scanned, "{head:?}");
        }
    }
}

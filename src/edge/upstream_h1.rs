//! HTTP/1.1 toward a backend: the request head written in one send, the response head
//! parsed once (httparse, into a header without a case map), the body relayed by its
//! framing, and the connection handed back for reuse only when its response ended cleanly.
//!
//! Why not pingora's client session: per request it built the response header twice (its own
//! parse with a case map, then our copy to edit), wrapped every read and write in a timer,
//! and serialised through several buffers; this is the cost the profile showed
//! (loadtests/README.md, "Performance"). The interface is the subset the request path (`edge::relay`) uses, with
//! the same error types, so the request path reads the same.

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::request_head::parse_length;
use crate::edge::body::BodyFraming;
use crate::edge::chunked::{encode_chunk, ChunkedDecoder, Step};

/// A backend's response head may be this long (pingora's limit too).
const MAX_HEAD: usize = 1024 * 1024;
/// Header lines in a backend's response head.
const MAX_HEADERS: usize = 256;
/// Read size for heads and bodies.
const READ_CHUNK: usize = 16 * 1024;
/// The first read of a response: most heads, and small bodies with them, fit.
const HEAD_READ: usize = 4096;

/// How the request body goes to the backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RequestBody {
    None,
    Length,
    Chunked,
    /// After a 101: bytes as they come.
    Raw,
}

pub struct UpstreamSession {
    stream: TcpStream,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// What was read and not yet consumed: the rest of a head, or body bytes.
    buf: BytesMut,
    request_body: RequestBody,
    head_request: bool,
    /// The last response head read, until the request path takes it.
    response: Option<RawResponse>,
    /// The status of the last response head read (kept when the head is taken).
    status: u16,
    body: Option<BodyFraming>,
    /// The backend may take another request on this connection once the response ends.
    keepalive: bool,
    upgraded: bool,
}

impl UpstreamSession {
    pub fn new(stream: TcpStream) -> UpstreamSession {
        UpstreamSession {
            stream,
            read_timeout: None,
            write_timeout: None,
            buf: BytesMut::new(),
            request_body: RequestBody::None,
            head_request: false,
            response: None,
            status: 0,
            body: None,
            keepalive: false,
            upgraded: false,
        }
    }

    /// Writes a request head (from `EdgeProxy::upstream_head` or `request_head`), in one
    /// send. The body's framing follows `req`, the client's header, whose framing headers
    /// went upstream unchanged: chunked when Transfer-Encoding is set, else Content-Length,
    /// else none.
    pub async fn write_request_head(&mut self, head: &[u8], req: &RequestHeader) -> Result<()> {
        self.head_request = req.method == http::Method::HEAD;
        self.request_body = if req.headers.contains_key(header::TRANSFER_ENCODING) {
            RequestBody::Chunked
        } else if req.headers.contains_key(header::CONTENT_LENGTH) {
            RequestBody::Length
        } else {
            RequestBody::None
        };
        self.write(head, "writing the request header").await
    }

    async fn write(&mut self, data: &[u8], what: &'static str) -> Result<()> {
        let write = self.stream.write_all(data);
        let written = match self.write_timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(w) => w,
                Err(_) => return Error::e_explain(ErrorType::WriteTimedout, what),
            },
            None => write.await,
        };
        written.or_err(ErrorType::WriteError, what)
    }

    /// One piece of the request body, framed as the header said.
    pub async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self.request_body {
            RequestBody::Chunked => {
                self.write(&encode_chunk(data), "writing the request body")
                    .await
            }
            RequestBody::Length | RequestBody::Raw => {
                self.write(data, "writing the request body").await
            }
            RequestBody::None => Error::e_explain(
                ErrorType::InternalError,
                "a request body for a request without one",
            ),
        }
    }

    /// Ends the request body (the last chunk, for a chunked one).
    pub async fn finish_body(&mut self) -> Result<()> {
        if self.request_body == RequestBody::Chunked {
            self.request_body = RequestBody::None;
            return self.write(b"0\r\n\r\n", "ending the request body").await;
        }
        Ok(())
    }

    /// Reads the next response head: a 1xx is returned like any other (its body is empty),
    /// and the next call reads the head after it.
    pub async fn read_response(&mut self) -> Result<()> {
        loop {
            if !self.buf.is_empty() {
                if self.parse_head()? {
                    return Ok(());
                }
                if self.buf.len() > MAX_HEAD {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "the response head is too long",
                    );
                }
            }
            // The first read lands on the stack and only what came is kept: a buffer of
            // exactly the response's size costs the allocator a fraction of a 4 KiB one.
            let read = if self.buf.capacity() == 0 {
                self.read_first().await?
            } else {
                self.read_into(READ_CHUNK).await?
            };
            if read == 0 {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the backend closed the connection before a response",
                );
            }
        }
    }

    /// Reads into `buf` under the read timeout; 0 at the end of the stream.
    async fn read_more(&mut self) -> Result<usize> {
        self.read_into(READ_CHUNK).await
    }

    /// The first read of a response, under the read timeout: up to `HEAD_READ` bytes on the
    /// stack, copied into `buf` at their size.
    async fn read_first(&mut self) -> Result<usize> {
        let stream = &mut self.stream;
        let buf = &mut self.buf;
        // Uninitialised: a zeroed 4 KiB array would cost more than the allocation saved.
        let read = std::future::poll_fn(|cx| {
            let mut first = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_READ];
            let mut room = tokio::io::ReadBuf::uninit(&mut first);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut room) {
                std::task::Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(room.filled());
                    std::task::Poll::Ready(Ok(room.filled().len()))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        });
        within(self.read_timeout, read).await
    }

    /// Reads into `buf`, with room for at least `room` bytes, under the read timeout.
    async fn read_into(&mut self, room: usize) -> Result<usize> {
        self.buf.reserve(room);
        let read = self.stream.read_buf(&mut self.buf);
        within(self.read_timeout, read).await
    }

    /// Parses a complete head at the start of `buf`: sets the response and its body's
    /// framing, and consumes the head from `buf`; `false` when the head is not complete yet.
    fn parse_head(&mut self) -> Result<bool> {
        // Uninitialised: zeroing the slots would be a memset on every response.
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let Some((line, spans)) = scan_head(&self.buf, &mut slots)? else {
            return Ok(false);
        };
        // The head's bytes, frozen: what is written on, or made into a header, comes from
        // them without a copy.
        let head = self.buf.split_to(line.len).freeze();
        let (response, body, keepalive) = inspect(line, head, spans, self.head_request)?;
        self.status = response.status.as_u16();
        self.response = Some(response);
        self.body = body;
        self.keepalive = keepalive;
        Ok(true)
    }

    /// The status of the response head read last and not yet taken.
    pub fn head_status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status.as_u16())
    }

    /// The response head, for the client's response to be made of (no copy).
    pub fn take_head(&mut self) -> Option<RawResponse> {
        self.response.take()
    }

    /// After a 101: the request side sends raw bytes too.
    pub fn maybe_upgrade_body_writer(&mut self) {
        if self.status == 101 {
            self.upgraded = true;
            self.request_body = RequestBody::Raw;
        }
    }

    /// The response body has been read to its end (a Content-Length body, from its last
    /// piece on).
    pub fn is_body_done(&self) -> bool {
        self.body == Some(BodyFraming::Done)
    }

    /// The next piece of the response body (decoded from chunks), `None` at its end. A body
    /// cut short by the backend is an error (`ConnectionClosed`), never a short success.
    pub async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Error::e_explain(ErrorType::InternalError, "no response head yet");
            };
            let step = body.next(&mut self.buf);
            match step.map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e))? {
                Step::Data(piece) => return Ok(Some(piece)),
                Step::End => return Ok(None),
                Step::NeedMore => {
                    if self.read_more().await? == 0
                        && !self.body.as_mut().is_some_and(BodyFraming::peer_closed)
                    {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            "the backend closed before the end of the body",
                        );
                    }
                }
            }
        }
    }

    /// The connection, when the response ended cleanly, the backend did not ask to close,
    /// and nothing unread follows it.
    pub async fn reuse(self) -> Option<TcpStream> {
        let clean = self.keepalive
            && !self.upgraded
            && self.body == Some(BodyFraming::Done)
            && self.request_body != RequestBody::Chunked
            && self.buf.is_empty();
        clean.then_some(self.stream)
    }
}

/// A read from the backend under its read timeout (none: unbounded).
async fn within(
    timeout: Option<Duration>,
    read: impl std::future::Future<Output = std::io::Result<usize>>,
) -> Result<usize> {
    let n = match timeout {
        Some(t) => match tokio::time::timeout(t, read).await {
            Ok(r) => r,
            Err(_) => return Error::e_explain(ErrorType::ReadTimedout, "reading from the backend"),
        },
        None => read.await,
    };
    n.or_err(ErrorType::ReadError, "reading from the backend")
}

/// A request header as HTTP/1.1 on the wire (the version is always 1.1 upstream).
pub fn request_head(req: &RequestHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    req.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
}

/// Where a header line's name and value lie in the head (offsets: a head is far shorter
/// than 4 GiB, and the array of these is zeroed per response, so kept small).
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
    kind: Kind,
}

/// The header names the proxy acts on in a response, told apart once, at the scan.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum Kind {
    #[default]
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    StrictTransportSecurity,
    RequestId,
    /// Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer,
    /// Upgrade: never passed on to the client (but after a 101, which keeps its Upgrade).
    HopByHop,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        // The length first: most names are none of these, and are told so by it.
        match name.len() {
            2 if is(b"te") => Kind::HopByHop,
            4 if is(b"date") => Kind::Date,
            7 if is(b"trailer") || is(b"upgrade") => Kind::HopByHop,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::HopByHop,
            12 if is(b"x-request-id") => Kind::RequestId,
            14 if is(b"content-length") => Kind::ContentLength,
            16 if is(b"proxy-connection") => Kind::HopByHop,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            18 if is(b"proxy-authenticate") => Kind::HopByHop,
            19 if is(b"proxy-authorization") => Kind::HopByHop,
            25 if is(b"strict-transport-security") => Kind::StrictTransportSecurity,
            _ => Kind::Other,
        }
    }
}

impl Span {
    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// The status line of a complete head, and the head's length.
struct StatusLine {
    len: usize,
    status: http::StatusCode,
    /// Where a reason phrase other than the status's own lies in the head.
    reason: Option<(u32, u32)>,
    version_11: bool,
}

/// A backend's response head as it came: its bytes, where each header line lies, and what
/// the proxy needs to know of it. The client's head is written from it directly
/// (`write_client_lines`), or, when middlewares edit it, from the header it is made into
/// (`to_header`): a header map costs more than all the rest of a response head.
pub struct RawResponse {
    head: Bytes,
    spans: Vec<Span>,
    reason: Option<(u32, u32)>,
    pub status: http::StatusCode,
    /// The response has Content-Length (`Some`, the value) or Transfer-Encoding (`coded`).
    pub length: Option<u64>,
    pub coded: bool,
    pub has_hsts: bool,
    pub has_request_id: bool,
    /// A Connection header names other headers, which are then hop-by-hop too: only the
    /// header's path (`EdgeProxy::client_response`) takes them out.
    pub connection_names_others: bool,
}

impl RawResponse {
    /// The response as a header to edit (no case map; values are views into the head).
    pub fn to_header(&self) -> Result<Box<ResponseHeader>> {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        // Room for what the proxy adds (X-Request-Id, Strict-Transport-Security, ...).
        let mut headers = HeaderMap::with_capacity(self.spans.len() + 4);
        for &span in &self.spans {
            let name = HeaderName::from_bytes(&self.head[span.name()])
                .or_err(ErrorType::InvalidHTTPHeader, "invalid header name")?;
            // A view into the head (checked as `HeaderValue::from_bytes` checks), not a copy.
            let value = HeaderValue::from_maybe_shared(self.head.slice(span.value()))
                .or_err(ErrorType::InvalidHTTPHeader, "invalid header value")?;
            // Straight into the map: no case map to keep in step (the header has none).
            headers.append(name, value);
        }
        parts.headers = headers;
        let mut resp = ResponseHeader::from(parts);
        if let Some((start, end)) = self.reason {
            let reason = std::str::from_utf8(&self.head[start as usize..end as usize])
                .or_err(ErrorType::InvalidHTTPHeader, "invalid reason phrase")?;
            resp.set_reason_phrase(Some(reason))?;
        }
        Ok(Box::new(resp))
    }

    /// The status line for a client (always HTTP/1.1, as the header's path writes it): the
    /// backend's own reason phrase, else the status's.
    pub fn write_status_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        match self.reason {
            Some((start, end)) => out.extend_from_slice(&self.head[start as usize..end as usize]),
            None => out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The header lines a client gets of a final response (not a 101), as they came —
    /// names in the backend's case, in its order — less Connection and the hop-by-hop
    /// headers, with `date` in the first Date's place. Returns whether a Date was written.
    pub fn write_client_lines(&self, date: &[u8], out: &mut Vec<u8>) -> bool {
        let mut dated = false;
        for span in &self.spans {
            let (name, value) = match span.kind {
                Kind::Connection | Kind::HopByHop => continue,
                Kind::Date if dated => continue,
                Kind::Date => {
                    dated = true;
                    (&b"Date"[..], date)
                }
                _ => (&self.head[span.name()], &self.head[span.value()]),
            };
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        dated
    }
}

/// Scans a response head at the start of `buf`: its status line and where each header line
/// lies; `None` when it is not complete.
fn scan_head<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(StatusLine, Vec<Span>)>> {
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("invalid response head from the backend: {e}"),
            )
        }
    };
    let status = parsed.code.unwrap_or(0);
    let code = http::StatusCode::from_u16(status)
        .or_err(ErrorType::InvalidHTTPHeader, "invalid status")?;
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start as u32, (start + s.len()) as u32)
    };
    let reason = parsed
        .reason
        .filter(|r| !r.is_empty() && code.canonical_reason() != Some(*r))
        .map(|r| at(r.as_bytes()));
    let spans = parsed
        .headers
        .iter()
        .map(|h| Span {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            kind: Kind::of(h.name.as_bytes()),
        })
        .collect();
    let line = StatusLine {
        len,
        status: code,
        reason,
        version_11: parsed.version == Some(1),
    };
    Ok(Some((line, spans)))
}

/// What a scanned head says: the response, its body's framing (`None` for a 1xx other than
/// 101: its body is empty and the final head follows), and whether the connection may serve
/// another request.
fn inspect(
    line: StatusLine,
    head: Bytes,
    mut spans: Vec<Span>,
    head_request: bool,
) -> Result<(RawResponse, Option<BodyFraming>, bool)> {
    let status = line.status.as_u16();
    let mut repeated_length = false;
    let mut close = !line.version_11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let (mut has_hsts, mut has_request_id, mut names_others) = (false, false, false);
    for span in &spans {
        let value = &head[span.value()];
        match span.kind {
            Kind::ContentLength => {
                let n = parse_length(value).ok_or_else(|| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "invalid Content-Length")
                })?;
                if length.is_some_and(|l| l != n) {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "conflicting Content-Length values",
                    );
                }
                repeated_length |= length.is_some();
                length = Some(n);
            }
            Kind::TransferEncoding => {
                coded = true;
                // The last coding decides (RFC 9112 §6.3): chunked, or read until close.
                chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
            }
            Kind::Connection => {
                for token in value.split(|&c| c == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if !line.version_11 {
                            close = false;
                        }
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                        names_others = true;
                    }
                }
            }
            Kind::StrictTransportSecurity => has_hsts = true,
            Kind::RequestId => has_request_id = true,
            Kind::Date | Kind::HopByHop | Kind::Other => {}
        }
    }
    if coded && length.is_some() {
        // Which one frames the body is a guess a proxy must not pass on (RFC 9112 §6.3
        // calls it a smuggling attempt); nginx answers 502 too.
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "both Content-Length and Transfer-Encoding in a response",
        );
    }
    if coded && !chunked {
        // A coding that does not end in chunked is read until close; passed on with its
        // Transfer-Encoding, the client would read the proxy's re-framed body as its own
        // (nginx refuses it as well).
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "a response Transfer-Encoding that does not end in chunked",
        );
    }
    let informational = (100..200).contains(&status) && status != 101;
    let body = if informational {
        None
    } else {
        Some(if status == 101 {
            BodyFraming::UntilClose
        } else if head_request || status == 204 || status == 304 {
            BodyFraming::Done
        } else if coded {
            BodyFraming::Chunked(ChunkedDecoder::default())
        } else if let Some(n) = length {
            if n == 0 {
                BodyFraming::Done
            } else {
                BodyFraming::Length(n)
            }
        } else {
            close = true;
            BodyFraming::UntilClose
        })
    };
    if repeated_length {
        // The same length twice is one length: the line goes on once, whichever way the
        // client's head is written (straight from these lines, or from the header they make).
        let mut seen = false;
        spans.retain(|s| s.kind != Kind::ContentLength || !std::mem::replace(&mut seen, true));
    }
    let response = RawResponse {
        head,
        spans,
        reason: line.reason,
        status: line.status,
        length,
        coded,
        has_hsts,
        has_request_id,
        connection_names_others: names_others,
    };
    Ok((response, body, !close && status != 101))
}

/// The last comma-separated token of a header value, trimmed.
fn last_token(v: &[u8]) -> &[u8] {
    v.rsplit(|&c| c == b',').next().unwrap_or(v).trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings() {
        assert_eq!(last_token(b"gzip, chunked"), b"chunked");
        assert_eq!(last_token(b"chunked, gzip"), b"gzip");
    }

    /// A parsed head, as `UpstreamSession::parse_head` leaves it.
    struct ParsedHead {
        raw: RawResponse,
        response: Box<ResponseHeader>,
        body: Option<BodyFraming>,
        keepalive: bool,
    }

    /// Scans and inspects a head as `UpstreamSession::parse_head` does, and makes it into a
    /// header; the rest of `wire`.
    fn parse(wire: &[u8]) -> Result<(ParsedHead, Bytes)> {
        let mut buf = BytesMut::from(wire);
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let (line, spans) = scan_head(&buf, &mut slots)?.expect("a complete head");
        let head = buf.split_to(line.len).freeze();
        let (raw, body, keepalive) = inspect(line, head, spans, false)?;
        let response = raw.to_header()?;
        let parsed = ParsedHead {
            raw,
            response,
            body,
            keepalive,
        };
        Ok((parsed, buf.freeze()))
    }

    #[test]
    fn a_head_becomes_a_header_whose_values_are_as_sent() {
        let wire = b"HTTP/1.1 200 Fine\r\nServer: x\r\nX-A: 1\r\nx-a:  2 \r\nDate: d\r\n\
                     Content-Length: 3\r\n\r\nabc";
        let (parsed, rest) = parse(wire).unwrap();
        let resp = parsed.response;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert!(!resp.has_case());
        let a: Vec<_> = resp.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(resp.headers["server"], "x");
        assert_eq!(resp.headers.len(), 5);
        assert_eq!(parsed.body, Some(BodyFraming::Length(3)));
        assert!(parsed.keepalive);
        assert_eq!(rest, &b"abc"[..]);
    }

    #[test]
    fn a_value_with_a_control_character_is_refused_and_obs_text_kept() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n").is_err());
        let (parsed, _) =
            parse(b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(parsed.response.headers["x-a"].as_bytes(), b"caf\xe9");
    }

    #[test]
    fn a_client_gets_the_backends_lines_less_the_hop_by_hop_ones() {
        let wire = b"HTTP/1.1 200 Fine\r\nX-Mixed-Case: 1\r\nConnection: keep-alive\r\n\
                     Keep-Alive: timeout=5\r\nDate: old\r\nSet-Cookie: a\r\nTE: x\r\n\
                     Upgrade: h2c\r\nDate: older\r\nSet-Cookie: b\r\nContent-Length: 3\r\n\r\nabc";
        let (parsed, _) = parse(wire).unwrap();
        let raw = &parsed.raw;
        let mut out = Vec::new();
        raw.write_status_line(&mut out);
        assert!(raw.write_client_lines(b"now", &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nX-Mixed-Case: 1\r\nDate: now\r\nSet-Cookie: a\r\n\
             Set-Cookie: b\r\nContent-Length: 3\r\n"
        );
        assert_eq!((raw.length, raw.coded), (Some(3), false));
        assert!(!raw.connection_names_others && !raw.has_hsts && !raw.has_request_id);

        let (parsed, _) = parse(
            b"HTTP/1.1 404 Not Found\r\nconnection: x-secret\r\nX-Request-Id: r\r\n\
              Strict-Transport-Security: max-age=1\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        let raw = &parsed.raw;
        let mut out = Vec::new();
        raw.write_status_line(&mut out);
        assert!(!raw.write_client_lines(b"now", &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nX-Request-Id: r\r\n\
             Strict-Transport-Security: max-age=1\r\nTransfer-Encoding: chunked\r\n"
        );
        assert!(raw.connection_names_others && raw.has_hsts && raw.has_request_id && raw.coded);
    }

    #[test]
    fn framing_follows_the_head() {
        let (p, _) = parse(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\
                            Transfer-Encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap();
        assert!(matches!(p.body, Some(BodyFraming::Chunked(_))));
        assert!(p.keepalive);
        let (p, _) = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(p.body, Some(BodyFraming::UntilClose));
        assert!(!p.keepalive);
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(parse(b"HTTP/1.1 099 Low\r\n\r\n").is_err());
        // Framing a proxy must not guess at: refused (the client gets a 502).
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err());
        // The same length twice is one length, and goes to the client once.
        let (p, _) =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!(p.body, Some(BodyFraming::Length(2)));
        let mut out = Vec::new();
        p.raw.write_client_lines(b"now", &mut out);
        assert_eq!(out, b"Content-Length: 2\r\n");
    }
}

//! What an edge must refuse in a request head before a byte of it goes upstream, and the
//! edits that make the rest unambiguous: strict HTTP/1 framing, Host syntax, path
//! normalisation. Pure functions over bytes, no I/O: the edge's HTTP/1 loop reads the head and calls
//! them, and the HTTP/2 path shares the Host and path rules through `EdgeProxy::admit`.
//!
//! The rules follow hyper's `proto/h1/role.rs` and nginx: anything two parsers could read
//! two ways (Content-Length with Transfer-Encoding, two lengths, an obfuscated coding) is a
//! 400 and a closed connection — the request-smuggling family.

use std::borrow::Cow;

use crate::core::config::Limits;

/// Why a request was refused before it was proxied; the label of
/// `switchyard_rejected_requests_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The head or body did not arrive in time (408).
    Timeout,
    /// A head, request line or body beyond the limits (413, 414, 431).
    TooLarge,
    /// Framing two parsers could read two ways (400).
    BadFraming,
    /// A malformed request line, Host or path (400).
    BadRequest,
    /// A route's `rate_limit` refused the client (429).
    RateLimited,
    /// A connection from a `listen.proxy_protocol_from` source without a valid PROXY
    /// protocol header (closed without an answer).
    ProxyProtocol,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Timeout,
        Rejection::TooLarge,
        Rejection::BadFraming,
        Rejection::BadRequest,
        Rejection::RateLimited,
        Rejection::ProxyProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Timeout => "timeout",
            Rejection::TooLarge => "too_large",
            Rejection::BadFraming => "bad_framing",
            Rejection::BadRequest => "bad_request",
            Rejection::RateLimited => "rate_limited",
            Rejection::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// A refused request: the status the client gets and the reason counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Rejection,
}

impl Refusal {
    pub const fn new(status: u16, reason: Rejection) -> Refusal {
        Refusal { status, reason }
    }

    /// The whole response, sent before the connection is closed.
    pub fn response(self) -> &'static [u8] {
        match self.status {
            408 => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            413 => b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            414 => b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            501 => b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            _ => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        }
    }
}

const BAD_FRAMING: Refusal = Refusal::new(400, Rejection::BadFraming);
const BAD_REQUEST: Refusal = Refusal::new(400, Rejection::BadRequest);

/// The most headers any `[limits] max_headers` allows (`config::MAX_HEADERS_CAP`).
const HEADER_SLOTS: usize = crate::core::config::MAX_HEADERS_CAP;

/// How the body of a checked request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A request head that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub body: BodyFraming,
}

/// Where the end of a head may be: the offset just past `\r\n\r\n` (or a bare `\n\n`,
/// which httparse accepts too), searched from `from` so a head trickled in byte by byte is
/// scanned once, not once per byte.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    for at in memchr::memchr_iter(b'\n', &buf[start..]).map(|p| start + p) {
        if at + 1 < buf.len() && buf[at + 1] == b'\n' {
            return Some(at + 2);
        }
        if at + 2 < buf.len() && buf[at + 1] == b'\r' && buf[at + 2] == b'\n' {
            return Some(at + 3);
        }
    }
    None
}

/// What a head too large for `max_header_bytes` gets: 414 when the request line alone does
/// not fit, 431 otherwise (nginx and HAProxy tell the two apart the same way).
pub fn oversized(buf: &[u8], max_header_bytes: usize) -> Refusal {
    let line_end = buf[..buf.len().min(max_header_bytes)]
        .iter()
        .position(|&c| c == b'\n');
    match line_end {
        None => Refusal::new(414, Rejection::TooLarge),
        Some(_) => Refusal::new(431, Rejection::TooLarge),
    }
}

/// Room for the header lines of one head, on the caller's stack. Uninitialised: zeroing 256
/// of them (8 KiB) would be a memset on every request.
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; HEADER_SLOTS];

pub const fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; HEADER_SLOTS]
}

/// Checks a complete head (`buf[..end]`, from `find_head_end`) against the framing, Host and
/// size rules. Every refusal closes the connection; nothing of the request is forwarded.
/// With the verdict comes the parse itself (request line and headers, in `slots`), so the
/// head is parsed once: the edge builds its request header from it.
pub fn check_head<'h, 'b>(
    buf: &'b [u8],
    limits: &Limits,
    slots: &'h mut HeaderSlots<'b>,
) -> Result<(CheckedHead, httparse::Request<'h, 'b>), Refusal> {
    let max = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..max]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(BAD_REQUEST),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::new(431, Rejection::TooLarge)),
        Err(
            httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine
            | httparse::Error::Status,
        ) => return Err(BAD_FRAMING),
        Err(_) => return Err(BAD_REQUEST),
    };
    // RFC 9112 §2.2 lets a recipient take a bare LF as a line end; a proxy must not, when
    // the backend might not agree on where a header ends (a smuggling vector).
    if memchr::memchr_iter(b'\n', &buf[..len]).any(|i| i == 0 || buf[i - 1] != b'\r') {
        return Err(BAD_FRAMING);
    }
    let version = req.version.unwrap_or(1);
    let target = req.path.unwrap_or("");
    let origin_form = target.starts_with('/');
    let asterisk = target == "*" && req.method == Some("OPTIONS");
    let absolute =
        starts_with_ignore_case(target, "http://") || starts_with_ignore_case(target, "https://");
    if !(origin_form || asterisk || absolute) && req.method != Some("CONNECT") {
        return Err(BAD_REQUEST);
    }

    let mut hosts = 0;
    let mut lengths = 0;
    let mut length = 0u64;
    let mut codings = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            let host = std::str::from_utf8(h.value).map_err(|_| BAD_REQUEST)?;
            if !valid_host(host) {
                return Err(BAD_REQUEST);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = parse_length(h.value).ok_or(BAD_FRAMING)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
            if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                // Only chunked is spoken; anything else is unknown or obfuscated.
                return Err(BAD_FRAMING);
            }
        }
    }
    // RFC 9112 §3.2: a 1.1 request has exactly one Host; two are never honoured.
    // (CONNECT names its target in the request line; it gets its 405 later.)
    let connect = req.method == Some("CONNECT");
    if hosts > 1 || (hosts == 0 && version == 1 && !connect) {
        return Err(BAD_REQUEST);
    }
    if lengths > 1 || codings > 1 || (lengths == 1 && codings == 1) {
        return Err(BAD_FRAMING);
    }
    if codings == 1 && version == 0 {
        // RFC 9112 §6.1: HTTP/1.0 has no chunked coding.
        return Err(BAD_FRAMING);
    }
    let body = if codings == 1 {
        BodyFraming::Chunked
    } else if lengths == 1 && length > 0 {
        BodyFraming::Length(length)
    } else {
        BodyFraming::None
    };
    if let BodyFraming::Length(n) = body {
        if limits.max_body_bytes > 0 && n > limits.max_body_bytes {
            return Err(Refusal::new(413, Rejection::TooLarge));
        }
    }
    Ok((CheckedHead { len, body }, req))
}

/// The header lines of a head `check_head` accepted, in the order the client sent them:
/// each name as sent (its case kept) and its value without the whitespace around it, as
/// httparse reads them. A plain scan, without a second parse: the checks already refused
/// bare LFs, folded lines and malformed names, so every line is `name:value\r\n`.
pub fn header_lines(head: &[u8]) -> HeaderLines<'_> {
    // Empty lines before the request line are allowed (RFC 9112 §2.2; httparse skips them,
    // and bare LFs were refused): the request line is the first line with something in it.
    // Taking an empty line for it would read the request line as the head's end, and lose
    // every header line (Host, Content-Length) on the way upstream.
    let mut head = head;
    while let Some(rest) = head.strip_prefix(b"\r\n") {
        head = rest;
    }
    // The request line is not a header line.
    let start = head
        .iter()
        .position(|&c| c == b'\n')
        .map_or(head.len(), |i| i + 1);
    HeaderLines {
        rest: &head[start..],
    }
}

/// See `header_lines`.
pub struct HeaderLines<'b> {
    rest: &'b [u8],
}

impl<'b> Iterator for HeaderLines<'b> {
    type Item = (&'b [u8], &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let end = memchr::memchr(b'\n', self.rest)?;
        let line = &self.rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.rest = &self.rest[end + 1..];
        let colon = memchr::memchr(b':', line);
        let Some(colon) = colon else {
            // The blank line that ends the head.
            self.rest = &[];
            return None;
        };
        Some((&line[..colon], trim_ows(&line[colon + 1..])))
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&c| c != b' ' && c != b'\t');
    let Some(start) = start else { return &[] };
    let end = v
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .unwrap_or(start);
    &v[start..=end]
}

/// One Content-Length value: 1 to 18 digits (no sign, no list, no hex: nginx's rule; 18
/// digits keep it below u64::MAX), surrounding whitespace allowed.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A Host (or :authority) that can be routed and put into a redirect: a DNS name (letters,
/// digits, `-`, `_`, dots), an IPv4 literal or a bracketed IPv6 literal, then an optional
/// `:port`. Anything else — `%`, `/`, `@`, quotes, spaces — is refused, never echoed.
pub fn valid_host(host: &str) -> bool {
    let b = host.as_bytes();
    if b.is_empty() || b.len() > 260 {
        return false;
    }
    let (name, port) = if b[0] == b'[' {
        let Some(close) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &host[1..close];
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, &b[close + 1..])
    } else {
        match b.iter().position(|&c| c == b':') {
            Some(i) => (Some(&b[..i]), &b[i..]),
            None => (Some(b), &b[b.len()..]),
        }
    };
    if !port.is_empty() {
        let digits = &port[1..];
        if port[0] != b':' || digits.is_empty() || digits.len() > 5 {
            return false;
        }
        if !digits.iter().all(u8::is_ascii_digit) {
            return false;
        }
    }
    match name {
        None => true,
        Some(name) => {
            if name.is_empty() || name.len() > 253 || name[0] == b'.' {
                return false;
            }
            // One pass: the characters, and (RFC 1123) no label that starts or ends with a
            // hyphen (a trailing dot, the root, leaves an empty last label).
            let mut prev = b'.';
            for &c in name {
                match c {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => {}
                    b'-' if prev == b'.' => return false,
                    b'-' => {}
                    b'.' if prev == b'-' => return false,
                    b'.' => {}
                    _ => return false,
                }
                prev = c;
            }
            prev != b'-'
        }
    }
}

/// The path a request is routed by and forwarded with: dot-segments resolved (RFC 3986
/// §5.2.4), percent-encoded dots decoded first so `%2e%2e` is `..`. `Err` for a path that
/// climbs above `/`. The query is not touched. Allocates only when something changes.
pub fn normalize_path(path_and_query: &str) -> Result<Cow<'_, str>, Refusal> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // `*` or an authority: nothing to resolve.
        return Ok(Cow::Borrowed(path_and_query));
    }
    if !needs_normalizing(path.as_bytes()) {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let decoded = decode_dots(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(BAD_REQUEST);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path_and_query.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    result.push_str(query);
    Ok(Cow::Owned(result))
}

/// Whether a path holds a `.` or `..` segment, plain or percent-encoded.
fn needs_normalizing(path: &[u8]) -> bool {
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'/' {
            let rest = &path[i + 1..];
            let mut j = 0;
            let mut dots = 0;
            loop {
                if rest.get(j) == Some(&b'.') {
                    j += 1;
                } else if rest.len() >= j + 3
                    && rest[j] == b'%'
                    && rest[j + 1] == b'2'
                    && (rest[j + 2] == b'e' || rest[j + 2] == b'E')
                {
                    j += 3;
                } else {
                    break;
                }
                dots += 1;
                if dots > 2 {
                    break;
                }
            }
            if (dots == 1 || dots == 2) && (j == rest.len() || rest[j] == b'/') {
                return true;
            }
        }
        i += 1;
    }
    false
}

fn decode_dots(path: &str) -> Cow<'_, str> {
    if !path.contains("%2e") && !path.contains("%2E") {
        return Cow::Borrowed(path);
    }
    Cow::Owned(path.replace("%2e", ".").replace("%2E", "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn check(head: &str) -> Result<CheckedHead, Refusal> {
        check_with(head, &limits())
    }

    fn check_with(head: &str, limits: &Limits) -> Result<CheckedHead, Refusal> {
        let mut slots = header_slots();
        check_head(head.as_bytes(), limits, &mut slots).map(|(checked, _)| checked)
    }

    #[test]
    fn plain_requests_pass() {
        let h = check("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::None);
        let h = check("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n").unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        check("GET / HTTP/1.0\r\n\r\n").unwrap();
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
        ] {
            assert_eq!(
                check(head).map(|_| ()),
                Err(BAD_FRAMING),
                "{head:?} must be refused as bad framing"
            );
        }
    }

    #[test]
    fn hosts_are_checked() {
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil%2ecom/x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \"a\"\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            "GET x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(check(bad).map(|_| ()), Err(BAD_REQUEST), "{bad:?}");
        }
        for good in [
            "a.test",
            "A.Test:8080",
            "127.0.0.1",
            "[::1]:443",
            "x_y.test.",
        ] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            "a:",
            "a:99999999",
            "[::1",
            "[zz]",
            ".a",
            "a/b",
            "a%b",
            "-x.test",
            "x-.test",
            "a.-b",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_parse_comes_with_the_verdict() {
        let head = "POST /x?y HTTP/1.0\r\nHost: a.test\r\nX-Mixed-Case:  v 1 \r\nContent-Length: 3\r\n\r\n";
        let mut slots = header_slots();
        let (checked, req) = check_head(head.as_bytes(), &limits(), &mut slots).unwrap();
        assert_eq!(checked.len, head.len());
        assert_eq!(checked.body, BodyFraming::Length(3));
        assert_eq!(req.method, Some("POST"));
        assert_eq!(req.path, Some("/x?y"));
        assert_eq!(req.version, Some(0));
        let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            headers,
            [
                ("Host", &b"a.test"[..]),
                ("X-Mixed-Case", b"v 1"),
                ("Content-Length", b"3")
            ]
        );
    }

    #[test]
    fn header_lines_are_the_parsed_headers_in_order() {
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:a\r\nX-Empty:\r\nx-tab:\t v\t\r\nX-Colon: a:b: c \r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "POST /p HTTP/1.1\r\nHost: a\r\nCoOkIe: a=1\r\ncookie: b=2\r\nUser-Agent: x/1 (y)\r\nContent-Length: 0\r\n\r\n",
            // Empty lines before the request line (a client's CRLF after a body): the
            // request line is still not taken for a header line, nor for the head's end.
            "\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n",
            "\r\n\r\nGET /a:b HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut slots = header_slots();
            let (_, req) = check_head(head.as_bytes(), &limits(), &mut slots).unwrap();
            let parsed: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect();
            let scanned: Vec<(&[u8], &[u8])> = header_lines(head.as_bytes()).collect();
            assert_eq!(scanned, parsed, "{head:?}");
        }
        // A head followed by its body: the lines stop at the blank line.
        let lines: Vec<_> = header_lines(b"GET / HTTP/1.1\r\nA: 1\r\n\r\nB: 2\r\n").collect();
        assert_eq!(lines, [(&b"A"[..], &b"1"[..])]);
    }

    #[test]
    fn content_lengths() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"+42"), None);
        assert_eq!(parse_length(b"4,2"), None);
    }

    #[test]
    fn bare_lf_line_ends_are_refused() {
        for bad in [
            "GET / HTTP/1.1\nHost: a\n\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n",
        ] {
            assert_eq!(check(bad).map(|_| ()), Err(BAD_FRAMING), "{bad:?}");
        }
    }

    #[test]
    fn limits_give_431_and_413() {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..101 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(check(&head).unwrap_err().status, 431);
        let l = Limits {
            max_body_bytes: 10,
            ..limits()
        };
        let big = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(check_with(big, &l).unwrap_err().status, 413);
        assert_eq!(oversized(b"GET /aaaaaaaa", 8).status, 414);
        assert_eq!(oversized(b"GET / HTTP/1.1\r\nX: aaaa", 20).status, 431);
    }

    #[test]
    fn head_end_is_found_incrementally() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(find_head_end(buf, 0), Some(buf.len() - 4));
        for from in 0..buf.len() - 4 {
            assert_eq!(find_head_end(buf, from), Some(buf.len() - 4));
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
    }

    #[test]
    fn paths_are_normalised() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b?x=/../").unwrap(), "/a/b?x=/../");
        assert_eq!(n("/public/../secret").unwrap(), "/secret");
        assert_eq!(n("/public/%2e%2e/secret").unwrap(), "/secret");
        assert_eq!(n("/public/%2E%2E/secret?q").unwrap(), "/secret?q");
        assert_eq!(n("/public/./x").unwrap(), "/public/x");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/a/b/../").unwrap(), "/a/");
        assert_eq!(n("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(n("/a..b/...").unwrap(), "/a..b/...");
        assert!(n("/../secret").is_err());
        assert!(n("/a/../../b").is_err());
        assert!(n("/%2e%2e/b").is_err());
        assert!(matches!(
            normalize_path("/plain/path"),
            Ok(Cow::Borrowed(_))
        ));
    }
}

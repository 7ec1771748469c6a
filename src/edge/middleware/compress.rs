//! `compress`: gzip, br or zstd for compressible responses when the client accepts one and
//! the backend did not encode the body itself. The codecs are flate2 (zlib-ng), brotli and
//! zstd — the crates pingora's own compression module uses.
//!
//! When (Traefik's compress middleware and nginx's gzip module agree on most of it):
//! - the request: not HEAD, no `Range`; the coding is the client's best by its
//!   `Accept-Encoding` q-values, ties going to the route's order (`zstd`, `br`, `gzip`);
//! - the response: not 1xx/204/206/304, no `Content-Encoding` or `Content-Range` of its
//!   own, no `Cache-Control: no-transform`, a compressible `Content-Type` (text, JSON,
//!   JavaScript, XML, SVG, WebAssembly, …; not `text/event-stream`, not images, archives or
//!   other compressed formats), and a `Content-Length` of at least `min_bytes` (a body of
//!   unknown length is compressed, as nginx does).
//!
//! Such a response carries `Vary: Accept-Encoding` whether or not this client gets it
//! compressed (a cache must not hand the compressed copy to a client that cannot read it).
//! A compressed one loses its `Content-Length` and `Accept-Ranges`, gets `Content-Encoding`,
//! and a strong `ETag` becomes weak (the bytes differ from the backend's).
//!
//! Each piece of the body is compressed and flushed as it arrives: a streamed response is
//! never held back waiting for more.

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::HeaderMap;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::core::config::{Compress, Encoding};

const GZIP_LEVEL: u32 = 6;
/// Brotli's quality for on-the-fly compression (its maximum, 11, is for static files).
const BROTLI_QUALITY: u32 = 4;
/// 2^19: a 512 KiB window.
const BROTLI_LGWIN: u32 = 19;
const ZSTD_LEVEL: i32 = 3;

/// The request's side of the decision, taken when it is routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The response may be compressed (the route compresses; not HEAD, not a range).
    pub eligible: bool,
    /// The coding the client gets, if it accepts one.
    pub encoding: Option<Encoding>,
}

pub fn negotiate(c: &Compress, req: &RequestHeader) -> Negotiated {
    if req.method == http::Method::HEAD || req.headers.contains_key(header::RANGE) {
        return Negotiated::default();
    }
    Negotiated {
        eligible: true,
        encoding: best_encoding(&c.encodings, &req.headers),
    }
}

/// The offered coding with the highest q-value in `Accept-Encoding` (`*` stands for every
/// coding not named; `q=0` refuses), the first in `offered` on a tie. `None` without the
/// header: a client that says nothing gets the body as it is.
fn best_encoding(offered: &[Encoding], headers: &HeaderMap) -> Option<Encoding> {
    // q in thousandths, per coding of `Encoding::ALL`, and for `*`; `None` = not named.
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    let mut any = false;
    for line in headers.get_all(header::ACCEPT_ENCODING) {
        any = true;
        for element in line.as_bytes().split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let token = trim(parts.next().unwrap_or_default());
            if token.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                let param = trim(param);
                if let Some(v) = param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))
                {
                    q = qvalue(trim(v));
                }
            }
            // A malformed q-value: the element is ignored.
            let Some(q) = q else { continue };
            let slot = if token == b"*" {
                &mut star
            } else if let Some(i) = Encoding::ALL.iter().position(|e| {
                token.eq_ignore_ascii_case(e.as_str().as_bytes())
                    || (*e == Encoding::Gzip && token.eq_ignore_ascii_case(b"x-gzip"))
            }) {
                &mut named[i]
            } else {
                continue;
            };
            // Named twice: the higher counts.
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Encoding, u16)> = None;
    for &e in offered {
        let i = Encoding::ALL.iter().position(|x| *x == e).expect("in ALL");
        let q = named[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// RFC 9110 §12.4.2: `0`, `0.` plus up to three digits, `1`, `1.` plus up to three zeros.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, d) in frac.iter().enumerate() {
        thousandths += (d - b'0') as u16 * [100, 10, 1][i];
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// The response's side: `None` when the body goes as it is; else the header is made the
/// compressed body's and the encoder to run the body through is returned.
pub fn start(neg: Negotiated, c: &Compress, resp: &mut ResponseHeader) -> Option<Encoder> {
    if !neg.eligible {
        return None;
    }
    let status = resp.status.as_u16();
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return None;
    }
    let h = &resp.headers;
    let encoded = h
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded || h.contains_key(header::CONTENT_RANGE) || no_transform(h) {
        return None;
    }
    if !h.get(header::CONTENT_TYPE).is_some_and(compressible) {
        return None;
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n == 0 || n < c.min_bytes) {
        return None;
    }
    add_vary(resp);
    let encoding = neg.encoding?;
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ACCEPT_RANGES);
    resp.remove_header(&header::CONTENT_ENCODING);
    resp.insert_header(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    )
    .ok()?;
    if let Some(etag) = resp.headers.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                resp.insert_header(header::ETAG, v).ok()?;
            }
        }
    }
    Some(Encoder::new(encoding))
}

fn no_transform(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|d| trim(d).eq_ignore_ascii_case(b"no-transform"))
    })
}

/// Media types worth compressing: text and the text-based formats; never what is
/// compressed already (images but SVG and icons, audio, video, fonts in WOFF, archives).
fn compressible(content_type: &HeaderValue) -> bool {
    let v = content_type.as_bytes();
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    let mut buf = [0u8; 128];
    let media = trim(&v[..end]);
    if media.len() > buf.len() {
        return false;
    }
    let media = {
        let out = &mut buf[..media.len()];
        out.copy_from_slice(media);
        out.make_ascii_lowercase();
        &*out
    };
    if let Some(sub) = media.strip_prefix(b"text/") {
        // A stream of events must reach the client as each is sent.
        return sub != b"event-stream";
    }
    if let Some(sub) = media.strip_prefix(b"application/") {
        return matches!(
            sub,
            b"json"
                | b"javascript"
                | b"x-javascript"
                | b"ecmascript"
                | b"xml"
                | b"wasm"
                | b"graphql"
                | b"x-www-form-urlencoded"
                | b"vnd.ms-fontobject"
                | b"x-font-ttf"
                | b"x-font-opentype"
                | b"x-yaml"
                | b"yaml"
                | b"toml"
        ) || sub.ends_with(b"+json")
            || sub.ends_with(b"+xml");
    }
    matches!(
        media,
        b"image/svg+xml"
            | b"image/x-icon"
            | b"image/vnd.microsoft.icon"
            | b"image/bmp"
            | b"font/ttf"
            | b"font/otf"
            | b"font/eot"
    )
}

fn add_vary(resp: &mut ResponseHeader) {
    let mut existing: Option<Vec<u8>> = None;
    for v in resp.headers.get_all(header::VARY) {
        let covered = v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = trim(t);
            t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding")
        });
        if covered {
            return;
        }
        let e = existing.get_or_insert_with(Vec::new);
        if !e.is_empty() {
            e.extend_from_slice(b", ");
        }
        e.extend_from_slice(v.as_bytes());
    }
    let value = match existing {
        Some(mut e) if !e.is_empty() => {
            e.extend_from_slice(b", Accept-Encoding");
            HeaderValue::from_bytes(&e).unwrap_or(HeaderValue::from_static("Accept-Encoding"))
        }
        _ => HeaderValue::from_static("Accept-Encoding"),
    };
    let _ = resp.insert_header(header::VARY, value);
}

/// One response body's compressor.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub fn new(encoding: Encoding) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Encoding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .expect("level 3 is a valid zstd level"),
            ),
        }
    }

    /// Compresses a piece of the body and flushes it: what came in goes out now.
    pub fn encode(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Brotli(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Zstd(e) => {
                e.write_all(input)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
        }
    }

    /// The end of the stream (the gzip trailer, brotli's last block, zstd's epilogue).
    pub fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn compress_all() -> Compress {
        Compress {
            min_bytes: 1024,
            encodings: Encoding::ALL.to_vec(),
        }
    }

    fn ae(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        h
    }

    fn best(value: &str) -> Option<Encoding> {
        best_encoding(&Encoding::ALL, &ae(value))
    }

    #[test]
    fn accept_encoding_by_q_value_then_by_our_order() {
        use Encoding::*;
        assert_eq!(best("gzip"), Some(Gzip));
        assert_eq!(best("gzip, deflate, br"), Some(Brotli));
        assert_eq!(best("gzip, deflate, br, zstd"), Some(Zstd));
        assert_eq!(best("br;q=0.5, gzip;q=0.8"), Some(Gzip));
        assert_eq!(best("zstd;q=0, gzip"), Some(Gzip));
        assert_eq!(best("*"), Some(Zstd));
        assert_eq!(best("*;q=0.1, gzip;q=0.5"), Some(Gzip));
        assert_eq!(best("*, zstd;q=0, br;q=0"), Some(Gzip));
        assert_eq!(best("identity"), None);
        assert_eq!(best("gzip;q=0, *;q=0"), None);
        assert_eq!(best(""), None);
        assert_eq!(best("x-gzip"), Some(Gzip));
        assert_eq!(best("GZIP ; Q=1.000"), Some(Gzip));
        // Malformed q-values are ignored with their element.
        assert_eq!(best("br;q=2, gzip"), Some(Gzip));
        assert_eq!(best("br;q=0.0001, gzip;q=0.001"), Some(Gzip));
        assert_eq!(best("br;q=abc"), None);
        assert_eq!(best(",,;;, ;q=1"), None);
        assert_eq!(best_encoding(&Encoding::ALL, &HeaderMap::new()), None);
        // The route's order breaks ties.
        assert_eq!(
            best_encoding(&[Gzip, Brotli], &ae("br, gzip, zstd")),
            Some(Gzip)
        );
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn neg(enc: Option<Encoding>) -> Negotiated {
        Negotiated {
            eligible: true,
            encoding: enc,
        }
    }

    #[test]
    fn a_compressed_response_header() {
        let mut r = response(
            200,
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("content-length", "5000"),
                ("etag", "\"abc\""),
                ("accept-ranges", "bytes"),
                ("vary", "Origin"),
            ],
        );
        assert!(start(neg(Some(Encoding::Gzip)), &compress_all(), &mut r).is_some());
        let h = &r.headers;
        assert_eq!(h.get("content-encoding").unwrap(), "gzip");
        assert!(h.get("content-length").is_none());
        assert!(h.get("accept-ranges").is_none());
        assert_eq!(h.get("etag").unwrap(), "W/\"abc\"");
        assert_eq!(h.get("vary").unwrap(), "Origin, Accept-Encoding");
    }

    #[test]
    fn vary_even_when_this_client_gets_it_plain() {
        let mut r = response(200, &[("content-type", "text/html")]);
        assert!(start(neg(None), &compress_all(), &mut r).is_none());
        assert_eq!(r.headers.get("vary").unwrap(), "Accept-Encoding");
        assert!(r.headers.get("content-encoding").is_none());
    }

    #[test]
    fn what_is_never_compressed() {
        let c = compress_all();
        let gzip = neg(Some(Encoding::Gzip));
        let cases: &[(u16, &[(&str, &str)])] = &[
            (200, &[("content-type", "image/png")]),
            (200, &[("content-type", "application/octet-stream")]),
            (200, &[("content-type", "text/event-stream")]),
            (200, &[]),
            (
                200,
                &[("content-type", "text/html"), ("content-encoding", "br")],
            ),
            (
                200,
                &[("content-type", "text/html"), ("content-length", "1023")],
            ),
            (
                200,
                &[("content-type", "text/html"), ("content-length", "0")],
            ),
            (
                200,
                &[
                    ("content-type", "text/html"),
                    ("cache-control", "public, no-transform"),
                ],
            ),
            (206, &[("content-type", "text/html")]),
            (
                200,
                &[
                    ("content-type", "text/html"),
                    ("content-range", "bytes 0-9/100"),
                ],
            ),
            (204, &[("content-type", "text/html")]),
            (304, &[("content-type", "text/html")]),
            (101, &[("content-type", "text/html")]),
        ];
        for (status, headers) in cases {
            let mut r = response(*status, headers);
            assert!(start(gzip, &c, &mut r).is_none(), "{status} {headers:?}");
            assert!(
                r.headers.get("content-encoding").is_none_or(|v| v == "br"),
                "{status} {headers:?}"
            );
        }
        let mut r = response(200, &[("content-type", "text/html")]);
        assert!(start(Negotiated::default(), &c, &mut r).is_none());
        assert!(r.headers.get("vary").is_none());
    }

    #[test]
    fn head_and_ranges_are_not_eligible() {
        let c = compress_all();
        let mut req = RequestHeader::build("HEAD", b"/", None).unwrap();
        req.insert_header("accept-encoding", "gzip").unwrap();
        assert_eq!(negotiate(&c, &req), Negotiated::default());
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("accept-encoding", "gzip").unwrap();
        assert_eq!(negotiate(&c, &req), neg(Some(Encoding::Gzip)));
        req.insert_header("range", "bytes=0-9").unwrap();
        assert_eq!(negotiate(&c, &req), Negotiated::default());
    }

    #[test]
    fn compressible_types() {
        for t in [
            "text/html",
            "TEXT/CSS; charset=utf-8",
            "application/json",
            "application/problem+json",
            "application/atom+xml",
            "application/javascript",
            "application/wasm",
            "image/svg+xml",
        ] {
            assert!(compressible(&HeaderValue::from_static(t)), "{t}");
        }
        for t in [
            "image/jpeg",
            "font/woff2",
            "application/zip",
            "application/gzip",
            "video/mp4",
            "application/jsonx",
        ] {
            assert!(!compressible(&HeaderValue::from_static(t)), "{t}");
        }
    }

    fn decode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Brotli => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Zstd => {
                out = zstd::decode_all(data).unwrap();
            }
        }
        out
    }

    #[test]
    fn each_codec_round_trips_piece_by_piece() {
        let body: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i} of a body\n").into_bytes())
            .collect();
        for e in Encoding::ALL {
            let mut enc = Encoder::new(e);
            let mut out = Vec::new();
            for (i, piece) in body.chunks(7_777).enumerate() {
                let part = enc.encode(piece).unwrap();
                // Flushed: what came in so far can already be decoded up to here.
                assert!(!part.is_empty(), "{e:?} piece {i}");
                out.extend_from_slice(&part);
            }
            out.extend_from_slice(&enc.finish().unwrap());
            assert!(out.len() < body.len() / 4, "{e:?}: {}", out.len());
            assert_eq!(decode(e, &out), body, "{e:?}");
        }
    }
}

//! A route's edge middlewares (`security_headers`, `response_headers`, `request_headers`,
//! `rate_limit`, `compress`) and the client-address keys of `[listen]`, validated once at
//! load: header names and values are parsed here, so a request never parses them.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::file::{FileCompress, FileHeaders, FileRoute, SpannedAddrs};
use super::Validator;
use crate::core::ip_set::IpSet;

/// A header a route sets on every request or response: `None` removes it (an empty value in
/// the config, as in Traefik's `customRequestHeaders`).
pub type HeaderEdit = (HeaderName, Option<HeaderValue>);

/// What a route does to the requests and responses that cross it, besides proxying them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMiddlewares {
    /// `X-Content-Type-Options: nosniff`, `X-Frame-Options: SAMEORIGIN`,
    /// `Referrer-Policy: strict-origin-when-cross-origin` on responses without their own.
    pub security_headers: bool,
    /// Set on every response (over the backend's value), after `security_headers`.
    pub response_headers: Vec<HeaderEdit>,
    /// Set on every request sent upstream, after the proxy's own headers.
    pub request_headers: Vec<HeaderEdit>,
    pub rate_limit: Option<RateLimit>,
    pub compress: Option<Compress>,
}

impl RouteMiddlewares {
    pub fn is_empty(&self) -> bool {
        *self == RouteMiddlewares::default()
    }
}

/// A token bucket per client address: `burst` tokens, refilled at `per_client_per_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_client_per_s: f64,
    pub burst: u32,
}

/// Response compression.
#[derive(Debug, Clone, PartialEq)]
pub struct Compress {
    /// Responses with a smaller `Content-Length` are sent as they are.
    pub min_bytes: u64,
    /// The codings offered, in the order preferred when a client accepts several equally.
    pub encodings: Vec<Encoding>,
}

/// Traefik's default: 1 KiB; below that a compressed body saves next to nothing.
pub const DEFAULT_COMPRESS_MIN_BYTES: u64 = 1024;

/// A content coding the proxy can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    /// Traefik's default order of preference.
    pub const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    /// The token of `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn from_token(s: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Headers that carry a message's framing or its hop-by-hop state: the proxy sets them
/// itself, so a route may not.
const FRAMING: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];
/// What the proxy tells a backend about the client: a route setting them would lie.
const REQUEST_OWN: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];
/// The body's coding is the backend's, or `compress`'s.
const RESPONSE_OWN: &[&str] = &["content-encoding"];

const MAX_RATE: f64 = 1_000_000.0;
const MAX_BURST: u64 = 1_000_000;

impl Validator<'_> {
    /// `listen.proxy_protocol_from` or `listen.trusted_proxies`.
    pub(super) fn ip_set(&mut self, f: usize, list: Option<&SpannedAddrs>, key: &str) -> IpSet {
        let Some(list) = list else {
            return IpSet::default();
        };
        let mut nets = Vec::new();
        for entry in list.get_ref() {
            match IpSet::parse_entry(entry.get_ref()) {
                Ok(net) => nets.push(net),
                Err(m) => self.at(f, entry, key, m),
            }
        }
        IpSet::new(nets)
    }

    /// The middleware keys of route `key` (`route[3]`).
    pub(super) fn middlewares(&mut self, f: usize, key: &str, r: &FileRoute) -> RouteMiddlewares {
        let response_headers = r.response_headers.as_ref().map_or_else(Vec::new, |h| {
            let k = format!("{key}.response_headers");
            self.header_edits(f, &k, h, RESPONSE_OWN)
        });
        let request_headers = r.request_headers.as_ref().map_or_else(Vec::new, |h| {
            let k = format!("{key}.request_headers");
            self.header_edits(f, &k, h, REQUEST_OWN)
        });
        let rate_limit = r.rate_limit.as_ref().and_then(|rl| {
            let k = format!("{key}.rate_limit");
            let rl = rl.get_ref();
            let rate = *rl.per_client_per_s.get_ref();
            let mut ok = true;
            if !(rate > 0.0 && rate <= MAX_RATE) {
                self.at(
                    f,
                    &rl.per_client_per_s,
                    &format!("{k}.per_client_per_s"),
                    format!("must be above 0 and at most {MAX_RATE} (fractions allowed: 0.5 = one every 2 s)"),
                );
                ok = false;
            }
            // Traefik's default burst is 1.
            let burst = rl.burst.as_ref().map_or(1, |b| *b.get_ref());
            if !(1..=MAX_BURST).contains(&burst) {
                let at = rl.burst.as_ref().expect("the default is in range");
                self.at(
                    f,
                    at,
                    &format!("{k}.burst"),
                    format!("must be between 1 and {MAX_BURST}"),
                );
                ok = false;
            }
            ok.then_some(RateLimit {
                per_client_per_s: rate,
                burst: burst as u32,
            })
        });
        let compress = r.compress.as_ref().and_then(|c| {
            let k = format!("{key}.compress");
            match c.get_ref() {
                FileCompress::Enabled(false) => None,
                FileCompress::Enabled(true) => Some(Compress {
                    min_bytes: DEFAULT_COMPRESS_MIN_BYTES,
                    encodings: Encoding::ALL.to_vec(),
                }),
                FileCompress::Options(o) => {
                    let min_bytes = o.min_bytes.unwrap_or(DEFAULT_COMPRESS_MIN_BYTES);
                    if min_bytes > 1 << 30 {
                        self.at(
                            f,
                            c,
                            &format!("{k}.min_bytes"),
                            "must be at most 1073741824",
                        );
                    }
                    let mut encodings = Vec::new();
                    for token in o.encodings.as_deref().unwrap_or(&[]) {
                        match Encoding::from_token(token) {
                            Some(e) if encodings.contains(&e) => self.at(
                                f,
                                c,
                                &format!("{k}.encodings"),
                                format!("`{token}` is listed twice"),
                            ),
                            Some(e) => encodings.push(e),
                            None => self.at(
                                f,
                                c,
                                &format!("{k}.encodings"),
                                format!(
                                    "`{token}` is not a coding: use \"zstd\", \"br\" or \"gzip\""
                                ),
                            ),
                        }
                    }
                    if o.encodings.is_none() {
                        encodings = Encoding::ALL.to_vec();
                    } else if o.encodings.as_ref().is_some_and(|e| e.is_empty()) {
                        self.at(
                            f,
                            c,
                            &format!("{k}.encodings"),
                            "name at least one coding (or set `compress = false`)",
                        );
                    }
                    Some(Compress {
                        min_bytes,
                        encodings,
                    })
                }
            }
        });
        RouteMiddlewares {
            security_headers: r.security_headers.unwrap_or(false),
            response_headers,
            request_headers,
            rate_limit,
            compress,
        }
    }

    fn header_edits(
        &mut self,
        f: usize,
        key: &str,
        map: &Spanned<FileHeaders>,
        own: &[&str],
    ) -> Vec<HeaderEdit> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (name, value) in map.get_ref() {
            let k = format!("{key}.{}", name.get_ref());
            let Ok(parsed) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                let msg = format!(
                    "`{}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, no spaces or colons)",
                    name.get_ref()
                );
                self.at(f, name, &k, msg);
                continue;
            };
            let lower = parsed.as_str();
            if FRAMING.contains(&lower) || own.contains(&lower) {
                let msg = format!(
                    "`{}` is set by the proxy itself and cannot be set here",
                    name.get_ref()
                );
                self.at(f, name, &k, msg);
                continue;
            }
            if !seen.insert(parsed.clone()) {
                let msg = format!(
                    "`{}` is set twice (header names ignore case)",
                    name.get_ref()
                );
                self.at(f, name, &k, msg);
                continue;
            }
            let v = value.get_ref();
            if v.is_empty() {
                out.push((parsed, None));
                continue;
            }
            match HeaderValue::from_bytes(v.as_bytes()) {
                Ok(hv) => out.push((parsed, Some(hv))),
                Err(_) => self.at(
                    f,
                    value,
                    &k,
                    "not a valid header value: no control characters (CR, LF, NUL, …)",
                ),
            }
        }
        out
    }
}

//! Which of the headers the request path asks about an HTTP/1 request has, noted while its
//! head is parsed: a header it certainly lacks is not looked up in the header map.
//!
//! Why: a GET with none of them asked the map about eight absent names per request (Upgrade
//! twice, Transfer-Encoding, Content-Length, Connection, X-Request-Id, X-Forwarded-For), a
//! hash and a probe each — about 700 instructions of the 24,000 a request cost. A bit is
//! only ever cleared for a name the head did not have; edits that remove a header leave its
//! bit set (the lookup then finds nothing), and none of the request path's edits adds one.

use http::header::AsHeaderName;
use http::{HeaderMap, HeaderValue};

/// A set of the tracked header names; `UNKNOWN` (every bit set) where no head was parsed
/// here (HTTP/2), so every lookup happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderPresence(u8);

impl HeaderPresence {
    pub const UNKNOWN: HeaderPresence = HeaderPresence(u8::MAX);
    pub const NONE: HeaderPresence = HeaderPresence(0);

    pub const UPGRADE: u8 = 1;
    pub const CONNECTION: u8 = 1 << 1;
    pub const CONTENT_LENGTH: u8 = 1 << 2;
    pub const TRANSFER_ENCODING: u8 = 1 << 3;
    pub const X_REQUEST_ID: u8 = 1 << 4;
    pub const X_FORWARDED_FOR: u8 = 1 << 5;

    /// Notes a header line's name.
    #[inline]
    pub fn note(&mut self, name: &[u8]) {
        let bit = match name.len() {
            7 if name.eq_ignore_ascii_case(b"upgrade") => Self::UPGRADE,
            10 if name.eq_ignore_ascii_case(b"connection") => Self::CONNECTION,
            12 if name.eq_ignore_ascii_case(b"x-request-id") => Self::X_REQUEST_ID,
            14 if name.eq_ignore_ascii_case(b"content-length") => Self::CONTENT_LENGTH,
            15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => Self::X_FORWARDED_FOR,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => Self::TRANSFER_ENCODING,
            _ => 0,
        };
        self.0 |= bit;
    }

    /// `false` only when the request certainly has no header of this name (one of the
    /// constants above).
    #[inline]
    pub fn may_have(self, name: u8) -> bool {
        self.0 & name != 0
    }

    /// `headers.get(name)`, skipped when `bit` (the constant for `name`) says it is absent.
    #[inline]
    pub fn get(
        self,
        headers: &HeaderMap,
        bit: u8,
        name: impl AsHeaderName,
    ) -> Option<&HeaderValue> {
        if self.may_have(bit) {
            headers.get(name)
        } else {
            None
        }
    }

    /// `headers.get_all(name)`, as `get`.
    #[inline]
    pub fn get_all(
        self,
        headers: &HeaderMap,
        bit: u8,
        name: impl AsHeaderName,
    ) -> impl Iterator<Item = &HeaderValue> {
        self.may_have(bit)
            .then(|| headers.get_all(name).iter())
            .into_iter()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_the_tracked_names_in_any_case_and_nothing_else() {
        let mut p = HeaderPresence::NONE;
        for name in [
            "Host",
            "Expect",
            "Accept",
            "X-Forwarded-Host",
            "Content-Type",
            "Connections",
        ] {
            p.note(name.as_bytes());
        }
        assert_eq!(p, HeaderPresence::NONE);
        let all = [
            ("UPGRADE", HeaderPresence::UPGRADE),
            ("connection", HeaderPresence::CONNECTION),
            ("Content-Length", HeaderPresence::CONTENT_LENGTH),
            ("transfer-Encoding", HeaderPresence::TRANSFER_ENCODING),
            ("x-request-id", HeaderPresence::X_REQUEST_ID),
            ("X-Forwarded-For", HeaderPresence::X_FORWARDED_FOR),
        ];
        for (name, bit) in all {
            let mut one = HeaderPresence::NONE;
            one.note(name.as_bytes());
            assert!(one.may_have(bit), "{name}");
            for (other, other_bit) in all {
                if other != name {
                    assert!(!one.may_have(other_bit), "{name} is not {other}");
                }
            }
        }
        for (_, bit) in all {
            assert!(HeaderPresence::UNKNOWN.may_have(bit));
        }
    }
}

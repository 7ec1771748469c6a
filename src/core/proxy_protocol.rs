//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 balancer (HAProxy's
//! `send-proxy`/`send-proxy-v2`, an AWS NLB, …) writes before the client's own bytes, naming
//! the client it accepted the connection from. A pure parser over the bytes read so far;
//! `edge::client_addr` reads them from the socket, within the header timeout.
//!
//! Spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>. Strict where the
//! spec is: a v1 line is at most 107 bytes, its fields single-space separated, ports and
//! addresses in their plain forms; a v2 header is bounded too (see [`V2_MAX`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, CRLF included (spec §2.1).
pub const V1_MAX: usize = 107;

/// The longest v2 header accepted: the 16-byte preamble and up to 4 KiB of addresses and
/// TLVs (an AWS NLB's VPC endpoint TLV, a TLS summary, …). The spec allows 64 KiB; nobody
/// sends that, and a bound keeps a hostile source from making us buffer it.
pub const V2_MAX: usize = 16 + 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still be coming: read more (within the deadline).
    Incomplete,
    /// A whole header of `len` bytes (what follows it is the client's). `source` is the
    /// client's address; `None` when the header names none (v2 `LOCAL` — the balancer's own
    /// health check —, v1 `UNKNOWN`, a v2 `UNSPEC` or unix-socket source): the peer's
    /// address stands.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Why the bytes are not an acceptable PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// They do not start like a PROXY header at all.
    Missing,
    /// A header, but not a valid one (the reason, for the log).
    Malformed(&'static str),
    /// Longer than [`V1_MAX`] or [`V2_MAX`].
    TooLong,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing => write!(f, "no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            ProxyError::TooLong => write!(f, "PROXY protocol header too long"),
        }
    }
}

/// Parses the start of a connection's bytes. Never reads past a header: `len` is where the
/// client's bytes begin.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if starts_like(buf, V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v2(buf);
    }
    if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

/// `buf` and `prefix` agree on their common length (an empty `buf` may still become it).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    const BAD: fn(&'static str) -> ProxyError = ProxyError::Malformed;
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if window[cr] != b'\r' {
        return Err(BAD("a v1 line ends with CRLF"));
    }
    if cr + 1 >= window.len() {
        return if cr + 1 >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    }
    if window[cr + 1] != b'\n' {
        return Err(BAD("a v1 line ends with CRLF"));
    }
    let len = cr + 2;
    let line = &window[..cr];
    if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(BAD("a v1 line is printable ASCII"));
    }
    // ASCII checked above.
    let line = std::str::from_utf8(line).map_err(|_| BAD("a v1 line is printable ASCII"))?;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let proto = fields.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // "the receiver must ignore anything presented before the CRLF is found"
        return Ok(Parsed::Header { len, source: None });
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(BAD("a v1 line has 6 single-space separated fields")),
    };
    // The destination is checked as strictly as the source, though only the source is used.
    let src: IpAddr = match proto {
        "TCP4" => {
            dst.parse::<Ipv4Addr>()
                .map_err(|_| BAD("bad TCP4 destination address"))?;
            src.parse::<Ipv4Addr>()
                .map_err(|_| BAD("bad TCP4 source address"))?
                .into()
        }
        "TCP6" => {
            dst.parse::<Ipv6Addr>()
                .map_err(|_| BAD("bad TCP6 destination address"))?;
            src.parse::<Ipv6Addr>()
                .map_err(|_| BAD("bad TCP6 source address"))?
                .into()
        }
        _ => return Err(BAD("the protocol is TCP4, TCP6 or UNKNOWN")),
    };
    let sport = port(sport).ok_or(BAD("bad source port"))?;
    port(dport).ok_or(BAD("bad destination port"))?;
    Ok(Parsed::Header {
        len,
        source: Some(SocketAddr::new(src, sport)),
    })
}

/// A decimal port, 0–65535, without a sign or leading zeros.
fn port(s: &str) -> Option<u16> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    const BAD: fn(&'static str) -> ProxyError = ProxyError::Malformed;
    if buf.len() < 16 {
        // The version may already be wrong: say so without waiting for more.
        if buf.len() > 12 && buf[12] >> 4 != 2 {
            return Err(BAD("v2 header with a version other than 2"));
        }
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    let family = buf[13];
    let payload = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(BAD("v2 header with a version other than 2"));
    }
    let len = 16 + payload;
    if len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(BAD("v2 command is LOCAL or PROXY")),
    };
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    if local {
        // The balancer's own connection (a health check): no client to name.
        return Ok(Parsed::Header { len, source: None });
    }
    let source = match family {
        // UNSPEC: "the receiver should ignore the address information"
        0x00 => None,
        // TCP over IPv4: src 4, dst 4, sport 2, dport 2
        0x11 => {
            if body.len() < 12 {
                return Err(BAD("v2 IPv4 address block too short"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(ip.into(), port))
        }
        // TCP over IPv6: src 16, dst 16, sport 2, dport 2
        0x21 => {
            if body.len() < 36 {
                return Err(BAD("v2 IPv6 address block too short"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // A unix-socket client: no address of ours to give it.
        0x31 => None,
        0x12 | 0x22 | 0x32 => return Err(BAD("v2 header for a datagram connection")),
        _ => return Err(BAD("v2 address family or protocol unknown")),
    };
    Ok(Parsed::Header { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, source: Option<&str>) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Header {
            len,
            source: source.map(|s| s.parse().unwrap()),
        })
    }

    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(ver_cmd);
        b.push(family);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn v2_inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(line), header(41, Some("192.0.2.7:56324")));
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n";
        assert_eq!(parse(line), header(line.len(), Some("[2001:db8::7]:56324")));
        let line = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(line), header(15, None));
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(line), header(line.len(), None));
    }

    #[test]
    fn v1_needs_more_until_its_crlf() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v1_longest_line_and_one_byte_more() {
        // 107 bytes with its CRLF: the longest the spec allows.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), header(V1_MAX, None));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 1, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        assert_eq!(parse(&long[..V1_MAX]), Err(ProxyError::TooLong));
        // A CR as the 107th byte: its LF would be the 108th.
        let mut cr_last = b"PROXY UNKNOWN ".to_vec();
        cr_last.resize(V1_MAX - 1, b'x');
        cr_last.push(b'\r');
        assert_eq!(parse(&cr_last), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_hostile_lines_are_refused() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\rX",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443 \r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443 80\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 56324 443\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.256 10.0.0.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.07 10.0.0.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 056324 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 \r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY tcp4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7\t10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\0\r\n",
            b"PROXY TCP4 \xc3\xa9 10.0.0.1 1 2\r\n",
            b"PROXY \r\n",
        ];
        for line in bad {
            assert!(
                matches!(parse(line), Err(ProxyError::Malformed(_))),
                "{:?} → {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn anything_else_is_no_header() {
        for not in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXZ",
            b"proxy TCP4",
            b"\x16\x03\x01\x02\x00",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert_eq!(parse(not), Err(ProxyError::Missing), "{not:?}");
        }
        // A shared prefix is not a verdict yet.
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_inet_inet6_and_the_bytes_after_it() {
        let mut b = v2_inet([192, 0, 2, 7], 56324);
        let len = b.len();
        b.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(parse(&b), header(len, Some("192.0.2.7:56324")));

        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let b = v2(0x21, 0x21, &body);
        assert_eq!(parse(&b), header(52, Some("[2001:db8::7]:1234")));
    }

    #[test]
    fn v2_tlvs_after_the_addresses_are_skipped() {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0, 80, 1, 187];
        // PP2_TYPE_AWS (0xEA) with a VPC endpoint id, as an NLB sends it.
        body.extend_from_slice(&[0xea, 0x00, 0x17, 0x01]);
        body.extend_from_slice(b"vpce-08d2bf15fac5001c9");
        let b = v2(0x21, 0x11, &body);
        assert_eq!(parse(&b), header(b.len(), Some("192.0.2.7:80")));
    }

    #[test]
    fn v2_local_unspec_and_unix_name_no_client() {
        let b = v2(0x20, 0x00, &[]);
        assert_eq!(parse(&b), header(16, None));
        // LOCAL with addresses: they are ignored.
        let mut local = v2_inet([192, 0, 2, 7], 1);
        local[12] = 0x20;
        assert_eq!(parse(&local), header(28, None));
        let b = v2(0x21, 0x00, &[]);
        assert_eq!(parse(&b), header(16, None));
        let b = v2(0x21, 0x31, &[0u8; 216]);
        assert_eq!(parse(&b), header(232, None));
    }

    #[test]
    fn v2_needs_more_until_its_length() {
        let b = v2_inet([192, 0, 2, 7], 1);
        for n in 0..b.len() {
            assert_eq!(parse(&b[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v2_hostile_headers_are_refused() {
        // Version 1 in a v2 header, said as soon as byte 13 is there.
        let mut b = v2_inet([192, 0, 2, 7], 1);
        b[12] = 0x11;
        assert!(matches!(parse(&b[..13]), Err(ProxyError::Malformed(_))));
        assert!(matches!(parse(&b), Err(ProxyError::Malformed(_))));
        // An unknown command.
        let mut b = v2_inet([192, 0, 2, 7], 1);
        b[12] = 0x22;
        assert!(matches!(parse(&b), Err(ProxyError::Malformed(_))));
        // Addresses shorter than their family needs.
        let b = v2(0x21, 0x11, &[192, 0, 2, 7]);
        assert!(matches!(parse(&b), Err(ProxyError::Malformed(_))));
        let b = v2(0x21, 0x21, &[0u8; 35]);
        assert!(matches!(parse(&b), Err(ProxyError::Malformed(_))));
        // UDP, and unknown families.
        for family in [0x12, 0x22, 0x32, 0x41, 0x13, 0x10, 0x01] {
            let b = v2(0x21, family, &[0u8; 36]);
            assert!(
                matches!(parse(&b), Err(ProxyError::Malformed(_))),
                "{family:#x}"
            );
        }
        // A length beyond the bound is refused before its bytes are awaited.
        let mut b = v2(0x21, 0x11, &[]);
        b[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&b), Err(ProxyError::TooLong));
        let mut b = v2(0x21, 0x11, &[]);
        b[14..16].copy_from_slice(&((V2_MAX - 16 + 1) as u16).to_be_bytes());
        assert_eq!(parse(&b), Err(ProxyError::TooLong));
    }

    #[test]
    fn no_input_makes_it_panic() {
        // Every prefix of every length of pseudo-random bytes behind each header start.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        for start in [
            &b""[..],
            b"PROXY ",
            b"PROXY TCP4 ",
            b"PROXY TCP6 ",
            &V2_SIGNATURE[..],
        ] {
            for _ in 0..300 {
                let mut b = start.to_vec();
                let n = (next() as usize) % 120;
                b.extend((0..n).map(|_| next()));
                for cut in 0..=b.len() {
                    if let Ok(Parsed::Header { len, .. }) = parse(&b[..cut]) {
                        assert!(len <= cut);
                    }
                }
            }
        }
    }
}

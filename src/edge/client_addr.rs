//! Who the client is. One address per request, used for X-Forwarded-For, rate limits, sticky
//! canaries and the access log:
//!
//! - the connection's peer, unless
//! - the peer is in `listen.proxy_protocol_from`: then the source its PROXY protocol header
//!   names (read here, before anything else — before the TLS handshake on the HTTPS
//!   listener — and required: a connection from such a peer without a valid header is
//!   closed). The header's source becomes the connection's peer address for everything
//!   after, HTTP/1 and HTTP/2 alike. Nginx's `real_ip_header proxy_protocol`.
//! - and then, if that address is in `listen.trusted_proxies`: the rightmost
//!   X-Forwarded-For entry that is not (nginx's `set_real_ip_from` with
//!   `real_ip_recursive on`). A peer that is not trusted cannot choose its address: what it
//!   sends in X-Forwarded-For is kept for the backend, but never believed.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;

use bytes::BytesMut;
use http::header::HeaderName;
use http::HeaderMap;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::core::ip_set::IpSet;
use crate::core::proxy_protocol::{self, Parsed, ProxyError};
use crate::core::request_head::Rejection;
use crate::runtime::metrics;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client {
    /// `None` only for a connection without an IP peer (none of ours today).
    pub ip: Option<IpAddr>,
    /// `Some(n)`: the address is the n-th X-Forwarded-For entry (from the left, 1-based),
    /// vouched for by trusted proxies: the backend gets the first n entries, so the last one
    /// it sees is the client. `None`: the address is the connection's, appended to whatever
    /// X-Forwarded-For the client sent.
    pub forwarded_entry: Option<u32>,
}

/// The client of a request on a connection from `peer` (already the PROXY header's source,
/// when there was one).
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &IpSet) -> Client {
    let Some(peer) = peer.map(|p| p.to_canonical()) else {
        return Client::default();
    };
    let direct = Client {
        ip: Some(peer),
        forwarded_entry: None,
    };
    if !trusted.contains(peer) || !headers.contains_key(&X_FORWARDED_FOR) {
        return direct;
    }
    let total = forwarded_entries(headers).count();
    // From the right: past every trusted hop, to the first address that is not. An entry
    // that is not an address ends the walk at the last trusted hop (nginx does the same).
    let mut client = direct;
    for (i, entry) in forwarded_entries(headers).rev().enumerate() {
        let Some(ip) = parse_entry(entry) else {
            break;
        };
        client = Client {
            ip: Some(ip),
            forwarded_entry: Some((total - i) as u32),
        };
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// Every X-Forwarded-For entry, in order, over every line of it.
pub(crate) fn forwarded_entries(
    headers: &HeaderMap,
) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
}

/// `192.0.2.7`, `2001:db8::7`, or either with a port (`192.0.2.7:4711`, `[2001:db8::7]:4711`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

/// Reads the PROXY protocol header of a connection whose peer is in `from`, before any other
/// byte of it is read; the header must be complete by `deadline` (the connection's header
/// timeout). Bytes read past it are given back to the stream. The header's source becomes
/// the peer address the stream reports from then on (`LOCAL`/`UNKNOWN` headers leave the
/// peer's own). A peer outside `from` is not read from: a PROXY header it sends is just bytes
/// of its request (and refused as such).
///
/// `false`: the connection must be closed (no header, a malformed one, or none in time);
/// counted in `switchyard_rejected_requests_total`.
pub async fn read_proxy_header(tcp: &mut L4Stream, from: &IpSet, deadline: Instant) -> bool {
    if from.is_empty() {
        return true;
    }
    let peer = tcp
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
    let Some(peer) = peer else { return true };
    if !from.contains(peer.ip()) {
        return true;
    }
    let mut buf = BytesMut::with_capacity(256);
    let refused = |why: &dyn std::fmt::Display, reason: Rejection| {
        tracing::debug!(%peer, "PROXY protocol: {why}: closing the connection");
        metrics::global().rejected(reason);
        false
    };
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Parsed::Header { len, source }) => {
                tcp.rewind(&buf[len..]);
                if let Some(source) = source {
                    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
                    let _ = digest.peer_addr.set(Some(source.into()));
                    tcp.set_socket_digest(digest);
                }
                return true;
            }
            Ok(Parsed::Incomplete) => {}
            Err(e) => return refused(&e, Rejection::ProxyProtocol),
        }
        let room = proxy_protocol::V2_MAX + 1 - buf.len();
        buf.reserve(room.min(512));
        let read = async {
            // Never more than a header can hold (the rest would only be given back).
            let mut limited = (&mut *tcp).take(room as u64);
            limited.read_buf(&mut buf).await
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) if buf.is_empty() => return false, // closed before a byte: nothing to count
            Ok(_) => {
                return refused(
                    &ProxyError::Malformed("connection closed"),
                    Rejection::ProxyProtocol,
                )
            }
            Err(_) => return refused(&"no header within the header timeout", Rejection::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> IpSet {
        IpSet::new(
            entries
                .iter()
                .map(|e| IpSet::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(&X_FORWARDED_FOR, l.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn client(s: &str, entry: Option<u32>) -> Client {
        Client {
            ip: ip(s),
            forwarded_entry: entry,
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            resolve(ip("198.51.100.4"), &h, &t),
            client("198.51.100.4", None)
        );
        assert_eq!(
            resolve(ip("198.51.100.4"), &h, &IpSet::default()),
            client("198.51.100.4", None)
        );
    }

    #[test]
    fn a_trusted_peer_names_the_rightmost_untrusted_entry() {
        let t = trusted(&["10.0.0.0/8"]);
        // A spoofed entry on the left, the real client, then two of our proxies.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.5 , 10.0.0.6"]);
        assert_eq!(
            resolve(ip("10.0.0.7"), &h, &t),
            client("203.0.113.9", Some(2))
        );
    }

    #[test]
    fn a_trusted_peer_without_forwarded_for_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.7"), &HeaderMap::new(), &t),
            client("10.0.0.7", None)
        );
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.7"), &h, &t), client("10.0.0.5", Some(3)));
        let h = xff(&["203.0.113.9, "]);
        assert_eq!(resolve(ip("10.0.0.7"), &h, &t), client("10.0.0.7", None));
    }

    #[test]
    fn all_trusted_names_the_leftmost() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["10.1.1.1, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.7"), &h, &t), client("10.1.1.1", Some(1)));
    }

    #[test]
    fn entries_with_ports_and_ipv6() {
        let t = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let h = xff(&["[2001:db8::9]:4711, 203.0.113.9:80, 2001:db8:ffff::1"]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.7"), &h, &t),
            client("203.0.113.9", Some(2))
        );
        assert_eq!(
            resolve(ip("::ffff:198.51.100.4"), &h, &t),
            client("198.51.100.4", None)
        );
    }
}

//! A set of CIDR blocks (`listen.proxy_protocol_from`, `listen.trusted_proxies`): the
//! sources whose word about the client address is taken.

use std::net::IpAddr;

use ipnet::IpNet;

/// CIDR blocks, matched in order. Lists are short (a balancer's subnet, a few proxies): a
/// scan beats any index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet(Vec<IpNet>);

impl IpSet {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`10.0.0.7`, `::1`). Host bits
    /// under the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as nginx does.
    pub fn parse_entry(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(IpNet::from(ip.to_canonical())),
            Err(_) => Err(format!(
                "`{s}` is not an IP address or a CIDR block (e.g. \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\")"
            )),
        }
    }

    pub fn new(nets: Vec<IpNet>) -> IpSet {
        IpSet(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the blocks; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`,
    /// how a dual-stack socket reports an IPv4 peer) counts as the IPv4 address it carries.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> IpSet {
        IpSet::new(
            entries
                .iter()
                .map(|e| IpSet::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_single_addresses() {
        let s = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(s.contains(ip("10.200.0.1")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8:1::5")));
        assert!(!s.contains(ip("2001:db9::5")));
    }

    #[test]
    fn a_mapped_ipv4_peer_is_its_ipv4_address() {
        let s = set(&["127.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:127.0.0.2")));
        assert!(!set(&["::ffff:0:0/96"]).contains(ip("127.0.0.2")));
    }

    #[test]
    fn host_bits_are_ignored_and_garbage_is_refused() {
        assert_eq!(
            IpSet::parse_entry("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "example.com",
            "10.0.0",
            "10.0.0.0/8/8",
            "::1/129",
        ] {
            assert!(IpSet::parse_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        assert!(!IpSet::default().contains(ip("127.0.0.1")));
    }
}

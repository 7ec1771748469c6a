//! Backend addresses as written in a config or a `backends` command: `ip:port`, or
//! `name:port` kept as a name. Parsing looks nothing up: names are resolved at run time
//! (`runtime::dns`), again every `[dns] refresh_s`, so that a compose service, a Kubernetes
//! Service or a cloud load balancer can change its addresses under a running proxy.

use std::fmt;
use std::net::SocketAddr;

/// A backend name and its port: every address the name resolves to is a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendName {
    /// Lower-case; a trailing dot (a fully qualified name) is kept.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One entry of a backend list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendSpec {
    /// An IP address: used as it is, never looked up.
    Addr(SocketAddr),
    /// A name: looked up at run time.
    Name(BackendName),
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Addr(a) => write!(f, "{a}"),
            BackendSpec::Name(n) => write!(f, "{n}"),
        }
    }
}

impl BackendSpec {
    /// `ip:port` (`[v6]:port` for IPv6) or `name:port`.
    pub fn parse(s: &str) -> Result<BackendSpec, String> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(BackendSpec::Addr(a));
        }
        let bad = || format!("`{s}` is not an address: expected ip:port or name:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if !is_dns_name(host) {
            return Err(bad());
        }
        Ok(BackendSpec::Name(BackendName {
            host: host.to_ascii_lowercase(),
            port,
        }))
    }

    pub fn name(&self) -> Option<&BackendName> {
        match self {
            BackendSpec::Name(n) => Some(n),
            BackendSpec::Addr(_) => None,
        }
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of at most 63 bytes, 253 in all (an
/// optional final dot aside). A name of digits and dots only is not one: `10.0.0:80` is a
/// typo of an address, not a host to look up.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// An address given as an IP only, with `default_port` added: `[dns] resolvers`.
pub fn parse_ip_port(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) => Err(format!(
            "`{s}` is not an IP address (ip, or ip:port; a resolver cannot be a name)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> BackendSpec {
        BackendSpec::Name(BackendName {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn ips_are_addresses_and_the_rest_are_names() {
        assert_eq!(
            BackendSpec::parse("127.0.0.2:8000").unwrap(),
            BackendSpec::Addr("127.0.0.2:8000".parse().unwrap())
        );
        assert_eq!(
            BackendSpec::parse("[::1]:80").unwrap(),
            BackendSpec::Addr("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            BackendSpec::parse("API-Green:8000").unwrap(),
            name("api-green", 8000)
        );
        assert_eq!(
            BackendSpec::parse("api-green.prod.svc.cluster.local.:8080").unwrap(),
            name("api-green.prod.svc.cluster.local.", 8080)
        );
        assert_eq!(
            BackendSpec::parse("localhost:3000").unwrap().to_string(),
            "localhost:3000"
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "api",
            "api:",
            ":80",
            "api:99999",
            "api:http",
            "a b:80",
            "::1:80",
            "10.0.0:80",
            "api..x:80",
            "http://api:80",
            "api/x:80",
        ] {
            assert!(
                BackendSpec::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn resolvers_are_ips_with_port_53_by_default() {
        assert_eq!(
            parse_ip_port("127.0.0.11", 53).unwrap(),
            "127.0.0.11:53".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_ip_port("127.0.0.1:5353", 53).unwrap(),
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_ip_port("dns.example:53", 53).is_err());
    }
}

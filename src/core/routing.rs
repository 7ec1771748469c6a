//! Host + path-prefix routing: an immutable table built once per config, matched per request
//! without allocation.

use std::collections::HashMap;

/// Hosts are hashed per request: foldhash, not SipHash (the table's keys are the
/// configuration's, so a client cannot fill it with colliding names).
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

use crate::core::config::Route;

/// Longest host name we lower-case on the stack; longer ones (over DNS's 253) never match.
const MAX_HOST: usize = 256;

#[derive(Debug, Default)]
struct PathRoutes {
    /// (prefix, service index), longest prefix first.
    entries: Vec<(Box<str>, usize)>,
}

impl PathRoutes {
    fn lookup(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(p, _)| path.starts_with(&**p))
            .map(|(_, s)| *s)
    }
}

/// Maps (host, path) to an index chosen when the table is built (the snapshot's compiled
/// route).
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: Map<PathRoutes>,
    /// `*.example.com` is stored under `example.com`; it matches exactly one more label,
    /// like a wildcard certificate.
    wildcard: Map<PathRoutes>,
}

impl RouteTable {
    /// `target` maps a route (and its position in `routes`) to what a lookup returns for it;
    /// a route it maps to `None` is left out.
    pub fn build(
        routes: &[Route],
        mut target: impl FnMut(usize, &Route) -> Option<usize>,
    ) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            let Some(idx) = target(i, r) else {
                continue;
            };
            let (map, key) = match r.host.strip_prefix("*.") {
                Some(suffix) => (&mut t.wildcard, suffix),
                None => (&mut t.exact, r.host.as_str()),
            };
            map.entry(key.into())
                .or_default()
                .entries
                .push((r.path_prefix.as_str().into(), idx));
        }
        for pr in t.exact.values_mut().chain(t.wildcard.values_mut()) {
            pr.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        }
        t
    }

    /// `host` as the client sent it (any case, optional `:port`).
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let host = strip_port(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut buf = [0u8; MAX_HOST];
            let host = lowercase(host, &mut buf)?;
            return self.lookup_lowercase(host, path);
        }
        self.lookup_lowercase(host, path)
    }

    fn lookup_lowercase(&self, host: &str, path: &str) -> Option<usize> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(pr) = self.exact.get(host) {
            if let Some(s) = pr.lookup(path) {
                return Some(s);
            }
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)?.lookup(path)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [::1]:8080
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn lowercase<'a>(s: &'a str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let bytes = s.as_bytes();
    if bytes.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, prefix: &str, service: &str) -> Route {
        Route {
            host: host.into(),
            path_prefix: prefix.into(),
            service: service.into(),
            middlewares: Default::default(),
        }
    }

    fn table() -> RouteTable {
        let routes = vec![
            route("example.com", "/", "frontend"),
            route("api.example.com", "/", "api"),
            route("api.example.com", "/v2/", "api2"),
            route("*.example.com", "/", "wild"),
            route("only.example.org", "/admin", "admin"),
        ];
        let names = ["frontend", "api", "api2", "wild", "admin"];
        RouteTable::build(&routes, |_, r| names.iter().position(|n| *n == r.service))
    }

    #[test]
    fn exact_host_case_and_port() {
        let t = table();
        assert_eq!(t.lookup("example.com", "/"), Some(0));
        assert_eq!(t.lookup("EXAMPLE.com:8080", "/x"), Some(0));
        assert_eq!(t.lookup("example.com.", "/x"), Some(0));
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.lookup("api.example.com", "/v2/users"), Some(2));
        assert_eq!(t.lookup("api.example.com", "/v1/users"), Some(1));
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let t = table();
        assert_eq!(t.lookup("api.example.com", "/"), Some(1));
        assert_eq!(t.lookup("www.example.com", "/"), Some(3));
        assert_eq!(t.lookup("a.b.example.com", "/"), None);
    }

    #[test]
    fn unknown_host_or_path() {
        let t = table();
        assert_eq!(t.lookup("example.net", "/"), None);
        assert_eq!(t.lookup("only.example.org", "/"), None);
        assert_eq!(t.lookup("only.example.org", "/admin/x"), Some(4));
        assert_eq!(t.lookup("", "/"), None);
    }

    #[test]
    fn ipv6_host_port() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("localhost:80"), "localhost");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}

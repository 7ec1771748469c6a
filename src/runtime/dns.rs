//! Looking up backend names (`[dns]`): every address a name resolves to is a backend of its
//! own. The controller looks names up at start, on a reload or `backends` command that
//! brings new ones, and again every `refresh_s` (`control::dns`); the snapshot is rebuilt
//! from what was found, so the request path never resolves anything.
//!
//! Without `resolvers`, a name goes to the system's resolver (getaddrinfo: `/etc/hosts`, then
//! the servers of `/etc/resolv.conf`, as `curl` or `getent hosts` would see it). With them,
//! `/etc/hosts` is read first and then those servers are asked, over UDP (TCP when an answer
//! is truncated), with no cache of ours: each refresh asks again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::core::config::{BackendName, DnsConfig};

/// The addresses each backend name resolved to last (sorted, never empty): what snapshots
/// are built from. A name missing here has never resolved.
pub type Resolved = BTreeMap<BackendName, Vec<SocketAddr>>;

/// The most one lookup (of every name at once) may take: a resolver that does not answer
/// must not hold a reload, a `backends` command or the first readiness for long.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One name server's wait for an answer before the next one is tried.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// What one lookup of a name found: its addresses (sorted, deduplicated, possibly none), or
/// why it failed.
pub type Found = Result<Vec<SocketAddr>, String>;

/// Looks names up as `[dns]` says.
pub struct Resolver {
    servers: Vec<SocketAddr>,
}

impl Resolver {
    pub fn new(dns: &DnsConfig) -> Resolver {
        Resolver {
            servers: dns.resolvers.clone(),
        }
    }

    /// Looks every name up at once, each bounded by [`LOOKUP_TIMEOUT`].
    pub async fn lookup(&self, names: &[BackendName]) -> Vec<(BackendName, Found)> {
        if names.is_empty() {
            return Vec::new();
        }
        let found = if self.servers.is_empty() {
            join_all(names.iter().map(system_lookup)).await
        } else {
            match self.hickory() {
                Ok(r) => join_all(names.iter().map(|n| server_lookup(&r, n))).await,
                Err(e) => names.iter().map(|_| Err(e.clone())).collect(),
            }
        };
        names.iter().cloned().zip(found).collect()
    }

    /// A resolver asking the configured servers: built for each round, so `/etc/hosts` is
    /// read again and no state outlives the round.
    fn hickory(&self) -> Result<TokioResolver, String> {
        let servers = self
            .servers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let o = builder.options_mut();
        // Each refresh asks the servers: a change shows at the next refresh, whatever its TTL.
        o.cache_size = 0;
        o.use_hosts_file = ResolveHosts::Always;
        o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        o.timeout = SERVER_TIMEOUT;
        o.attempts = 1;
        o.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        builder
            .build()
            .map_err(|e| format!("cannot set up the resolver: {e}"))
    }
}

async fn system_lookup(name: &BackendName) -> Found {
    let lookup = tokio::net::lookup_host((name.host.as_str(), name.port));
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(found)) => Ok(tidy(found.collect())),
    }
}

async fn server_lookup(r: &TokioResolver, name: &BackendName) -> Found {
    match tokio::time::timeout(LOOKUP_TIMEOUT, r.lookup_ip(name.host.as_str())).await {
        Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(found)) => Ok(tidy(
            found
                .iter()
                .map(|ip| SocketAddr::new(ip, name.port))
                .collect(),
        )),
    }
}

fn tidy(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

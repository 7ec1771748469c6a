//! The routing snapshot: everything a request needs, built aside and published whole with
//! one `ArcSwap::store`, so a request sees the old table or the new one, never a mix.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::core::color::Color;
use crate::core::config::{
    BackendSpec, Config, Pools, RateLimit, Route, RouteMiddlewares, ServiceConfig,
};
use crate::core::release::{ReleaseState, ServiceRelease};
use crate::core::routing::RouteTable;
use crate::runtime::dns::Resolved;
use crate::runtime::metrics::{self, PoolMetrics, NO_COLOR};
use crate::runtime::pool::{Backend, Pool, PoolLoad};
use crate::runtime::rate_limiter::RateLimiter;

pub struct ServiceRuntime {
    pub name: String,
    pub config: ServiceConfig,
    /// The Host used for health and smoke checks: the service's first routed host.
    pub check_host: String,
    pub release: Option<ServiceRelease>,
    /// Blue then green for a releasable service; one pool otherwise.
    pub pools: Vec<Arc<Pool>>,
}

impl ServiceRuntime {
    pub fn releasable(&self) -> bool {
        self.release.is_some()
    }

    /// The index in `pools` of the color this request goes to: the active one, or the canary
    /// for its share of requests (by the client's stable roll when `sticky`, else at random).
    #[inline]
    pub fn pick_pool(&self, sticky_roll: impl FnOnce() -> u8) -> usize {
        let Some(r) = &self.release else { return 0 };
        match &r.canary {
            Some(c) if c.weight > 0 => {
                let roll = if self.config.sticky {
                    sticky_roll()
                } else {
                    (rand::random::<u32>() % 100) as u8
                };
                if roll < c.weight {
                    c.color.index()
                } else {
                    r.active.index()
                }
            }
            _ => r.active.index(),
        }
    }

    pub fn pool(&self, color: Color) -> Option<&Arc<Pool>> {
        self.release.as_ref().map(|_| &self.pools[color.index()])
    }
}

/// A route as the request path uses it: found by `Snapshot::routes`, by index.
pub struct CompiledRoute {
    /// Index into `Snapshot::services`.
    pub service: usize,
    /// `None` for a route without middlewares: its requests pay for nothing.
    pub edge: Option<Arc<RouteEdge>>,
}

/// A route's middlewares, resolved once: the config's (header names and values parsed at
/// load), its rate limiter (kept across snapshots, see `Retained`), its metric handle.
pub struct RouteEdge {
    pub middlewares: RouteMiddlewares,
    pub limiter: Option<Arc<RateLimiter>>,
    /// The service's requests refused by the rate limit (429), counted with an empty color:
    /// in no color's figures, so not in any SLO.
    pub refused: Arc<PoolMetrics>,
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Maps (host, path) to an index into `compiled`.
    pub routes: RouteTable,
    pub compiled: Vec<CompiledRoute>,
    pub services: Vec<Arc<ServiceRuntime>>,
}

impl Snapshot {
    /// The rate limiters of the routes served, for the sweeper.
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<RateLimiter>> {
        self.compiled
            .iter()
            .filter_map(|r| r.edge.as_ref()?.limiter.as_ref())
    }

    pub fn service(&self, name: &str) -> Option<&Arc<ServiceRuntime>> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Sets the release gauges from this snapshot: called when it is published, not when it
    /// is built, so a release that fails to persist never shows in metrics.
    pub fn export_gauges(&self) {
        let releases: Vec<(&str, Color, i64)> = self
            .services
            .iter()
            .filter_map(|svc| {
                let r = svc.release.as_ref()?;
                let weight = r.canary.as_ref().map_or(0, |c| c.weight as i64);
                Some((svc.name.as_str(), r.active, weight))
            })
            .collect();
        metrics::global().export_releases(&releases);
    }
}

/// Objects that outlive one snapshot: backends (with their health) and per-color load
/// counters. The builder reuses them so a reload or switch loses neither.
#[derive(Default)]
pub struct Retained {
    inner: Mutex<RetainedInner>,
}

/// A backend's identity across snapshots: service, color, the name it was found under (if
/// any) and its address.
type BackendKey = (String, &'static str, Option<String>, SocketAddr);

#[derive(Default)]
struct RetainedInner {
    backends: HashMap<BackendKey, Arc<Backend>>,
    loads: HashMap<(String, &'static str), Arc<PoolLoad>>,
    /// By (host, path_prefix): a route's clients keep their buckets across releases and
    /// reloads, unless its limit changed.
    limiters: HashMap<(String, String), Arc<RateLimiter>>,
}

impl Retained {
    pub fn load(&self, service: &str, color: &'static str) -> Arc<PoolLoad> {
        let mut g = self.inner.lock().unwrap();
        g.loads
            .entry((service.to_string(), color))
            .or_default()
            .clone()
    }

    /// Requests in flight on every pool, for a graceful shutdown.
    pub fn total_inflight(&self) -> i64 {
        let g = self.inner.lock().unwrap();
        g.loads
            .values()
            .map(|l| l.inflight.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn backend(
        &self,
        service: &str,
        color: &'static str,
        name: Option<String>,
        addr: SocketAddr,
    ) -> Arc<Backend> {
        let mut g = self.inner.lock().unwrap();
        g.backends
            .entry((service.to_string(), color, name.clone(), addr))
            .or_insert_with(|| {
                let up = metrics::global().backend_up(service, color, &addr.to_string());
                Arc::new(Backend::new(addr, name, up))
            })
            .clone()
    }

    fn limiter(&self, route: &Route, limit: RateLimit) -> Arc<RateLimiter> {
        let mut g = self.inner.lock().unwrap();
        let key = (route.host.clone(), route.path_prefix.clone());
        match g.limiters.get(&key) {
            Some(l) if l.limit() == limit => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::new(limit));
                g.limiters.insert(key, l.clone());
                l
            }
        }
    }

    /// Forgets backends no snapshot lists any more (and their `backend_up` series), and the
    /// limiters of routes that are gone or no longer limited.
    fn prune(&self, live: &[Arc<ServiceRuntime>], routes: &[Route]) {
        let mut g = self.inner.lock().unwrap();
        g.limiters.retain(|(host, prefix), _| {
            routes.iter().any(|r| {
                r.host == *host && r.path_prefix == *prefix && r.middlewares.rate_limit.is_some()
            })
        });
        let mut removed = Vec::new();
        g.backends.retain(|(service, color, name, addr), _| {
            let keep = live.iter().any(|s| {
                s.name == *service
                    && s.pools.iter().any(|p| {
                        p.color_label == *color
                            && p.backends
                                .iter()
                                .any(|b| b.addr == *addr && b.name == *name)
                    })
            });
            if !keep {
                removed.push((service.clone(), *color, *addr));
            }
            keep
        });
        // `backend_up` is per address: its series goes once no backend of that address is
        // left in the pool (an address may move from one name to another).
        for (service, color, addr) in removed {
            let still = g
                .backends
                .keys()
                .any(|(s, c, _, a)| *s == service && *c == color && *a == addr);
            if !still {
                let _ = metrics::global().backend_up.remove_label_values(&[
                    service.as_str(),
                    color,
                    &addr.to_string(),
                ]);
            }
        }
    }
}

/// Backend lists set at runtime (`releasectl backends`), overriding the config's.
pub type Overrides = BTreeMap<String, BTreeMap<Color, Vec<BackendSpec>>>;

/// Builds a snapshot from a config, the release state of each releasable service, the
/// backend overrides and the addresses backend names resolved to.
pub fn build(
    config: Arc<Config>,
    releases: &ReleaseState,
    overrides: &Overrides,
    resolved: &Resolved,
    retained: &Retained,
) -> Snapshot {
    let m = metrics::global();
    let mut services = Vec::with_capacity(config.services.len());
    for (name, sc) in &config.services {
        let make_pool = |label: &'static str, specs: &[BackendSpec]| {
            let mut backends: Vec<Arc<Backend>> = Vec::new();
            let mut unresolved = Vec::new();
            let mut add = |spec_name: Option<String>, addr: SocketAddr| {
                // An address listed twice (by two names, say) is one backend of the pool.
                if !backends.iter().any(|b| b.addr == addr) {
                    backends.push(retained.backend(name, label, spec_name, addr));
                }
            };
            for spec in specs {
                match spec {
                    BackendSpec::Addr(a) => add(None, *a),
                    BackendSpec::Name(n) => match resolved.get(n) {
                        Some(addrs) => {
                            for a in addrs {
                                add(Some(n.to_string()), *a);
                            }
                        }
                        None => unresolved.push(n.to_string()),
                    },
                }
            }
            let load = retained.load(name, label);
            if sc.slo.is_some() {
                load.slo.get_or_init(Default::default);
            }
            let mut pool = Pool::new(label, backends, m.pool(name, label), load);
            pool.unresolved = unresolved;
            Arc::new(pool)
        };
        let (release, pools) = match &sc.pools {
            Pools::Single(addrs) => (None, vec![make_pool(NO_COLOR, addrs)]),
            Pools::Colors { blue, green } => {
                let release = releases.get(name);
                let over = overrides.get(name);
                let pick = |c: Color, from_config: &Vec<BackendSpec>| {
                    over.and_then(|o| o.get(&c))
                        .cloned()
                        .unwrap_or_else(|| from_config.clone())
                };
                let pools = vec![
                    make_pool(Color::Blue.as_str(), &pick(Color::Blue, blue)),
                    make_pool(Color::Green.as_str(), &pick(Color::Green, green)),
                ];
                // Touch the release counters so `increase()` sees their first event.
                for result in ["ok", "refused", "failed"] {
                    m.switches.with_label_values(&[name, result]);
                }
                for reason in ["error_rate", "p95", "p99"] {
                    m.rollbacks.with_label_values(&[name, reason]);
                    m.rollbacks_refused.with_label_values(&[name, reason]);
                }
                (Some(release), pools)
            }
        };
        let check_host = config
            .routes
            .iter()
            .find(|r| r.service == *name)
            .map(|r| r.host.trim_start_matches("*.").to_string())
            .unwrap_or_else(|| "localhost".to_string());
        services.push(Arc::new(ServiceRuntime {
            name: name.clone(),
            config: sc.clone(),
            check_host,
            release,
            pools,
        }));
    }
    let mut compiled = Vec::with_capacity(config.routes.len());
    let routes = RouteTable::build(&config.routes, |_, route| {
        let service = services.iter().position(|svc| svc.name == route.service)?;
        let mw = &route.middlewares;
        let edge = (!mw.is_empty()).then(|| {
            Arc::new(RouteEdge {
                middlewares: mw.clone(),
                limiter: mw.rate_limit.map(|l| retained.limiter(route, l)),
                refused: m.pool(&route.service, ""),
            })
        });
        compiled.push(CompiledRoute { service, edge });
        Some(compiled.len() - 1)
    });
    retained.prune(&services, &config.routes);
    Snapshot {
        config,
        routes,
        compiled,
        services,
    }
}

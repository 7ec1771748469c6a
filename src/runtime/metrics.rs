//! Prometheus metrics. Label handles are resolved once per (service, color) and kept in
//! [`PoolMetrics`], so recording a request is a few atomic adds, not a label-map lookup.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::core::color::Color;
use crate::core::request_head::Rejection;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The color label of a service that has one pool and no colors.
pub const NO_COLOR: &str = "default";

/// Latency buckets in seconds: fine below 100 ms, where the SLO thresholds usually sit.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a request could not be proxied to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    ConnectRefused,
    ConnectTimeout,
    ReadTimeout,
    Read,
    Write,
    Other,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::ConnectRefused,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::ReadTimeout,
        UpstreamErrorKind::Read,
        UpstreamErrorKind::Write,
        UpstreamErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectRefused => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::ReadTimeout => "read_timeout",
            UpstreamErrorKind::Read => "read",
            UpstreamErrorKind::Write => "write",
            UpstreamErrorKind::Other => "other",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    pub active_color: IntGaugeVec,
    pub canary_weight: IntGaugeVec,
    pub switches: IntCounterVec,
    pub rollbacks: IntCounterVec,
    /// Rollbacks the controller asked for and refused (the previous color had no healthy
    /// backend): nothing moved, so they are not `rollbacks`.
    pub rollbacks_refused: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub cert_expiry: GaugeVec,
    pub acme_orders: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Backend name lookups that failed or found no address, by name (`api:8000`).
    pub dns_failures: IntCounterVec,
    /// `store = "etcd"`: 1 while etcd answers.
    pub store_up: IntGauge,
    /// `store = "etcd"`: 1 on the site's leader.
    pub leader: IntGauge,
    /// `store = "etcd"`: the revision of the release state this instance serves.
    pub applied_revision: IntGauge,
    /// Always 1, labelled with the version.
    pub build_info: IntGaugeVec,
    /// Clients with a rate-limit bucket, over every route (after each sweep).
    pub rate_limit_clients: IntGauge,
    /// Indexed like `Rejection::ALL`; resolved once, so a refusal is one atomic add.
    rejected: Vec<IntCounter>,
    /// The services whose `active_color` / `canary_weight` series are exported, so that the
    /// series of a service a reload removed (or made single-pool) can be deleted.
    release_series: Mutex<BTreeSet<String>>,
    pools: Mutex<HashMap<(String, &'static str), Arc<PoolMetrics>>>,
    unrouted: OnceLock<Arc<PoolMetrics>>,
}

/// Handles for one (service, color).
pub struct PoolMetrics {
    labels: [String; 2],
    requests_vec: IntCounterVec,
    /// Indexed by status - 100; filled on first use of a status, then lock-free.
    requests: Box<[OnceLock<IntCounter>]>,
    pub duration: Histogram,
    upstream_errors: Vec<IntCounter>,
}

impl PoolMetrics {
    #[inline]
    pub fn record(&self, status: u16, seconds: f64) {
        self.count(status);
        self.duration.observe(seconds);
    }

    /// Counts a response without observing its duration.
    #[inline]
    pub fn count(&self, status: u16) {
        let idx = status.clamp(100, 599) as usize - 100;
        self.requests[idx]
            .get_or_init(|| {
                let code = status.to_string();
                self.requests_vec
                    .with_label_values(&[&self.labels[0], &self.labels[1], &code])
            })
            .inc();
    }

    #[inline]
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }
}

fn new<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            new(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            new(&r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
        };
        Metrics {
            requests: cv(
                "switchyard_requests_total",
                "Requests answered, by service, color and status code.",
                &["service", "color", "code"],
            ),
            duration: new(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchyard_request_duration_seconds",
                        "Time from request to the end of the response, by service and color.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["service", "color"],
                )
                .unwrap(),
            ),
            upstream_errors: cv(
                "switchyard_upstream_errors_total",
                "Failures talking to a backend, by kind (connect, connect_timeout, read_timeout, read, write, other).",
                &["service", "color", "kind"],
            ),
            active_color: gv(
                "switchyard_active_color",
                "1 for the color a service sends its traffic to, 0 for the other.",
                &["service", "color"],
            ),
            canary_weight: gv(
                "switchyard_canary_weight",
                "Share of requests (0-100) sent to the canary color.",
                &["service"],
            ),
            switches: cv(
                "switchyard_switches_total",
                "Release switches, by result.",
                &["service", "result"],
            ),
            rollbacks: cv(
                "switchyard_rollbacks_total",
                "Automatic rollbacks that moved traffic back, by the SLO breach that caused them.",
                &["service", "reason"],
            ),
            rollbacks_refused: cv(
                "switchyard_rollbacks_refused_total",
                "Automatic rollbacks refused because the previous color had no healthy backend \
                 (traffic stayed where it was), by the SLO breach that asked for them.",
                &["service", "reason"],
            ),
            backend_up: gv(
                "switchyard_backend_up",
                "1 while a backend passes its health checks.",
                &["service", "color", "backend"],
            ),
            cert_expiry: new(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "switchyard_cert_expiry_timestamp_seconds",
                        "Unix time at which the certificate served for a host expires.",
                    ),
                    &["host"],
                )
                .unwrap(),
            ),
            acme_orders: cv(
                "switchyard_acme_orders_total",
                "ACME orders, by result.",
                &["result"],
            ),
            config_reloads: {
                let v = cv(
                    "switchyard_config_reloads_total",
                    "Config reloads, by result (ok, refused: invalid config, failed: not applied).",
                    &["result"],
                );
                // Exported from the start at 0, so that `increase()` sees the first event.
                for result in ["ok", "refused", "failed"] {
                    v.with_label_values(&[result]);
                }
                v
            },
            dns_failures: cv(
                "switchyard_dns_failures_total",
                "Lookups of a backend name that failed or found no address (the last addresses are kept).",
                &["name"],
            ),
            rejected: {
                let v = cv(
                    "switchyard_rejected_requests_total",
                    "Requests refused before reaching a backend (limits, framing, bad Host \
                     or path), by reason.",
                    &["reason"],
                );
                Rejection::ALL
                    .iter()
                    .map(|r| v.with_label_values(&[r.as_str()]))
                    .collect()
            },
            store_up: {
                let g = IntGauge::new("switchyard_store_up", "1 while the shared store (etcd) answers.").unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            leader: {
                let g = IntGauge::new("switchyard_leader", "1 on the instance that leads the site.").unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            applied_revision: {
                let g = IntGauge::new("switchyard_applied_revision", "The etcd revision of the release state this instance serves.").unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            build_info: {
                // Always 1: a series every scrape of a switchyard has, for `absent()` alerts
                // and to see which version runs where.
                let g = gv(
                    "switchyard_build_info",
                    "Always 1; the version of the running switchyard.",
                    &["version"],
                );
                g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                g
            },
            release_series: Mutex::new(BTreeSet::new()),
            rate_limit_clients: {
                let g = IntGauge::new(
                    "switchyard_rate_limit_clients",
                    "Clients with a rate-limit bucket, over every route (idle ones are swept out every second).",
                )
                .unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            registry: r,
            pools: Mutex::new(HashMap::new()),
            unrouted: OnceLock::new(),
        }
    }

    /// The handles of one (service, color), created on first use and shared afterwards, so a
    /// reload keeps the same counters.
    pub fn pool(&self, service: &str, color: &'static str) -> Arc<PoolMetrics> {
        let mut pools = self.pools.lock().unwrap();
        pools
            .entry((service.to_string(), color))
            .or_insert_with(|| self.make_pool(service, color))
            .clone()
    }

    fn make_pool(&self, service: &str, color: &'static str) -> Arc<PoolMetrics> {
        Arc::new(PoolMetrics {
            labels: [service.to_string(), color.to_string()],
            requests_vec: self.requests.clone(),
            requests: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.duration.with_label_values(&[service, color]),
            upstream_errors: UpstreamErrorKind::ALL
                .iter()
                .map(|k| {
                    self.upstream_errors
                        .with_label_values(&[service, color, k.as_str()])
                })
                .collect(),
        })
    }

    /// Counts a request refused before it reached a backend.
    pub fn rejected(&self, reason: Rejection) {
        self.rejected[reason as usize].inc();
    }

    /// Requests that matched no route (service and color labels empty).
    pub fn unrouted(&self) -> &PoolMetrics {
        self.unrouted.get_or_init(|| self.make_pool("", ""))
    }

    pub fn backend_up(&self, service: &str, color: &str, backend: &str) -> IntGauge {
        self.backend_up
            .with_label_values(&[service, color, backend])
    }

    /// Sets `switchyard_active_color` and `switchyard_canary_weight` for every releasable
    /// service (name, active color, canary weight), and deletes the series of services that
    /// had them before and are gone or no longer releasable: a removed service must not
    /// keep showing as active forever.
    pub fn export_releases(&self, releases: &[(&str, Color, i64)]) {
        let mut exported = self.release_series.lock().unwrap();
        for (service, active, weight) in releases {
            for c in Color::ALL {
                self.active_color
                    .with_label_values(&[service, c.as_str()])
                    .set((c == *active) as i64);
            }
            self.canary_weight
                .with_label_values(&[service])
                .set(*weight);
        }
        let live: BTreeSet<String> = releases.iter().map(|(s, _, _)| s.to_string()).collect();
        for gone in exported.difference(&live) {
            for c in Color::ALL {
                let _ = self
                    .active_color
                    .remove_label_values(&[gone.as_str(), c.as_str()]);
            }
            let _ = self.canary_weight.remove_label_values(&[gone.as_str()]);
        }
        *exported = live;
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

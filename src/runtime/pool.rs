//! Backends and the pools they form: round robin over the healthy ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

use crate::runtime::metrics::PoolMetrics;

/// One backend address and its health, shared by every snapshot that lists it so health
/// survives reloads, switches and DNS refreshes.
pub struct Backend {
    pub addr: SocketAddr,
    pub addr_text: String,
    /// The name this address was found under (`api-green:8000`); `None` for an address
    /// written as one.
    pub name: Option<String>,
    healthy: AtomicBool,
    fails: AtomicU32,
    oks: AtomicU32,
    /// Set while a health check of this backend runs, so checks never pile up.
    pub(crate) checking: AtomicBool,
    up: IntGauge,
}

impl Backend {
    pub fn new(addr: SocketAddr, name: Option<String>, up: IntGauge) -> Backend {
        up.set(1);
        Backend {
            addr,
            addr_text: addr.to_string(),
            name,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            checking: AtomicBool::new(false),
            up,
        }
    }

    /// `127.0.0.2:8000`, or `api-green:8000 (127.0.0.2:8000)` for an address found by name:
    /// for logs and smoke check results.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.addr_text),
            None => self.addr_text.clone(),
        }
    }

    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one health-check result; returns `Some(new_state)` when the state flips.
    pub fn record_check(&self, ok: bool, fall: u32, rise: u32) -> Option<bool> {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let oks = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && oks >= rise {
                self.set_healthy(true);
                return Some(true);
            }
        } else {
            self.oks.store(0, Ordering::Relaxed);
            let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && fails >= fall {
                self.set_healthy(false);
                return Some(false);
            }
        }
        None
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.up.set(healthy as i64);
    }
}

/// Counters of one (service, color) that outlive snapshots: what is still running on a color
/// after traffic moved away from it.
#[derive(Default)]
pub struct PoolLoad {
    /// Requests being proxied right now (upgraded connections included).
    pub inflight: AtomicI64,
    /// Upgraded (WebSocket) connections open right now.
    pub upgraded: AtomicI64,
    /// Unix ms after which upgraded connections still open on this color are closed; 0 while
    /// the color is serving. Set when traffic moves away (now + `drain_timeout_s`).
    pub drain_deadline_ms: AtomicU64,
    /// Sliding-window figures for the SLO watch; allocated (≈150 KiB) only for services
    /// that have an `slo`.
    pub slo: std::sync::OnceLock<crate::core::slo::SloStats>,
}

impl PoolLoad {
    /// True once this color was switched away from and its drain timeout passed.
    pub fn drain_expired(&self) -> bool {
        let d = self.drain_deadline_ms.load(Ordering::Relaxed);
        d != 0
            && std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .is_ok_and(|now| now.as_millis() as u64 >= d)
    }
}

/// The backends of one color of one service, as of one snapshot.
pub struct Pool {
    /// "blue", "green", or [`crate::runtime::metrics::NO_COLOR`].
    pub color_label: &'static str,
    pub backends: Vec<Arc<Backend>>,
    /// Backend names of this pool that never resolved (so have no backend here yet).
    pub unresolved: Vec<String>,
    rr: AtomicUsize,
    pub metrics: Arc<PoolMetrics>,
    pub load: Arc<PoolLoad>,
}

impl Pool {
    pub fn new(
        color_label: &'static str,
        backends: Vec<Arc<Backend>>,
        metrics: Arc<PoolMetrics>,
        load: Arc<PoolLoad>,
    ) -> Pool {
        Pool {
            color_label,
            backends,
            unresolved: Vec::new(),
            rr: AtomicUsize::new(0),
            metrics,
            load,
        }
    }

    /// The next healthy backend in round-robin order, skipping `exclude` (the backend a retry
    /// just failed on) when another one exists. When no backend is healthy, all are tried in
    /// turn rather than failing every request (health checks can be wrong; nginx and Envoy do
    /// the same).
    pub fn pick(&self, exclude: Option<SocketAddr>) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let candidate = |healthy_only: bool| {
            (0..n)
                .map(|i| &self.backends[(start + i) % n])
                .find(|b| (!healthy_only || b.is_healthy()) && Some(b.addr) != exclude)
        };
        candidate(true)
            .or_else(|| candidate(false))
            .or_else(|| self.backends.get(start % n))
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics;

    fn pool(n: u16) -> Pool {
        let m = metrics::global();
        let backends = (0..n)
            .map(|i| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 10000 + i).parse().unwrap();
                Arc::new(Backend::new(
                    addr,
                    None,
                    m.backend_up("t", "blue", &addr.to_string()),
                ))
            })
            .collect();
        Pool::new(
            "blue",
            backends,
            m.pool("t", "blue"),
            Arc::new(PoolLoad::default()),
        )
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let p = pool(3);
        let mut counts = [0; 3];
        for _ in 0..30 {
            let b = p.pick(None).unwrap();
            counts[(b.addr.port() - 10000) as usize] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn unhealthy_backends_are_skipped_and_come_back() {
        let p = pool(2);
        assert_eq!(p.backends[0].record_check(false, 2, 2), None);
        assert_eq!(p.backends[0].record_check(false, 2, 2), Some(false));
        for _ in 0..10 {
            assert_eq!(p.pick(None).unwrap().addr.port(), 10001);
        }
        assert_eq!(p.backends[0].record_check(true, 2, 2), None);
        assert_eq!(p.backends[0].record_check(true, 2, 2), Some(true));
        let ports: Vec<u16> = (0..4).map(|_| p.pick(None).unwrap().addr.port()).collect();
        assert!(ports.contains(&10000));
    }

    #[test]
    fn retry_excludes_the_failed_backend() {
        let p = pool(2);
        let failed = p.backends[1].addr;
        for _ in 0..10 {
            assert_ne!(p.pick(Some(failed)).unwrap().addr, failed);
        }
    }

    #[test]
    fn all_unhealthy_still_picks() {
        let p = pool(1);
        p.backends[0].record_check(false, 1, 1);
        assert!(p.pick(None).is_some());
    }
}

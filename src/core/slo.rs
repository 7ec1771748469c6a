//! In-process SLO figures per (service, color): a ring of per-second buckets, each holding a
//! request count, an error count and a fixed-bucket latency histogram, all atomics. The
//! request path records without locks; the controller sums the last `window_s` buckets once
//! a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Seconds of history kept; `slo.window_s` is capped to this.
pub const MAX_WINDOW_S: u64 = 600;
const RING: usize = MAX_WINDOW_S as usize + 2;

/// Upper bounds (ms) of the latency bins; the last bin is open-ended.
const BOUNDS_MS: [u64; 27] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500,
    2000, 3000, 5000, 10_000, 30_000,
];
const BINS: usize = BOUNDS_MS.len() + 1;

/// Seconds since the process started: a monotonic clock shared by writers and readers.
pub fn now_s() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

struct Bucket {
    /// The second (per [`now_s`]) this bucket counts; reset when a newer second claims it.
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BINS],
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub struct SloStats {
    ring: Box<[Bucket]>,
}

impl Default for SloStats {
    fn default() -> Self {
        SloStats {
            ring: (0..RING).map(|_| Bucket::new()).collect(),
        }
    }
}

/// Figures over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

fn bin(ms: u64) -> usize {
    BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(BOUNDS_MS.len())
}

/// An error for the SLO: a 5xx from the backend, or the proxy's own 502/504.
pub fn is_error(status: u16) -> bool {
    (500..600).contains(&status)
}

impl SloStats {
    #[inline]
    pub fn record(&self, status: u16, elapsed_ms: u64) {
        self.record_at(now_s(), status, elapsed_ms);
    }

    pub fn record_at(&self, second: u64, status: u16, elapsed_ms: u64) {
        let b = &self.ring[(second % RING as u64) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second {
            // First request of a new second in this slot: claim and clear it. A racing
            // writer may lose a count at the boundary; the figures are statistics.
            if b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                b.requests.store(0, Ordering::Relaxed);
                b.errors.store(0, Ordering::Relaxed);
                for l in &b.latency {
                    l.store(0, Ordering::Relaxed);
                }
            }
        }
        b.requests.fetch_add(1, Ordering::Relaxed);
        if is_error(status) {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
        b.latency[bin(elapsed_ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// Figures over the seconds (`now - window`, `now`], counting only seconds ≥ `since`.
    pub fn figures(&self, now: u64, window_s: u64, since: u64) -> Figures {
        self.window(now, window_s, since).figures()
    }

    /// The raw counts over the seconds (`now - window`, `now`], counting only seconds ≥
    /// `since`: what an instance of a site publishes, so the leader can add every
    /// instance's counts before taking quantiles (quantiles themselves do not add up).
    pub fn window(&self, now: u64, window_s: u64, since: u64) -> Window {
        let window = window_s.clamp(1, MAX_WINDOW_S);
        let from = now.saturating_sub(window - 1).max(since);
        let mut w = Window::default();
        for second in from..=now {
            let b = &self.ring[(second % RING as u64) as usize];
            if b.second.load(Ordering::Acquire) != second {
                continue;
            }
            w.requests += b.requests.load(Ordering::Relaxed);
            w.errors += b.errors.load(Ordering::Relaxed);
            for (h, l) in w.latency.iter_mut().zip(&b.latency) {
                *h += l.load(Ordering::Relaxed);
            }
        }
        w
    }
}

/// Request, error and latency-bin counts over a window: the sum of several instances'
/// windows is the site's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// Counts per latency bin (the bounds are fixed; a list of another length is refused
    /// by [`Window::merge`]).
    pub latency: Vec<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            errors: 0,
            latency: vec![0; BINS],
        }
    }
}

impl Window {
    /// Adds another instance's counts; a window with another bin layout is ignored (false).
    pub fn merge(&mut self, other: &Window) -> bool {
        if other.latency.len() != BINS {
            return false;
        }
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a = a.saturating_add(*b);
        }
        true
    }

    pub fn figures(&self) -> Figures {
        let mut f = Figures {
            requests: self.requests,
            errors: self.errors,
            ..Figures::default()
        };
        let total: u64 = self.latency.iter().sum();
        if f.requests > 0 {
            f.error_rate = f.errors as f64 / f.requests as f64;
        }
        let quantile = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = (q * total as f64).ceil() as u64;
            let mut acc = 0;
            for (i, n) in self.latency.iter().enumerate() {
                acc += n;
                if acc >= rank {
                    // The bin's upper bound: a conservative reading, like Prometheus'
                    // histogram_quantile without interpolation.
                    return BOUNDS_MS.get(i).copied().unwrap_or(60_000);
                }
            }
            60_000
        };
        f.p50_ms = quantile(0.50);
        f.p95_ms = quantile(0.95);
        f.p99_ms = quantile(0.99);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_and_quantiles_in_the_window() {
        let s = SloStats::default();
        for i in 0..100 {
            let status = if i < 5 { 502 } else { 200 };
            let ms = if i < 90 { 10 } else { 400 };
            s.record_at(1000, status, ms);
        }
        let f = s.figures(1000, 30, 0);
        assert_eq!(f.requests, 100);
        assert_eq!(f.errors, 5);
        assert!((f.error_rate - 0.05).abs() < 1e-9);
        assert_eq!(f.p50_ms, 10);
        assert_eq!(f.p95_ms, 400);
        assert_eq!(f.p99_ms, 400);
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let s = SloStats::default();
        s.record_at(100, 500, 5);
        s.record_at(130, 200, 5);
        assert_eq!(s.figures(130, 30, 0).requests, 1);
        assert_eq!(s.figures(129, 30, 0).requests, 1);
        assert_eq!(s.figures(130, 31, 0).requests, 2);
        // `since` hides what came before a switch.
        assert_eq!(s.figures(130, 60, 120).requests, 1);
    }

    #[test]
    fn a_reused_slot_is_cleared() {
        let s = SloStats::default();
        s.record_at(5, 500, 5);
        s.record_at(5 + RING as u64, 200, 5);
        let f = s.figures(5 + RING as u64, 10, 0);
        assert_eq!((f.requests, f.errors), (1, 0));
    }

    #[test]
    fn windows_of_several_instances_add_up_before_quantiles() {
        let a = SloStats::default();
        let b = SloStats::default();
        // Instance a: 90 fast successes; instance b: 10 slow errors. Neither alone shows
        // the site: b alone is 100 % errors, a alone 0 %.
        for _ in 0..90 {
            a.record_at(50, 200, 5);
        }
        for _ in 0..10 {
            b.record_at(50, 503, 800);
        }
        let mut site = a.window(50, 30, 0);
        assert!(site.merge(&b.window(50, 30, 0)));
        let f = site.figures();
        assert_eq!((f.requests, f.errors), (100, 10));
        assert!((f.error_rate - 0.10).abs() < 1e-9);
        assert_eq!(f.p50_ms, 5);
        assert_eq!(f.p95_ms, 1000);
        // A window of another layout (another version's bins) is not mixed in.
        let odd = Window {
            requests: 1,
            errors: 1,
            latency: vec![1],
        };
        assert!(!site.merge(&odd));
        assert_eq!(site.figures().requests, 100);
    }

    #[test]
    fn status_classes() {
        assert!(is_error(502) && is_error(504) && is_error(500));
        assert!(!is_error(404) && !is_error(499) && !is_error(200));
    }
}

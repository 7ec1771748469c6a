//! The readiness latch behind `/health` (the idea of linkerd2-proxy's `readiness.rs`): the
//! process is ready once every part it waits for has released its latch, and stays ready.
//!
//! The parts are named at start (`server.rs` waits for `config`, `state` and each client
//! listener), so a 503 can say what is still missing. Reading is two atomic loads at most;
//! `/health` never takes a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What `/health` reads. Cheap to clone.
#[derive(Clone)]
pub struct Readiness(Arc<Parts>);

struct Parts {
    /// Set once every part is up: the fast path.
    ready: AtomicBool,
    parts: Vec<(&'static str, AtomicBool)>,
}

/// Held by whatever a part waits for; [`Latch::release`] marks the part up. A latch that is
/// dropped without being released keeps its part down: a start that failed half-way never
/// reads as ready.
#[must_use = "a latch that is never released keeps /health at 503"]
pub struct Latch {
    parts: Arc<Parts>,
    index: usize,
}

impl Readiness {
    /// Waits for the named parts, each released through its [`Readiness::latch`].
    pub fn new(names: &[&'static str]) -> Readiness {
        Readiness(Arc::new(Parts {
            ready: AtomicBool::new(names.is_empty()),
            parts: names.iter().map(|n| (*n, AtomicBool::new(false))).collect(),
        }))
    }

    /// The latch of the part `name`.
    ///
    /// # Panics
    /// When `name` is not one of the parts given to [`Readiness::new`] (a wiring mistake).
    pub fn latch(&self, name: &str) -> Latch {
        let index = self
            .0
            .parts
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("readiness has no part `{name}`"));
        Latch {
            parts: self.0.clone(),
            index,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// The parts not up yet, in the order given.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        self.0
            .parts
            .iter()
            .filter(|(_, up)| !up.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl Latch {
    pub fn name(&self) -> &'static str {
        self.parts.parts[self.index].0
    }

    /// Marks the part up; the last one up makes the whole ready.
    pub fn release(self) {
        self.parts.parts[self.index].1.store(true, Ordering::SeqCst);
        if self
            .parts
            .parts
            .iter()
            .all(|(_, up)| up.load(Ordering::SeqCst))
        {
            self.parts.ready.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_part_is_released() {
        let r = Readiness::new(&["config", "state", "listen.http"]);
        assert!(!r.is_ready());
        assert_eq!(r.waiting_for(), ["config", "state", "listen.http"]);
        r.latch("state").release();
        assert!(!r.is_ready());
        assert_eq!(r.waiting_for(), ["config", "listen.http"]);
        let http = r.latch("listen.http");
        assert_eq!(http.name(), "listen.http");
        // Dropped unreleased: still waiting.
        drop(r.latch("config"));
        assert_eq!(r.waiting_for(), ["config", "listen.http"]);
        r.latch("config").release();
        http.release();
        assert!(r.is_ready());
        assert!(r.waiting_for().is_empty());
        assert!(Readiness::new(&[]).is_ready());
    }

    #[test]
    fn released_from_many_threads_at_once() {
        let names: Vec<&'static str> = vec!["a", "b", "c", "d", "e", "f", "g", "h"];
        for _ in 0..50 {
            let r = Readiness::new(&names);
            let latches: Vec<Latch> = names.iter().map(|n| r.latch(n)).collect();
            std::thread::scope(|s| {
                for l in latches {
                    s.spawn(move || l.release());
                }
            });
            assert!(r.is_ready());
        }
    }

    #[test]
    #[should_panic(expected = "no part `listeners`")]
    fn an_unknown_part_is_a_wiring_mistake() {
        let _ = Readiness::new(&["config"]).latch("listeners");
    }
}

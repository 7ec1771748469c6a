//! What the proxy, the admin API and the background tasks share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::runtime::snapshot::{Retained, Snapshot};

pub struct Shared {
    /// The routing snapshot; loaded once per request.
    pub snapshot: ArcSwap<Snapshot>,
    pub retained: Retained,
    /// `[log] access`: one log line per request.
    pub access_log: AtomicBool,
}

impl Shared {
    pub fn new(snapshot: Snapshot, retained: Retained) -> Arc<Shared> {
        snapshot.export_gauges();
        Arc::new(Shared {
            access_log: AtomicBool::new(snapshot_access_log(&snapshot)),
            snapshot: ArcSwap::from_pointee(snapshot),
            retained,
        })
    }

    pub fn publish(&self, snapshot: Snapshot) {
        snapshot.export_gauges();
        self.access_log
            .store(snapshot_access_log(&snapshot), Ordering::Relaxed);
        self.snapshot.store(Arc::new(snapshot));
    }
}

fn snapshot_access_log(s: &Snapshot) -> bool {
    s.config.access_log
}

//! The SLO figures of a site: while a release is watched, every instance that is not the
//! leader publishes its window of the watched colors (raw counts, see `core::slo::Window`)
//! under `slo/<service>/<color>/<instance>` at least once a second, and the leader adds
//! them to its own before judging. Nothing is written while nothing is watched, and an
//! instance's keys go when its watch ends (or with its lease, when it dies).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{EtcdStore, CALL_TIMEOUT};
use crate::core::color::Color;
use crate::core::slo::Window;

/// A published window older than this is left out: its instance stopped publishing (it
/// lost etcd, or its watch ended and the delete has not arrived yet).
const FRESH_FOR: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
struct Published {
    service: String,
    color: Color,
    instance: String,
    window: Window,
}

/// The windows other instances published, as the watch delivered them.
#[derive(Default)]
pub(super) struct SiteWindows {
    /// key → (service, color, window, when it arrived).
    remote: Mutex<HashMap<String, (String, Color, Window, Instant)>>,
    /// The keys this instance wrote and has not deleted yet.
    published: Mutex<HashSet<String>>,
}

impl EtcdStore {
    fn window_key(&self, service: &str, color: Color) -> String {
        self.key(&format!("slo/{service}/{color}/{}", self.id))
    }

    /// Publishes this instance's windows of the watched colors in one transaction, and
    /// deletes the ones it published before that are no longer watched. Best effort: a
    /// failed write is tried again at the next tick.
    pub async fn publish_windows(&self, windows: Vec<(String, Color, Window)>) {
        let Ok(mut client) = self.connected() else {
            return;
        };
        let lease = self.lease.load(std::sync::atomic::Ordering::Relaxed);
        let mut ops = Vec::new();
        let mut now_published = HashSet::new();
        for (service, color, window) in windows {
            let key = self.window_key(&service, color);
            let value = Published {
                service,
                color,
                instance: self.id.clone(),
                window,
            };
            let value = serde_json::to_vec(&value).expect("a window serialises");
            ops.push(TxnOp::put(
                key.clone(),
                value,
                (lease != 0).then(|| PutOptions::new().with_lease(lease)),
            ));
            now_published.insert(key);
        }
        let gone: Vec<String> = self
            .windows
            .published
            .lock()
            .unwrap()
            .difference(&now_published)
            .cloned()
            .collect();
        for key in &gone {
            ops.push(TxnOp::delete(key.clone(), None));
        }
        if ops.is_empty() {
            return;
        }
        match tokio::time::timeout(CALL_TIMEOUT, client.txn(Txn::new().and_then(ops))).await {
            Ok(Ok(_)) => *self.windows.published.lock().unwrap() = now_published,
            Ok(Err(e)) => tracing::debug!("publishing SLO windows: {e}"),
            Err(_) => tracing::debug!("publishing SLO windows: timed out"),
        }
    }

    /// The windows of `service`'s `color` that the other live instances published lately,
    /// added up (the caller adds its own).
    pub fn site_window(&self, service: &str, color: Color) -> Window {
        let mut sum = Window::default();
        let remote = self.windows.remote.lock().unwrap();
        for (s, c, w, at) in remote.values() {
            if s == service && *c == color && at.elapsed() < FRESH_FOR {
                sum.merge(w);
            }
        }
        sum
    }

    /// A `slo/` key changed (from the watch, or the first read of a session).
    pub(super) fn on_window(&self, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut remote = self.windows.remote.lock().unwrap();
        match value.map(serde_json::from_slice::<Published>) {
            Some(Ok(p)) if p.instance != self.id => {
                remote.insert(key, (p.service, p.color, p.window, Instant::now()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(%key, "not an SLO window: {e}"),
            None => {
                remote.remove(&key);
            }
        }
    }
}

//! The reads: status and history. Neither takes the commit lock: status reads the published
//! snapshot (plus the alarms), history reads the store.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{ControlError, Controller};
use crate::api::{BackendStatus, CanaryStatus, HistoryResponse, ServiceStatus, StatusResponse};
use crate::persist::etcd::EtcdStore;
use crate::runtime::snapshot::Snapshot;

fn store_health(site: &EtcdStore) -> &'static str {
    if site.is_up() {
        "ok"
    } else {
        "unreachable"
    }
}

impl Controller {
    pub fn status(&self) -> StatusResponse {
        let mut st = status_of(&self.shared.snapshot.load());
        for (service, alarm) in self.alarms.lock().unwrap().iter() {
            if let Some(s) = st.services.get_mut(service) {
                s.alarm = Some(alarm.clone());
            }
        }
        if let Some(site) = &self.site {
            st.store = Some(store_health(site).to_string());
            st.instances = site.instances().to_vec();
        }
        st
    }

    /// `"ok"` / `"unreachable"` with etcd, `"file"` with the file store: for `/health`.
    pub fn store_health(&self) -> &'static str {
        self.site.as_ref().map_or("file", |s| store_health(s))
    }

    /// The newest `limit` events, oldest first.
    pub async fn history(&self, limit: usize) -> Result<HistoryResponse, ControlError> {
        Ok(HistoryResponse {
            events: self.store.history(limit).await?,
        })
    }
}

fn status_of(snap: &Snapshot) -> StatusResponse {
    let mut services = BTreeMap::new();
    for svc in &snap.services {
        let mut backends = BTreeMap::new();
        let mut inflight = BTreeMap::new();
        let mut upgraded = BTreeMap::new();
        let mut unresolved = BTreeMap::new();
        for pool in &svc.pools {
            let label = pool.color_label.to_string();
            backends.insert(
                label.clone(),
                pool.backends
                    .iter()
                    .map(|b| BackendStatus {
                        addr: b.addr_text.clone(),
                        name: b.name.clone(),
                        healthy: b.is_healthy(),
                    })
                    .collect(),
            );
            inflight.insert(
                label.clone(),
                pool.load.inflight.load(Ordering::Relaxed).max(0),
            );
            if !pool.unresolved.is_empty() {
                unresolved.insert(label.clone(), pool.unresolved.clone());
            }
            upgraded.insert(label, pool.load.upgraded.load(Ordering::Relaxed).max(0));
        }
        let r = svc.release.as_ref();
        services.insert(
            svc.name.clone(),
            ServiceStatus {
                releasable: r.is_some(),
                active: r.map(|r| r.active),
                previous: r.and_then(|r| r.previous),
                canary: r.and_then(|r| {
                    r.canary.as_ref().map(|c| CanaryStatus {
                        color: c.color,
                        weight: c.weight,
                    })
                }),
                backends,
                inflight,
                upgraded,
                unresolved,
                alarm: None,
            },
        );
    }
    StatusResponse {
        services,
        store: None,
        instances: Vec::new(),
    }
}

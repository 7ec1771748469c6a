//! Several instances, one site (`store = "etcd"`): applying what other instances commit, and
//! telling how far a release got.
//!
//! `persist::etcd::EtcdStore::run` follows the site's state in etcd and hands every newer
//! committed state to [`Controller::apply_committed`], which publishes it through the same
//! commit path as a local release (under the one lock, snapshot built aside, one swap), but
//! without writing it again. Leadership (one instance running canary steps, the SLO watch and
//! ACME for the site) is not built yet: the instance that takes a release runs its watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::Controller;
use crate::api::InstancesApplied;
use crate::persist::etcd::Committed;
use crate::runtime::metrics;

/// How long a release waits for the other instances to apply it before answering.
const APPLIED_WAIT: Duration = Duration::from_secs(2);

impl Controller {
    /// Publishes a state another instance committed (or this one's, seen again after a
    /// reconnect): newer than what this instance serves, or ignored.
    pub async fn apply_committed(&self, committed: Committed) {
        let Some(site) = &self.site else { return };
        let mut inner = self.inner.lock().await;
        if committed.revision <= site.applied() {
            return;
        }
        // Backend names new to this instance (another instance's `backends` command) are
        // looked up first, so the state is served with them.
        let names = super::commit::names_of(inner.config(), &committed.state);
        let dns = inner.config().dns.clone();
        self.resolve_new(&mut inner, &names, &dns).await;
        match self.publish_committed(&mut inner, committed.state.clone()) {
            Ok(()) => {
                site.set_applied(&committed.state, committed.revision).await;
                tracing::info!(
                    revision = committed.revision,
                    "applied the site's release state"
                );
            }
            Err(e) => tracing::error!(
                revision = committed.revision,
                "cannot apply the site's release state: {e}; keeping the current one"
            ),
        }
    }

    /// Sets the site's gauges (store up, leader, applied revision) from the store: before
    /// each scrape, and every 250 ms.
    pub fn export_site_gauges(&self) {
        if let Some(site) = &self.site {
            let m = metrics::global();
            m.store_up.set(i64::from(site.is_up()));
            m.leader.set(i64::from(site.is_leader()));
            m.applied_revision.set(site.applied());
        }
    }

    /// With etcd: how many live instances serve at least the revision this instance serves,
    /// waiting up to 2 s for them.
    pub(super) async fn instances_applied(&self) -> Option<InstancesApplied> {
        let site = self.site.as_ref()?;
        let target = site.applied();
        let deadline = Instant::now() + APPLIED_WAIT;
        loop {
            let list = site.instances();
            let applied = list.iter().filter(|i| i.applied_revision >= target).count();
            let total = list.len().max(1);
            if applied >= total || Instant::now() >= deadline {
                return Some(InstancesApplied {
                    applied: applied.max(1),
                    total,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The background service that keeps an instance in its site.
pub struct SiteService(pub Arc<Controller>);

#[async_trait]
impl BackgroundService for SiteService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(site) = self.0.site.clone() else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Committed>(16);
        let follower = tokio::spawn(site.clone().run(tx));
        // The store knows its state; the metrics are this layer's to set.
        let mut gauges = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(committed) => self.0.apply_committed(committed).await,
                    None => break,
                },
                _ = gauges.tick() => self.0.export_site_gauges(),
                _ = shutdown.changed() => break,
            }
        }
        follower.abort();
    }
}

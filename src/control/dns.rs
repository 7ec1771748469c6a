//! Backend names (`[dns]`): looked up at start, again every `refresh_s`, and at once when a
//! reload, a `backends` command or a state from another instance brings a name never seen.
//! What a lookup finds is taken under the commit lock and published through the commit
//! path's [`Controller::publish_resolved`]; the lookups themselves run outside the lock,
//! except those for new names, which the change that brings them waits for (bounded by
//! `runtime::dns::LOOKUP_TIMEOUT`) so that it publishes pools that already hold them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::commit::Inner;
use super::Controller;
use crate::core::config::{BackendName, DnsConfig};
use crate::runtime::dns::Resolver;

impl Controller {
    /// One refresh: looks every backend name up (outside the lock), then takes the results
    /// under it. Returns how long to wait before the next one (`[dns] refresh_s`).
    async fn refresh_dns(&self) -> Duration {
        let (names, dns) = {
            let inner = self.inner.lock().await;
            (inner.names(), inner.config().dns.clone())
        };
        if !names.is_empty() {
            let names: Vec<BackendName> = names.into_iter().collect();
            let found = Resolver::new(&dns).lookup(&names).await;
            let mut inner = self.inner.lock().await;
            self.publish_resolved(&mut inner, found);
        }
        dns.refresh
    }

    /// Looks up the names of `names` that never resolved, with `dns` (the config about to be
    /// published), and keeps what it finds for the next build. Publishes nothing: the caller
    /// commits next.
    pub(super) async fn resolve_new(
        &self,
        inner: &mut Inner,
        names: &BTreeSet<BackendName>,
        dns: &DnsConfig,
    ) {
        let missing = inner.unresolved(names);
        if missing.is_empty() {
            return;
        }
        let found = Resolver::new(dns).lookup(&missing).await;
        inner.take_found(found);
    }
}

/// Called once, after the first round of lookups (whatever it found).
pub type FirstRound = Box<dyn FnOnce() + Send>;

/// The background service that refreshes backend names.
pub struct DnsService {
    pub controller: Arc<Controller>,
    /// `server.rs` releases the `dns` part of readiness here: `/health` answers 200 once the
    /// names were looked up once, so a started instance does not answer 502 for pools whose
    /// names it has not looked up yet. A name that does not resolve does not hold it.
    pub first_round: Mutex<Option<FirstRound>>,
}

#[async_trait]
impl BackgroundService for DnsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut first = self.first_round.lock().unwrap().take();
        loop {
            let wait = self.controller.refresh_dns().await;
            if let Some(done) = first.take() {
                done();
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

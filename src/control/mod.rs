//! The release controller: owns the release state, runs smoke checks, persists, and
//! publishes routing snapshots.
//!
//! - `commit` — the one commit lock and the one path every change takes: build the new
//!   snapshot aside → persist → swap → record (its doc tells the rules).
//! - the verbs, each computing a new state under that lock: `release` (switch, rollback),
//!   `canary` (canary, promote, abort), `backends`, `reload`; `certs` (renewals, which change
//!   no state).
//! - `status` — the reads: status and history, lock-free.
//! - `smoke` — the smoke checks; `watch` — the SLO watch and the canary driver.
//! - `dns` — looking backend names up again every `[dns] refresh_s`.
//! - `error` — [`ControlError`], the one error type; `admin` maps it to HTTP statuses.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

mod backends;
mod canary;
mod certs;
mod commit;
mod dns;
mod error;
mod release;
mod reload;
mod site;
mod smoke;
mod status;
mod watch;

pub use dns::{DnsService, FirstRound};
pub use error::ControlError;
pub use site::SiteService;
pub use watch::WatchService;

use commit::Inner;
use watch::Watch;

use crate::core::config::{Config, StoreConfig};
use crate::persist::etcd::EtcdStore;
use crate::persist::store::{FileStore, StateStore};
use crate::runtime::shared::Shared;
use crate::runtime::snapshot::{self, Retained};
use crate::tls::CertManager;

pub struct Controller {
    shared: Arc<Shared>,
    /// Set once at start when TLS is configured.
    certs: OnceLock<Option<Arc<CertManager>>>,
    store: Arc<dyn StateStore>,
    /// With `store = "etcd"`: the site this instance belongs to.
    site: Option<Arc<EtcdStore>>,
    /// The commit lock (see `commit`): held from reading the state to publishing the new one,
    /// smoke checks included. Released before waiting for a drain.
    inner: tokio::sync::Mutex<Inner>,
    client: reqwest::Client,
    /// service → an alarm the controller raised and could not act on (shown in status).
    alarms: std::sync::Mutex<BTreeMap<String, String>>,
    /// The second (`slo::now_s`) this follower last published its SLO windows.
    windows_published_at: std::sync::atomic::AtomicU64,
}

impl Controller {
    /// Opens the file store in `state.dir` (creating the directory) and starts from it.
    pub fn open(config: Config) -> Result<Arc<Controller>, ControlError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| ControlError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let cache = FileStore::new(&config.state_dir);
        match &config.store {
            StoreConfig::File => Self::with_store(config, Arc::new(cache)),
            StoreConfig::Etcd(etcd) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "switchyard".into());
                let address = config.listen.admin.to_string();
                let id = format!("{host}:{}", config.listen.admin.port());
                let site = Arc::new(EtcdStore::new(etcd.clone(), cache, id, address));
                Self::start_from(config, site.clone(), Some(site))
            }
        }
    }

    /// Loads the persisted state from `store` (refusing to start on a broken one) and builds
    /// the first snapshot from it.
    pub fn with_store(
        config: Config,
        store: Arc<dyn StateStore>,
    ) -> Result<Arc<Controller>, ControlError> {
        Self::start_from(config, store, None)
    }

    fn start_from(
        config: Config,
        store: Arc<dyn StateStore>,
        site: Option<Arc<EtcdStore>>,
    ) -> Result<Arc<Controller>, ControlError> {
        let config = Arc::new(config);
        let state = store.load()?.unwrap_or_default();
        let overrides = commit::parse_overrides(&state)
            .map_err(|e| ControlError::Invalid(format!("{}: {e}", store.location())))?;
        let retained = Retained::default();
        // Backend names have not been looked up yet: their pools start empty, and the DNS
        // service's first round (before readiness) fills them.
        let snap = snapshot::build(
            config.clone(),
            &state.releases,
            &overrides,
            &Default::default(),
            &retained,
        );
        let shared = Shared::new(snap, retained);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ControlError::HttpClient)?;
        let mut watches = Vec::new();
        for (name, r) in &state.releases.services {
            if config.service(name).is_some_and(|s| s.releasable()) {
                tracing::info!(service = %name, active = %r.active, "release state restored");
            }
            // A canary interrupted by a restart resumes where it stood: same weight, a fresh
            // interval and an empty SLO window (the figures lived in memory).
            if let Some(c) = &r.canary {
                tracing::info!(service = %name, color = %c.color, weight = c.weight, "resuming the canary");
                watches.push(Watch::running_canary(name, c));
            }
        }
        Ok(Arc::new(Controller {
            shared,
            certs: OnceLock::new(),
            store,
            site,
            inner: tokio::sync::Mutex::new(Inner::new(config, state, watches)),
            client,
            alarms: std::sync::Mutex::new(BTreeMap::new()),
            windows_published_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// The services a release acts on: the named ones, or every releasable one.
fn targets(config: &Config, requested: &[String]) -> Result<Vec<String>, ControlError> {
    if requested.is_empty() {
        let all: Vec<String> = config
            .services
            .values()
            .filter(|s| s.releasable())
            .map(|s| s.name.clone())
            .collect();
        if all.is_empty() {
            return Err(ControlError::NoReleasableService);
        }
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in requested {
        match config.service(name) {
            None => {
                return Err(ControlError::NotFound {
                    service: name.clone(),
                })
            }
            Some(s) if !s.releasable() => {
                return Err(ControlError::NotReleasable {
                    service: name.clone(),
                })
            }
            Some(_) => {
                if !out.contains(name) {
                    out.push(name.clone())
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

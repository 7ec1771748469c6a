//! The etcd store: release state, backend overrides and history shared by every instance of
//! a site (the instances with the same `etcd_prefix`), and the registry of live instances.
//!
//! Keys under the prefix:
//! - `state` — the `PersistedState` as JSON. A commit is one transaction conditioned on the
//!   state key's revision this instance last applied (`mod_revision == applied`, or "absent"
//!   for the first), so two instances committing from the same state cannot both win: the
//!   second gets `StoreError::Conflict` and changes nothing.
//! - `history/<unix nanos>-<instance>` — one event each; the newest `HISTORY_KEEP` are kept.
//! - `instances/<id>` — each instance's id, address and applied revision, under a lease of
//!   `etcd_lease_s`, so an instance that dies leaves the list when its lease expires.
//!
//! `state.dir` keeps a local cache of the last applied state: an instance that starts while
//! etcd is down serves it (never a default blue), and catches up once etcd answers.
//!
//! [`EtcdStore::run`] keeps the connection: it (re)connects with backoff, registers the
//! instance, reads the current state and then follows the watch, handing every state
//! committed by anyone to the controller over a channel. While etcd is unreachable, `up` is
//! false: releases are refused (the controller maps `Unavailable` to 503) and traffic keeps
//! the last applied state.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::store::{FileStore, PersistedState, StateStore, StoreError};
use crate::api::{HistoryEvent, InstanceStatus};
use crate::core::config::EtcdConfig;

/// History events kept in etcd (the oldest go beyond this).
const HISTORY_KEEP: usize = 10_000;
/// How long one etcd call may take before the store counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A state committed to the site, as the watch delivers it.
pub struct Committed {
    pub state: PersistedState,
    pub revision: i64,
}

pub struct EtcdStore {
    cfg: EtcdConfig,
    cache: FileStore,
    /// This instance in the registry.
    id: String,
    address: String,
    client: ArcSwap<Option<Client>>,
    /// The state key's revision this instance serves (0: none yet).
    applied: AtomicI64,
    up: AtomicBool,
    instances: ArcSwap<Vec<InstanceStatus>>,
    lease: AtomicI64,
}

impl EtcdStore {
    pub fn new(cfg: EtcdConfig, cache: FileStore, id: String, address: String) -> EtcdStore {
        EtcdStore {
            cfg,
            cache,
            id,
            address,
            client: ArcSwap::from_pointee(None),
            applied: AtomicI64::new(0),
            up: AtomicBool::new(false),
            instances: ArcSwap::from_pointee(Vec::new()),
            lease: AtomicI64::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether etcd answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The revision of the state this instance serves.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The live instances of the site, as last read from the registry.
    pub fn instances(&self) -> Arc<Vec<InstanceStatus>> {
        self.instances.load_full()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.cfg.prefix)
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> StoreError {
        self.up.store(false, Ordering::Relaxed);
        StoreError::Unavailable {
            endpoints: self.cfg.endpoints.join(", "),
            message: message.to_string(),
        }
    }

    fn connected(&self) -> Result<Client, StoreError> {
        match &**self.client.load() {
            Some(c) if self.is_up() => Ok(c.clone()),
            _ => Err(self.unavailable("not connected")),
        }
    }

    /// Records that this instance now serves `revision`: the local cache, and the registry
    /// (best effort — the next apply or keep-alive round repairs a missed write).
    pub async fn set_applied(&self, state: &PersistedState, revision: i64) {
        self.applied.store(revision, Ordering::Release);
        if let Err(e) = self.cache.save(state).await {
            tracing::warn!("local state cache: {e}");
        }
        let _ = self.register().await;
    }

    async fn register(&self) -> Result<(), StoreError> {
        let mut client = self.connected()?;
        let lease = self.lease.load(Ordering::Relaxed);
        let me = InstanceStatus {
            id: self.id.clone(),
            address: self.address.clone(),
            applied_revision: self.applied(),
            leader: false,
        };
        let value = serde_json::to_vec(&me).expect("an instance serialises");
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        tokio::time::timeout(
            CALL_TIMEOUT,
            client.put(self.key(&format!("instances/{}", self.id)), value, opts),
        )
        .await
        .map_err(|_| self.unavailable("timed out"))?
        .map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    async fn refresh_instances(&self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let resp = client
            .get(
                self.key("instances/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let list: Vec<InstanceStatus> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        self.instances.store(Arc::new(list));
        Ok(())
    }

    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let (Some(user), Some(file)) = (&self.cfg.user, &self.cfg.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| etcd_client::Error::InvalidArgs(format!("{}: {e}", file.display())))?;
            opts = opts.with_user(user.clone(), password.trim().to_string());
        }
        Client::connect(self.cfg.endpoints.clone(), Some(opts)).await
    }

    /// Keeps this instance connected to the site until the process ends: connects (with
    /// backoff), registers, catches up, follows the watch. Every state committed to the site
    /// goes to `apply` (the controller), newer than what this instance serves.
    pub async fn run(self: Arc<Self>, apply: mpsc::Sender<Committed>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session(&apply).await {
                Ok(()) => return,
                Err(e) => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!("etcd unreachable: {e}; serving the last applied state");
                    } else {
                        tracing::debug!("etcd still unreachable: {e}");
                    }
                }
            }
            crate::runtime::metrics::global().store_up.set(0);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One connected session; returns an error when the connection is lost.
    async fn session(&self, apply: &mpsc::Sender<Committed>) -> Result<(), etcd_client::Error> {
        let mut client = self.connect().await?;
        let lease_s = self.cfg.lease.as_secs().max(1) as i64;
        let lease = client.lease_grant(lease_s, None).await?.id();
        self.lease.store(lease, Ordering::Relaxed);
        let (mut keeper, mut keep_stream) = client.lease_keep_alive(lease).await?;
        self.client.store(Arc::new(Some(client.clone())));

        // Catch up with the site's state (or seed it from this instance's cache).
        let state_key = self.key("state");
        let resp = client.get(state_key.clone(), None).await?;
        let mut start = resp.header().map_or(0, |h| h.revision());
        match resp.kvs().first() {
            Some(kv) => {
                let revision = kv.mod_revision();
                if revision != self.applied() {
                    match serde_json::from_slice::<PersistedState>(kv.value()) {
                        Ok(state) => {
                            let _ = apply.send(Committed { state, revision }).await;
                        }
                        Err(e) => tracing::error!("{state_key} in etcd is not a valid state: {e}"),
                    }
                }
            }
            None => {
                // The first instance of a site seeds it with what it serves.
                let local = self.cache.load().ok().flatten().unwrap_or_default();
                let value = serde_json::to_vec(&local).expect("a state serialises");
                let txn = Txn::new()
                    .when([Compare::version(state_key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(state_key.clone(), value, None)]);
                let r = client.txn(txn).await?;
                if r.succeeded() {
                    let revision = r.header().map_or(0, |h| h.revision());
                    start = revision;
                    self.applied.store(revision, Ordering::Release);
                    tracing::info!(revision, "seeded the site's release state in etcd");
                }
            }
        }
        self.up.store(true, Ordering::Relaxed);
        let m = crate::runtime::metrics::global();
        m.store_up.set(1);
        self.register()
            .await
            .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
        self.refresh_instances(&mut client).await?;
        tracing::info!(id = %self.id, endpoints = ?self.cfg.endpoints, "connected to etcd");

        let (_watcher, mut stream) = client
            .watch(
                self.cfg.prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(start + 1),
                ),
            )
            .await?;
        let mut keep_every = tokio::time::interval(self.cfg.lease / 3);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(resp) = msg? else {
                        return Err(etcd_client::Error::WatchError("the watch ended".into()));
                    };
                    let mut instances_changed = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        if kv.key() == state_key.as_bytes() && ev.event_type() == EventType::Put {
                            let revision = kv.mod_revision();
                            if revision <= self.applied() {
                                continue;
                            }
                            match serde_json::from_slice::<PersistedState>(kv.value()) {
                                Ok(state) => {
                                    let _ = apply.send(Committed { state, revision }).await;
                                }
                                Err(e) => tracing::error!("{state_key} in etcd is not a valid state: {e}"),
                            }
                        } else if kv.key().starts_with(self.key("instances/").as_bytes()) {
                            instances_changed = true;
                        }
                    }
                    if instances_changed {
                        self.refresh_instances(&mut client).await?;
                    }
                }
                _ = keep_every.tick() => {
                    keeper.keep_alive().await?;
                }
                ka = keep_stream.message() => {
                    match ka? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => {
                            // The lease expired (etcd was away longer than etcd_lease_s):
                            // start a new session, which registers again.
                            return Err(etcd_client::Error::LeaseKeepAliveError("lease expired".into()));
                        }
                    }
                }
            }
        }
    }

    async fn history_keep_bounded(&self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let prefix = self.key("history/");
        let resp = client
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_count_only(),
                ),
            )
            .await?;
        let count = resp.count() as usize;
        if count <= HISTORY_KEEP + HISTORY_KEEP / 10 {
            return Ok(());
        }
        let excess = (count - HISTORY_KEEP) as i64;
        let old = client
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Key, SortOrder::Ascend)
                        .with_limit(excess),
                ),
            )
            .await?;
        for kv in old.kvs() {
            client.delete(kv.key(), None).await?;
        }
        Ok(())
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    fn location(&self) -> String {
        format!(
            "etcd {} {}state",
            self.cfg.endpoints.join(","),
            self.cfg.prefix
        )
    }

    /// At start: the local cache of the last applied state (etcd is read once connected).
    fn load(&self) -> Result<Option<PersistedState>, StoreError> {
        self.cache.load()
    }

    async fn save(&self, state: &PersistedState) -> Result<(), StoreError> {
        let mut client = self.connected()?;
        let key = self.key("state");
        let applied = self.applied();
        let cond = if applied == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, applied)
        };
        let value = serde_json::to_vec(state).expect("a state serialises");
        let txn = Txn::new()
            .when([cond])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.txn(txn))
            .await
            .map_err(|_| self.unavailable("timed out"))?
            .map_err(|e| self.unavailable(e))?;
        if !resp.succeeded() {
            let current = resp.header().map_or(0, |h| h.revision());
            return Err(StoreError::Conflict { current });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.set_applied(state, revision).await;
        crate::runtime::metrics::global()
            .applied_revision
            .set(revision);
        Ok(())
    }

    async fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        let mut client = self.connected()?;
        let key = self.key(&format!("history/{:024}-{}", unix_nanos(), self.id));
        let value = serde_json::to_vec(event).expect("an event serialises");
        tokio::time::timeout(CALL_TIMEOUT, client.put(key, value, None))
            .await
            .map_err(|_| self.unavailable("timed out"))?
            .map_err(|e| self.unavailable(e))?;
        if let Err(e) = self.history_keep_bounded(&mut client).await {
            tracing::debug!("history trim: {e}");
        }
        Ok(())
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError> {
        let mut client = self.connected()?;
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.get(self.key("history/"), Some(opts)))
            .await
            .map_err(|_| self.unavailable("timed out"))?
            .map_err(|e| self.unavailable(e))?;
        let mut events: Vec<HistoryEvent> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        events.reverse();
        Ok(events)
    }
}

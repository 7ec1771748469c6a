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

mod certs;
mod windows;

pub use certs::{PemPair, SiteCertSink};

use super::store::{FileStore, PersistedState, StateStore, StoreError, STATE_VERSION};
use crate::api::{HistoryEvent, InstanceStatus};
use crate::core::config::EtcdConfig;

/// History events kept in etcd (the oldest go beyond this).
const HISTORY_KEEP: usize = 10_000;
/// How long one etcd call may take before the store counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A release's transaction: attempts, and the time each may take.
const TXN_ATTEMPTS: usize = 3;
/// How long a release waits for a lost session to come back before it is refused.
const RECONNECT_WAIT: Duration = Duration::from_secs(4);
const TXN_TIMEOUT: Duration = Duration::from_millis(1000);

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
    /// Holds the site's `leader` key under this instance's lease.
    leader: AtomicBool,
    /// Where the next connection attempt starts in `etcd_endpoints`.
    next_endpoint: std::sync::atomic::AtomicUsize,
    /// The SLO windows of the site's other instances (see `windows`).
    windows: windows::SiteWindows,
    /// Where the site's certificates and challenge answers go (see `certs`).
    cert_sink: std::sync::OnceLock<Arc<dyn SiteCertSink>>,
    /// A state this instance committed, to cache and register once it serves it.
    pending_cache: std::sync::Mutex<Option<(PersistedState, i64)>>,
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
            leader: AtomicBool::new(false),
            next_endpoint: std::sync::atomic::AtomicUsize::new(0),
            windows: windows::SiteWindows::default(),
            cert_sink: std::sync::OnceLock::new(),
            pending_cache: std::sync::Mutex::new(None),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether etcd answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether this instance leads the site. It stops counting itself leader as soon as its
    /// session with etcd is lost, before its lease (and so the `leader` key) can expire and
    /// another instance take over.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed) && self.is_up()
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

    /// One etcd call, bounded by `CALL_TIMEOUT`; a failure counts etcd as unreachable.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| self.unavailable("timed out"))?
            .map_err(|e| self.unavailable(e))
    }

    /// The fencing of a leader's write: the `leader` key still names this instance under
    /// its current lease (so a leader that lost it cannot write after another took over).
    fn still_leader(&self) -> [Compare; 2] {
        let key = self.key("leader");
        let lease = self.lease.load(Ordering::Relaxed);
        [
            Compare::value(key.clone(), CompareOp::Equal, self.id.clone()),
            Compare::lease(key, CompareOp::Equal, lease),
        ]
    }

    /// Waits up to `RECONNECT_WAIT` for a session (true when there is one).
    pub async fn wait_connected(&self) -> bool {
        self.connected_soon().await.is_ok()
    }

    /// The client, waiting up to `RECONNECT_WAIT` for a session being re-established (a
    /// member that died takes its connections with it; the next one is a moment away).
    async fn connected_soon(&self) -> Result<Client, StoreError> {
        let deadline = tokio::time::Instant::now() + RECONNECT_WAIT;
        loop {
            if let Some(c) = &**self.client.load() {
                if self.is_up() {
                    return Ok(c.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable("not connected"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Records that this instance now serves `revision`: the local cache, and the registry
    /// (best effort — the next apply or keep-alive round repairs a missed write).
    pub async fn set_applied(&self, state: &PersistedState, revision: i64) {
        self.applied.store(revision, Ordering::Release);
        // A site seeded by an instance before the fix below carries version 0, which a
        // restart would refuse: the cache always says which format it holds.
        let mut cached = state.clone();
        if cached.version == 0 {
            cached.version = STATE_VERSION;
        }
        if let Err(e) = self.cache.save(&cached).await {
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
            leader: self.is_leader(),
        };
        let value = serde_json::to_vec(&me).expect("an instance serialises");
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let key = self.key(&format!("instances/{}", self.id));
        self.call(client.put(key, value, opts)).await?;
        Ok(())
    }

    /// Tries to become the site's leader: the `leader` key, created under this instance's
    /// lease only if absent (etcd's election, reduced to its core).
    async fn campaign(&self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let key = self.key("leader");
        let lease = self.lease.load(Ordering::Relaxed);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.id.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = client.txn(txn).await?;
        let mine = resp.succeeded();
        if mine && !self.leader.swap(true, Ordering::Relaxed) {
            tracing::info!(id = %self.id, "leading the site");
        }
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

    /// A client to one member that answers, trying the endpoints in turn from the one after
    /// the last used. (A client balanced over every endpoint fails a share of its calls
    /// while one member is down; one member at a time, and the next on failure, does not.)
    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        if let Some(tls) = self
            .tls_options()
            .map_err(etcd_client::Error::InvalidArgs)?
        {
            opts = opts.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&self.cfg.user, &self.cfg.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| etcd_client::Error::InvalidArgs(format!("{}: {e}", file.display())))?;
            opts = opts.with_user(user.clone(), password.trim().to_string());
        }
        let n = self.cfg.endpoints.len();
        let first = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        let mut last = etcd_client::Error::InvalidArgs("no etcd endpoint".into());
        for i in 0..n {
            let endpoint = &self.cfg.endpoints[(first + i) % n];
            let attempt = async {
                let mut c = Client::connect([endpoint.as_str()], Some(opts.clone())).await?;
                // A member that cannot reach a quorum answers a linearizable read with an
                // error: only a member of the majority will do.
                c.get(self.key("state"), None).await?;
                Ok::<Client, etcd_client::Error>(c)
            };
            match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(Ok(c)) => {
                    self.next_endpoint.store((first + i) % n, Ordering::Relaxed);
                    return Ok(c);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = etcd_client::Error::InvalidArgs(format!("{endpoint}: timed out")),
            }
        }
        Err(last)
    }

    /// TLS to etcd (`https://` endpoints): the CA that signed the members' certificates, and
    /// this instance's client certificate when etcd asks for one. Read at each connection,
    /// so renewed files are picked up without a restart.
    fn tls_options(&self) -> Result<Option<etcd_client::TlsOptions>, String> {
        let Some(ca) = &self.cfg.ca else {
            return Ok(None);
        };
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.cfg.cert, &self.cfg.key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }

    /// Keeps this instance connected to the site until the process ends: connects (with
    /// backoff), registers, catches up, follows the watch. Every state committed to the site
    /// goes to `apply` (the controller), newer than what this instance serves.
    pub async fn run(self: Arc<Self>, apply: mpsc::Sender<Committed>) {
        let mut backoff = Duration::ZERO;
        loop {
            let was_up = self.is_up();
            let ended = self.session(&apply).await;
            // Fencing: without a session this instance cannot know it still holds the lease.
            self.leader.store(false, Ordering::Relaxed);
            match ended {
                Ok(()) => return,
                Err(e) => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!("etcd unreachable: {e}; serving the last applied state");
                    } else {
                        tracing::debug!("etcd still unreachable: {e}");
                    }
                }
            }
            // A session that was up is re-established at once (another member takes over);
            // failing connects back off up to 2 s.
            backoff = if was_up {
                Duration::ZERO
            } else {
                (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
            };
            tokio::time::sleep(backoff).await;
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

        // Catch up with the site's state (or seed it from this instance's cache) before
        // counting as connected: a release computed from an older state would only conflict.
        let state_key = self.key("state");
        let mut start = 0;
        for _ in 0..3 {
            let resp = client.get(state_key.clone(), None).await?;
            start = resp.header().map_or(0, |h| h.revision());
            if let Some(kv) = resp.kvs().first() {
                let revision = kv.mod_revision();
                if revision != self.applied() {
                    match serde_json::from_slice::<PersistedState>(kv.value()) {
                        Ok(state) => {
                            let _ = apply.send(Committed { state, revision }).await;
                            // The controller applies it under its commit lock.
                            let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
                            while self.applied() < revision
                                && tokio::time::Instant::now() < deadline
                            {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        Err(e) => tracing::error!("{state_key} in etcd is not a valid state: {e}"),
                    }
                }
                break;
            }
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
                break;
            }
            // Another instance seeded it meanwhile: read it again.
        }
        // The site's certificates before campaigning: a new leader must know what the site
        // holds, or it would order again what another leader already got.
        self.read_site_certs(&mut client).await?;
        self.up.store(true, Ordering::Relaxed);
        self.campaign(&mut client).await?;
        self.register()
            .await
            .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
        self.refresh_instances(&mut client).await?;
        let slo_prefix = self.key("slo/");
        let windows = client
            .get(slo_prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        for kv in windows.kvs() {
            self.on_window(kv.key(), Some(kv.value()));
        }
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
                        if self.on_cert_event(ev) {
                            continue;
                        }
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
                        } else if kv.key().starts_with(slo_prefix.as_bytes()) {
                            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                            self.on_window(kv.key(), value);
                        } else if kv.key().starts_with(self.key("instances/").as_bytes()) {
                            instances_changed = true;
                        } else if kv.key() == self.key("leader").as_bytes()
                            && ev.event_type() == EventType::Delete
                        {
                            // The leader's lease expired or it resigned: campaign.
                            self.campaign(&mut client).await?;
                            self.register().await.map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
                        }
                    }
                    if instances_changed {
                        self.refresh_instances(&mut client).await?;
                    }
                }
                _ = keep_every.tick() => {
                    keeper.keep_alive().await?;
                    // A member cut off from its quorum keeps its streams open and silent: a
                    // linearizable read tells. So does a call that failed elsewhere (`up`
                    // cleared): either way, start a new session with a member of the majority.
                    if !self.is_up() {
                        return Err(etcd_client::Error::InvalidArgs("a call failed".into()));
                    }
                    match tokio::time::timeout(CALL_TIMEOUT, client.get(state_key.clone(), None)).await {
                        Ok(r) => { r?; }
                        Err(_) => return Err(etcd_client::Error::InvalidArgs("no quorum: a read timed out".into())),
                    }
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

    /// The release state's transaction: conditioned on the revision this instance applied
    /// (someone else committed meanwhile: `Conflict`), and for a leader's change on the
    /// `leader` key still naming this instance under its current lease (fencing).
    async fn commit_state(
        &self,
        state: &PersistedState,
        as_leader: bool,
    ) -> Result<(), StoreError> {
        let mut client = self.connected_soon().await?;
        let key = self.key("state");
        let applied = self.applied();
        let cond = if applied == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, applied)
        };
        let value = serde_json::to_vec(state).expect("a state serialises");
        let mut conds = vec![cond];
        if as_leader {
            if !self.is_leader() {
                return Err(StoreError::NotLeader);
            }
            conds.extend(self.still_leader());
        }
        let txn = Txn::new()
            .when(conds)
            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        // A member that just died takes the call with it, and the session may not have
        // noticed yet: the session is told to move to another member, and the call is tried
        // again on the new one. An attempt whose outcome is unknown may have committed: a
        // later "conflict" whose current value is exactly ours is that commit.
        let mut last_error = String::new();
        let mut resp = None;
        for attempt in 1..=TXN_ATTEMPTS {
            match tokio::time::timeout(TXN_TIMEOUT, client.txn(txn.clone())).await {
                Ok(Ok(r)) => {
                    resp = Some(r);
                    break;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
            if attempt < TXN_ATTEMPTS {
                tracing::debug!(
                    "a release's transaction failed ({last_error}): trying again on a new session"
                );
                self.up.store(false, Ordering::Relaxed);
                client = self.connected_soon().await?;
            }
        }
        let Some(resp) = resp else {
            return Err(self.unavailable(last_error));
        };
        let revision = if resp.succeeded() {
            resp.header().map_or(0, |h| h.revision())
        } else {
            let ours = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .filter(|kv| kv.value() == value.as_slice())
                    .map(|kv| kv.mod_revision()),
                _ => None,
            });
            match ours {
                Some(rev) if !last_error.is_empty() => rev,
                _ if as_leader && !self.still_leads(&mut client).await => {
                    self.leader.store(false, Ordering::Relaxed);
                    return Err(StoreError::NotLeader);
                }
                _ => {
                    let current = resp.header().map_or(0, |h| h.revision());
                    return Err(StoreError::Conflict { current });
                }
            }
        };
        // Serving it comes first: the cache and the registry follow in `after_publish`.
        self.applied.store(revision, Ordering::Release);
        *self.pending_cache.lock().unwrap() = Some((state.clone(), revision));
        Ok(())
    }

    /// Whether the `leader` key still names this instance under its lease.
    async fn still_leads(&self, client: &mut Client) -> bool {
        let lease = self.lease.load(Ordering::Relaxed);
        match tokio::time::timeout(CALL_TIMEOUT, client.get(self.key("leader"), None)).await {
            Ok(Ok(r)) => r
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == self.id.as_bytes() && kv.lease() == lease),
            _ => false,
        }
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
        self.commit_state(state, false).await
    }

    async fn save_as_leader(&self, state: &PersistedState) -> Result<(), StoreError> {
        self.commit_state(state, true).await
    }

    async fn after_publish(&self) {
        let pending = self.pending_cache.lock().unwrap().take();
        if let Some((state, revision)) = pending {
            // A newer state applied meanwhile (from the watch) wrote its own.
            if self.applied() == revision {
                self.set_applied(&state, revision).await;
            }
        }
    }

    async fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        let mut client = self.connected_soon().await?;
        let key = self.key(&format!("history/{:024}-{}", unix_nanos(), self.id));
        let value = serde_json::to_vec(event).expect("an event serialises");
        self.call(client.put(key, value, None)).await?;
        if let Err(e) = self.history_keep_bounded(&mut client).await {
            tracing::debug!("history trim: {e}");
        }
        Ok(())
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError> {
        let mut client = self.connected_soon().await?;
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let resp = self
            .call(client.get(self.key("history/"), Some(opts)))
            .await?;
        let mut events: Vec<HistoryEvent> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        events.reverse();
        Ok(events)
    }
}

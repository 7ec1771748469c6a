//! The one commit path.
//!
//! **One lock.** Every change of release state, backend overrides or config — the API's
//! switch, rollback, canary, promote, abort, backends and reload, SIGHUP, and the SLO watch's
//! rollbacks and canary steps — holds the controller's `inner` lock from the moment it reads
//! the state until it has published. A switch or canary holds it across its smoke checks, so
//! what it publishes is exactly the backend sets it checked: a `backends` or `reload` sent
//! meanwhile waits and applies after it (and the watch acts right after it). Requests,
//! `status`, `history` and the dry-run `smoke` never take it.
//!
//! **One path.** A verb reads the current config and state from [`Inner`], computes the next
//! ones (a [`Proposal`]) and hands them to [`Controller::commit`]: build the new snapshot
//! aside → persist → swap → record, then the verb answers. `Inner`'s config and state can
//! only be replaced here (their fields are private to this file), and the snapshot is only
//! published here.
//!
//! **Names.** The addresses backend names resolved to (`Inner::resolved`) are under the same
//! lock: a DNS refresh that finds new ones rebuilds the snapshot from the current config and
//! state and publishes it here too ([`Controller::publish_resolved`]), so it never races a
//! release; it writes nothing (addresses are not state) and records no event.
//!
//! Persisting before the swap means a failed write changes nothing (the SPEC lists swap before
//! persist; this order keeps disk and traffic in agreement when the disk fails).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::watch::Watch;
use super::{ControlError, Controller};
use crate::api::HistoryEvent;
use crate::core::color::Color;
use crate::core::config::{BackendName, BackendSpec, Config};
use crate::core::release::{Change, Command, ReleaseState, ServiceRelease};
use crate::persist::store::PersistedState;
use crate::runtime::dns::{Found, Resolved};
use crate::runtime::metrics;
use crate::runtime::snapshot::{self, Overrides, Snapshot};

/// What the commit lock guards.
pub(super) struct Inner {
    config: Arc<Config>,
    state: PersistedState,
    /// Releases under SLO watch and running canaries.
    pub(super) watches: Vec<Watch>,
    /// Set by the watch while it acts as the site's leader (canary steps, rollbacks): its
    /// commits are fenced on the leadership (`StateStore::save_as_leader`).
    pub(super) leader_acting: bool,
    /// What the backend names of the config and the overrides resolved to last.
    resolved: Resolved,
    /// Names whose last lookup failed: their next failures are logged at debug level only.
    failing: BTreeSet<BackendName>,
}

impl Inner {
    pub(super) fn new(config: Arc<Config>, state: PersistedState, watches: Vec<Watch>) -> Inner {
        Inner {
            config,
            state,
            watches,
            leader_acting: false,
            resolved: Resolved::new(),
            failing: BTreeSet::new(),
        }
    }

    /// Takes what lookups of backend names found; true when a name's addresses changed. A
    /// name that resolved gets its new addresses; one whose lookup failed or found nothing
    /// keeps its last ones (none if it never resolved) and counts in
    /// `switchyard_dns_failures_total{name}`.
    pub(super) fn take_found(&mut self, found: Vec<(BackendName, Found)>) -> bool {
        let mut changed = false;
        for (name, result) in found {
            let label = name.to_string();
            let failures = metrics::global().dns_failures.with_label_values(&[&label]);
            let why = match result {
                Ok(mut addrs) if !addrs.is_empty() => {
                    // Servers rotate the order of their records: only the set matters.
                    addrs.sort();
                    addrs.dedup();
                    if self.failing.remove(&name) {
                        tracing::info!(name = %label, "backend name resolves again");
                    }
                    if self.resolved.get(&name) != Some(&addrs) {
                        tracing::info!(name = %label, addresses = %list(&addrs), "backend name resolved");
                        self.resolved.insert(name, addrs);
                        changed = true;
                    }
                    continue;
                }
                Ok(_) => "no address".to_string(),
                Err(e) => e,
            };
            failures.inc();
            let first = self.failing.insert(name.clone());
            match self.resolved.get(&name) {
                Some(last) if first => {
                    tracing::warn!(name = %label, error = %why, keeping = %list(last), "backend name lookup failed: keeping its last addresses")
                }
                None if first => tracing::warn!(
                    name = %label,
                    error = %why,
                    "backend name does not resolve: no backend from it until it does (looked up again every [dns] refresh_s)"
                ),
                _ => {
                    tracing::debug!(name = %label, error = %why, "backend name lookup failed again")
                }
            }
        }
        changed
    }

    /// Every backend name of the config and of the backend overrides.
    pub(super) fn names(&self) -> BTreeSet<BackendName> {
        names_of(&self.config, &self.state)
    }

    /// Every backend name of `config` (one about to replace the current one) and of the
    /// backend overrides.
    pub(super) fn names_with(&self, config: &Config) -> BTreeSet<BackendName> {
        names_of(config, &self.state)
    }

    /// The names of `names` that never resolved.
    pub(super) fn unresolved(&self, names: &BTreeSet<BackendName>) -> Vec<BackendName> {
        names
            .iter()
            .filter(|n| !self.resolved.contains_key(*n))
            .cloned()
            .collect()
    }

    pub(super) fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub(super) fn releases(&self) -> &ReleaseState {
        &self.state.releases
    }

    /// A proposal to start from: the current config and state, nothing moving.
    pub(super) fn propose(&self) -> Proposal {
        Proposal {
            config: self.config.clone(),
            state: self.state.clone(),
            changes: Vec::new(),
        }
    }
}

/// What a verb wants to be true: the next config and state (either may be the current one).
pub(super) struct Proposal {
    pub config: Arc<Config>,
    pub state: PersistedState,
    /// The services whose active color moves (from `ReleaseState::apply`): counted in
    /// `switchyard_switches_total` and logged.
    pub changes: Vec<Change>,
}

/// The history event of a commit, written once it is published.
pub(super) struct Record {
    pub action: &'static str,
    pub services: Vec<String>,
    pub detail: serde_json::Value,
}

impl Controller {
    /// Takes the commit lock.
    ///
    /// With etcd, it first waits (up to a few seconds) for the store's session: a release
    /// must not hold the lock while the store reconnects, since catching up with the site's
    /// state takes the lock too (`apply_committed`, which locks `inner` directly).
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Inner> {
        if let Some(site) = &self.site {
            site.wait_connected().await;
        }
        self.inner.lock().await
    }

    /// Build aside → persist → swap → record. A failure at the first two steps changes
    /// nothing, on disk or in traffic.
    pub(super) async fn commit(
        &self,
        inner: &mut Inner,
        next: Proposal,
        record: Record,
    ) -> Result<(), ControlError> {
        let snap = self.build(next.config.clone(), &next.state, &inner.resolved)?;
        if next.state != inner.state {
            let saved = if inner.leader_acting {
                self.store.save_as_leader(&next.state).await
            } else {
                self.store.save(&next.state).await
            };
            if let Err(e) = saved {
                tracing::error!("{e}");
                for c in &next.changes {
                    metrics::global()
                        .switches
                        .with_label_values(&[&c.service, "failed"])
                        .inc();
                }
                return Err(ControlError::NotSaved(e));
            }
        }
        self.mark_draining(&inner.state.releases, &next.state.releases, &next.config);
        self.shared.publish(snap);
        self.store.after_publish().await;
        inner.config = next.config;
        inner.state = next.state;
        let used = inner.names();
        inner.resolved.retain(|n, _| used.contains(n));
        for c in &next.changes {
            metrics::global()
                .switches
                .with_label_values(&[&c.service, "ok"])
                .inc();
            tracing::info!(service = %c.service, from = %c.from, to = %c.to, action = record.action, "traffic moved");
        }
        self.record(HistoryEvent::now(
            record.action,
            record.services,
            "ok",
            record.detail,
        ))
        .await;
        Ok(())
    }

    /// Publishes a state committed elsewhere (another instance of the site): the same build
    /// aside → swap as `commit`, without writing it again or recording an event (its
    /// author did both).
    pub(super) fn publish_committed(
        &self,
        inner: &mut Inner,
        state: PersistedState,
    ) -> Result<(), ControlError> {
        if state == inner.state {
            return Ok(());
        }
        let snap = self.build(inner.config.clone(), &state, &inner.resolved)?;
        self.mark_draining(&inner.state.releases, &state.releases, &inner.config);
        self.shared.publish(snap);
        let before = std::mem::replace(&mut inner.state, state);
        // Every instance knows the site's running canaries and fresh switches, so whichever
        // leads (now or after a failover) judges and advances them.
        self.follow_watches(inner, &before.releases);
        Ok(())
    }

    /// Commits a new release state (with the `changes` that lead to it); nothing happens — no
    /// write, no event — when it is the current one. The changes are added to the event.
    pub(super) async fn commit_releases(
        &self,
        inner: &mut Inner,
        next: ReleaseState,
        changes: &[Change],
        mut record: Record,
    ) -> Result<(), ControlError> {
        if next == inner.state.releases {
            return Ok(());
        }
        if !changes.is_empty() {
            record.detail["changes"] = json!(changes);
        }
        let mut proposal = inner.propose();
        proposal.state.releases = next;
        proposal.changes = changes.to_vec();
        self.commit(inner, proposal, record).await
    }

    /// Applies a command to the release state and commits the result; the event lists the
    /// command's services (also in its detail).
    pub(super) async fn commit_command(
        &self,
        inner: &mut Inner,
        cmd: &Command,
        action: &'static str,
        mut detail: serde_json::Value,
    ) -> Result<Vec<Change>, ControlError> {
        let (next, changes) = inner.state.releases.apply(cmd)?;
        let services = match cmd {
            Command::Switch { services, .. }
            | Command::Rollback { services }
            | Command::StartCanary { services, .. }
            | Command::NextStep { services }
            | Command::Promote { services }
            | Command::Abort { services } => services.clone(),
        };
        detail["services"] = json!(services);
        let record = Record {
            action,
            services,
            detail,
        };
        self.commit_releases(inner, next, &changes, record).await?;
        Ok(changes)
    }

    /// Takes what a refresh of every backend name found (see [`Inner::take_found`]) and
    /// forgets the names neither the config nor an override uses any more. When a name's
    /// addresses changed, the snapshot of the current config and state is rebuilt and
    /// published: new addresses join their pools, gone ones leave them (requests already on
    /// them finish: they hold the snapshot they started with).
    pub(super) fn publish_resolved(&self, inner: &mut Inner, found: Vec<(BackendName, Found)>) {
        let mut changed = inner.take_found(found);
        let used = inner.names();
        let before = inner.resolved.len();
        inner.resolved.retain(|n, _| used.contains(n));
        inner.failing.retain(|n| used.contains(n));
        changed |= inner.resolved.len() != before;
        if !changed {
            return;
        }
        match self.build(inner.config.clone(), &inner.state, &inner.resolved) {
            Ok(snap) => self.shared.publish(snap),
            Err(e) => tracing::error!("cannot rebuild the routing table after a lookup: {e}"),
        }
    }

    /// Builds the snapshot of a config and state aside (nothing is published).
    fn build(
        &self,
        config: Arc<Config>,
        state: &PersistedState,
        resolved: &Resolved,
    ) -> Result<Snapshot, ControlError> {
        let overrides = parse_overrides(state).map_err(ControlError::Invalid)?;
        Ok(snapshot::build(
            config,
            &state.releases,
            &overrides,
            resolved,
            &self.shared.retained,
        ))
    }

    /// A color that stops receiving new requests starts draining (its upgraded connections
    /// get the service's `drain_timeout_s`); one that receives them again stops draining.
    fn mark_draining(&self, old: &ReleaseState, new: &ReleaseState, config: &Config) {
        let deadline_base = now_ms();
        for (service, next) in &new.services {
            let before = old.get(service);
            if before == *next {
                continue;
            }
            let drain = config
                .service(service)
                .map_or(Duration::ZERO, |s| s.drain_timeout);
            for color in Color::ALL {
                let deadline = if serves(next, color) {
                    Some(0)
                } else if serves(&before, color) {
                    Some(deadline_base + drain.as_millis() as u64)
                } else {
                    None
                };
                if let Some(d) = deadline {
                    self.shared
                        .retained
                        .load(service, color.as_str())
                        .drain_deadline_ms
                        .store(d, Ordering::Relaxed);
                }
            }
        }
    }

    /// Appends an event to the history; a failure is logged, never fatal.
    pub(super) async fn record(&self, event: HistoryEvent) {
        if let Err(e) = self.store.append_history(&event).await {
            tracing::error!("history: {e}");
        }
    }
}

/// Every backend name of a config and of a state's backend overrides (of the config's
/// releasable services: the others are not used).
pub(super) fn names_of(config: &Config, state: &PersistedState) -> BTreeSet<BackendName> {
    let mut names = config.names();
    if let Ok(overrides) = parse_overrides(state) {
        for (service, colors) in &overrides {
            if !config.service(service).is_some_and(|s| s.releasable()) {
                continue;
            }
            for specs in colors.values() {
                names.extend(specs.iter().filter_map(BackendSpec::name).cloned());
            }
        }
    }
    names
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The backend overrides of a state, parsed (names stay names).
pub(super) fn parse_overrides(state: &PersistedState) -> Result<Overrides, String> {
    let mut out = Overrides::new();
    for (service, colors) in &state.overrides {
        for (color, addrs) in colors {
            let parsed = addrs
                .iter()
                .map(|a| BackendSpec::parse(a))
                .collect::<Result<Vec<BackendSpec>, String>>()
                .map_err(|e| format!("override of {service} {color}: {e}"))?;
            out.entry(service.clone())
                .or_default()
                .insert(*color, parsed);
        }
    }
    Ok(out)
}

/// Does `color` receive new requests under this release state?
fn serves(r: &ServiceRelease, color: Color) -> bool {
    r.active == color
        || r.canary
            .as_ref()
            .is_some_and(|c| c.color == color && c.weight > 0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

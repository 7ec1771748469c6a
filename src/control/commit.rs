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
//! Persisting before the swap means a failed write changes nothing (the SPEC lists swap before
//! persist; this order keeps disk and traffic in agreement when the disk fails).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::watch::Watch;
use super::{ControlError, Controller};
use crate::api::HistoryEvent;
use crate::core::color::Color;
use crate::core::config::{resolve_addr, Config};
use crate::core::release::{Change, Command, ReleaseState, ServiceRelease};
use crate::persist::store::PersistedState;
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
}

impl Inner {
    pub(super) fn new(config: Arc<Config>, state: PersistedState, watches: Vec<Watch>) -> Inner {
        Inner {
            config,
            state,
            watches,
            leader_acting: false,
        }
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
        let snap = self.build(next.config.clone(), &next.state)?;
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
        inner.config = next.config;
        inner.state = next.state;
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
        let snap = self.build(inner.config.clone(), &state)?;
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

    /// Builds the snapshot of a config and state aside (nothing is published).
    fn build(&self, config: Arc<Config>, state: &PersistedState) -> Result<Snapshot, ControlError> {
        let overrides = parse_overrides(state).map_err(ControlError::Invalid)?;
        Ok(snapshot::build(
            config,
            &state.releases,
            &overrides,
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

/// The backend overrides of a state, resolved.
pub(super) fn parse_overrides(state: &PersistedState) -> Result<Overrides, String> {
    let mut out = Overrides::new();
    for (service, colors) in &state.overrides {
        for (color, addrs) in colors {
            let parsed = addrs
                .iter()
                .map(|a| resolve_addr(a))
                .collect::<Result<Vec<SocketAddr>, String>>()
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

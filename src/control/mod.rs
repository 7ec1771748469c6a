//! The release controller: owns the release state, runs smoke checks, persists, and
//! publishes routing snapshots.
//!
//! **One commit lock.** Every change of release state, backend overrides or config — the
//! API's switch, rollback, canary, promote, abort, backends and reload, SIGHUP, and the SLO
//! watch's rollbacks and canary steps — holds the one `inner` lock from the moment it reads
//! the state until it has published. A switch or canary holds it across its smoke checks,
//! so what it publishes is exactly the backend sets it checked: a `backends` or `reload`
//! sent meanwhile waits and applies after it (and the watch acts right after it). Requests,
//! `status`, `history` and the dry-run `smoke` never take it.
//!
//! Order of a release: check → build the new snapshot aside → persist → swap → answer.
//! Persisting before the swap means a failed write changes nothing (the SPEC lists swap
//! before persist; this order keeps disk and traffic in agreement when the disk fails).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

pub mod smoke;
mod watch;

pub use watch::{evaluate, Breach, WatchService};
use watch::{Watch, WatchKind};

use crate::api::*;
use crate::core::color::Color;
use crate::core::config::{resolve_addr, Config};
use crate::core::release::{Change, Command, ReleaseState};
use crate::persist::store::{FileStore, PersistedState, StateStore, STATE_VERSION};
use crate::runtime::metrics;
use crate::runtime::shared::Shared;
use crate::runtime::snapshot::{self, Overrides, Retained, Snapshot};
use crate::tls::CertManager;

/// An API error: HTTP status and body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                ..Default::default()
            },
        }
    }
}

struct Inner {
    config: Arc<Config>,
    state: PersistedState,
    /// Releases under SLO watch and running canaries.
    watches: Vec<Watch>,
}

pub struct Controller {
    shared: Arc<Shared>,
    /// Set once at start when TLS is configured.
    certs: std::sync::OnceLock<Option<Arc<CertManager>>>,
    store: Box<dyn StateStore>,
    /// The commit lock (see the module doc): held from reading the state to publishing the
    /// new one, smoke checks included. Released before waiting for a drain.
    inner: tokio::sync::Mutex<Inner>,
    client: reqwest::Client,
    /// service → an alarm the controller raised and could not act on (shown in status).
    alarms: std::sync::Mutex<BTreeMap<String, String>>,
}

fn parse_overrides(state: &PersistedState) -> Result<Overrides, String> {
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
fn serves(r: &crate::core::release::ServiceRelease, color: Color) -> bool {
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

impl Controller {
    /// Loads the persisted state (refusing to start on a broken state file) and builds the
    /// first snapshot from it.
    pub fn open(config: Config) -> anyhow::Result<Arc<Controller>> {
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state.dir {}", config.state_dir.display()))?;
        let store = FileStore::new(&config.state_dir);
        let state = store.load()?.unwrap_or(PersistedState {
            version: STATE_VERSION,
            ..Default::default()
        });
        let overrides = parse_overrides(&state)
            .map_err(|e| anyhow::anyhow!("{}: {e}", store.state_path().display()))?;
        let retained = Retained::default();
        let snap = snapshot::build(config.clone(), &state.releases, &overrides, &retained);
        let shared = Shared::new(snap, retained);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("HTTP client")?;
        let mut watches = Vec::new();
        for (name, r) in &state.releases.services {
            if config.service(name).is_some_and(|s| s.releasable()) {
                tracing::info!(service = %name, active = %r.active, "release state restored");
            }
            // A canary interrupted by a restart resumes where it stood: same weight, a fresh
            // interval and an empty SLO window (the figures lived in memory).
            if let Some(c) = &r.canary {
                tracing::info!(service = %name, color = %c.color, weight = c.weight, "resuming the canary");
                let now = crate::core::slo::now_s();
                watches.push(Watch {
                    services: vec![name.clone()],
                    color: c.color,
                    since: now,
                    kind: WatchKind::Canary {
                        next_step_at: now + c.interval_s,
                        interval_s: c.interval_s,
                    },
                });
            }
        }
        Ok(Arc::new(Controller {
            shared,
            certs: std::sync::OnceLock::new(),
            store: Box::new(store),
            inner: tokio::sync::Mutex::new(Inner {
                config,
                state,
                watches,
            }),
            client,
            alarms: std::sync::Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn set_certs(&self, certs: Option<Arc<CertManager>>) {
        let _ = self.certs.set(certs);
    }

    fn cert_manager(&self) -> Option<&Arc<CertManager>> {
        self.certs.get().and_then(Option::as_ref)
    }

    pub fn certs(&self) -> CertsResponse {
        CertsResponse {
            certs: self.cert_manager().map(|m| m.infos()).unwrap_or_default(),
        }
    }

    pub fn renew_certs(&self, req: RenewRequest) -> Result<RenewResponse, ApiError> {
        let Some(m) = self.cert_manager() else {
            return Err(ApiError::new(
                409,
                "TLS is not configured ([tls] and listen.https)",
            ));
        };
        let hosts = m.force_renew(&req.hosts);
        if hosts.is_empty() {
            return Err(ApiError::new(404, "no such host has a certificate"));
        }
        Ok(RenewResponse { hosts })
    }

    fn build(&self, config: Arc<Config>, state: &PersistedState) -> Result<Snapshot, ApiError> {
        let overrides = parse_overrides(state).map_err(|e| ApiError::new(400, e))?;
        Ok(snapshot::build(
            config,
            &state.releases,
            &overrides,
            &self.shared.retained,
        ))
    }

    fn history_event(&self, event: HistoryEvent) {
        if let Err(e) = self.store.append_history(&event) {
            tracing::error!("history: {e}");
        }
    }

    /// The services a release acts on: the named ones, or every releasable one.
    fn targets(config: &Config, requested: &[String]) -> Result<Vec<String>, ApiError> {
        if requested.is_empty() {
            let all: Vec<String> = config
                .services
                .values()
                .filter(|s| s.releasable())
                .map(|s| s.name.clone())
                .collect();
            if all.is_empty() {
                return Err(ApiError::new(
                    400,
                    "no releasable service (none has blue and green)",
                ));
            }
            return Ok(all);
        }
        let mut out = Vec::new();
        for name in requested {
            match config.service(name) {
                None => return Err(ApiError::new(404, format!("no service `{name}`"))),
                Some(s) if !s.releasable() => {
                    return Err(ApiError::new(
                        400,
                        format!("service `{name}` is not releasable (it has one pool, no colors)"),
                    ))
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

    pub fn status(&self) -> StatusResponse {
        let mut st = status_of(&self.shared.snapshot.load());
        for (service, alarm) in self.alarms.lock().unwrap().iter() {
            if let Some(s) = st.services.get_mut(service) {
                s.alarm = Some(alarm.clone());
            }
        }
        st
    }

    /// Smoke checks of `color` for `services` against the current snapshot's backends, plus
    /// a failure for a pool whose health checks find no healthy backend.
    async fn run_smoke(&self, services: &[String], color: Color) -> Vec<SmokeResult> {
        let snap = self.shared.snapshot.load_full();
        let mut targets = Vec::new();
        let mut results = Vec::new();
        for name in services {
            let Some(svc) = snap.service(name) else {
                continue;
            };
            let Some(pool) = svc.pool(color) else {
                continue;
            };
            if let Some(hc) = &svc.config.health_check {
                if pool.healthy_count() == 0 {
                    results.push(SmokeResult {
                        service: name.clone(),
                        backend: "*".into(),
                        path: hc.path.clone(),
                        expected: "at least one backend passing health checks".into(),
                        got: format!("0 of {} healthy", pool.backends.len()),
                        ok: false,
                    });
                }
            }
            targets.push(smoke::Target {
                service: &svc.name,
                host: &svc.check_host,
                checks: &svc.config.smoke,
                backends: pool.backends.iter().map(|b| b.addr).collect(),
            });
        }
        results.extend(smoke::run(&self.client, &targets).await);
        results
    }

    pub async fn smoke(&self, req: SmokeRequest) -> Result<SmokeResponse, ApiError> {
        let services = {
            let inner = self.inner.lock().await;
            Self::targets(&inner.config, &req.services)?
        };
        let results = self.run_smoke(&services, req.color).await;
        Ok(SmokeResponse {
            passed: results.iter().all(|r| r.ok),
            results,
        })
    }

    /// Refuses a release whose smoke checks failed: counts and records it, and answers 409
    /// with every failure (service, backend, path, expected, got).
    fn refuse_failed_smoke(
        &self,
        action: &str,
        services: &[String],
        color: Color,
        smoke: &[SmokeResult],
        outcome: &str,
    ) -> Result<(), ApiError> {
        let failures: Vec<SmokeResult> = smoke.iter().filter(|r| !r.ok).cloned().collect();
        if failures.is_empty() {
            return Ok(());
        }
        if action == "switch" {
            for s in services {
                metrics::global()
                    .switches
                    .with_label_values(&[s, "refused"])
                    .inc();
            }
        }
        self.history_event(HistoryEvent::now(
            action,
            services.to_vec(),
            "refused",
            json!({ "color": color, "failures": failures }),
        ));
        Err(ApiError {
            status: 409,
            body: ErrorBody {
                error: format!(
                    "{} smoke check(s) failed on {color}: {outcome}",
                    failures.len()
                ),
                failures,
                ..Default::default()
            },
        })
    }

    pub async fn switch(&self, req: SwitchRequest) -> Result<ReleaseResponse, ApiError> {
        // Held across the smoke checks: nothing can change the backends, the config or the
        // release state between the checks and the publish.
        let mut inner = self.inner.lock().await;
        let services = Self::targets(&inner.config, &req.services)?;
        let (next, changes) = inner
            .state
            .releases
            .apply(&Command::Switch {
                services,
                to: req.color,
            })
            .map_err(|r| ApiError::new(409, r.to_string()))?;
        let moving: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        let smoke = if req.skip_smoke || moving.is_empty() {
            Vec::new()
        } else {
            self.run_smoke(&moving, req.color).await
        };
        self.refuse_failed_smoke("switch", &moving, req.color, &smoke, "nothing changed")?;
        self.commit(
            &mut inner,
            next,
            &changes,
            "switch",
            json!({ "to": req.color, "skip_smoke": req.skip_smoke }),
        )?;
        if !moving.is_empty() {
            self.watch_after_switch(&mut inner, &moving, req.color);
            let mut alarms = self.alarms.lock().unwrap();
            for s in &moving {
                alarms.remove(s);
            }
        }
        drop(inner);
        let drain = if req.wait_drain {
            Some(self.wait_drain(&changes).await)
        } else {
            None
        };
        Ok(ReleaseResponse {
            services: changes.iter().map(|c| c.service.clone()).collect(),
            changed: changes,
            smoke,
            drain,
            status: self.status(),
        })
    }

    pub async fn rollback(&self, req: RollbackRequest) -> Result<ReleaseResponse, ApiError> {
        let mut inner = self.inner.lock().await;
        let mut services = Self::targets(&inner.config, &req.services)?;
        if req.services.is_empty() {
            // Without --service: every service that has something to roll back to.
            let releases = &inner.state.releases;
            services.retain(|s| releases.get(s).previous.is_some());
            if services.is_empty() {
                return Err(ApiError::new(
                    409,
                    "nothing to roll back to: no service has a previous color",
                ));
            }
        }
        let (next, changes) = inner
            .state
            .releases
            .apply(&Command::Rollback { services })
            .map_err(|r| ApiError::new(409, r.to_string()))?;
        self.commit(
            &mut inner,
            next,
            &changes,
            "rollback",
            json!({ "reason": "manual" }),
        )?;
        let moved: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        Self::unwatch(&mut inner, &moved);
        drop(inner);
        let drain = if req.wait_drain {
            Some(self.wait_drain(&changes).await)
        } else {
            None
        };
        Ok(ReleaseResponse {
            services: changes.iter().map(|c| c.service.clone()).collect(),
            changed: changes,
            smoke: Vec::new(),
            drain,
            status: self.status(),
        })
    }

    /// Persists `next`, then publishes it: a failed write leaves disk and traffic unchanged.
    fn commit(
        &self,
        inner: &mut Inner,
        next: ReleaseState,
        changes: &[Change],
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        if next == inner.state.releases {
            return Ok(());
        }
        let mut state = inner.state.clone();
        state.releases = next;
        let snap = self.build(inner.config.clone(), &state)?;
        if let Err(e) = self.store.save(&state) {
            tracing::error!("{e}");
            for c in changes {
                metrics::global()
                    .switches
                    .with_label_values(&[&c.service, "failed"])
                    .inc();
            }
            return Err(ApiError::new(500, format!("{e}: nothing changed")));
        }
        // A color that stops receiving new requests starts draining (its upgraded
        // connections get `drain_timeout_s`); one that receives them again stops draining.
        let deadline_base = now_ms();
        for (service, new) in &state.releases.services {
            let old = inner.state.releases.get(service);
            if old == *new {
                continue;
            }
            let drain = inner
                .config
                .service(service)
                .map_or(Duration::ZERO, |s| s.drain_timeout);
            for color in Color::ALL {
                let deadline = if serves(new, color) {
                    Some(0)
                } else if serves(&old, color) {
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
        self.shared.publish(snap);
        inner.state = state;
        for c in changes {
            metrics::global()
                .switches
                .with_label_values(&[&c.service, "ok"])
                .inc();
            tracing::info!(service = %c.service, from = %c.from, to = %c.to, action, "traffic moved");
        }
        let mut detail = detail;
        if !changes.is_empty() {
            detail["changes"] = json!(changes);
        }
        let services = match detail.get("services").and_then(|v| v.as_array()) {
            Some(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            None => changes.iter().map(|c| c.service.clone()).collect(),
        };
        self.history_event(HistoryEvent::now(action, services, "ok", detail));
        Ok(())
    }

    /// Applies a command to the release state and commits it (persist, then publish).
    fn apply_and_commit(
        &self,
        inner: &mut Inner,
        cmd: &Command,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<Vec<Change>, ApiError> {
        let (next, changes) = inner
            .state
            .releases
            .apply(cmd)
            .map_err(|r| ApiError::new(409, r.to_string()))?;
        let mut detail = detail;
        let services = match cmd {
            Command::Switch { services, .. }
            | Command::Rollback { services }
            | Command::StartCanary { services, .. }
            | Command::NextStep { services }
            | Command::Promote { services }
            | Command::Abort { services } => services.clone(),
        };
        detail["services"] = json!(services);
        self.commit(inner, next, &changes, action, detail)?;
        Ok(changes)
    }

    /// The services a canary verb acts on: the named ones, or every one with a canary.
    fn canary_targets(inner: &Inner, requested: &[String]) -> Result<Vec<String>, ApiError> {
        if requested.is_empty() {
            let running = inner.state.releases.canaries();
            if running.is_empty() {
                return Err(ApiError::new(409, "no canary is running"));
            }
            return Ok(running);
        }
        Self::targets(&inner.config, requested)
    }

    pub async fn canary(&self, req: CanaryRequest) -> Result<ReleaseResponse, ApiError> {
        // Held across the smoke checks, like a switch.
        let mut inner = self.inner.lock().await;
        let services = Self::targets(&inner.config, &req.services)?;
        let cmd = Command::StartCanary {
            services: services.clone(),
            color: req.color,
            steps: req.steps.clone(),
            interval_s: req.interval_s.max(1),
        };
        // Refusals (a canary running, the color already active, bad steps) before smoke.
        inner
            .state
            .releases
            .apply(&cmd)
            .map_err(|r| ApiError::new(409, r.to_string()))?;
        let smoke = if req.skip_smoke {
            Vec::new()
        } else {
            self.run_smoke(&services, req.color).await
        };
        self.refuse_failed_smoke("canary", &services, req.color, &smoke, "no canary started")?;
        self.apply_and_commit(
            &mut inner,
            &cmd,
            "canary",
            json!({ "color": req.color, "weight": req.steps.first(), "steps": req.steps, "interval_s": req.interval_s }),
        )?;
        let now = crate::core::slo::now_s();
        Self::watch(
            &mut inner,
            Watch {
                services: services.clone(),
                color: req.color,
                since: now,
                kind: WatchKind::Canary {
                    next_step_at: now + req.interval_s.max(1),
                    interval_s: req.interval_s.max(1),
                },
            },
        );
        drop(inner);
        Ok(ReleaseResponse {
            services: services.clone(),
            changed: Vec::new(),
            smoke,
            drain: None,
            status: self.status(),
        })
    }

    pub async fn promote(&self, req: ServicesRequest) -> Result<ReleaseResponse, ApiError> {
        let mut inner = self.inner.lock().await;
        let services = Self::canary_targets(&inner, &req.services)?;
        let changes = self.apply_and_commit(
            &mut inner,
            &Command::Promote {
                services: services.clone(),
            },
            "promote",
            json!({ "by": "operator" }),
        )?;
        // Canaries of different colors are different releases: one watch per color.
        for color in Color::ALL {
            let group: Vec<String> = changes
                .iter()
                .filter(|c| c.to == color)
                .map(|c| c.service.clone())
                .collect();
            if !group.is_empty() {
                self.watch_after_switch(&mut inner, &group, color);
            }
        }
        drop(inner);
        Ok(ReleaseResponse {
            services: services.clone(),
            changed: changes,
            smoke: Vec::new(),
            drain: None,
            status: self.status(),
        })
    }

    pub async fn abort(&self, req: ServicesRequest) -> Result<ReleaseResponse, ApiError> {
        let mut inner = self.inner.lock().await;
        let services = Self::canary_targets(&inner, &req.services)?;
        self.apply_and_commit(
            &mut inner,
            &Command::Abort {
                services: services.clone(),
            },
            "abort",
            json!({ "by": "operator" }),
        )?;
        Self::unwatch(&mut inner, &services);
        drop(inner);
        Ok(ReleaseResponse {
            services: services.clone(),
            changed: Vec::new(),
            smoke: Vec::new(),
            drain: None,
            status: self.status(),
        })
    }

    /// Waits until the colors traffic left have nothing in flight, or the longest drain
    /// timeout of the services involved passes.
    async fn wait_drain(&self, changes: &[Change]) -> DrainReport {
        let start = Instant::now();
        let timeout = {
            let snap = self.shared.snapshot.load();
            changes
                .iter()
                .filter_map(|c| snap.service(&c.service))
                .map(|s| s.config.drain_timeout)
                .max()
                .unwrap_or_default()
        };
        let loads: Vec<(String, _)> = changes
            .iter()
            .map(|c| {
                (
                    format!("{}/{}", c.service, c.from),
                    self.shared.retained.load(&c.service, c.from.as_str()),
                )
            })
            .collect();
        loop {
            let remaining: BTreeMap<String, i64> = loads
                .iter()
                .map(|(k, l)| (k.clone(), l.inflight.load(Ordering::Relaxed).max(0)))
                .filter(|(_, n)| *n > 0)
                .collect();
            let waited = start.elapsed();
            if remaining.is_empty() || waited >= timeout {
                return DrainReport {
                    drained: remaining.is_empty(),
                    waited_ms: waited.as_millis() as u64,
                    remaining,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn set_backends(
        &self,
        service: &str,
        color: &str,
        req: BackendsRequest,
    ) -> Result<StatusResponse, ApiError> {
        let color: Color = color.parse().map_err(|e: String| ApiError::new(400, e))?;
        let mut inner = self.inner.lock().await;
        Self::targets(&inner.config, &[service.to_string()])?;
        if req.backends.is_empty() {
            return Err(ApiError::new(400, "a color needs at least one backend"));
        }
        let mut addrs = Vec::new();
        for a in &req.backends {
            let addr = resolve_addr(a).map_err(|e| ApiError::new(400, e))?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let release = inner.state.releases.get(service);
        let live =
            release.active == color || release.canary.as_ref().is_some_and(|c| c.color == color);
        if live && !req.force {
            return Err(ApiError::new(
                409,
                format!("{color} is serving traffic for `{service}`: use --force (\"force\": true) to replace its backends"),
            ));
        }
        let mut state = inner.state.clone();
        state
            .overrides
            .entry(service.to_string())
            .or_default()
            .insert(color, addrs.iter().map(|a| a.to_string()).collect());
        let snap = self.build(inner.config.clone(), &state)?;
        self.store
            .save(&state)
            .map_err(|e| ApiError::new(500, format!("{e}: nothing changed")))?;
        self.shared.publish(snap);
        inner.state = state;
        self.history_event(HistoryEvent::now(
            "backends",
            vec![service.to_string()],
            "ok",
            json!({ "color": color, "backends": addrs, "force": req.force }),
        ));
        Ok(self.status())
    }

    /// Re-reads the config from where it was loaded. An invalid config is refused with its
    /// errors and the running one keeps serving.
    pub async fn reload(&self) -> Result<ReloadResponse, ApiError> {
        let mut inner = self.inner.lock().await;
        let source = inner.config.source.clone();
        let config = match Config::load(&source) {
            Ok(c) => Arc::new(c),
            Err(errors) => {
                metrics::global()
                    .config_reloads
                    .with_label_values(&["refused"])
                    .inc();
                let errors: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                tracing::warn!(
                    errors = errors.len(),
                    "reload refused: the config has errors; the old one keeps serving"
                );
                for e in &errors {
                    tracing::warn!("{e}");
                }
                self.history_event(HistoryEvent::now(
                    "reload",
                    vec![],
                    "refused",
                    json!({ "errors": errors }),
                ));
                return Err(ApiError {
                    status: 422,
                    body: ErrorBody {
                        error: format!(
                            "{}: the config has errors; the old config keeps serving",
                            source.display()
                        ),
                        errors,
                        ..Default::default()
                    },
                });
            }
        };
        let old = &inner.config;
        if old.listen.http != config.listen.http
            || old.listen.https != config.listen.https
            || old.listen.admin != config.listen.admin
            || old.threads != config.threads
            || old.state_dir != config.state_dir
        {
            tracing::warn!(
                "listen addresses, threads and state.dir take effect at the next restart"
            );
        }
        let snap = self.build(config.clone(), &inner.state)?;
        self.shared.publish(snap);
        if let Some(m) = self.cert_manager() {
            // Like `nginx -s reload`: certificate files (issuer "files") are read again, and
            // hosts new to the config get theirs (internal) or are ordered (acme).
            if let Err(e) = m.prepare(&config) {
                tracing::warn!(
                    "certificates after reload: {e:#}; the ones already loaded keep serving"
                );
            }
            m.poke();
        }
        let resp = ReloadResponse {
            routes: config.routes.len(),
            services: config.services.len(),
        };
        inner.config = config;
        metrics::global()
            .config_reloads
            .with_label_values(&["ok"])
            .inc();
        tracing::info!(
            routes = resp.routes,
            services = resp.services,
            "config reloaded"
        );
        self.history_event(HistoryEvent::now(
            "reload",
            vec![],
            "ok",
            json!({ "routes": resp.routes, "services": resp.services }),
        ));
        Ok(resp)
    }

    pub fn history(&self, limit: usize) -> Result<HistoryResponse, ApiError> {
        self.store
            .history(limit)
            .map(|events| HistoryResponse { events })
            .map_err(|e| ApiError::new(500, e.to_string()))
    }
}

pub fn status_of(snap: &Snapshot) -> StatusResponse {
    let mut services = BTreeMap::new();
    for svc in &snap.services {
        let mut backends = BTreeMap::new();
        let mut inflight = BTreeMap::new();
        let mut upgraded = BTreeMap::new();
        for pool in &svc.pools {
            let label = pool.color_label.to_string();
            backends.insert(
                label.clone(),
                pool.backends
                    .iter()
                    .map(|b| BackendStatus {
                        addr: b.addr_text.clone(),
                        healthy: b.is_healthy(),
                    })
                    .collect(),
            );
            inflight.insert(
                label.clone(),
                pool.load.inflight.load(Ordering::Relaxed).max(0),
            );
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
                alarm: None,
            },
        );
    }
    StatusResponse { services }
}

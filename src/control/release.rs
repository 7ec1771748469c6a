//! Switch and rollback: move whole services from one color to the other, as one transaction
//! (see `commit`), then optionally wait for the old color to drain.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::commit::Record;
use super::{targets, ControlError, Controller};
use crate::api::{
    DrainReport, HistoryEvent, ReleaseResponse, RollbackRequest, SmokeResult, SwitchRequest,
};
use crate::core::color::Color;
use crate::core::release::{Change, Command};
use crate::runtime::metrics;

impl Controller {
    /// Smoke checks of the target color (unless skipped) → commit → answer.
    pub async fn switch(&self, req: SwitchRequest) -> Result<ReleaseResponse, ControlError> {
        // Held across the smoke checks: nothing can change the backends, the config or the
        // release state between the checks and the publish.
        let mut inner = self.lock().await;
        let services = targets(inner.config(), &req.services)?;
        let (next, changes) = inner.releases().apply(&Command::Switch {
            services,
            to: req.color,
        })?;
        let moving: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        let smoke = if req.skip_smoke || moving.is_empty() {
            Vec::new()
        } else {
            self.run_smoke(&moving, req.color).await
        };
        self.refuse_failed_smoke("switch", &moving, req.color, &smoke, "nothing changed")
            .await?;
        let record = Record {
            action: "switch",
            services: moving.clone(),
            detail: json!({ "to": req.color, "skip_smoke": req.skip_smoke }),
        };
        self.commit_releases(&mut inner, next, &changes, record)
            .await?;
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
            services: moving,
            changed: changes,
            smoke,
            drain,
            instances: self.instances_applied().await,
            status: self.status(),
        })
    }

    /// Back to the previous color: the named services, or every one that has one.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<ReleaseResponse, ControlError> {
        let mut inner = self.lock().await;
        let mut services = targets(inner.config(), &req.services)?;
        if req.services.is_empty() {
            // Without --service: every service that has something to roll back to.
            let releases = inner.releases();
            services.retain(|s| releases.get(s).previous.is_some());
            if services.is_empty() {
                return Err(ControlError::NothingToRollBack);
            }
        }
        let (next, changes) = inner.releases().apply(&Command::Rollback { services })?;
        let moved: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        let record = Record {
            action: "rollback",
            services: moved.clone(),
            detail: json!({ "reason": "manual" }),
        };
        self.commit_releases(&mut inner, next, &changes, record)
            .await?;
        Self::unwatch(&mut inner, &moved);
        drop(inner);
        let drain = if req.wait_drain {
            Some(self.wait_drain(&changes).await)
        } else {
            None
        };
        Ok(ReleaseResponse {
            services: moved,
            changed: changes,
            smoke: Vec::new(),
            drain,
            instances: self.instances_applied().await,
            status: self.status(),
        })
    }

    /// Refuses a release whose smoke checks failed: counts and records it, and answers with
    /// every failure (service, backend, path, expected, got).
    pub(super) async fn refuse_failed_smoke(
        &self,
        action: &str,
        services: &[String],
        color: Color,
        smoke: &[SmokeResult],
        outcome: &'static str,
    ) -> Result<(), ControlError> {
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
        self.record(HistoryEvent::now(
            action,
            services.to_vec(),
            "refused",
            json!({ "color": color, "failures": failures }),
        ))
        .await;
        Err(ControlError::Refused {
            color,
            outcome,
            failures,
        })
    }

    /// Waits until the colors traffic left have nothing in flight, or the longest drain
    /// timeout of the services involved passes.
    pub(super) async fn wait_drain(&self, changes: &[Change]) -> DrainReport {
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
}

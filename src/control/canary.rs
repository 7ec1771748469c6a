//! Canary, promote and abort. The canary's steps are taken by the watch (`watch`); these are
//! the operator's verbs.

use serde_json::json;

use super::commit::Inner;
use super::watch::{Watch, WatchKind};
use super::{targets, ControlError, Controller};
use crate::api::{CanaryRequest, ReleaseResponse, ServicesRequest};
use crate::core::color::Color;
use crate::core::release::Command;

impl Controller {
    /// Smoke checks of the canary color (unless skipped) → the first step → watch.
    pub async fn canary(&self, req: CanaryRequest) -> Result<ReleaseResponse, ControlError> {
        // Held across the smoke checks, like a switch.
        let mut inner = self.lock().await;
        let services = targets(inner.config(), &req.services)?;
        let interval_s = req.interval_s.max(1);
        let cmd = Command::StartCanary {
            services: services.clone(),
            color: req.color,
            steps: req.steps.clone(),
            interval_s,
        };
        // Refusals (a canary running, the color already active, bad steps) before smoke.
        inner.releases().apply(&cmd)?;
        let smoke = if req.skip_smoke {
            Vec::new()
        } else {
            self.run_smoke(&services, req.color).await
        };
        self.refuse_failed_smoke("canary", &services, req.color, &smoke, "no canary started")
            .await?;
        self.commit_command(
            &mut inner,
            &cmd,
            "canary",
            json!({ "color": req.color, "weight": req.steps.first(), "steps": req.steps, "interval_s": req.interval_s }),
        ).await?;
        let now = crate::core::slo::now_s();
        Self::watch(
            &mut inner,
            Watch {
                services: services.clone(),
                color: req.color,
                since: now,
                kind: WatchKind::Canary {
                    next_step_at: now + interval_s,
                    interval_s,
                },
            },
        );
        drop(inner);
        Ok(ReleaseResponse {
            services,
            changed: Vec::new(),
            smoke,
            drain: None,
            instances: self.instances_applied().await,
            status: self.status(),
        })
    }

    /// Makes the running canary's color active now, then watches it like a switch.
    pub async fn promote(&self, req: ServicesRequest) -> Result<ReleaseResponse, ControlError> {
        let mut inner = self.lock().await;
        let services = canary_targets(&inner, &req.services)?;
        let changes = self
            .commit_command(
                &mut inner,
                &Command::Promote {
                    services: services.clone(),
                },
                "promote",
                json!({ "by": "operator" }),
            )
            .await?;
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
            services,
            changed: changes,
            smoke: Vec::new(),
            drain: None,
            instances: self.instances_applied().await,
            status: self.status(),
        })
    }

    /// Drops the running canary to weight 0; the active color stays.
    pub async fn abort(&self, req: ServicesRequest) -> Result<ReleaseResponse, ControlError> {
        let mut inner = self.lock().await;
        let services = canary_targets(&inner, &req.services)?;
        self.commit_command(
            &mut inner,
            &Command::Abort {
                services: services.clone(),
            },
            "abort",
            json!({ "by": "operator" }),
        )
        .await?;
        Self::unwatch(&mut inner, &services);
        drop(inner);
        Ok(ReleaseResponse {
            services,
            changed: Vec::new(),
            smoke: Vec::new(),
            drain: None,
            instances: self.instances_applied().await,
            status: self.status(),
        })
    }
}

/// The services a canary verb acts on: the named ones, or every one with a canary.
fn canary_targets(inner: &Inner, requested: &[String]) -> Result<Vec<String>, ControlError> {
    if requested.is_empty() {
        let running = inner.releases().canaries();
        if running.is_empty() {
            return Err(ControlError::NoCanary);
        }
        return Ok(running);
    }
    targets(inner.config(), requested)
}

//! `backends`: replace a color's backends of a service (an override, persisted; it wins over
//! the config file until changed). The color serving traffic needs `force`.

use serde_json::json;

use super::commit::Record;
use super::{targets, ControlError, Controller};
use crate::api::{BackendsRequest, StatusResponse};
use crate::core::color::Color;
use crate::core::config::resolve_addr;

impl Controller {
    pub async fn set_backends(
        &self,
        service: &str,
        color: &str,
        req: BackendsRequest,
    ) -> Result<StatusResponse, ControlError> {
        let color: Color = color.parse().map_err(ControlError::Invalid)?;
        let mut inner = self.lock().await;
        targets(inner.config(), &[service.to_string()])?;
        if req.backends.is_empty() {
            return Err(ControlError::Invalid(
                "a color needs at least one backend".into(),
            ));
        }
        let mut addrs = Vec::new();
        for a in &req.backends {
            let addr = resolve_addr(a).map_err(ControlError::Invalid)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let release = inner.releases().get(service);
        let live =
            release.active == color || release.canary.as_ref().is_some_and(|c| c.color == color);
        if live && !req.force {
            return Err(ControlError::ColorServing {
                service: service.to_string(),
                color,
            });
        }
        let mut next = inner.propose();
        next.state
            .overrides
            .entry(service.to_string())
            .or_default()
            .insert(color, addrs.iter().map(|a| a.to_string()).collect());
        let record = Record {
            action: "backends",
            services: vec![service.to_string()],
            detail: json!({ "color": color, "backends": addrs, "force": req.force }),
        };
        self.commit(&mut inner, next, record).await?;
        drop(inner);
        Ok(self.status())
    }
}

//! `backends`: replace a color's backends of a service (an override, persisted; it wins over
//! the config file until changed). The color serving traffic needs `force`. Backends are
//! `ip:port` or `name:port`; a name is persisted as a name and looked up before the change
//! is published (then every `[dns] refresh_s`, like the config's names).

use std::collections::BTreeSet;

use serde_json::json;

use super::commit::Record;
use super::{targets, ControlError, Controller};
use crate::api::{BackendsRequest, StatusResponse};
use crate::core::color::Color;
use crate::core::config::BackendSpec;

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
        let mut specs = Vec::new();
        for a in &req.backends {
            let spec = BackendSpec::parse(a).map_err(ControlError::Invalid)?;
            if !specs.contains(&spec) {
                specs.push(spec);
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
        let names: BTreeSet<_> = specs
            .iter()
            .filter_map(BackendSpec::name)
            .cloned()
            .collect();
        let dns = inner.config().dns.clone();
        self.resolve_new(&mut inner, &names, &dns).await;
        let backends: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        let mut next = inner.propose();
        next.state
            .overrides
            .entry(service.to_string())
            .or_default()
            .insert(color, backends.clone());
        let record = Record {
            action: "backends",
            services: vec![service.to_string()],
            detail: json!({ "color": color, "backends": backends, "force": req.force }),
        };
        self.commit(&mut inner, next, record).await?;
        drop(inner);
        Ok(self.status())
    }
}

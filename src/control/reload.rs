//! `reload` (and SIGHUP): read the config again from where it was loaded. An invalid config is
//! refused with its errors and the running one keeps serving.

use std::sync::Arc;

use serde_json::json;

use super::commit::Record;
use super::{ControlError, Controller};
use crate::api::{HistoryEvent, ReloadResponse};
use crate::runtime::metrics;

impl Controller {
    pub async fn reload(&self) -> Result<ReloadResponse, ControlError> {
        let mut inner = self.lock().await;
        let file = inner.config().source.clone();
        let config = match crate::persist::config_files::load(&file) {
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
                self.record(HistoryEvent::now(
                    "reload",
                    vec![],
                    "refused",
                    json!({ "errors": errors }),
                ))
                .await;
                return Err(ControlError::InvalidConfig { file, errors });
            }
        };
        let old = inner.config();
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
        let resp = ReloadResponse {
            routes: config.routes.len(),
            services: config.services.len(),
        };
        // New backend names are looked up before the new config is published, so its pools
        // hold them from the first request.
        let names = inner.names_with(&config);
        self.resolve_new(&mut inner, &names, &config.dns).await;
        let mut next = inner.propose();
        next.config = config.clone();
        let record = Record {
            action: "reload",
            services: vec![],
            detail: json!({ "routes": resp.routes, "services": resp.services }),
        };
        if let Err(e) = self.commit(&mut inner, next, record).await {
            // Valid, but not applied (e.g. the shared store refused the commit): the old
            // config keeps serving.
            metrics::global()
                .config_reloads
                .with_label_values(&["failed"])
                .inc();
            tracing::error!("reload not applied: {e}; the old config keeps serving");
            return Err(e);
        }
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
        metrics::global()
            .config_reloads
            .with_label_values(&["ok"])
            .inc();
        tracing::info!(
            routes = resp.routes,
            services = resp.services,
            "config reloaded"
        );
        Ok(resp)
    }
}

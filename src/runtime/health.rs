//! Active health checks: every backend of every pool of a service with `health_check` is
//! probed each interval; `fall` failures in a row take it out of rotation, `rise` successes
//! bring it back. Results land in the backend's atomics, which every snapshot shares.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::core::config::HealthCheck;
use crate::runtime::pool::Backend;
use crate::runtime::shared::Shared;

const TICK: Duration = Duration::from_millis(25);

pub struct HealthChecker {
    pub shared: Arc<Shared>,
}

/// One probe: GET path with the service's Host; healthy on the expected status, or any 2xx/3xx.
pub async fn probe(
    client: &reqwest::Client,
    backend: &Backend,
    host: &str,
    hc: &HealthCheck,
) -> bool {
    let url = format!("http://{}{}", backend.addr, hc.path);
    let res = client
        .get(url)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .timeout(hc.timeout)
        .send()
        .await;
    match res {
        Ok(r) => match hc.expect_status {
            Some(code) => r.status().as_u16() == code,
            None => r.status().is_success() || r.status().is_redirection(),
        },
        Err(_) => false,
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.shared.snapshot.load_full();
            let now = Instant::now();
            for svc in &snapshot.services {
                let Some(hc) = &svc.config.health_check else {
                    continue;
                };
                let due = last_run
                    .get(&svc.name)
                    .is_none_or(|t| now.duration_since(*t) >= hc.interval);
                if !due {
                    continue;
                }
                last_run.insert(svc.name.clone(), now);
                for pool in &svc.pools {
                    for backend in &pool.backends {
                        if backend.checking.swap(true, Ordering::AcqRel) {
                            continue;
                        }
                        let (client, backend, hc) = (client.clone(), backend.clone(), hc.clone());
                        let (host, service, color) =
                            (svc.check_host.clone(), svc.name.clone(), pool.color_label);
                        tokio::spawn(async move {
                            let ok = probe(&client, &backend, &host, &hc).await;
                            backend.checking.store(false, Ordering::Release);
                            if let Some(up) = backend.record_check(ok, hc.fall, hc.rise) {
                                if up {
                                    tracing::info!(%service, color, backend = %backend.label(), "backend is healthy again");
                                } else {
                                    tracing::warn!(%service, color, backend = %backend.label(), path = %hc.path, "backend failed its health checks: out of rotation");
                                }
                            }
                        });
                    }
                }
            }
            last_run.retain(|name, _| snapshot.service(name).is_some());
        }
    }
}

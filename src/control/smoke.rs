//! Smoke checks: each check of a service against each backend of a color, directly (not
//! through the proxy), with the Host of the service's first route. A switch or canary runs
//! them under the commit lock; the dry-run `smoke` verb runs them on the published snapshot
//! without it.

use std::net::SocketAddr;

use futures_util::future::join_all;

use super::{targets, ControlError, Controller};
use crate::api::{SmokeRequest, SmokeResponse, SmokeResult};
use crate::core::color::Color;
use crate::core::config::SmokeCheck;

impl Controller {
    /// The dry run: the smoke checks of a color, changing nothing.
    pub async fn smoke(&self, req: SmokeRequest) -> Result<SmokeResponse, ControlError> {
        let services = targets(&self.shared.snapshot.load().config, &req.services)?;
        let results = self.run_smoke(&services, req.color).await;
        Ok(SmokeResponse {
            passed: results.iter().all(|r| r.ok),
            results,
        })
    }

    /// Smoke checks of `color` for `services` against the published snapshot's backends,
    /// plus a failure for a pool whose health checks find no healthy backend, and one for
    /// each backend name of the pool that never resolved (a pool may have no backend at all
    /// then).
    pub(super) async fn run_smoke(&self, services: &[String], color: Color) -> Vec<SmokeResult> {
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
            let check_path = svc.config.smoke.first().map_or("/", |c| c.path.as_str());
            for unresolved in &pool.unresolved {
                results.push(SmokeResult {
                    service: name.clone(),
                    backend: unresolved.clone(),
                    path: check_path.to_string(),
                    expected: "the name resolves to at least one address".into(),
                    got: "no address yet (see switchyard_dns_failures_total)".into(),
                    ok: false,
                });
            }
            targets.push(Target {
                service: &svc.name,
                host: &svc.check_host,
                checks: &svc.config.smoke,
                backends: pool.backends.iter().map(|b| (b.addr, b.label())).collect(),
            });
        }
        results.extend(run(&self.client, &targets).await);
        results
    }
}

/// Body bytes read at most when looking for `body_contains`.
const MAX_BODY: usize = 1 << 20;

struct Target<'a> {
    service: &'a str,
    host: &'a str,
    checks: &'a [SmokeCheck],
    /// Each backend's address and how results name it.
    backends: Vec<(SocketAddr, String)>,
}

async fn run(client: &reqwest::Client, targets: &[Target<'_>]) -> Vec<SmokeResult> {
    let mut jobs = Vec::new();
    for t in targets {
        for check in t.checks {
            for (addr, label) in &t.backends {
                jobs.push(one(client, t.service, t.host, check, *addr, label));
            }
        }
    }
    join_all(jobs).await
}

async fn one(
    client: &reqwest::Client,
    service: &str,
    host: &str,
    check: &SmokeCheck,
    backend: SocketAddr,
    label: &str,
) -> SmokeResult {
    let mut expected = format!("status {}", check.expect_status);
    if let Some(s) = &check.body_contains {
        expected.push_str(&format!(" and body containing {s:?}"));
    }
    let url = format!("http://{backend}{}", check.path);
    let got = match client
        .get(&url)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-smoke")
        .timeout(check.timeout)
        .send()
        .await
    {
        Err(e) => Err(describe(&e)),
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Err(e) => Err(format!(
                    "status {status}, body unreadable: {}",
                    describe(&e)
                )),
                Ok(body) => {
                    let body = &body[..body.len().min(MAX_BODY)];
                    let status_ok = status == check.expect_status;
                    let body_ok = check
                        .body_contains
                        .as_ref()
                        .is_none_or(|s| String::from_utf8_lossy(body).contains(s.as_str()));
                    if status_ok && body_ok {
                        Ok(format!("status {status}"))
                    } else if !body_ok {
                        let snippet: String =
                            String::from_utf8_lossy(body).chars().take(80).collect();
                        Err(format!("status {status}, body {snippet:?}"))
                    } else {
                        Err(format!("status {status}"))
                    }
                }
            }
        }
    };
    let (ok, got) = match got {
        Ok(g) => (true, g),
        Err(g) => (false, g),
    };
    SmokeResult {
        service: service.to_string(),
        backend: label.to_string(),
        path: check.path.clone(),
        expected,
        got,
        ok,
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    }
}

//! Request and response bodies of the admin API, shared by the daemon and `releasectl`.
//! Fields may be added, never renamed (SPEC: Admin API).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::color::Color;
use crate::core::release::Change;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchRequest {
    pub color: Color,
    /// Empty: every releasable service.
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub skip_smoke: bool,
    #[serde(default)]
    pub wait_drain: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub wait_drain: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryRequest {
    pub color: Color,
    /// Rising weights, e.g. [5, 25, 50, 100].
    pub steps: Vec<u8>,
    pub interval_s: u64,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub skip_smoke: bool,
}

/// Body of promote and abort: the services (default: every running canary).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServicesRequest {
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeRequest {
    pub color: Color,
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendsRequest {
    pub backends: Vec<String>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `ip:port`.
    pub addr: String,
    /// The backend name this address was found under (`api-green:8000`); absent for a
    /// backend written as an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub color: Color,
    pub weight: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub releasable: bool,
    /// None for a service with one pool.
    pub active: Option<Color>,
    pub previous: Option<Color>,
    pub canary: Option<CanaryStatus>,
    /// "blue"/"green" (or "default" for one pool) → backends.
    pub backends: BTreeMap<String, Vec<BackendStatus>>,
    /// Requests in flight per color, upgraded connections included.
    pub inflight: BTreeMap<String, i64>,
    /// Open upgraded (WebSocket) connections per color.
    pub upgraded: BTreeMap<String, i64>,
    /// Per color: backend names that never resolved, so have no backend in `backends` yet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unresolved: BTreeMap<String, Vec<String>>,
    /// Set when the controller raised an alarm it could not act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusResponse {
    pub services: BTreeMap<String, ServiceStatus>,
    /// With `store = "etcd"`: `"ok"` or `"unreachable"`; absent with the file store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// With `store = "etcd"`: the live instances of the site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
}

/// One instance of a site (`store = "etcd"`), as registered under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub address: String,
    /// The revision of the site's release state this instance serves.
    pub applied_revision: i64,
    pub leader: bool,
}

/// How far a release got across the site: the instances that applied it within 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancesApplied {
    pub applied: usize,
    pub total: usize,
}

/// One smoke check against one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmokeResult {
    pub service: String,
    pub backend: String,
    pub path: String,
    /// e.g. `status 200` or `status 200 and body containing "ok"`.
    pub expected: String,
    /// e.g. `status 503`, `connection refused`.
    pub got: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReport {
    /// True when the old colors had nothing in flight before the timeout.
    pub drained: bool,
    pub waited_ms: u64,
    /// What was still in flight on the old colors when we stopped waiting.
    pub remaining: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// What moved; empty when every service already was where asked.
    pub changed: Vec<Change>,
    /// The services the command acted on.
    #[serde(default)]
    pub services: Vec<String>,
    pub smoke: Vec<SmokeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
    /// With `store = "etcd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancesApplied>,
    pub status: StatusResponse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeResponse {
    pub passed: bool,
    pub results: Vec<SmokeResult>,
}

/// `GET /v1/history` without `?limit=`: the newest this many events.
pub const HISTORY_DEFAULT_LIMIT: usize = 100;
/// The most `?limit=` may ask for.
pub const HISTORY_MAX_LIMIT: usize = 1000;

/// `GET /v1/history?limit=N`: the newest N events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub events: Vec<HistoryEvent>,
}

/// The `limit` of a `GET /v1/history` query string: absent → the default; anything but a
/// whole number from 1 to [`HISTORY_MAX_LIMIT`] → an error to answer with a 400.
pub fn history_limit(query: &str) -> Result<usize, String> {
    let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix("limit=")) else {
        return Ok(HISTORY_DEFAULT_LIMIT);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=HISTORY_MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit must be a whole number from 1 to {HISTORY_MAX_LIMIT}, not {v:?}"
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub routes: usize,
    pub services: usize,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Failed smoke checks, when that is why a switch was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SmokeResult>,
    /// Config errors, when that is why a reload was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertsResponse {
    pub certs: Vec<CertInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenewRequest {
    /// Empty: every host.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenewResponse {
    /// The hosts whose renewal was scheduled now.
    pub hosts: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_limit_parses_defaults_and_refuses() {
        assert_eq!(history_limit(""), Ok(HISTORY_DEFAULT_LIMIT));
        assert_eq!(history_limit("other=1"), Ok(HISTORY_DEFAULT_LIMIT));
        assert_eq!(history_limit("limit=5"), Ok(5));
        assert_eq!(history_limit("x=y&limit=1000"), Ok(1000));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=abc",
            "limit=",
            "limit=2.5",
        ] {
            assert!(history_limit(bad).is_err(), "{bad}");
        }
    }
}

/// One line of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// switch, rollback, backends, reload, smoke, canary, promote, abort, alarm, start.
    pub action: String,
    #[serde(default)]
    pub services: Vec<String>,
    /// ok, refused, failed, rolled_back, …
    pub result: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// What `/v1/certs` reports for one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertInfo {
    pub host: String,
    pub issuer: String,
    /// RFC 3339; absent while no certificate exists yet.
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub days_left: Option<f64>,
    pub next_renewal: Option<String>,
    pub serial: Option<String>,
    pub last_error: Option<String>,
}

//! The control layer's one error type. Each message names the thing and, where there is one,
//! says what to do; the admin API maps each variant to its HTTP status (`admin::router`), so
//! no status code lives here.

use std::path::PathBuf;

use crate::api::SmokeResult;
use crate::core::color::Color;
use crate::core::release::Refusal;
use crate::persist::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request names a service the config does not have.
    #[error("no service `{service}` (`releasectl status` lists the services)")]
    NotFound { service: String },

    /// None of the hosts asked for has a certificate.
    #[error(
        "no certificate for {} (`releasectl certs` lists the hosts)",
        host_list(hosts)
    )]
    NoCertificate { hosts: Vec<String> },

    /// A value in the request is wrong (a color, an address, an empty list).
    #[error("{0}")]
    Invalid(String),

    /// A release verb named a service with one pool.
    #[error("service `{service}` is not releasable (it has one pool, no colors)")]
    NotReleasable { service: String },

    /// A release verb without services, and no service has blue and green.
    #[error("no releasable service (none has blue and green)")]
    NoReleasableService,

    /// The release state machine refused the command (a canary running, nothing to roll
    /// back, bad steps, …); its message says why and what to do.
    #[error("{0}")]
    Release(Refusal),

    /// A rollback without services, and no service has a previous color.
    #[error("nothing to roll back to: no service has a previous color")]
    NothingToRollBack,

    /// Promote or abort without services, and no canary is running.
    #[error("no canary is running")]
    NoCanary,

    /// New backends for a color that serves traffic, without `force`.
    #[error("{color} is serving traffic for `{service}`: use --force (\"force\": true) to replace its backends")]
    ColorServing { service: String, color: Color },

    /// Smoke checks failed: nothing changed. `failures` lists every failed check.
    #[error("{} smoke check(s) failed on {color}: {outcome}", failures.len())]
    Refused {
        color: Color,
        /// What did not happen, e.g. "nothing changed".
        outcome: &'static str,
        failures: Vec<SmokeResult>,
    },

    /// A certificate verb while TLS is not configured.
    #[error("TLS is not configured ([tls] and listen.https)")]
    NoTls,

    /// A reload found errors in the config; the running one keeps serving.
    #[error("{}: the config has errors; the old config keeps serving", file.display())]
    InvalidConfig { file: PathBuf, errors: Vec<String> },

    /// The new state could not be written: nothing changed, on disk or in traffic.
    #[error("{0}: nothing changed")]
    NotSaved(StoreError),

    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// At start: `state.dir` cannot be created.
    #[error("cannot create state.dir {}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// At start: the HTTP client of the smoke checks cannot be built.
    #[error("cannot build the smoke checks' HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// `a.test, b.test`, or "any host" for none.
fn host_list(hosts: &[String]) -> String {
    if hosts.is_empty() {
        "any host".to_string()
    } else {
        hosts.join(", ")
    }
}

impl From<Refusal> for ControlError {
    fn from(r: Refusal) -> Self {
        ControlError::Release(r)
    }
}

impl ControlError {
    /// The failed smoke checks of a refused release (empty otherwise).
    pub fn failures(&self) -> &[SmokeResult] {
        match self {
            ControlError::Refused { failures, .. } => failures,
            _ => &[],
        }
    }

    /// The config errors of a refused reload (empty otherwise).
    pub fn config_errors(&self) -> &[String] {
        match self {
            ControlError::InvalidConfig { errors, .. } => errors,
            _ => &[],
        }
    }
}

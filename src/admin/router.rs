//! Every admin route, and the mapping of [`ControlError`] to HTTP statuses (only here: the
//! control layer knows no status codes).
//!
//! [`AdminApp::handle`] takes the request head and a future that reads the body; it awaits
//! that future only for an authorized `/v1/` call, so an unauthorized client's body is never
//! read, and a test can call it with any request and no socket.

use std::future::Future;

use http::{Method, Request, Response, StatusCode};

use super::{json, json_error, reply, token, AdminApp};
use crate::api::ErrorBody;
use crate::control::ControlError;
use crate::persist::store::StoreError;
use crate::runtime::metrics;

/// The HTTP status of each control error.
pub fn status(e: &ControlError) -> u16 {
    match e {
        ControlError::NotFound { .. } | ControlError::NoCertificate { .. } => 404,
        ControlError::Invalid(_)
        | ControlError::NotReleasable { .. }
        | ControlError::NoReleasableService => 400,
        ControlError::Release(_)
        | ControlError::NothingToRollBack
        | ControlError::NoCanary
        | ControlError::ColorServing { .. }
        | ControlError::Refused { .. }
        | ControlError::NoTls => 409,
        ControlError::InvalidConfig { .. } => 422,
        // Another instance of the site committed first: nothing changed, try again.
        ControlError::NotSaved(StoreError::Conflict { .. } | StoreError::NotLeader) => 409,
        // etcd cannot be reached: releases wait for it.
        ControlError::NotSaved(StoreError::Unavailable { .. })
        | ControlError::Store(StoreError::Unavailable { .. }) => 503,
        ControlError::NotSaved(_)
        | ControlError::Store(_)
        | ControlError::StateDir { .. }
        | ControlError::HttpClient(_) => 500,
    }
}

/// The body of a control error: its message, plus the failed smoke checks or the config
/// errors when that is why it was refused.
pub fn error_body(e: &ControlError) -> ErrorBody {
    ErrorBody {
        error: e.to_string(),
        failures: e.failures().to_vec(),
        errors: e.config_errors().to_vec(),
    }
}

/// Why a `/v1/` call is answered with an error.
#[derive(Debug)]
enum Failure {
    Control(ControlError),
    /// The request itself is malformed (its JSON body, its query): 400.
    BadRequest(String),
    /// 404.
    NoEndpoint(String),
    /// The route exists, not with this method: 405, with `Allow`.
    Method {
        method: Method,
        path: String,
        allow: &'static str,
    },
    /// The answer could not be serialised: 500.
    Internal(String),
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        Failure::Control(e)
    }
}

impl Failure {
    fn response(self) -> Response<Vec<u8>> {
        match self {
            Failure::Control(e) => {
                let code =
                    StatusCode::from_u16(status(&e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                json(
                    code,
                    &serde_json::to_value(error_body(&e)).unwrap_or_default(),
                )
            }
            Failure::BadRequest(m) => json_error(StatusCode::BAD_REQUEST, m),
            Failure::NoEndpoint(path) => json_error(
                StatusCode::NOT_FOUND,
                format!("no endpoint {path} (docs/admin-api.md lists them)"),
            ),
            Failure::Method {
                method,
                path,
                allow,
            } => {
                let mut r = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {path}: use {allow}"),
                );
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                r
            }
            Failure::Internal(m) => json_error(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// Parses a JSON body; an empty body reads as `{}`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Failure::BadRequest(format!("invalid JSON body: {e}")))
}

fn ok<T: serde::Serialize>(v: &T) -> Result<Response<Vec<u8>>, Failure> {
    let value = serde_json::to_value(v).map_err(|e| Failure::Internal(e.to_string()))?;
    Ok(json(StatusCode::OK, &value))
}

impl AdminApp {
    /// Answers one request. `body` is awaited only for an authorized `/v1/` call; it answers
    /// the response to send instead when the body cannot be read (too large, cut off).
    pub async fn handle<B>(&self, req: &Request<()>, body: B) -> Response<Vec<u8>>
    where
        B: Future<Output = Result<Vec<u8>, Response<Vec<u8>>>>,
    {
        let method = req.method();
        let path = req.uri().path();
        match path {
            "/health" if *method == Method::GET || *method == Method::HEAD => self.health(),
            "/metrics" if *method == Method::GET => {
                reply(StatusCode::OK, "text/plain; version=0.0.4", {
                    self.controller.export_site_gauges();
                    metrics::global().render().into_bytes()
                })
            }
            "/health" | "/metrics" => Failure::Method {
                method: method.clone(),
                path: path.to_string(),
                allow: if path == "/health" {
                    "GET, HEAD"
                } else {
                    "GET"
                },
            }
            .response(),
            p if p.starts_with("/v1/") => {
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if !token::authorized(auth, &self.token) {
                    let mut r = json_error(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token (see admin.token_file)",
                    );
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                    return r;
                }
                let body = match body.await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let query = req.uri().query().unwrap_or("");
                self.v1(method, p, query, &body)
                    .await
                    .unwrap_or_else(Failure::response)
            }
            _ => Failure::NoEndpoint(path.to_string()).response(),
        }
    }

    /// 200 with a summary once ready; before, 503 with what is still awaited. Lock-free: an
    /// atomic load and the snapshot's arc-swap load.
    fn health(&self) -> Response<Vec<u8>> {
        if !self.readiness.is_ready() {
            let waiting = self.readiness.waiting_for();
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "starting",
                    "error": format!("not ready yet: waiting for {}", waiting.join(", ")),
                    "waiting_for": waiting,
                }),
            );
        }
        let snapshot = self.controller.shared().snapshot.load();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "store": self.controller.store_health(),
                "services": snapshot.services.len(),
                "routes": snapshot.config.routes.len(),
            }),
        )
    }

    /// The release API. Every route is listed here, with its one method.
    async fn v1(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<Response<Vec<u8>>, Failure> {
        let c = &self.controller;
        let only = |allow: &'static str| {
            if method.as_str() == allow {
                Ok(())
            } else {
                Err(Failure::Method {
                    method: method.clone(),
                    path: path.to_string(),
                    allow,
                })
            }
        };
        let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        match segments.as_slice() {
            ["status"] => {
                only("GET")?;
                ok(&c.status())
            }
            ["switch"] => {
                only("POST")?;
                ok(&c.switch(parse(body)?).await?)
            }
            ["rollback"] => {
                only("POST")?;
                ok(&c.rollback(parse(body)?).await?)
            }
            ["canary"] => {
                only("POST")?;
                ok(&c.canary(parse(body)?).await?)
            }
            ["canary", "promote"] => {
                only("POST")?;
                ok(&c.promote(parse(body)?).await?)
            }
            ["canary", "abort"] => {
                only("POST")?;
                ok(&c.abort(parse(body)?).await?)
            }
            ["smoke"] => {
                only("POST")?;
                ok(&c.smoke(parse(body)?).await?)
            }
            ["services", service, "backends", color] => {
                only("PUT")?;
                ok(&c.set_backends(service, color, parse(body)?).await?)
            }
            ["history"] => {
                only("GET")?;
                let limit = crate::api::history_limit(query).map_err(Failure::BadRequest)?;
                ok(&c.history(limit).await?)
            }
            ["reload"] => {
                only("POST")?;
                ok(&c.reload().await?)
            }
            ["certs"] => {
                only("GET")?;
                ok(&c.certs())
            }
            ["certs", "renew"] => {
                only("POST")?;
                ok(&c.renew_certs(parse(body)?)?)
            }
            _ => Err(Failure::NoEndpoint(path.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;

//! The admin listener (`listen.admin`, loopback by default).
//!
//! Without a token: `GET /health` (200 while serving) and `GET /metrics` (Prometheus text).
//! Everything under `/v1/` is the release API (see `api`).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::control::{ApiError, Controller};
use crate::runtime::metrics;
pub mod token;

/// Request bodies above this are refused (the API's bodies are small JSON documents).
const MAX_BODY: usize = 1 << 20;

pub struct AdminApp {
    pub controller: Arc<Controller>,
    pub token: String,
}

/// A response with a body and its length.
pub fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static parts make a valid response")
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

pub fn json_error(status: StatusCode, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/health") => {
                let snapshot = self.controller.shared().snapshot.load();
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "status": "ok",
                        "services": snapshot.services.len(),
                        "routes": snapshot.config.routes.len(),
                    }),
                )
            }
            ("GET", "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::global().render().into_bytes(),
            ),
            (_, "/health" | "/metrics") => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (_, p) if p.starts_with("/v1/") => {
                let auth = session
                    .req_header()
                    .headers
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
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                match self.v1(method.as_str(), p, &query, &body).await {
                    Ok(r) => r,
                    Err(e) => {
                        let status = StatusCode::from_u16(e.status)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        json(status, &serde_json::to_value(&e.body).unwrap_or_default())
                    }
                }
            }
            _ => json_error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
        }
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}

/// Parses a JSON body; an empty body reads as `{}`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

fn ok<T: serde::Serialize>(v: &T) -> Result<Response<Vec<u8>>, ApiError> {
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(v).map_err(|e| ApiError::new(500, e.to_string()))?,
    ))
}

impl AdminApp {
    /// The release API. Every route is listed here.
    async fn v1(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<Response<Vec<u8>>, ApiError> {
        let c = &self.controller;
        let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["status"]) => ok(&c.status()),
            ("POST", ["switch"]) => ok(&c.switch(parse(body)?).await?),
            ("POST", ["rollback"]) => ok(&c.rollback(parse(body)?).await?),
            ("POST", ["canary"]) => ok(&c.canary(parse(body)?).await?),
            ("POST", ["canary", "promote"]) => ok(&c.promote(parse(body)?).await?),
            ("POST", ["canary", "abort"]) => ok(&c.abort(parse(body)?).await?),
            ("POST", ["smoke"]) => ok(&c.smoke(parse(body)?).await?),
            ("PUT", ["services", service, "backends", color]) => {
                ok(&c.set_backends(service, color, parse(body)?).await?)
            }
            ("GET", ["history"]) => {
                let limit = crate::api::history_limit(query).map_err(|e| ApiError::new(400, e))?;
                ok(&c.history(limit)?)
            }
            ("POST", ["reload"]) => ok(&c.reload().await?),
            ("GET", ["certs"]) => ok(&c.certs()),
            ("POST", ["certs", "renew"]) => ok(&c.renew_certs(parse(body)?)?),
            (
                _,
                ["status"]
                | ["switch"]
                | ["rollback"]
                | ["smoke"]
                | ["history"]
                | ["reload"]
                | ["services", _, "backends", _],
            ) => Err(ApiError::new(
                405,
                format!("{method} is not allowed on {path}"),
            )),
            _ => Err(ApiError::new(404, format!("no endpoint {path}"))),
        }
    }
}

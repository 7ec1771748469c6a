//! The admin listener (`listen.admin`, loopback by default).
//!
//! Without a token: `GET /health` (a readiness latch: 503 until the proxy is up, then 200)
//! and `GET /metrics` (Prometheus text). Everything under `/v1/` is the release API, behind
//! the bearer token.
//!
//! - `router` — every route, and the one place where a [`ControlError`] becomes an HTTP
//!   status; it takes a request head and a body to read, so it is tested without a socket.
//! - `readiness` — what `/health` waits for.
//! - `token` — the bearer token.
//!
//! [`ControlError`]: crate::control::ControlError

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::control::Controller;

pub mod readiness;
pub mod router;
pub mod token;

pub use readiness::{Latch, Readiness};

/// Request bodies above this are refused (the API's bodies are small JSON documents).
const MAX_BODY: usize = 1 << 20;

pub struct AdminApp {
    pub controller: Arc<Controller>,
    pub token: String,
    /// `/health` answers 200 once this is ready.
    pub readiness: Readiness,
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

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn json_error(status: StatusCode, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// pingora's side: the request head is copied (method, target, `Authorization`) and the body
/// is read only if the router asks for it (an authorized `/v1/` call).
#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let mut req = http::Request::new(());
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        if let Some(auth) = head.headers.get(http::header::AUTHORIZATION) {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        self.handle(&req, read_body(session)).await
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
                        "request body too large (at most 1 MiB)",
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

//! The admin listener (`listen.admin`, loopback by default).
//!
//! Without a token: `GET /health` (200 while serving) and `GET /metrics` (Prometheus text).
//! Everything under `/v1/` is the release API (see `api`).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics;
use crate::shared::Shared;

pub struct AdminApp {
    pub shared: Arc<Shared>,
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
                let snapshot = self.shared.snapshot.load();
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
            _ => json_error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
        }
    }
}

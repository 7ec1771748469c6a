//! The built-in demo backends of `switchyard demo`: one tiny HTTP server per color, each
//! answering with its color, so a switch is visible with nothing else installed.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::admin::reply;

pub struct DemoBackend {
    pub color: &'static str,
}

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path();
        if path == "/health" {
            return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec());
        }
        let id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let body = format!(
            "Hello from the {color} backend!\ncolor: {color}\npath: {path}\nrequest-id: {id}\n",
            color = self.color
        );
        let mut resp = reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            body.into_bytes(),
        );
        resp.headers_mut().insert(
            "x-backend-color",
            http::HeaderValue::from_static(self.color),
        );
        resp
    }
}

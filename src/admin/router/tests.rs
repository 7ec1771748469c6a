//! Admin routing without a socket: requests handed to `AdminApp::handle`, answers checked by
//! status and body.

use std::path::PathBuf;

use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::{error_body, status};
use crate::admin::{AdminApp, Readiness};
use crate::api::SmokeResult;
use crate::control::testing::{Fixture, CONFIG};
use crate::control::ControlError;
use crate::core::color::Color;
use crate::core::release::Refusal;
use crate::persist::store::StoreError;

const TOKEN: &str = "s3cret";

struct Admin {
    app: AdminApp,
    f: Fixture,
}

/// An admin app over a fresh fixture; ready (every part released) or not.
fn admin(ready: bool) -> Admin {
    let f = Fixture::new();
    let readiness = Readiness::new(&["config", "state", "listen.http"]);
    readiness.latch("config").release();
    readiness.latch("state").release();
    if ready {
        readiness.latch("listen.http").release();
    }
    let app = AdminApp {
        controller: f.controller.clone(),
        token: TOKEN.to_string(),
        readiness,
    };
    Admin { app, f }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

fn answer(r: Response<Vec<u8>>) -> Answer {
    let text = String::from_utf8(r.body().clone()).unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

impl Admin {
    /// `method path` with the right token and `body`.
    async fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        self.call_as(method, path, Some(&format!("Bearer {TOKEN}")), body)
            .await
    }

    async fn call_as(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let req = req.body(()).unwrap();
        let body = body.as_bytes().to_vec();
        answer(self.app.handle(&req, async move { Ok(body) }).await)
    }
}

#[tokio::test]
async fn health_is_503_until_ready_then_200_with_the_summary() {
    let a = admin(false);
    let r = a.call_as("GET", "/health", None, "").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["status"], "starting");
    assert_eq!(r.body["waiting_for"], serde_json::json!(["listen.http"]));
    assert!(
        r.body["error"].as_str().unwrap().contains("listen.http"),
        "{}",
        r.text
    );

    let a = admin(true);
    for method in ["GET", "HEAD"] {
        let r = a.call_as(method, "/health", None, "").await;
        assert_eq!(r.status, 200, "{method}: {}", r.text);
        assert_eq!(r.body["status"], "ok");
        assert_eq!(r.body["routes"], 2);
        assert_eq!(r.body["services"], 2);
    }
}

#[tokio::test]
async fn metrics_need_no_token() {
    let a = admin(true);
    let r = a.call_as("GET", "/metrics", None, "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let a = admin(true);
    for path in ["/", "/nope", "/v1", "/v1/", "/v1/nope", "/v1/status/extra"] {
        let r = a.call("GET", path, "").await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(
            r.body["error"].as_str().unwrap().contains("no endpoint"),
            "{path}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_and_the_body_is_not_read() {
    let a = admin(true);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Basic czNjcmV0"),
    ] {
        let req = Request::post("/v1/switch");
        let req = match auth {
            Some(v) => req.header(http::header::AUTHORIZATION, v),
            None => req,
        }
        .body(())
        .unwrap();
        let r = answer(
            a.app
                .handle(&req, async {
                    panic!("the body of an unauthorized call was read")
                })
                .await,
        );
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text);
        assert_eq!(r.headers[http::header::WWW_AUTHENTICATE], "Bearer");
        assert!(r.body["error"].is_string(), "{}", r.text);
    }
    // Unknown /v1 paths too: the token comes first.
    assert_eq!(a.call_as("GET", "/v1/nope", None, "").await.status, 401);
    assert_eq!(active(&a), Some(Color::Blue), "a 401 changes nothing");
}

#[tokio::test]
async fn bad_json_is_400() {
    let a = admin(true);
    for (path, body) in [
        ("/v1/switch", "{"),
        ("/v1/switch", r#"{"color":"purple"}"#),
        ("/v1/switch", r#"{"services":["web"]}"#),
        ("/v1/canary", r#"{"color":"green","steps":"5,25"}"#),
        ("/v1/rollback", "null"),
    ] {
        let r = a.call("POST", path, body).await;
        assert_eq!(r.status, 400, "POST {path} {body}: {}", r.text);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid JSON body"),
            "{}",
            r.text
        );
    }
    // An empty body reads as {}.
    assert_eq!(a.call("POST", "/v1/rollback", "").await.status, 409);
    // A bad history limit.
    assert_eq!(a.call("GET", "/v1/history?limit=0", "").await.status, 400);
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let a = admin(true);
    for (method, path, allow) in [
        ("POST", "/health", "GET, HEAD"),
        ("POST", "/metrics", "GET"),
        ("GET", "/v1/switch", "POST"),
        ("POST", "/v1/status", "GET"),
        ("GET", "/v1/canary", "POST"),
        ("GET", "/v1/canary/promote", "POST"),
        ("DELETE", "/v1/services/web/backends/green", "PUT"),
        ("POST", "/v1/history", "GET"),
        ("GET", "/v1/reload", "POST"),
        ("PUT", "/v1/certs", "GET"),
    ] {
        let r = a.call(method, path, "{}").await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
        assert_eq!(r.headers[http::header::ALLOW], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn an_unreadable_body_is_answered_as_the_reader_says() {
    let a = admin(true);
    let req = Request::post("/v1/switch")
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let r = answer(
        a.app
            .handle(&req, async {
                Err(super::super::json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too large",
                ))
            })
            .await,
    );
    assert_eq!(r.status, 413);
}

fn active(a: &Admin) -> Option<Color> {
    a.f.controller.status().services["web"].active
}

#[tokio::test]
async fn the_verbs_answer_their_statuses_over_the_router() {
    let a = admin(true);
    let r = a.call("GET", "/v1/status", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["services"]["web"]["active"], "blue");

    // 409: nothing to roll back; the active color without force; smoke failed (with failures).
    assert_eq!(a.call("POST", "/v1/rollback", "{}").await.status, 409);
    let r = a
        .call(
            "PUT",
            "/v1/services/web/backends/blue",
            r#"{"backends":["127.0.0.1:9"]}"#,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = a.call("POST", "/v1/switch", r#"{"color":"green"}"#).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(
        r.body["failures"][0]["backend"], "127.0.0.1:2",
        "{}",
        r.text
    );
    // 404: an unknown service; 400: a service with one pool, a bad color.
    let r = a
        .call(
            "POST",
            "/v1/switch",
            r#"{"color":"green","services":["nope"]}"#,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = a
        .call(
            "POST",
            "/v1/switch",
            r#"{"color":"green","services":["static"]}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = a
        .call(
            "PUT",
            "/v1/services/web/backends/purple",
            r#"{"backends":["127.0.0.1:9"]}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // 409: no TLS for certificate renewals; 200 with none listed.
    assert_eq!(a.call("POST", "/v1/certs/renew", "{}").await.status, 409);
    let r = a.call("GET", "/v1/certs", "").await;
    assert_eq!(
        (r.status, r.body["certs"].clone()),
        (200, serde_json::json!([]))
    );

    // 200: a switch with skip_smoke, then its history.
    let r = a
        .call(
            "POST",
            "/v1/switch",
            r#"{"color":"green","skip_smoke":true}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["changed"][0]["to"], "green");
    assert_eq!(r.body["status"]["services"]["web"]["active"], "green");
    let r = a.call("GET", "/v1/history?limit=1", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["events"][0]["action"], "switch");
    assert_eq!(r.body["events"][0]["result"], "ok");

    // 500: the state cannot be written.
    a.f.store.fail_writes(true);
    let r = a.call("POST", "/v1/rollback", "{}").await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .ends_with("nothing changed"),
        "{}",
        r.text
    );
    a.f.store.fail_writes(false);
    assert_eq!(active(&a), Some(Color::Green));

    // 422: a reload of an invalid config, with its errors; 200 for a valid one.
    a.f.write_config("[listen]\nhttp = 5\n");
    let r = a.call("POST", "/v1/reload", "").await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        !r.body["errors"].as_array().unwrap().is_empty(),
        "{}",
        r.text
    );
    a.f.write_config(CONFIG);
    let r = a.call("POST", "/v1/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["routes"], 2);
}

#[test]
fn each_control_error_has_its_status() {
    let store_error = || StoreError::Write {
        path: PathBuf::from("/state/state.json"),
        source: std::io::Error::other("disk full"),
    };
    let failure = SmokeResult {
        service: "web".into(),
        backend: "127.0.0.1:2".into(),
        path: "/health".into(),
        expected: "status 200".into(),
        got: "status 503".into(),
        ok: false,
    };
    let client_error = reqwest::Client::builder()
        .user_agent("\n")
        .build()
        .unwrap_err();
    let cases: Vec<(ControlError, u16)> = vec![
        (
            ControlError::NotFound {
                service: "x".into(),
            },
            404,
        ),
        (
            ControlError::NoCertificate {
                hosts: vec!["a.test".into()],
            },
            404,
        ),
        (ControlError::Invalid("bad".into()), 400),
        (
            ControlError::NotReleasable {
                service: "x".into(),
            },
            400,
        ),
        (ControlError::NoReleasableService, 400),
        (
            ControlError::Release(Refusal::NoCanary {
                service: "x".into(),
            }),
            409,
        ),
        (ControlError::NothingToRollBack, 409),
        (ControlError::NoCanary, 409),
        (
            ControlError::ColorServing {
                service: "x".into(),
                color: Color::Blue,
            },
            409,
        ),
        (
            ControlError::Refused {
                color: Color::Green,
                outcome: "nothing changed",
                failures: vec![failure.clone()],
            },
            409,
        ),
        (ControlError::NoTls, 409),
        (
            ControlError::InvalidConfig {
                file: PathBuf::from("/etc/switchyard.toml"),
                errors: vec!["line 1: bad".into()],
            },
            422,
        ),
        (ControlError::NotSaved(store_error()), 500),
        (ControlError::Store(store_error()), 500),
        (
            ControlError::StateDir {
                path: PathBuf::from("/state"),
                source: std::io::Error::other("read-only"),
            },
            500,
        ),
        (ControlError::HttpClient(client_error), 500),
    ];
    for (e, want) in &cases {
        assert_eq!(status(e), *want, "{e:?}");
        let body = error_body(e);
        assert_eq!(body.error, e.to_string());
        assert!(!body.error.is_empty());
    }
    // The refusals carry their details into the body.
    let refused = error_body(&cases[9].0);
    assert_eq!(refused.failures, [failure]);
    assert_eq!(
        refused.error,
        "1 smoke check(s) failed on green: nothing changed"
    );
    let invalid = error_body(&cases[11].0);
    assert_eq!(invalid.errors, ["line 1: bad"]);
    assert!(invalid.error.contains("/etc/switchyard.toml"));
    // The others carry none (and serialize as {"error": …} alone).
    let plain = serde_json::to_value(error_body(&cases[0].0)).unwrap();
    assert_eq!(plain.as_object().unwrap().len(), 1, "{plain}");
}

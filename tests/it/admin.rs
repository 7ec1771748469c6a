//! The admin listener over a real socket: `/health` as a readiness latch, and what only a
//! socket exercises (the body reader's limit, headers on the wire).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::support::release::{admin_call, token, Daemon};
use crate::support::{client, closed_addr, free_ports, Backend, Proxy, BASE};

/// `/health` answers 503 (naming what it waits for) or 200 — never anything else — and turns
/// 200 once the http listener, bound on the wildcard address, has been probed through
/// loopback. The probe's connection never reaches the proxy: the listener then serves as
/// usual.
#[tokio::test(flavor = "multi_thread")]
async fn health_turns_ready_once_a_wildcard_listener_accepts() {
    let backend = Backend::start("a").await;
    let ports = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[listen]
http = "0.0.0.0:{}"
admin = "127.0.0.1:{}"

[state]
dir = "state"

[[route]]
host = "ready.test"
service = "ready"

[service.ready]
backends = ["{}"]
"#,
        ports[0], ports[1], backend.addr
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let mut daemon = Daemon::spawn(&path, dir.path(), "ready");
    let health = format!("http://127.0.0.1:{}/health", ports[1]);
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(status) = daemon.wait_exit(Duration::ZERO).await {
            panic!("switchyard exited: {status}\n{}", daemon.logs());
        }
        assert!(
            Instant::now() < deadline,
            "/health not 200 after 20 s\n{}",
            daemon.logs()
        );
        let Ok(resp) = probe.get(&health).send().await else {
            // The admin listener is not up yet.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        match status {
            200 => break body,
            503 => {
                assert_eq!(body["status"], "starting", "{body}");
                assert_eq!(
                    body["waiting_for"],
                    serde_json::json!(["listen.http"]),
                    "{body}"
                );
                assert!(
                    body["error"].as_str().unwrap().contains("listen.http"),
                    "{body}"
                );
            }
            other => panic!("/health answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["routes"], 1, "{body}");
    assert_eq!(body["services"], 1, "{body}");
    assert!(
        daemon.stderr().contains("ready: the listeners accept"),
        "{}",
        daemon.logs()
    );
    // The listener serves, and the probe never reached the backend.
    let resp = client()
        .get(format!("http://127.0.0.1:{}/", ports[0]))
        .header("host", "ready.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(backend.hits(), 1);
}

/// What the in-process router tests cannot show: the 1 MiB body limit of the socket reader,
/// and the headers of a 405 and a 401 on the wire.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_socket_limits_bodies_and_sends_allow() {
    let config = format!(
        "{BASE}\n[[route]]\nhost = \"x.test\"\nservice = \"x\"\n\n[service.x]\nbackends = [\"{}\"]\n",
        closed_addr()
    );
    let proxy = Proxy::start(&config).await;
    let t = token(&proxy);
    let big = vec![b' '; (1 << 20) + 1];
    let resp = proxy
        .client
        .post(proxy.admin_url("/v1/switch"))
        .bearer_auth(&t)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too large"),
        "{body}"
    );

    let resp = proxy
        .client
        .get(proxy.admin_url("/v1/canary"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    let resp = proxy
        .client
        .get(proxy.admin_url("/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    let (code, body) = admin_call(&proxy, Method::GET, "/nope", None, None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

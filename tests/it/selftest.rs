//! Checks of the test harness itself (backends, raw client), without the
//! proxy, so that a harness bug is not mistaken for a proxy bug.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{client, metric_value, raw_request, Backend};

#[tokio::test(flavor = "multi_thread")]
async fn backend_echoes_request_and_toggles_health() {
    let b = Backend::start("b1").await;
    let c = client();
    let resp = c
        .get(format!("http://{}/some/path?q=1", b.addr))
        .header("x-test", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["backend"], "b1");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/some/path");
    assert_eq!(json["query"], "q=1");
    assert_eq!(json["headers"]["x-test"], "yes");
    assert_eq!(b.hits(), 1);

    let health = format!("http://{}/health", b.addr);
    assert_eq!(c.get(&health).send().await.unwrap().status().as_u16(), 200);
    b.set_healthy(false);
    assert_eq!(c.get(&health).send().await.unwrap().status().as_u16(), 503);
    b.set_healthy(true);
    assert_eq!(c.get(&health).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(b.health_hits(), 3);
    assert_eq!(b.hits(), 1, "health probes must not count as hits");

    let raw = raw_request(
        b.addr,
        "GET /raw HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.json()["headers"]["x-hop"], "1");

    let t = std::time::Instant::now();
    let r = c
        .get(format!("http://{}/sleep/300", b.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_websocket_echo() {
    let b = Backend::start("ws").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", b.addr))
        .await
        .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hi".into())
    );
    assert_eq!(b.ws_sessions(), 1);
}

#[test]
fn metric_parsing() {
    let text = "# HELP x y\n\
                switchyard_backend_up{backend=\"127.0.0.1:1\",color=\"blue\",service=\"a\"} 0\n\
                switchyard_backend_up{backend=\"127.0.0.1:2\",color=\"blue\",service=\"a\"} 1\n";
    assert_eq!(
        metric_value(
            text,
            "switchyard_backend_up",
            &[("service", "a"), ("backend", "127.0.0.1:1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric_value(text, "switchyard_backend_up", &[("backend", "127.0.0.1:2")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(text, "switchyard_backend_up", &[("service", "b")]),
        None
    );
}

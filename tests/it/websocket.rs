//! WebSocket upgrades pass through the proxy.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_proxy() {
    let ws = Backend::start("ws").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "ws.test"
service = "ws"

[service.ws]
backends = ["{}"]
"#,
        ws.addr
    );
    let proxy = Proxy::start(&cfg).await;

    let mut req = format!("ws://{}/ws", proxy.http_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", "ws.test".parse().unwrap());
    let (mut stream, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("websocket handshake timed out")
    .unwrap_or_else(|e| panic!("websocket handshake through proxy failed: {e:?}"));
    assert_eq!(resp.status().as_u16(), 101);

    let msgs = [
        Message::Text("hello".into()),
        Message::Binary(vec![0u8, 1, 2, 255]),
        Message::Text("third message".into()),
    ];
    for m in msgs {
        stream.send(m.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("no echo within 5 s");
        let echoed = echoed.expect("stream closed").expect("websocket error");
        assert_eq!(echoed, m);
    }
    stream.close(None).await.unwrap();
    assert_eq!(ws.ws_sessions(), 1);
}

//! `switchyard demo --config PATH`: built-in blue/green backends behind the proxy.

use crate::support::{free_ports, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_blue() {
    let ports = free_ports(2);
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "localhost"
service = "web"

[service.web]
blue = ["127.0.0.1:{}"]
green = ["127.0.0.1:{}"]
"#,
        ports[0], ports[1]
    );
    let proxy = Proxy::start_demo(&cfg).await;

    let resp = proxy.get("localhost", "/").await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "demo GET /: {body}");
    assert!(
        body.to_ascii_lowercase().contains("blue"),
        "demo should serve the blue backend first, got: {body}"
    );
    assert!(
        !body.to_ascii_lowercase().contains("green"),
        "demo answered from green while blue is active: {body}"
    );

    // The built-in backends really listen on the configured addresses.
    for (port, color) in [(ports[0], "blue"), (ports[1], "green")] {
        let resp = proxy
            .client
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "localhost")
            .send()
            .await
            .unwrap_or_else(|e| panic!("demo {color} backend on {port}: {e:?}"));
        let body = resp.text().await.unwrap();
        assert!(
            body.to_ascii_lowercase().contains(color),
            "demo {color} backend answered: {body}"
        );
    }
}

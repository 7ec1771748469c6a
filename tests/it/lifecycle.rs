//! SIGTERM: stop accepting, finish in-flight requests, exit 0 within the grace.

use std::time::{Duration, Instant};

use crate::support::{client, poll_until, Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_and_exits_zero() {
    let app = Backend::start("app").await;
    let cfg = format!(
        r#"{BASE}
[server]
grace_s = 5

[[route]]
host = "app.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        app.addr
    );
    let mut proxy = Proxy::start(&cfg).await;
    assert_eq!(proxy.backend_of("app.test", "/").await, "app");
    let hits_before = app.hits();

    // A slow request is in flight…
    let url = proxy.url("/sleep/1000");
    let inflight = tokio::spawn(async move {
        let resp = client().get(url).header("host", "app.test").send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    let arrived = poll_until(Duration::from_secs(5), || async {
        (app.hits() > hits_before).then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the slow request never reached the backend"
    );
    // …and SIGTERM arrives 200 ms into it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);

    // The in-flight request completes normally.
    let (status, body) = inflight
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight request failed after SIGTERM: {e:?}"));
    assert_eq!(status, 200, "in-flight request after SIGTERM: {body}");
    assert!(body.contains("\"app\""), "unexpected body: {body}");

    // New connections are refused (the listener is closed).
    let refused = poll_until(Duration::from_secs(3), || async {
        tokio::net::TcpStream::connect(proxy.http_addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the http listener still accepts connections after SIGTERM"
    );

    // The process exits 0 within the grace period (5 s, plus slack).
    let status = proxy.wait_exit(Duration::from_secs(7)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "switchyard still running {:?} after SIGTERM (grace_s = 5)",
            signalled.elapsed()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    // Still refused after exit.
    assert!(tokio::net::TcpStream::connect(proxy.http_addr)
        .await
        .is_err());
}

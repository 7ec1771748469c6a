//! Upstream failures: connect-failure retry, 502 and 504.

use std::time::{Duration, Instant};

use crate::support::{closed_addr, Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_is_retried_on_another_backend() {
    let live = Backend::start("live").await;
    let dead = closed_addr();
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "retry.test"
service = "retry"

[service.retry]
backends = ["{dead}", "{}"]
"#,
        live.addr
    );
    let proxy = Proxy::start(&cfg).await;
    for i in 0..20 {
        let (status, json) = proxy.get_json("retry.test", &format!("/r{i}")).await;
        assert_eq!(status, 200, "request {i}: {json}");
        assert_eq!(json["backend"], "live");
    }
    assert_eq!(live.hits(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_backends_down_is_502() {
    let (d1, d2) = (closed_addr(), closed_addr());
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "down.test"
service = "down"

[service.down]
backends = ["{d1}", "{d2}"]
connect_timeout_ms = 500
"#
    );
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..3 {
        let resp = proxy.get("down.test", "/").await;
        assert_eq!(resp.status().as_u16(), 502);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_backend_is_504_after_read_timeout() {
    let slow = Backend::start("slow").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "slow.test"
service = "slow"

[service.slow]
backends = ["{}"]
read_timeout_ms = 300
"#,
        slow.addr
    );
    let proxy = Proxy::start(&cfg).await;

    // A fast request still works.
    assert_eq!(proxy.backend_of("slow.test", "/sleep/10").await, "slow");

    let started = Instant::now();
    let resp = proxy.get("slow.test", "/sleep/2000").await;
    let took = started.elapsed();
    assert_eq!(resp.status().as_u16(), 504);
    assert!(
        took < Duration::from_millis(1500),
        "504 came after {took:?}; read_timeout_ms = 300 should cut it well before the backend's 2 s"
    );
}

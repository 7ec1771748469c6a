//! Active health checks take a failing backend out of the rotation and put it
//! back when it recovers; `switchyard_backend_up` follows.

use std::time::Duration;

use crate::support::{metric_value, poll_until, Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_backend_leaves_and_rejoins_rotation() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "hc.test"
service = "hc"

[service.hc]
backends = ["{}", "{}"]
health_check = {{ path = "/health", interval_ms = 200 }}
"#,
        a.addr, b.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let a_addr = a.addr.to_string();
    let b_addr = b.addr.to_string();

    // Both serve at first.
    let both = poll_until(Duration::from_secs(10), || async {
        for _ in 0..4 {
            proxy.backend_of("hc.test", "/").await;
        }
        (a.hits() > 0 && b.hits() > 0).then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "both backends should serve while healthy: a={} b={}",
        a.hits(),
        b.hits()
    );
    // The checker probes the configured path.
    let probed = poll_until(Duration::from_secs(5), || async {
        (a.health_hits() > 0 && b.health_hits() > 0).then_some(())
    })
    .await;
    assert!(
        probed.is_some(),
        "no GET /health probes seen within 5 s (a={}, b={})",
        a.health_hits(),
        b.health_hits()
    );

    // a fails its health check: within a bounded time every request goes to b.
    a.set_healthy(false);
    let drained = poll_until(Duration::from_secs(10), || async {
        let before = a.hits();
        for _ in 0..6 {
            let got = proxy.backend_of("hc.test", "/").await;
            if got != "b" {
                return None;
            }
        }
        (a.hits() == before).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "backend a still receives traffic 10 s after its /health went 503"
    );
    let a_hits = a.hits();
    for _ in 0..10 {
        assert_eq!(proxy.backend_of("hc.test", "/").await, "b");
    }
    assert_eq!(a.hits(), a_hits, "unhealthy backend a got traffic");

    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_backend_up",
            &[("service", "hc"), ("backend", &a_addr)]
        ),
        Some(0.0),
        "switchyard_backend_up for a should be 0:\n{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "switchyard_backend_up",
            &[("service", "hc"), ("backend", &b_addr)]
        ),
        Some(1.0),
        "switchyard_backend_up for b should be 1:\n{m}"
    );

    // a recovers: it receives traffic again.
    a.set_healthy(true);
    let back = poll_until(Duration::from_secs(10), || async {
        let before = a.hits();
        for _ in 0..4 {
            proxy.backend_of("hc.test", "/").await;
        }
        (a.hits() > before).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "backend a gets no traffic 10 s after its /health recovered"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_backend_up",
            &[("service", "hc"), ("backend", &a_addr)]
        ),
        Some(1.0),
        "switchyard_backend_up for a should be back to 1:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_apply_to_the_active_color() {
    // Two blue backends, one of which fails: blue keeps serving from the
    // healthy one; green never gets traffic.
    let b1 = Backend::start("blue1").await;
    let b2 = Backend::start("blue2").await;
    let g = Backend::start("green").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["{}", "{}"]
green = ["{}"]
health_check = {{ path = "/health", interval_ms = 200 }}
"#,
        b1.addr, b2.addr, g.addr
    );
    let proxy = Proxy::start(&cfg).await;
    b1.set_healthy(false);
    let only_b2 = poll_until(Duration::from_secs(10), || async {
        for _ in 0..6 {
            if proxy.backend_of("web.test", "/").await != "blue2" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        only_b2.is_some(),
        "blue1 still serves 10 s after its /health went 503"
    );
    assert_eq!(g.hits(), 0, "green got traffic while blue is active");
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_backend_up",
            &[
                ("service", "web"),
                ("color", "blue"),
                ("backend", &b1.addr.to_string())
            ]
        ),
        Some(0.0),
        "switchyard_backend_up{{service=web,color=blue,backend=blue1}} should be 0:\n{m}"
    );
}

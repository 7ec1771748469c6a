//! Prometheus metrics on the admin listener.

use std::time::Duration;

use crate::support::{metric_lines, metric_value, poll_until, Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn request_metrics_after_traffic() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["{}"]
green = ["{}"]
"#,
        blue.addr, green.addr
    );
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..5 {
        assert_eq!(proxy.backend_of("web.test", "/").await, "blue");
    }

    // A request is counted just after its response is written: the last one may still be
    // on its way into the counters when the client has its answer.
    let want = |m: &str| {
        metric_value(
            m,
            "switchyard_requests_total",
            &[("service", "web"), ("color", "blue"), ("code", "200")],
        ) == Some(5.0)
    };
    let _ = poll_until(Duration::from_secs(5), || async {
        want(&proxy.metrics().await).then_some(())
    })
    .await;
    let m = proxy.metrics().await;
    let total = metric_value(
        &m,
        "switchyard_requests_total",
        &[("service", "web"), ("color", "blue"), ("code", "200")],
    );
    assert_eq!(
        total,
        Some(5.0),
        "switchyard_requests_total{{service=\"web\",color=\"blue\",code=\"200\"}} should be 5:\n{m}"
    );
    let buckets = metric_lines(&m, "switchyard_request_duration_seconds_bucket");
    assert!(
        buckets
            .iter()
            .any(|l| l.contains("service=\"web\"") && l.contains("color=\"blue\"")),
        "no switchyard_request_duration_seconds_bucket for web/blue:\n{m}"
    );
    let count = metric_value(
        &m,
        "switchyard_request_duration_seconds_count",
        &[("service", "web"), ("color", "blue")],
    );
    assert_eq!(count, Some(5.0), "histogram count for web/blue:\n{m}");
}

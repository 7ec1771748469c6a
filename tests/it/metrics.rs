//! Prometheus metrics on the admin listener.

use crate::support::{metric_lines, metric_value, Backend, Proxy, BASE};

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

//! Prometheus metrics on the admin listener.

use std::time::Duration;

use crate::support::release::releasectl;
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

/// A reload that removes a releasable service deletes its `switchyard_active_color` and
/// `switchyard_canary_weight` series (a removed service must not show as active forever);
/// reloads are counted by result, every result exported from the start.
#[tokio::test(flavor = "multi_thread")]
async fn reload_forgets_the_release_gauges_of_a_removed_service() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let web = format!(
        r#"
[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["{}"]
green = ["{}"]
"#,
        blue.addr, green.addr
    );
    let old = format!(
        r#"
[[route]]
host = "old.test"
service = "old"

[service.old]
blue = ["{}"]
green = ["{}"]
"#,
        blue.addr, green.addr
    );
    let proxy = Proxy::start(&format!("{BASE}{web}{old}")).await;
    let m = proxy.metrics().await;
    for service in ["web", "old"] {
        assert_eq!(
            metric_value(
                &m,
                "switchyard_active_color",
                &[("service", service), ("color", "blue")]
            ),
            Some(1.0),
            "{service} starts on blue:\n{m}"
        );
        assert_eq!(
            metric_value(&m, "switchyard_canary_weight", &[("service", service)]),
            Some(0.0),
            "{m}"
        );
    }
    for result in ["ok", "refused", "failed"] {
        assert_eq!(
            metric_value(&m, "switchyard_config_reloads_total", &[("result", result)]),
            Some(0.0),
            "reload counters are exported at 0 from the start:\n{m}"
        );
    }
    assert_eq!(
        metric_value(
            &m,
            "switchyard_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{m}"
    );

    // The running config, with `old` removed.
    let concrete = |cfg: String| {
        cfg.replace("{http}", &proxy.http_addr.to_string())
            .replace("{admin}", &proxy.admin_addr.to_string())
    };
    std::fs::write(&proxy.config_path, concrete(format!("{BASE}{web}"))).unwrap();
    releasectl(&proxy, &["reload"]).await.expect_code(0);
    let m = proxy.metrics().await;
    let old_series: Vec<&str> = metric_lines(&m, "switchyard_active_color")
        .into_iter()
        .chain(metric_lines(&m, "switchyard_canary_weight"))
        .filter(|l| l.contains("service=\"old\""))
        .collect();
    assert!(
        old_series.is_empty(),
        "the removed service still has release gauges: {old_series:?}\n{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "switchyard_active_color",
            &[("service", "web"), ("color", "blue")]
        ),
        Some(1.0),
        "the remaining service keeps its gauges:\n{m}"
    );
    assert_eq!(
        metric_value(&m, "switchyard_config_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "{m}"
    );

    // A refused reload changes no gauge and is counted as refused.
    std::fs::write(&proxy.config_path, "[listen\nhttp = ").unwrap();
    releasectl(&proxy, &["reload"]).await.expect_code(2);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_config_reloads_total",
            &[("result", "refused")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "switchyard_active_color",
            &[("service", "web"), ("color", "blue")]
        ),
        Some(1.0),
        "{m}"
    );

    // The service comes back with a reload: its gauges do too.
    std::fs::write(&proxy.config_path, concrete(format!("{BASE}{web}{old}"))).unwrap();
    releasectl(&proxy, &["reload"]).await.expect_code(0);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "switchyard_active_color",
            &[("service", "old"), ("color", "blue")]
        ),
        Some(1.0),
        "{m}"
    );
}

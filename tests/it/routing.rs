//! Host / path routing, forwarded headers, request ids, hop-by-hop headers
//! and round robin.

use crate::support::{raw_request, Backend, Proxy, BASE};

#[tokio::test(flavor = "multi_thread")]
async fn host_routing_exact_wildcard_case_insensitive_port_stripped() {
    let app = Backend::start("app").await;
    let wild = Backend::start("wild").await;
    let exact = Backend::start("exact").await;
    // The wildcard comes first in the file: exact must win on specificity,
    // not on order.
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "app.test"
service = "app"

[[route]]
host = "*.wild.test"
service = "wild"

[[route]]
host = "exact.wild.test"
service = "exact"

[service.app]
backends = ["{}"]

[service.wild]
backends = ["{}"]

[service.exact]
backends = ["{}"]
"#,
        app.addr, wild.addr, exact.addr
    );
    let proxy = Proxy::start(&cfg).await;

    let cases = [
        ("app.test", "app"),
        ("APP.Test", "app"),
        ("app.test:8080", "app"),
        ("App.TEST:1", "app"),
        ("foo.wild.test", "wild"),
        ("FOO.Wild.Test:8080", "wild"),
        ("bar.wild.test", "wild"),
        ("exact.wild.test", "exact"),
        ("EXACT.WILD.TEST", "exact"),
        ("exact.wild.test:80", "exact"),
    ];
    for (host, want) in cases {
        let got = proxy.backend_of(host, "/").await;
        assert_eq!(got, want, "Host: {host} routed to {got}, want {want}");
    }
    assert_eq!(app.hits(), 4);
    assert_eq!(wild.hits(), 3);
    assert_eq!(exact.hits(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn longest_path_prefix_wins() {
    let root = Backend::start("root").await;
    let api = Backend::start("api").await;
    let v2 = Backend::start("v2").await;
    // Deliberately not sorted by length.
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "p.test"
path_prefix = "/api"
service = "api"

[[route]]
host = "p.test"
service = "root"

[[route]]
host = "p.test"
path_prefix = "/api/v2"
service = "v2"

[service.root]
backends = ["{}"]

[service.api]
backends = ["{}"]

[service.v2]
backends = ["{}"]
"#,
        root.addr, api.addr, v2.addr
    );
    let proxy = Proxy::start(&cfg).await;

    let cases = [
        ("/", "root"),
        ("/other", "root"),
        ("/api", "api"),
        ("/api/users", "api"),
        ("/api/v2", "v2"),
        ("/api/v2/items?x=1", "v2"),
    ];
    for (path, want) in cases {
        let (status, json) = proxy.get_json("p.test", path).await;
        assert_eq!(status, 200, "GET p.test{path}: {json}");
        assert_eq!(json["backend"], want, "GET p.test{path} → {json}");
        // The path is forwarded unchanged (no prefix stripping).
        let want_path = path.split('?').next().unwrap();
        assert_eq!(json["path"], want_path, "forwarded path for {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_is_404_and_nothing_is_forwarded() {
    let app = Backend::start("app").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "app.test"
service = "app"

[[route]]
host = "*.wild.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        app.addr
    );
    let proxy = Proxy::start(&cfg).await;

    for host in ["other.test", "app.test.evil", "xapp.test", "127.0.0.1"] {
        let resp = proxy.get(host, "/").await;
        assert_eq!(resp.status().as_u16(), 404, "Host: {host}");
    }
    assert_eq!(
        app.hits(),
        0,
        "a request for an unknown host reached a backend"
    );

    // Sanity: the route itself works.
    assert_eq!(proxy.backend_of("app.test", "/").await, "app");
    assert_eq!(app.hits(), 1);
}

fn app_config(backend: &Backend) -> String {
    format!(
        r#"{BASE}
[[route]]
host = "app.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_added() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start(&app_config(&app)).await;

    // X-Forwarded-For sent by the client: the client IP is appended.
    let resp = proxy
        .client
        .get(proxy.url("/xff"))
        .header("host", "app.test")
        .header("x-forwarded-for", "1.2.3.4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    let h = &json["headers"];
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1", "headers: {h}");
    assert_eq!(h["x-forwarded-proto"], "http", "headers: {h}");
    assert_eq!(h["x-forwarded-host"], "app.test", "headers: {h}");

    // No X-Forwarded-For from the client: just the client IP.
    let (status, json) = proxy.get_json("app.test", "/plain").await;
    assert_eq!(status, 200);
    let h = &json["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "headers: {h}");
    assert_eq!(h["x-forwarded-proto"], "http", "headers: {h}");
    assert_eq!(h["x-forwarded-host"], "app.test", "headers: {h}");
    // The original Host reaches the backend.
    assert_eq!(h["host"], "app.test", "headers: {h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_kept_when_sent() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start(&app_config(&app)).await;

    let resp = proxy
        .client
        .get(proxy.url("/rid"))
        .header("host", "app.test")
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let returned = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["headers"]["x-request-id"], "client-chosen-42");
    assert_eq!(returned.as_deref(), Some("client-chosen-42"));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_generated_when_absent() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start(&app_config(&app)).await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let resp = proxy.get("app.test", "/rid").await;
        assert_eq!(resp.status().as_u16(), 200);
        let returned = resp
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
            .expect("x-request-id on the response to the client");
        let json: serde_json::Value = resp.json().await.unwrap();
        let upstream = json["headers"]["x-request-id"]
            .as_str()
            .expect("x-request-id sent to the backend")
            .to_string();
        assert!(!upstream.trim().is_empty(), "empty generated x-request-id");
        assert_eq!(
            returned, upstream,
            "response id differs from the upstream one"
        );
        seen.push(upstream);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "generated request ids repeat: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_stripped() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start(&app_config(&app)).await;

    let req = "GET /hop HTTP/1.1\r\n\
               Host: app.test\r\n\
               Connection: keep-alive, X-Secret-Hop\r\n\
               Keep-Alive: timeout=5\r\n\
               X-Secret-Hop: 1\r\n\
               Proxy-Connection: keep-alive\r\n\
               X-End-To-End: kept\r\n\
               \r\n";
    let resp = raw_request(proxy.http_addr, req).await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let json = resp.json();
    let h = json["headers"].as_object().unwrap();
    assert_eq!(
        h.get("x-end-to-end").and_then(|v| v.as_str()),
        Some("kept"),
        "an end-to-end header was dropped: {h:?}"
    );
    assert!(
        !h.contains_key("x-secret-hop"),
        "header named in Connection reached the backend: {h:?}"
    );
    assert!(
        !h.contains_key("keep-alive"),
        "Keep-Alive reached the backend: {h:?}"
    );
    assert!(
        !h.contains_key("proxy-connection"),
        "Proxy-Connection reached the backend: {h:?}"
    );
    if let Some(c) = h.get("connection").and_then(|v| v.as_str()) {
        assert!(
            !c.to_ascii_lowercase().contains("x-secret-hop"),
            "client's Connection header forwarded as is: {c}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_over_backends() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "rr.test"
service = "rr"

[service.rr]
backends = ["{}", "{}"]
"#,
        a.addr, b.addr
    );
    let proxy = Proxy::start(&cfg).await;

    for _ in 0..10 {
        proxy.backend_of("rr.test", "/").await;
    }
    assert!(
        (4..=6).contains(&a.hits()) && (4..=6).contains(&b.hits()),
        "10 requests split {} / {}, want 5 / 5 (±1)",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn releasable_service_serves_blue_by_default() {
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
    for _ in 0..6 {
        assert_eq!(proxy.backend_of("web.test", "/").await, "blue");
    }
    assert_eq!(green.hits(), 0);
}

/// An absolute-form request target goes to the backend in origin form, so the backend cannot
/// route on an authority other than the Host the proxy routed on; one whose authority differs
/// from Host is refused.
#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_target_is_forwarded_in_origin_form() {
    let app = Backend::start("app").await;
    let cfg = format!(
        r#"{BASE}
[[route]]
host = "app.test"
service = "app"

[service.app]
backends = ["{}"]
"#,
        app.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let resp = raw_request(
        proxy.http_addr,
        "GET http://app.test/x/../y?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let body = resp.json();
    assert_eq!(body["path"], "/y", "{body}");
    assert_eq!(body["query"], "q=1", "{body}");
    assert_eq!(body["headers"]["host"], "app.test", "{body}");

    let resp = raw_request(
        proxy.http_addr,
        "GET http://other.test/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(app.hits(), 1, "the refused request reached the backend");
}

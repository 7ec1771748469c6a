//! TLS termination: real ACME issuance against Pebble (http-01 and tls-alpn-01), renewal
//! under an open connection, an ACME server that is down at start, TLS versions, ALPN h2,
//! the http → https redirect with HSTS, and the internal CA.

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::pebble::Pebble;
use crate::support::tls::{
    client_config, mode, serial_of_pem_file, tls11_client_hello, TlsConn, TlsPorts, TlsProxy,
    TLS_BASE,
};
use crate::support::{metric_value, poll_until, raw_request, Backend};

const HOST: &str = "shop.example";
/// One ACME order on a busy 2-core machine takes a second or a few.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

/// A host routed only in the second run of the ACME-down test.
const NEW_HOST: &str = "new.example";

fn route_and_service(host: &str, backend: &Backend) -> String {
    format!(
        r#"
[[route]]
host = "{host}"
service = "shop"

[service.shop]
backends = ["{}"]
"#,
        backend.addr
    )
}

fn acme_config(pebble: &Pebble, challenge: &str, backend: &Backend, extra_tls: &str) -> String {
    format!(
        r#"{TLS_BASE}
[tls]
issuer = "acme"
acme_directory = "{}"
acme_root_ca = "{}"
challenge = "{challenge}"
cert_dir = "certs"
retry_base_s = 1
{extra_tls}
{}"#,
        pebble.directory_url(),
        pebble.ca_path().display(),
        route_and_service(HOST, backend)
    )
}

fn internal_config(host: &str, backend: &Backend) -> String {
    format!(
        r#"{TLS_BASE}
[tls]
issuer = "internal"
cert_dir = "certs"
{}"#,
        route_and_service(host, backend)
    )
}

fn has_cert(entry: &serde_json::Value) -> bool {
    entry["serial"].as_str().is_some_and(|s| !s.is_empty())
}

/// Pebble, a backend and switchyard (ACME, `challenge`) in one directory.
struct AcmeEnv {
    proxy: TlsProxy,
    pebble: Pebble,
    backend: Backend,
    ports: TlsPorts,
    _dir: tempfile::TempDir,
}

impl AcmeEnv {
    async fn start(challenge: &str) -> AcmeEnv {
        let ports = TlsPorts::free();
        let pebble = Pebble::start(ports.http.port(), ports.https.port()).await;
        let backend = Backend::start("shop").await;
        let dir = tempfile::tempdir().unwrap();
        let config = acme_config(&pebble, challenge, &backend, "");
        let proxy = TlsProxy::start(dir.path(), &config, ports).await;
        AcmeEnv {
            proxy,
            pebble,
            backend,
            ports,
            _dir: dir,
        }
    }

    /// Waits until `/v1/certs` shows a certificate for HOST; returns its entry.
    async fn issued(&self) -> serde_json::Value {
        self.proxy
            .wait_cert(HOST, ISSUE_TIMEOUT, "a certificate", has_cert)
            .await
    }
}

/// `GET https://HOST:HTTPS/path` trusting only `root_pem`: 200 from the backend `shop`.
/// Returns the response headers.
async fn https_get_ok(
    proxy: &TlsProxy,
    root_pem: &str,
    host: &str,
    path: &str,
) -> reqwest::header::HeaderMap {
    let url = proxy.https_url(host, path);
    let resp = proxy
        .https_client(root_pem, host)
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}\n{}", proxy.logs()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "GET {url}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url} ({e}): {body}"));
    assert_eq!(json["backend"], "shop", "GET {url}: {body}");
    assert_eq!(json["path"], path, "GET {url}: {body}");
    assert_eq!(
        json["headers"]["x-forwarded-proto"], "https",
        "GET {url}: {body}"
    );
    headers
}

async fn acme_orders(proxy: &TlsProxy, result: &str) -> f64 {
    metric_value(
        &proxy.metrics().await,
        "switchyard_acme_orders_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

fn assert_mode_600(path: &Path) {
    assert_eq!(
        mode(path),
        0o600,
        "{} has mode {:o}, want 600",
        path.display(),
        mode(path)
    );
}

/// Issuance with `challenge`, then HTTPS verified against Pebble's issuing root, the files
/// in cert_dir and the metrics.
async fn issuance(challenge: &str) {
    let env = AcmeEnv::start(challenge).await;
    let entry = env.issued().await;
    assert_eq!(entry["issuer"], "acme", "{entry}");
    assert!(entry["last_error"].is_null(), "{entry}");
    assert!(entry["not_after"].is_string(), "{entry}");
    assert!(entry["next_renewal"].is_string(), "{entry}");
    let serial = entry["serial"].as_str().unwrap().to_string();

    let root = env.pebble.issuing_root().await;
    https_get_ok(&env.proxy, &root, HOST, "/hello").await;
    assert!(env.backend.hits() >= 1);

    let certs = env.proxy.cert_dir();
    let crt = certs.join("shop.example.crt");
    let key = certs.join("shop.example.key");
    let account = certs.join("acme-account.json");
    assert!(crt.is_file(), "{} missing", crt.display());
    assert_eq!(
        serial_of_pem_file(&crt),
        serial,
        "the certificate on disk is not the one /v1/certs reports"
    );
    assert_mode_600(&key);
    assert_mode_600(&account);

    let metrics = env.proxy.metrics().await;
    let expiry = metric_value(
        &metrics,
        "switchyard_cert_expiry_timestamp_seconds",
        &[("host", HOST)],
    )
    .unwrap_or_else(|| panic!("no switchyard_cert_expiry_timestamp_seconds{{host={HOST}}}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "certificate expiry {expiry} is not after now {now}"
    );
    assert!(acme_orders(&env.proxy, "ok").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_acme_http01_issues_a_certificate_pebble_signed() {
    issuance("http-01").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_acme_tls_alpn01_issues_a_certificate_pebble_signed() {
    issuance("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_renewal_swaps_the_certificate_under_an_open_connection() {
    let env = AcmeEnv::start("http-01").await;
    let entry = env.issued().await;
    let old = entry["serial"].as_str().unwrap().to_string();
    let root = env.pebble.issuing_root().await;
    let config = client_config(&root, &[&TLS13, &TLS12], &[b"http/1.1"]);

    let mut conn = TlsConn::connect(env.ports.https, HOST, config)
        .await
        .unwrap_or_else(|e| panic!("TLS connection: {e:?}\n{}", env.proxy.logs()));
    assert_eq!(
        conn.peer_serial(),
        old,
        "the served certificate is not /v1/certs'"
    );
    let r = conn.get(HOST, "/before").await.expect("first request");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["backend"], "shop");

    let (status, body) = env.proxy.renew(&[HOST]).await;
    assert_eq!(status, 200, "POST /v1/certs/renew: {body}");
    let renewed = env
        .proxy
        .wait_cert(HOST, ISSUE_TIMEOUT, "a new serial after renew", |e| {
            has_cert(e) && e["serial"] != old.as_str()
        })
        .await;
    let new = renewed["serial"].as_str().unwrap().to_string();
    assert!(renewed["last_error"].is_null(), "{renewed}");

    // The connection opened before the renewal still works.
    let r = conn
        .get(HOST, "/after")
        .await
        .unwrap_or_else(|e| panic!("request on the connection opened before renewal: {e:?}"));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["path"], "/after");
    assert_eq!(conn.peer_serial(), old);

    // A new connection gets the new certificate (a new client config: no TLS session to
    // resume, which would report the certificate of the original session).
    let config = client_config(&root, &[&TLS13, &TLS12], &[b"http/1.1"]);
    let mut fresh = TlsConn::connect(env.ports.https, HOST, config)
        .await
        .expect("TLS connection after renewal");
    assert_eq!(
        fresh.peer_serial(),
        new,
        "a new connection got the old certificate"
    );
    let r = fresh
        .get(HOST, "/fresh")
        .await
        .expect("request after renewal");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        serial_of_pem_file(&env.proxy.cert_dir().join("shop.example.crt")),
        new
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_acme_server_down_at_start_keeps_serving_and_retries() {
    let ports = TlsPorts::free();
    let mut pebble = Pebble::start(ports.http.port(), ports.https.port()).await;
    let backend = Backend::start("shop").await;
    let dir = tempfile::tempdir().unwrap();

    // A first run obtains a certificate.
    let mut proxy = TlsProxy::start(
        dir.path(),
        &acme_config(&pebble, "http-01", &backend, ""),
        ports,
    )
    .await;
    let entry = proxy
        .wait_cert(HOST, ISSUE_TIMEOUT, "a certificate", has_cert)
        .await;
    let old = entry["serial"].as_str().unwrap().to_string();
    let first_root = pebble.issuing_root().await;
    proxy.stop().await;
    drop(proxy);
    pebble.stop_pebble().await;

    // Restart with the ACME server down and a newly routed host that has no certificate
    // yet: its order fails and is retried; the existing certificate keeps serving.
    let config = format!(
        "{}\n[[route]]\nhost = \"{NEW_HOST}\"\nservice = \"shop\"\n",
        acme_config(&pebble, "http-01", &backend, "")
    );
    let proxy = TlsProxy::start(dir.path(), &config, ports).await;
    let entry = proxy.cert(HOST).await;
    assert_eq!(entry["serial"], old.as_str(), "{entry}");
    https_get_ok(&proxy, &first_root, HOST, "/while-acme-is-down").await;

    let errors = poll_until(Duration::from_secs(30), || async {
        let n = acme_orders(&proxy, "error").await;
        (n >= 2.0).then_some(n)
    })
    .await;
    assert!(
        errors.is_some(),
        "switchyard_acme_orders_total{{result=\"error\"}} did not reach 2 with the ACME server \
         down (retry_base_s = 1)\n{}",
        proxy.logs()
    );
    let entry = proxy.cert(NEW_HOST).await;
    assert!(
        entry["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "/v1/certs shows no last_error while the ACME server is down: {entry}"
    );
    let entry = proxy.cert(HOST).await;
    assert_eq!(entry["serial"], old.as_str(), "{entry}");
    // Still serving the existing certificate, on a fresh connection.
    let mut conn = TlsConn::connect(
        ports.https,
        HOST,
        client_config(&first_root, &[&TLS13, &TLS12], &[b"http/1.1"]),
    )
    .await
    .expect("TLS connection while the ACME server is down");
    assert_eq!(conn.peer_serial(), old);
    let r = conn.get(HOST, "/still").await.expect("request");
    assert_eq!(r.status, 200, "{}", r.body_str());

    // The ACME server comes back: a retry succeeds.
    pebble.start_pebble().await;
    let started = Instant::now();
    let issued = proxy
        .wait_cert(NEW_HOST, ISSUE_TIMEOUT, "a successful retry", |e| {
            has_cert(e) && e["last_error"].is_null()
        })
        .await;
    eprintln!(
        "issued {} after the ACME server came back in {:?}",
        issued["serial"],
        started.elapsed()
    );
    assert!(acme_orders(&proxy, "ok").await >= 1.0);
    // The restarted Pebble has a new issuing root; the new certificate chains to it, and the
    // old host still serves its first certificate.
    let second_root = pebble.issuing_root().await;
    https_get_ok(&proxy, &second_root, NEW_HOST, "/after-retry").await;
    https_get_ok(&proxy, &first_root, HOST, "/old-cert-still").await;
}

/// switchyard with the internal CA for `host`, started in a fresh directory.
async fn internal_env(host: &str) -> (TlsProxy, Backend, tempfile::TempDir, String) {
    let backend = Backend::start("shop").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = TlsProxy::start(
        dir.path(),
        &internal_config(host, &backend),
        TlsPorts::free(),
    )
    .await;
    let ca = std::fs::read_to_string(proxy.cert_dir().join("ca.crt")).expect("certs/ca.crt");
    (proxy, backend, dir, ca)
}

/// Sends a TLS 1.1-only ClientHello and returns every byte the server sends back until it
/// closes the connection.
async fn tls11_handshake(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&tls11_client_hello(HOST)).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed a TLS 1.1 ClientHello")
        .ok();
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_versions_1_2_and_1_3_only() {
    let (proxy, _backend, _dir, ca) = internal_env(HOST).await;

    for (version, expect) in [
        (&TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut conn = TlsConn::connect(
            proxy.ports.https,
            HOST,
            client_config(&ca, &[version], &[b"http/1.1"]),
        )
        .await
        .unwrap_or_else(|e| panic!("{expect:?} handshake: {e:?}\n{}", proxy.logs()));
        assert_eq!(conn.version(), Some(expect));
        let r = conn.get(HOST, "/v").await.expect("request");
        assert_eq!(r.status, 200, "{expect:?}: {}", r.body_str());
        assert_eq!(r.json()["backend"], "shop");
    }

    // TLS 1.1: the server answers the ClientHello with a fatal protocol_version alert
    // (RFC 8446 §6.2: alert record 0x15, level 2, description 70), never a ServerHello.
    let answer = tls11_handshake(proxy.ports.https).await;
    assert!(
        answer.len() >= 7,
        "expected an alert for a TLS 1.1 ClientHello, got {answer:02x?}"
    );
    assert_eq!(
        answer[0], 0x15,
        "a TLS 1.1 ClientHello got a non-alert record (a ServerHello?): {answer:02x?}"
    );
    assert_eq!(
        (answer[5], answer[6]),
        (2, 70),
        "expected a fatal protocol_version alert, got {answer:02x?}"
    );

    // A real TLS 1.1 client (OpenSSL; it sends no signature_algorithms, so rustls refuses
    // it with handshake_failure before it even looks at the version).
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .args(["-connect", &proxy.ports.https.to_string()])
        .args(["-servername", HOST])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.status.success() && text.contains("Cipher is (NONE)"),
                "openssl s_client -tls1_1 completed a handshake:\n{text}"
            );
            if text.contains("no protocols available") {
                eprintln!("this OpenSSL cannot offer TLS 1.1; only the raw ClientHello counted");
            } else {
                assert!(
                    text.contains("alert"),
                    "openssl s_client -tls1_1 failed without an alert from the server:\n{text}"
                );
            }
        }
        Err(e) => eprintln!("openssl not runnable ({e}); only the raw ClientHello counted"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_h2_is_negotiated_and_serves_http2() {
    let (proxy, _backend, _dir, ca) = internal_env(HOST).await;

    let mut conn = TlsConn::connect(
        proxy.ports.https,
        HOST,
        client_config(&ca, &[&TLS13, &TLS12], &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake: {e:?}\n{}", proxy.logs()));
    assert_eq!(
        conn.alpn().as_deref(),
        Some(&b"h2"[..]),
        "ALPN h2,http/1.1 did not negotiate h2"
    );
    let authority = format!("{HOST}:{}", proxy.ports.https.port());
    let (status, body) = conn
        .h2_get(&authority, "/over-h2")
        .await
        .unwrap_or_else(|e| panic!("HTTP/2 GET: {e:?}\n{}", proxy.logs()));
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 200, "HTTP/2 GET: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("backend JSON");
    assert_eq!(json["backend"], "shop", "{body}");
    assert_eq!(json["path"], "/over-h2", "{body}");

    // A client offering only http/1.1 gets http/1.1.
    let mut conn = TlsConn::connect(
        proxy.ports.https,
        HOST,
        client_config(&ca, &[&TLS13, &TLS12], &[b"http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let r = conn.get(HOST, "/h1").await.expect("request");
    assert_eq!(r.status, 200, "{}", r.body_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_http_redirects_to_https_and_https_sends_hsts() {
    let (proxy, backend, _dir, ca) = internal_env(HOST).await;
    let http_port = proxy.ports.http.port();
    let https_port = proxy.ports.https.port();

    let r = raw_request(
        proxy.ports.http,
        &format!("GET /a?b=1 HTTP/1.1\r\nHost: {HOST}:{http_port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://{HOST}:{https_port}/a?b=1").as_str()),
        "{r:?}"
    );

    let r = raw_request(
        proxy.ports.http,
        "GET /a HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "unknown host on http: {r:?}");
    assert_eq!(backend.hits(), 0, "the http listener forwarded a request");

    let headers = https_get_ok(&proxy, &ca, HOST, "/a").await;
    let hsts = headers
        .get("strict-transport-security")
        .unwrap_or_else(|| panic!("no strict-transport-security on https: {headers:?}"));
    assert!(
        hsts.to_str().unwrap().contains("max-age="),
        "strict-transport-security: {hsts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_internal_ca_serves_and_survives_a_restart() {
    let (mut proxy, backend, dir, ca) = internal_env("localhost").await;
    let certs = proxy.cert_dir();
    https_get_ok(&proxy, &ca, "localhost", "/internal").await;
    assert_mode_600(&certs.join("ca.key"));
    assert_mode_600(&certs.join("localhost.key"));
    let entry = proxy.cert("localhost").await;
    assert_eq!(entry["issuer"], "internal", "{entry}");
    let leaf = entry["serial"].as_str().expect("serial").to_string();
    let ca_key = std::fs::read(certs.join("ca.key")).unwrap();

    // A restart in the same directory keeps the CA (and the still valid leaf).
    let ports = proxy.ports;
    proxy.stop().await;
    drop(proxy);
    let proxy = TlsProxy::start(dir.path(), &internal_config("localhost", &backend), ports).await;
    assert_eq!(
        std::fs::read_to_string(certs.join("ca.crt")).unwrap(),
        ca,
        "ca.crt changed across a restart"
    );
    assert_eq!(
        std::fs::read(certs.join("ca.key")).unwrap(),
        ca_key,
        "ca.key changed"
    );
    https_get_ok(&proxy, &ca, "localhost", "/again").await;
    let mut conn = TlsConn::connect(
        ports.https,
        "localhost",
        client_config(&ca, &[&TLS13], &[b"http/1.1"]),
    )
    .await
    .expect("handshake after restart");
    assert_eq!(conn.peer_serial(), leaf, "the leaf was reissued at restart");
    let r = conn.get("localhost", "/conn").await.expect("request");
    assert_eq!(r.status, 200, "{}", r.body_str());
}

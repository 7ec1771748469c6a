//! ACME across a site (SPEC "Several instances (etcd)"): three instances sharing a real
//! 3-member etcd cluster behind an L4 round-robin forwarder, which is where Pebble's
//! validation connects. The leader orders one certificate per host; the challenge answers
//! are in etcd, so the instance the forwarder picks answers whichever it is; every
//! instance serves the same certificate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::version::{TLS12, TLS13};

use crate::support::etcd::{unique, EtcdCluster};
use crate::support::l4::L4;
use crate::support::pebble::Pebble;
use crate::support::tls::{client_config, TlsConn, TlsPorts, TlsProxy};
use crate::support::{free_ports, metric_value, poll_until, Backend};

const HOSTS: [&str; 2] = ["a.site.test", "b.site.test"];
/// Orders on a busy 2-core machine take a second or a few each.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

fn site_config(
    etcd: &EtcdCluster,
    prefix: &str,
    pebble: &Pebble,
    challenge: &str,
    backend: &Backend,
) -> String {
    let mut routes = String::new();
    for h in HOSTS {
        routes.push_str(&format!(
            "[[route]]\nhost = \"{h}\"\nservice = \"shop\"\n\n"
        ));
    }
    format!(
        r#"[listen]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"

[state]
dir = "state"
store = "etcd"
etcd_endpoints = {endpoints}
etcd_prefix = "{prefix}"
etcd_lease_s = 2

[tls]
issuer = "acme"
acme_directory = "{directory}"
acme_root_ca = "{root_ca}"
challenge = "{challenge}"
cert_dir = "certs"
retry_base_s = 1

{routes}
[service.shop]
backends = ["{backend}"]
"#,
        endpoints = etcd.endpoints_toml(),
        directory = pebble.directory_url(),
        root_ca = pebble.ca_path().display(),
        backend = backend.addr,
    )
}

fn has_cert(entry: &serde_json::Value) -> bool {
    entry["serial"].as_str().is_some_and(|s| !s.is_empty())
}

async fn orders(proxy: &TlsProxy, result: &str) -> f64 {
    metric_value(
        &proxy.metrics().await,
        "switchyard_acme_orders_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

async fn site_issues_once_and_serves_everywhere(challenge: &str) {
    let fwd = free_ports(2);
    let http_fwd: SocketAddr = format!("127.0.0.1:{}", fwd[0]).parse().unwrap();
    let tls_fwd: SocketAddr = format!("127.0.0.1:{}", fwd[1]).parse().unwrap();
    let (etcd, pebble, backend) = tokio::join!(
        EtcdCluster::start(3),
        Pebble::start(http_fwd.port(), tls_fwd.port()),
        Backend::start("shop")
    );
    let ports: Vec<TlsPorts> = (0..3).map(|_| TlsPorts::free()).collect();
    let l4_http = L4::start(http_fwd, ports.iter().map(|p| p.http).collect()).await;
    let l4_tls = L4::start(tls_fwd, ports.iter().map(|p| p.https).collect()).await;

    let prefix = format!("/switchyard/{}/", unique("acme"));
    let config = site_config(&etcd, &prefix, &pebble, challenge, &backend);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        TlsProxy::start(dirs[0].path(), &config, ports[0]),
        TlsProxy::start(dirs[1].path(), &config, ports[1]),
        TlsProxy::start(dirs[2].path(), &config, ports[2]),
    );
    let instances = [a, b, c];

    // Every instance gets a certificate for every host, and it is the same one.
    let root = pebble.issuing_root().await;
    let tls = client_config(&root, &[&TLS13, &TLS12], &[b"http/1.1"]);
    for host in HOSTS {
        let mut serials = Vec::new();
        for p in &instances {
            let entry = p
                .wait_cert(host, ISSUE_TIMEOUT, "a certificate", has_cert)
                .await;
            serials.push(entry["serial"].as_str().unwrap().to_string());
        }
        assert!(
            serials.windows(2).all(|w| w[0] == w[1]),
            "{host}: the instances hold different certificates: {serials:?}"
        );
        // …and serves it, verified against Pebble's issuing root.
        let mut served = Vec::new();
        for p in &instances {
            let conn = TlsConn::connect(p.ports.https, host, tls.clone())
                .await
                .unwrap_or_else(|e| {
                    panic!("TLS to {} as {host}: {e:#}\n{}", p.ports.https, p.logs())
                });
            served.push(conn.peer_serial());
        }
        assert!(
            served.windows(2).all(|w| w[0] == w[1]),
            "{host}: the instances serve different certificates: {served:?}"
        );
    }
    eprintln!(
        "{challenge}: {} hosts issued and served by 3 instances {:?} after start; validation connections per instance: http {:?}, tls {:?}",
        HOSTS.len(),
        started.elapsed(),
        l4_http.connections(),
        l4_tls.connections()
    );

    // One order per host for the whole site, none failed. (The leader counts an order once
    // the site's copy is committed, which the others may install a moment before.)
    let count = |result: &'static str| {
        let instances = &instances;
        async move {
            let mut n = 0.0;
            for p in instances {
                n += orders(p, result).await;
            }
            n
        }
    };
    poll_until(Duration::from_secs(5), || async {
        (count("ok").await >= HOSTS.len() as f64).then_some(())
    })
    .await;
    let ok = count("ok").await;
    let failed = count("error").await;
    let mut texts = String::new();
    for p in &instances {
        texts.push_str(&p.metrics().await);
    }
    let mut texts: Vec<String> = texts
        .lines()
        .filter(|l| l.contains("acme_orders_total{"))
        .map(str::to_string)
        .collect();
    for p in &instances {
        texts.extend(
            p.logs()
                .lines()
                .filter(|l| l.contains("could not obtain") || l.contains("ordering"))
                .map(str::to_string),
        );
    }
    assert_eq!(
        ok,
        HOSTS.len() as f64,
        "one successful order per host across the site: {texts:?}"
    );
    assert_eq!(failed, 0.0, "no failed order");

    // The CA's validations went through the balancer to more than one instance, so one at
    // least reached an instance that did not order: it answered from etcd.
    let validations = if challenge == "http-01" {
        l4_http.connections()
    } else {
        l4_tls.connections()
    };
    let reached = validations.iter().filter(|n| **n > 0).count();
    assert!(
        validations.iter().sum::<usize>() >= HOSTS.len() && reached >= 2,
        "validations per instance: {validations:?}"
    );

    // A renewal asked through an instance that does not lead: the leader orders it, and
    // every instance serves the new certificate.
    let mut follower = None;
    for p in &instances {
        let st: serde_json::Value = p
            .client
            .get(format!("http://{}/v1/status", p.ports.admin))
            .bearer_auth(p.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let me = p.ports.admin.to_string();
        let leads = st["instances"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["address"] == me && i["leader"] == true));
        if !leads {
            follower = Some(p);
            break;
        }
    }
    let follower = follower.expect("two of three instances do not lead");
    let old = follower.cert(HOSTS[0]).await["serial"].clone();
    let (code, body) = follower.renew(&[HOSTS[0]]).await;
    assert_eq!(code, 200, "renew through a follower: {body}");
    let mut renewed = Vec::new();
    for p in &instances {
        let e = p
            .wait_cert(HOSTS[0], ISSUE_TIMEOUT, "the renewed certificate", |e| {
                has_cert(e) && e["serial"] != old
            })
            .await;
        renewed.push(e["serial"].clone());
    }
    assert!(
        renewed.windows(2).all(|w| w[0] == w[1]),
        "after the renewal the instances hold different certificates: {renewed:?}"
    );
    poll_until(Duration::from_secs(5), || async {
        (count("ok").await > HOSTS.len() as f64).then_some(())
    })
    .await;
    assert_eq!(
        count("ok").await,
        HOSTS.len() as f64 + 1.0,
        "one more order for the renewal, by the leader only"
    );

    // The certificate is cached beside each instance (served after a restart, etcd or not).
    for p in &instances {
        for host in HOSTS {
            assert!(
                p.cert_dir().join(format!("{host}.crt")).exists(),
                "{host}.crt cached in {}",
                p.cert_dir().display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_site_one_order_per_host_same_certificate_everywhere() {
    tokio::time::timeout(
        Duration::from_secs(150),
        site_issues_once_and_serves_everywhere("http-01"),
    )
    .await
    .expect("test ran longer than 150 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_site_one_order_per_host_same_certificate_everywhere() {
    tokio::time::timeout(
        Duration::from_secs(150),
        site_issues_once_and_serves_everywhere("tls-alpn-01"),
    )
    .await
    .expect("test ran longer than 150 s");
}

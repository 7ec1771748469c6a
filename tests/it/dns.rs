//! Backends by name (`[dns]`), against a real DNS server whose records the tests change
//! (`support::dns`, pebble-challtestsrv): each address of a name is a backend, names are
//! looked up again every `refresh_s`, a failed lookup keeps the last addresses, a name that
//! appears later is smoke-checked and switched to, and `switchyard check` warns about a name
//! it cannot resolve.
//!
//! A name's addresses share one port, so the backends behind a name listen on different
//! loopback addresses (127.0.0.2, 127.0.0.3, …) with the same port.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::dns::DnsServer;
use crate::support::release::{releasectl, service_status, switch_api};
use crate::support::{client, metric_value, poll_until, Backend, Proxy, BASE};

const HOST: &str = "api.test";
const REFRESH_S: u64 = 1;

/// Backends named `names[i]` on `127.0.0.<i + 2>`, all on one port (free on each address).
async fn backends_on_one_port(names: &[&str]) -> (u16, Vec<Backend>) {
    'port: for _ in 0..50 {
        let first = Backend::start_on(names[0], "127.0.0.2:0".parse().unwrap())
            .await
            .expect("bind 127.0.0.2:0");
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", i + 2).parse().unwrap();
            match Backend::start_on(name, addr).await {
                Ok(b) => all.push(b),
                Err(_) => continue 'port,
            }
        }
        return (port, all);
    }
    panic!(
        "no port free on 127.0.0.2-{} after 50 tries",
        names.len() + 1
    );
}

/// BASE, `[dns]` asking `dns`, and a route `api.test` → `service` (written by the caller).
fn config(dns: &DnsServer, service: &str) -> String {
    format!(
        r#"{BASE}
[dns]
resolvers = ["{}"]
refresh_s = {REFRESH_S}

[[route]]
host = "{HOST}"
service = "api"

[service.api]
{service}
"#,
        dns.addr
    )
}

/// The backend answering one `GET api.test/` through the proxy, or what went wrong.
async fn who(http: &reqwest::Client, proxy: &Proxy) -> Result<String, String> {
    let resp = http
        .get(proxy.url("/"))
        .header("host", HOST)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    Ok(v["backend"].as_str().unwrap_or_default().to_string())
}

/// `n` requests in a row; returns how many each backend answered. Panics on a failure.
async fn spread(proxy: &Proxy, n: usize) -> std::collections::BTreeMap<String, usize> {
    let http = client();
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..n {
        let b = who(&http, proxy)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", proxy.logs()));
        *counts.entry(b).or_insert(0) += 1;
    }
    counts
}

/// (addr, name, healthy) of each backend of `color` in the status.
async fn listed(proxy: &Proxy, color: &str) -> Vec<(String, Option<String>, bool)> {
    let svc = service_status(proxy, "api").await;
    svc["backends"][color]
        .as_array()
        .unwrap_or_else(|| panic!("no backends.{color}: {svc}"))
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["name"].as_str().map(String::from),
                b["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// What one request of a [`Loop`] got, and when.
type Answer = (Instant, Result<String, String>);

/// A client sending requests one after another until stopped: what each got.
struct Loop {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Answer>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    fn start(proxy: &Proxy) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = proxy.url("/");
        let (s, r) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let http = client();
            while !s.load(Ordering::Relaxed) {
                let got = match http.get(&url).header("host", HOST).send().await {
                    Err(e) => Err(format!("{e:?}")),
                    Ok(resp) if resp.status() != 200 => Err(format!("status {}", resp.status())),
                    Ok(resp) => match resp.json::<Value>().await {
                        Ok(v) => Ok(v["backend"].as_str().unwrap_or_default().to_string()),
                        Err(e) => Err(format!("{e:?}")),
                    },
                };
                r.lock().unwrap().push((Instant::now(), got));
            }
        });
        Loop { stop, seen, task }
    }

    /// The last `n` answers all came from `backend`.
    fn last_from(&self, backend: &str, n: usize) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.len() >= n
            && seen[seen.len() - n..]
                .iter()
                .all(|(_, r)| r.as_deref() == Ok(backend))
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_change_moves_traffic_within_refresh_s_and_fails_no_request() {
    let dns = DnsServer::start().await;
    let (port, backends) = backends_on_one_port(&["old", "new"]).await;
    dns.set_a("api.dns.test", &["127.0.0.2"]).await;
    let proxy = Proxy::start(&config(
        &dns,
        &format!(
            r#"backends = ["api.dns.test:{port}"]
health_check = {{ path = "/health", interval_ms = 200 }}"#
        ),
    ))
    .await;
    // Ready means looked up: the first request already has a backend.
    assert_eq!(spread(&proxy, 5).await["old"], 5);
    let name = format!("api.dns.test:{port}");
    assert_eq!(
        listed(&proxy, "default").await,
        [(format!("127.0.0.2:{port}"), Some(name.clone()), true)]
    );

    let traffic = Loop::start(&proxy);
    poll_until(Duration::from_secs(5), || async {
        traffic.last_from("old", 20).then_some(())
    })
    .await
    .expect("the client loop reaches the old address");
    dns.set_a("api.dns.test", &["127.0.0.3"]).await;
    let changed = Instant::now();
    let moved = poll_until(Duration::from_secs(REFRESH_S + 5), || async {
        traffic.last_from("new", 20).then_some(())
    })
    .await;
    let old_hits = backends[0].hits();
    let seen = traffic.finish().await;
    assert!(
        moved.is_some(),
        "traffic did not move to the new address\n{}",
        proxy.logs()
    );
    // The first request to reach the new address: within refresh_s (plus the lookup).
    let first_new = seen
        .iter()
        .find(|(_, r)| r.as_deref() == Ok("new"))
        .map(|(at, _)| at.duration_since(changed))
        .unwrap();
    assert!(
        first_new < Duration::from_secs(REFRESH_S) + Duration::from_millis(1000),
        "the move took {first_new:?} with refresh_s = {REFRESH_S}"
    );
    let failed: Vec<&String> = seen.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the address change: {failed:?}\n{}",
        failed.len(),
        seen.len(),
        proxy.logs()
    );
    assert!(seen.len() > 40, "only {} requests ran", seen.len());
    eprintln!(
        "address change: the new address answered {first_new:?} after the record changed; \
         {} requests in the loop, none failed",
        seen.len()
    );

    // The old address is out of the pool: no new request reaches it.
    assert_eq!(spread(&proxy, 10).await["new"], 10);
    assert_eq!(backends[0].hits(), old_hits);
    assert_eq!(
        listed(&proxy, "default").await,
        [(format!("127.0.0.3:{port}"), Some(name), true)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_records_share_traffic_and_each_address_is_health_checked() {
    let dns = DnsServer::start().await;
    let (port, backends) = backends_on_one_port(&["two", "three"]).await;
    dns.set_a("api.dns.test", &["127.0.0.2", "127.0.0.3"]).await;
    let proxy = Proxy::start(&config(
        &dns,
        &format!(
            r#"backends = ["api.dns.test:{port}"]
health_check = {{ path = "/health", interval_ms = 100, fall = 1, rise = 1 }}"#
        ),
    ))
    .await;
    let counts = spread(&proxy, 40).await;
    assert_eq!(counts.get("two"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("three"), Some(&20), "{counts:?}");
    let name = format!("api.dns.test:{port}");
    assert_eq!(
        listed(&proxy, "default").await,
        [
            (format!("127.0.0.2:{port}"), Some(name.clone()), true),
            (format!("127.0.0.3:{port}"), Some(name.clone()), true)
        ]
    );

    // One address failing its health checks leaves the rotation; the other takes it all.
    backends[1].set_healthy(false);
    let down = poll_until(Duration::from_secs(10), || async {
        let l = listed(&proxy, "default").await;
        (l.len() == 2 && !l[1].2).then_some(())
    })
    .await;
    assert!(down.is_some(), "127.0.0.3 never marked down");
    assert_eq!(spread(&proxy, 10).await.get("two"), Some(&10));
    let m = proxy.metrics().await;
    let up = |addr: &str| {
        metric_value(
            &m,
            "switchyard_backend_up",
            &[("service", "api"), ("backend", addr)],
        )
    };
    assert_eq!(up(&format!("127.0.0.2:{port}")), Some(1.0), "{m}");
    assert_eq!(up(&format!("127.0.0.3:{port}")), Some(0.0), "{m}");

    // The health state survives refreshes while the address stays.
    tokio::time::sleep(Duration::from_secs(REFRESH_S * 2)).await;
    assert!(!listed(&proxy, "default").await[1].2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_record_keeps_the_last_address_and_counts_the_failures() {
    let dns = DnsServer::start().await;
    let (port, _backends) = backends_on_one_port(&["only"]).await;
    dns.set_a("api.dns.test", &["127.0.0.2"]).await;
    let proxy = Proxy::start(&config(
        &dns,
        &format!(r#"backends = ["api.dns.test:{port}"]"#),
    ))
    .await;
    let name = format!("api.dns.test:{port}");
    let failures = |m: &str| {
        metric_value(m, "switchyard_dns_failures_total", &[("name", &name)]).unwrap_or(0.0)
    };
    assert_eq!(failures(&proxy.metrics().await), 0.0);
    assert_eq!(spread(&proxy, 3).await["only"], 3);

    dns.clear_a("api.dns.test").await;
    let counted = poll_until(Duration::from_secs(REFRESH_S * 3 + 5), || async {
        (failures(&proxy.metrics().await) >= 2.0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "no failed lookup counted\n{}",
        proxy.logs()
    );
    // Still served by the last address, still listed under its name.
    assert_eq!(spread(&proxy, 10).await["only"], 10);
    assert_eq!(
        listed(&proxy, "default").await,
        [(format!("127.0.0.2:{port}"), Some(name.clone()), true)]
    );
    assert!(
        proxy.logs().contains("keeping its last addresses"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_appears_later_is_smoke_checked_and_switched_to() {
    let dns = DnsServer::start().await;
    let blue = Backend::start("blue").await;
    let (port, green) = backends_on_one_port(&["green"]).await;
    // green.dns.test has no record yet: the start goes on, with an empty green pool.
    let proxy = Proxy::start(&config(
        &dns,
        &format!(
            r#"blue = ["{}"]
green = ["green.dns.test:{port}"]
smoke = [{{ path = "/health", expect_status = 200 }}]"#,
            blue.addr
        ),
    ))
    .await;
    let name = format!("green.dns.test:{port}");
    let svc = service_status(&proxy, "api").await;
    assert_eq!(svc["backends"]["green"], json!([]), "{svc}");
    assert_eq!(svc["unresolved"]["green"], json!([name]), "{svc}");
    let text = releasectl(&proxy, &["status"]).await;
    text.expect_code(0);
    assert!(
        text.stdout.contains(&format!("{name} (unresolved)")),
        "{text}"
    );

    // A switch to a color whose name never resolved is refused by its smoke checks.
    let refused = releasectl(&proxy, &["switch", "green"]).await;
    refused.expect_code(1);
    assert!(refused.stderr.contains(&name), "{refused}");
    assert_eq!(spread(&proxy, 3).await["blue"], 3);
    // The name is looked up again every refresh_s: each failure counts.
    let retried = poll_until(Duration::from_secs(REFRESH_S * 3 + 5), || async {
        let m = proxy.metrics().await;
        let n = metric_value(&m, "switchyard_dns_failures_total", &[("name", &name)]);
        (n.unwrap_or(0.0) >= 2.0).then_some(())
    })
    .await;
    assert!(retried.is_some(), "the name was not retried");

    dns.set_a("green.dns.test", &["127.0.0.2"]).await;
    let joined = poll_until(Duration::from_secs(REFRESH_S + 5), || async {
        let l = listed(&proxy, "green").await;
        (!l.is_empty()).then_some(l)
    })
    .await
    .expect("green's name never joined its pool");
    assert_eq!(
        joined,
        [(format!("127.0.0.2:{port}"), Some(name.clone()), true)]
    );

    let smoked_before = green[0].health_hits();
    let (code, body) = switch_api(&proxy, json!({ "color": "green" })).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        green[0].health_hits() > smoked_before,
        "the switch did not smoke-check the new address"
    );
    let smoke = body["smoke"].as_array().unwrap();
    assert_eq!(smoke.len(), 1, "{body}");
    assert_eq!(
        smoke[0]["backend"],
        json!(format!("{name} (127.0.0.2:{port})"))
    );
    assert_eq!(spread(&proxy, 5).await["green"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn releasectl_backends_accepts_a_name() {
    let dns = DnsServer::start().await;
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (port, v2) = backends_on_one_port(&["v2-a", "v2-b"]).await;
    dns.set_a("api-v2.dns.test", &["127.0.0.2", "127.0.0.3"])
        .await;
    let proxy = Proxy::start(&config(
        &dns,
        &format!(
            r#"blue = ["{}"]
green = ["{}"]
smoke = [{{ path = "/health", expect_status = 200 }}]"#,
            blue.addr, green.addr
        ),
    ))
    .await;
    let name = format!("api-v2.dns.test:{port}");
    let out = releasectl(&proxy, &["backends", "green", &name, "--service", "api"]).await;
    out.expect_code(0);
    // Looked up before the answer: the addresses are in the pool right away.
    assert_eq!(
        listed(&proxy, "green").await,
        [
            (format!("127.0.0.2:{port}"), Some(name.clone()), true),
            (format!("127.0.0.3:{port}"), Some(name.clone()), true)
        ]
    );
    let text = releasectl(&proxy, &["status"]).await;
    assert!(
        text.stdout.contains(&format!(
            "{name} (127.0.0.2:{port}), {name} (127.0.0.3:{port})"
        )),
        "{text}"
    );
    releasectl(&proxy, &["switch", "green"])
        .await
        .expect_code(0);
    assert!(
        v2.iter().all(|b| b.health_hits() >= 1),
        "both smoke-checked"
    );
    let counts = spread(&proxy, 10).await;
    assert_eq!(counts.get("v2-a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("v2-b"), Some(&5), "{counts:?}");
    assert_eq!(green.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_a_name_it_cannot_resolve_and_exits_0() {
    let dns = DnsServer::start().await;
    dns.set_a("here.dns.test", &["127.0.0.2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        r#"[listen]
http = "127.0.0.1:18080"

[dns]
resolvers = ["{}"]

[[route]]
host = "{HOST}"
service = "api"

[service.api]
blue = ["here.dns.test:8000"]
green = ["nowhere.dns.test:8000"]
"#,
        dns.addr
    );
    std::fs::write(&path, text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "warning: key `service.api.green`: backend `nowhere.dns.test:8000` does not resolve from here"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("`here.dns.test:8000`"), "{stderr}");
    assert!(
        stdout.contains("ok (1 routes, 1 services; 1 backend name does not resolve here)"),
        "{stdout}"
    );
}

//! The SLO watch and canaries end to end: a `switchyard` child in front of a
//! healthy blue and a green whose failure share and latency the test sets
//! (`support::faulty`), real load from concurrent client loops, and the
//! controller's own decisions observed through status, history and metrics.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::faulty::Faulty;
use crate::support::release::{admin_call, releasectl, service_status, switch_api, token};
use crate::support::{metric_value, poll_until, Backend, Proxy, BASE};

const HOST: &str = "canary.test";
const SVC: &str = "web";

/// BASE + route `canary.test` → releasable service `web`, then `extra` lines
/// inside `[service.web]`.
fn config(blue: &str, green: &str, extra: &str) -> String {
    format!(
        r#"{BASE}
[server]
grace_s = 1

[[route]]
host = "{HOST}"
service = "{SVC}"

[service.{SVC}]
blue = ["{blue}"]
green = ["{green}"]
{extra}
"#
    )
}

/// `slo = { … }` with the given fields.
fn slo(fields: &str) -> String {
    format!("slo = {{ {fields} }}")
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// What the clients saw: answers per backend name (`"proxy"` when the body is
/// not a backend's JSON, e.g. a 502 from the proxy) and per status.
#[derive(Debug, Default, Clone)]
struct Tally {
    by_backend: BTreeMap<String, usize>,
    by_status: BTreeMap<u16, usize>,
    transport_errors: usize,
}

impl Tally {
    fn of(&self, backend: &str) -> usize {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.by_status.values().sum()
    }
}

/// One GET `canary.test/` through the proxy with `client`, recorded in `t`.
async fn hit(client: &reqwest::Client, url: &str, t: &Mutex<Tally>) {
    match client.get(url).header("host", HOST).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let backend = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["backend"].as_str().map(str::to_string))
                .unwrap_or_else(|| "proxy".to_string());
            let mut t = t.lock().unwrap();
            *t.by_backend.entry(backend).or_default() += 1;
            *t.by_status.entry(status).or_default() += 1;
        }
        Err(_) => t.lock().unwrap().transport_errors += 1,
    }
}

/// `loops` client loops sending GET `canary.test/` through the proxy, each
/// pausing `pause` between requests, until stopped (or dropped).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
}

impl Load {
    fn start(proxy: &Proxy, loops: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let url = proxy.url("/");
        let tasks = (0..loops)
            .map(|_| {
                let (stop, tally, url) = (stop.clone(), tally.clone(), url.clone());
                tokio::spawn(async move {
                    let client = crate::support::client();
                    while !stop.load(Ordering::Relaxed) {
                        hit(&client, &url, &tally).await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks, tally }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    async fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.tally()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `n` requests through the proxy, `concurrency` at a time, each on a fresh
/// connection-pool client per worker.
async fn send(proxy: &Proxy, n: usize, concurrency: usize) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let url = proxy.url("/");
    let per = n / concurrency;
    let extra = n % concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (tally, url) = (tally.clone(), url.clone());
            let count = per + usize::from(i < extra);
            tokio::spawn(async move {
                let client = crate::support::client();
                for _ in 0..count {
                    hit(&client, &url, &tally).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let t = tally.lock().unwrap().clone();
    t
}

// ---------------------------------------------------------------------------
// Admin helpers
// ---------------------------------------------------------------------------

/// Every history event, oldest first.
async fn history(proxy: &Proxy) -> Vec<Value> {
    let t = token(proxy);
    let (code, body) =
        admin_call(proxy, Method::GET, "/v1/history?limit=1000", Some(&t), None).await;
    assert_eq!(code, 200, "GET /v1/history: {body}");
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in history: {body}"))
        .clone()
}

fn with_action<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

async fn post(proxy: &Proxy, path: &str, body: Value) -> (u16, Value) {
    let t = token(proxy);
    admin_call(proxy, Method::POST, path, Some(&t), Some(body)).await
}

async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_value(&proxy.metrics().await, name, labels)
}

async fn rollbacks(proxy: &Proxy, reason: &str) -> f64 {
    metric(
        proxy,
        "switchyard_rollbacks_total",
        &[("service", SVC), ("reason", reason)],
    )
    .await
    .unwrap_or(0.0)
}

/// Rollbacks the controller refused (the previous color had no healthy backend), by the
/// breach that asked for them.
async fn refused_rollbacks(proxy: &Proxy, reason: &str) -> f64 {
    metric(
        proxy,
        "switchyard_rollbacks_refused_total",
        &[("service", SVC), ("reason", reason)],
    )
    .await
    .unwrap_or(0.0)
}

/// Polls status until `active` of the service is `color`; returns how long it took.
async fn wait_active(proxy: &Proxy, color: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    poll_until(timeout, || async {
        let s = service_status(proxy, SVC).await;
        (s["active"] == color).then(|| start.elapsed())
    })
    .await
}

/// For `dur`, checks status every 100 ms: `active` must stay `color`.
async fn assert_stays(proxy: &Proxy, color: &str, dur: Duration, ctx: &str) {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let s = service_status(proxy, SVC).await;
        assert_eq!(
            s["active"],
            color,
            "{ctx}: active left {color}: {s}\nhistory: {:#?}",
            history(proxy).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The single SLO rollback event in history, checked against the breach
/// expected: `breached` = web, color = green, reason and plausible figures.
fn check_rollback_event(events: &[Value], reason: &str) -> Value {
    let rb = with_action(events, "rollback");
    assert_eq!(
        rb.len(),
        1,
        "want exactly one rollback event in history: {events:#?}"
    );
    let e = rb[0].clone();
    let d = &e["detail"];
    assert_eq!(d["reason"], reason, "rollback reason: {e}");
    assert_eq!(
        d["breached"], SVC,
        "rollback names the breaching service: {e}"
    );
    assert_eq!(
        d["color"], "green",
        "rollback names the breached color: {e}"
    );
    let f = &d["figures"];
    for k in [
        "requests",
        "errors",
        "error_rate",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ] {
        assert!(f[k].is_number(), "figures.{k} missing in {e}");
    }
    e
}

// ---------------------------------------------------------------------------
// 1. Error-rate breach after a switch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn error_rate_breach_rolls_back() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    green.set_fail_pct(50);
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, max_p95_ms = 200, window_s = 10, min_requests = 20, watch_s = 60"),
    ))
    .await;
    assert_eq!(rollbacks(&proxy, "error_rate").await, 0.0);

    let load = Load::start(&proxy, 4, Duration::from_millis(5));
    let warm = poll_until(Duration::from_secs(10), || async {
        (load.tally().of("blue") >= 20).then_some(())
    })
    .await;
    assert!(warm.is_some(), "no load reached blue: {:?}", load.tally());

    let t0 = Instant::now();
    let (code, body) = switch_api(&proxy, json!({ "color": "green" })).await;
    assert_eq!(code, 200, "switch to green: {body}");
    assert_eq!(
        body["status"]["services"][SVC]["active"], "green",
        "the switch answer shows green active: {body}"
    );

    let back = wait_active(&proxy, "blue", Duration::from_secs(10)).await;
    let took = t0.elapsed();
    let tally = load.stop().await;
    let Some(_) = back else {
        panic!(
            "no rollback within 10 s of switching to a green failing 50 % \
             (green hits {}, failures {}; clients saw {tally:?})\nhistory: {:#?}",
            green.hits(),
            green.failures(),
            history(&proxy).await
        );
    };
    println!(
        "[canary::error_rate_breach_rolls_back] switch → rollback (seen in status): {took:?} \
         (green served {} requests, {} failed)",
        green.hits(),
        green.failures()
    );
    assert!(green.hits() >= 20, "green got {} requests", green.hits());
    assert!(green.failures() > 0, "green never failed");

    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "blue", "{s}");
    assert!(s["canary"].is_null(), "{s}");

    let events = history(&proxy).await;
    let e = check_rollback_event(&events, "error_rate");
    let f = &e["detail"]["figures"];
    let requests = f["requests"].as_u64().unwrap();
    let errors = f["errors"].as_u64().unwrap();
    let rate = f["error_rate"].as_f64().unwrap();
    assert!(requests >= 20, "judged below min_requests: {e}");
    assert!(errors > 0 && errors <= requests, "figures: {e}");
    assert!(
        (0.3..=0.7).contains(&rate),
        "green fails every other request, the window's error rate should be near 50 %: {e}"
    );
    assert_eq!(rollbacks(&proxy, "error_rate").await, 1.0);
    assert_eq!(rollbacks(&proxy, "p95").await, 0.0);

    // New requests go to blue again.
    let after = send(&proxy, 20, 1).await;
    assert_eq!(after.of("blue"), 20, "after the rollback: {after:?}");
}

// ---------------------------------------------------------------------------
// 2. p95 breach after a switch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn p95_breach_rolls_back() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    green.set_delay_ms(400);
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, max_p95_ms = 200, window_s = 10, min_requests = 20, watch_s = 60"),
    ))
    .await;

    let load = Load::start(&proxy, 10, Duration::from_millis(5));
    let t0 = Instant::now();
    let (code, body) = switch_api(&proxy, json!({ "color": "green" })).await;
    assert_eq!(code, 200, "switch to green: {body}");

    let back = wait_active(&proxy, "blue", Duration::from_secs(15)).await;
    let took = t0.elapsed();
    let tally = load.stop().await;
    assert!(
        back.is_some(),
        "no rollback within 15 s of switching to a green answering in 400 ms \
         (green hits {}; clients saw {tally:?})\nhistory: {:#?}",
        green.hits(),
        history(&proxy).await
    );
    println!(
        "[canary::p95_breach_rolls_back] switch → rollback (seen in status): {took:?} \
         (green served {} requests)",
        green.hits()
    );

    let events = history(&proxy).await;
    let e = check_rollback_event(&events, "p95");
    let f = &e["detail"]["figures"];
    assert!(f["requests"].as_u64().unwrap() >= 20, "{e}");
    assert_eq!(f["errors"], 0, "green answered 200 only: {e}");
    assert!(
        f["p95_ms"].as_u64().unwrap() > 200,
        "p95 over the 200 ms SLO: {e}"
    );
    assert_eq!(rollbacks(&proxy, "p95").await, 1.0);
    assert_eq!(rollbacks(&proxy, "error_rate").await, 0.0);
    assert_eq!(
        tally.by_status.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "slow is not failed: {tally:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. A healthy green under load stays
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn healthy_green_is_kept() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, max_p95_ms = 200, window_s = 10, min_requests = 20, watch_s = 60"),
    ))
    .await;

    let load = Load::start(&proxy, 4, Duration::from_millis(5));
    let (code, body) = switch_api(&proxy, json!({ "color": "green" })).await;
    assert_eq!(code, 200, "switch to green: {body}");

    // Well past min_requests on green…
    let judged = poll_until(Duration::from_secs(10), || async {
        (green.hits() >= 100).then_some(())
    })
    .await;
    assert!(
        judged.is_some(),
        "green got only {} requests in 10 s",
        green.hits()
    );
    // …and for 3 more seconds of watch ticks, it stays.
    assert_stays(&proxy, "green", Duration::from_secs(3), "healthy green").await;
    let tally = load.stop().await;
    assert!(green.hits() >= 200, "green served {}", green.hits());
    assert_eq!(tally.transport_errors, 0, "{tally:?}");
    assert!(
        tally.by_status.keys().all(|s| *s == 200),
        "only 200s: {tally:?}"
    );

    let events = history(&proxy).await;
    assert!(
        with_action(&events, "rollback").is_empty() && with_action(&events, "alarm").is_empty(),
        "no rollback or alarm for a healthy green: {events:#?}"
    );
    for reason in ["error_rate", "p95", "p99"] {
        assert_eq!(rollbacks(&proxy, reason).await, 0.0, "reason {reason}");
        assert_eq!(
            refused_rollbacks(&proxy, reason).await,
            0.0,
            "refused, reason {reason}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Nothing is judged below min_requests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn no_rollback_below_min_requests() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    green.set_fail_pct(100);
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, window_s = 60, min_requests = 20, watch_s = 120"),
    ))
    .await;

    let (code, body) = switch_api(&proxy, json!({ "color": "green" })).await;
    assert_eq!(code, 200, "switch to green: {body}");
    let few = send(&proxy, 5, 1).await;
    assert_eq!(
        few.by_status.get(&500).copied(),
        Some(5),
        "every green answer fails: {few:?}"
    );

    // 3 s of watch ticks with 5 failures of 5 in the window: below min_requests.
    assert_stays(
        &proxy,
        "green",
        Duration::from_secs(3),
        "5 requests < min 20",
    )
    .await;
    assert!(
        with_action(&history(&proxy).await, "rollback").is_empty(),
        "no rollback below min_requests"
    );

    // Control: the watch is live, crossing min_requests rolls back.
    let t0 = Instant::now();
    let more = send(&proxy, 20, 1).await;
    let back = wait_active(&proxy, "blue", Duration::from_secs(10)).await;
    assert!(
        back.is_some(),
        "25 failures of 25 should roll back: {more:?}\n{:#?}",
        history(&proxy).await
    );
    println!(
        "[canary::no_rollback_below_min_requests] control: min_requests crossed → rollback in {:?}",
        t0.elapsed()
    );
    let e = check_rollback_event(&history(&proxy).await, "error_rate");
    assert!(
        e["detail"]["figures"]["requests"].as_u64().unwrap() >= 20,
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// 5. Canary weight splits traffic; abort sends it all back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn canary_split_within_tolerance_then_abort() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&config(&blue.addr_str(), &green.addr_str(), "")).await;

    let (code, body) = post(
        &proxy,
        "/v1/canary",
        json!({ "color": "green", "steps": [30, 100], "interval_s": 600, "skip_smoke": false }),
    )
    .await;
    assert_eq!(code, 200, "POST /v1/canary: {body}");
    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "blue", "{s}");
    assert_eq!(
        s["canary"],
        json!({ "color": "green", "weight": 30 }),
        "{s}"
    );
    let w = metric(&proxy, "switchyard_canary_weight", &[("service", SVC)]).await;
    assert_eq!(w, Some(30.0), "switchyard_canary_weight during the canary");

    let t = send(&proxy, 600, 6).await;
    assert_eq!(t.total(), 600, "{t:?}");
    assert_eq!(t.of("blue") + t.of("green"), 600, "{t:?}");
    let share = t.of("green") as f64 / 600.0;
    println!(
        "[canary::canary_split_within_tolerance_then_abort] green share at weight 30: {:.1} % ({t:?})",
        share * 100.0
    );
    assert!(
        (0.23..=0.37).contains(&share),
        "green share {:.1} % outside 30 % ± 7 %: {t:?}",
        share * 100.0
    );

    let (code, body) = post(&proxy, "/v1/canary/abort", json!({})).await;
    assert_eq!(code, 200, "POST /v1/canary/abort: {body}");
    let s = service_status(&proxy, SVC).await;
    assert!(s["canary"].is_null(), "canary after abort: {s}");
    assert_eq!(s["active"], "blue", "{s}");
    let w = metric(&proxy, "switchyard_canary_weight", &[("service", SVC)]).await;
    assert_eq!(w, Some(0.0), "switchyard_canary_weight after abort");

    let green_before = green.hits();
    let t = send(&proxy, 100, 4).await;
    assert_eq!(
        t.of("blue"),
        100,
        "after abort every request is blue: {t:?}"
    );
    assert_eq!(green.hits(), green_before, "green got traffic after abort");
    assert_eq!(with_action(&history(&proxy).await, "abort").len(), 1);
}

// ---------------------------------------------------------------------------
// 6. releasectl canary promotes a healthy green
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn releasectl_canary_promotes_healthy_green() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, max_p95_ms = 200, window_s = 10, min_requests = 20, watch_s = 60"),
    ))
    .await;

    let load = Load::start(&proxy, 2, Duration::from_millis(20));
    let out = releasectl(
        &proxy,
        &[
            "canary",
            "green",
            "--steps",
            "20,50,100",
            "--interval",
            "1s",
        ],
    )
    .await;
    let tally = load.stop().await;
    out.expect_code(0);
    println!(
        "[canary::releasectl_canary_promotes_healthy_green] releasectl canary took {:?}",
        out.elapsed
    );
    assert!(
        out.stdout.contains("promoted"),
        "releasectl says it promoted:\n{out}"
    );
    assert!(out.stdout.contains("at 20%"), "progress shows 20 %:\n{out}");
    assert!(
        out.elapsed >= Duration::from_secs(1),
        "two intervals of 1 s cannot pass that fast:\n{out}"
    );

    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "green", "{s}");
    assert_eq!(s["previous"], "blue", "{s}");
    assert!(s["canary"].is_null(), "{s}");
    assert!(green.hits() > 0, "green served nothing during the canary");
    assert!(tally.of("green") > 0 && tally.of("blue") > 0, "{tally:?}");
    assert!(
        tally.by_status.keys().all(|s| *s == 200),
        "no failure during the canary: {tally:?}"
    );

    let events = history(&proxy).await;
    let weights: Vec<Value> = with_action(&events, "canary")
        .iter()
        .map(|e| e["detail"]["weight"].clone())
        .collect();
    assert_eq!(
        weights,
        vec![json!(20), json!(50)],
        "canary steps: {events:#?}"
    );
    let promotes = with_action(&events, "promote");
    assert_eq!(promotes.len(), 1, "{events:#?}");
    assert_eq!(promotes[0]["detail"]["by"], "canary", "{events:#?}");
    assert!(with_action(&events, "rollback").is_empty(), "{events:#?}");
    let w = metric(&proxy, "switchyard_canary_weight", &[("service", SVC)]).await;
    assert_eq!(w, Some(0.0), "canary weight after the promotion");
}

// ---------------------------------------------------------------------------
// 7. releasectl canary of a failing green is rolled back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn releasectl_canary_of_failing_green_rolls_back() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    green.set_fail_pct(50);
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &slo("max_error_rate = 0.05, max_p95_ms = 200, window_s = 10, min_requests = 20, watch_s = 60"),
    ))
    .await;

    let load = Load::start(&proxy, 4, Duration::from_millis(5));
    let out = releasectl(
        &proxy,
        &[
            "canary",
            "green",
            "--steps",
            "20,50,100",
            "--interval",
            "2s",
        ],
    )
    .await;
    let tally = load.stop().await;
    println!(
        "[canary::releasectl_canary_of_failing_green_rolls_back] releasectl canary exited after {:?} \
         (green served {}, {} failed)",
        out.elapsed,
        green.hits(),
        green.failures()
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("rolled back"),
        "releasectl says the canary was rolled back:\n{out}"
    );
    assert!(green.failures() > 0, "green never failed: {tally:?}");

    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "blue", "{s}");
    assert!(s["canary"].is_null(), "{s}");
    let events = history(&proxy).await;
    let e = check_rollback_event(&events, "error_rate");
    assert!(
        e["detail"]["figures"]["requests"].as_u64().unwrap() >= 20,
        "{e}"
    );
    assert!(with_action(&events, "promote").is_empty(), "{events:#?}");
    assert_eq!(rollbacks(&proxy, "error_rate").await, 1.0);
    let w = metric(&proxy, "switchyard_canary_weight", &[("service", SVC)]).await;
    assert_eq!(w, Some(0.0), "canary weight after the breach");

    let after = send(&proxy, 30, 2).await;
    assert_eq!(after.of("blue"), 30, "after the breach: {after:?}");
}

// ---------------------------------------------------------------------------
// 8. releasectl promote and abort act on a running canary
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn releasectl_promote_and_abort() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&config(&blue.addr_str(), &green.addr_str(), "")).await;

    let out = releasectl(
        &proxy,
        &[
            "canary",
            "green",
            "--steps",
            "10,100",
            "--interval",
            "10m",
            "--detach",
        ],
    )
    .await;
    out.expect_code(0);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "--detach returns at once:\n{out}"
    );
    let s = service_status(&proxy, SVC).await;
    assert_eq!(
        s["canary"],
        json!({ "color": "green", "weight": 10 }),
        "{s}"
    );
    assert_eq!(s["active"], "blue", "{s}");

    releasectl(&proxy, &["promote"]).await.expect_code(0);
    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "green", "after promote: {s}");
    assert!(s["canary"].is_null(), "after promote: {s}");
    let t = send(&proxy, 20, 2).await;
    assert_eq!(t.of("green"), 20, "after promote: {t:?}");

    // A canary back to blue, then abort it: green stays.
    releasectl(
        &proxy,
        &[
            "canary",
            "blue",
            "--steps",
            "10,100",
            "--interval",
            "10m",
            "--detach",
        ],
    )
    .await
    .expect_code(0);
    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["canary"], json!({ "color": "blue", "weight": 10 }), "{s}");
    let out = releasectl(&proxy, &["abort"]).await;
    out.expect_code(0);
    let s = service_status(&proxy, SVC).await;
    assert!(s["canary"].is_null(), "after abort: {s}");
    assert_eq!(s["active"], "green", "abort keeps the active color: {s}");
    let t = send(&proxy, 20, 2).await;
    assert_eq!(t.of("green"), 20, "after abort: {t:?}");

    // Nothing left to act on.
    let out = releasectl(&proxy, &["abort"]).await;
    assert_ne!(
        out.code,
        Some(0),
        "abort without a canary must fail:\n{out}"
    );

    let events = history(&proxy).await;
    let promotes = with_action(&events, "promote");
    assert_eq!(promotes.len(), 1, "{events:#?}");
    assert_eq!(promotes[0]["detail"]["by"], "operator", "{events:#?}");
    assert_eq!(with_action(&events, "abort").len(), 1, "{events:#?}");
}

// ---------------------------------------------------------------------------
// 9. sticky = true keeps each client address on one color
// ---------------------------------------------------------------------------

/// A client whose connections leave from `ip`, with no pooled connection
/// (every request opens a new one, from a new port).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The colors `n` requests from `ip` reached.
async fn colors_from(proxy: &Proxy, ip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    let client = client_from(ip);
    let url = proxy.url("/");
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let resp = client
            .get(&url)
            .header("host", HOST)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET from {ip} (request {i}): {e:?}"));
        assert_eq!(resp.status().as_u16(), 200, "GET from {ip}");
        let v: Value = resp.json().await.unwrap();
        *seen
            .entry(v["backend"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_canary_keeps_each_client_on_one_color() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr_str(),
        "sticky = true",
    ))
    .await;

    let (code, body) = post(
        &proxy,
        "/v1/canary",
        json!({ "color": "green", "steps": [50, 100], "interval_s": 600 }),
    )
    .await;
    assert_eq!(code, 200, "POST /v1/canary: {body}");
    assert_eq!(
        service_status(&proxy, SVC).await["canary"],
        json!({ "color": "green", "weight": 50 })
    );

    let one = colors_from(&proxy, Ipv4Addr::new(127, 0, 0, 1), 50).await;
    assert_eq!(one.len(), 1, "127.0.0.1 saw both colors: {one:?}");

    let mut per_color: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for n in 2..=41u8 {
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let seen = colors_from(&proxy, ip, 6).await;
        assert_eq!(seen.len(), 1, "{ip} saw both colors: {seen:?}");
        let color = seen.into_keys().next().unwrap();
        per_color.entry(color).or_default().push(ip);
    }
    let counts: BTreeMap<&String, usize> = per_color.iter().map(|(k, v)| (k, v.len())).collect();
    println!(
        "[canary::sticky_canary_keeps_each_client_on_one_color] 40 addresses at weight 50: {counts:?}; 127.0.0.1 → {one:?}"
    );
    assert!(
        per_color.contains_key("blue") && per_color.contains_key("green"),
        "40 client addresses at weight 50 should reach both colors: {per_color:?}"
    );
}

// ---------------------------------------------------------------------------
// 10. No rollback into a pool with no healthy backend
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn no_rollback_into_dead_pool_raises_alarm() {
    let blue = Backend::start("blue").await;
    let green = Faulty::start("green").await;
    green.set_fail_pct(50);
    let proxy = Proxy::start(&config(
        &blue.addr_str(),
        &green.addr.to_string(),
        &format!(
            "health_check = {{ path = \"/health\", interval_ms = 200 }}\n{}",
            slo("max_error_rate = 0.05, window_s = 10, min_requests = 20, watch_s = 60")
        ),
    ))
    .await;

    blue.set_healthy(false);
    let dead = poll_until(Duration::from_secs(10), || async {
        let s = service_status(&proxy, SVC).await;
        (s["backends"]["blue"][0]["healthy"] == false).then_some(())
    })
    .await;
    assert!(
        dead.is_some(),
        "blue never shown unhealthy: {}",
        service_status(&proxy, SVC).await
    );
    assert_eq!(
        service_status(&proxy, SVC).await["backends"]["green"][0]["healthy"],
        true
    );

    releasectl(&proxy, &["switch", "green", "--skip-smoke"])
        .await
        .expect_code(0);
    let t0 = Instant::now();
    let load = Load::start(&proxy, 4, Duration::from_millis(5));

    let alarm = poll_until(Duration::from_secs(10), || async {
        let events = history(&proxy).await;
        with_action(&events, "alarm").first().map(|e| (*e).clone())
    })
    .await;
    let Some(alarm) = alarm else {
        let tally = load.tally();
        panic!(
            "no alarm within 10 s (green hits {}, failures {}; clients saw {tally:?})\nstatus: {}\nhistory: {:#?}",
            green.hits(),
            green.failures(),
            service_status(&proxy, SVC).await,
            history(&proxy).await
        );
    };
    println!(
        "[canary::no_rollback_into_dead_pool_raises_alarm] switch → alarm: {:?}",
        t0.elapsed()
    );
    assert_eq!(alarm["result"], "kept", "{alarm}");
    assert_eq!(alarm["detail"]["reason"], "error_rate", "{alarm}");
    assert_eq!(alarm["detail"]["breached"], SVC, "{alarm}");

    // Green keeps serving for a while; no rollback ever happens.
    assert_stays(
        &proxy,
        "green",
        Duration::from_secs(2),
        "rollback into a dead blue",
    )
    .await;
    load.stop().await;

    let s = service_status(&proxy, SVC).await;
    assert_eq!(s["active"], "green", "{s}");
    let alarm_text = s["alarm"].as_str().unwrap_or_default();
    assert!(!alarm_text.is_empty(), "status shows the alarm: {s}");
    let events = history(&proxy).await;
    assert!(
        with_action(&events, "rollback").is_empty(),
        "no rollback into a dead pool: {events:#?}"
    );
    // A refused rollback moved nothing: it is counted apart, never as a rollback.
    assert_eq!(refused_rollbacks(&proxy, "error_rate").await, 1.0);
    let m = proxy.metrics().await;
    for reason in ["error_rate", "p95", "p99"] {
        assert_eq!(
            metric_value(
                &m,
                "switchyard_rollbacks_total",
                &[("service", SVC), ("reason", reason)]
            ),
            Some(0.0),
            "switchyard_rollbacks_total{{reason={reason}}} after a refused rollback:\n{m}"
        );
    }
    assert!(
        !m.contains("refused_no_healthy_backend"),
        "the refusal is not a reason of switchyard_rollbacks_total:\n{m}"
    );
}

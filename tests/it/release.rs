//! The release controller end to end: `releasectl` and the admin API against a
//! running `switchyard`, with blue and green test backends behind it.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::release::{
    admin_call, releasectl, run_releasectl, service_status, switch_api, token, token_path, Daemon,
    KeepAlive,
};
use crate::support::{client, poll_until, Backend, Proxy, BASE};

const HOST: &str = "web.test";

/// BASE + a route `web.test` → releasable service `web` with the given colors,
/// then `extra` lines inside `[service.web]`.
fn web_config(blue: &[&Backend], green: &[&Backend], extra: &str) -> String {
    let list = |bs: &[&Backend]| {
        bs.iter()
            .map(|b| format!("\"{}\"", b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"{BASE}
[server]
grace_s = 2

[[route]]
host = "{HOST}"
service = "web"

[service.web]
blue = [{}]
green = [{}]
{extra}
"#,
        list(blue),
        list(green)
    )
}

const SMOKE: &str = r#"smoke = [{ path = "/health", expect_status = 200 }]"#;

/// The backend answering `GET web.test/` through the proxy, with a fresh
/// connection (so no pooled keep-alive connection hides a change).
async fn who(proxy: &Proxy) -> String {
    let resp = client()
        .get(proxy.url("/"))
        .header("host", HOST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {HOST}/ via proxy: {e:?}\n{}", proxy.logs()));
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "GET {HOST}/ via proxy: {status} {body}");
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not a backend echo ({e}): {body}"));
    v["backend"].as_str().unwrap().to_string()
}

/// Asserts that `n` requests in a row reach `want`.
async fn assert_traffic(proxy: &Proxy, want: &str, n: usize, ctx: &str) {
    for i in 0..n {
        let got = who(proxy).await;
        assert_eq!(got, want, "{ctx}: request {i} reached {got}, want {want}");
    }
}

fn addrs_of(svc: &Value, color: &str) -> Vec<String> {
    svc["backends"][color]
        .as_array()
        .unwrap_or_else(|| panic!("no backends.{color} in {svc}"))
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect()
}

// 1. switch / status / rollback through releasectl.
#[tokio::test(flavor = "multi_thread")]
async fn releasectl_switch_status_rollback() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], SMOKE)).await;
    assert_traffic(&proxy, "blue", 3, "before any switch").await;

    let out = releasectl(&proxy, &["switch", "green"]).await;
    out.expect_code(0);
    assert!(
        out.stdout.contains("web") && out.stdout.contains("green"),
        "switch output should name the change:\n{out}"
    );
    assert_traffic(&proxy, "green", 5, "after `releasectl switch green`").await;

    let st = releasectl(&proxy, &["--json", "status"]).await;
    st.expect_code(0);
    let v = st.json();
    let web = &v["services"]["web"];
    assert_eq!(web["active"], "green", "status after switch: {v}");
    assert_eq!(web["previous"], "blue", "status after switch: {v}");
    assert_eq!(web["releasable"], true, "status: {v}");

    // The text form shows it too.
    let text = releasectl(&proxy, &["status"]).await;
    text.expect_code(0);
    assert!(text.stdout.contains("web"), "{text}");

    let rb = releasectl(&proxy, &["rollback"]).await;
    rb.expect_code(0);
    assert_traffic(&proxy, "blue", 5, "after `releasectl rollback`").await;
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "blue", "status after rollback: {web}");

    let again = releasectl(&proxy, &["rollback"]).await;
    again.expect_code(1);
    assert!(
        !again.stderr.trim().is_empty(),
        "a refused rollback should say why on stderr:\n{again}"
    );
    assert_traffic(&proxy, "blue", 3, "after a refused second rollback").await;

    let hist = releasectl(&proxy, &["--json", "history"]).await;
    hist.expect_code(0);
    let events = hist.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let actions: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("switch".into(), "ok".into()))
            && actions.contains(&("rollback".into(), "ok".into())),
        "history should record the switch and the rollback: {actions:?}"
    );
}

// 2. a failing smoke check refuses the switch; --skip-smoke forces it.
#[tokio::test(flavor = "multi_thread")]
async fn smoke_failure_refuses_switch() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], SMOKE)).await;
    green.set_healthy(false); // green's /health now answers 503

    let smoke = releasectl(&proxy, &["smoke", "green"]).await;
    smoke.expect_code(1);

    let out = releasectl(&proxy, &["switch", "green"]).await;
    out.expect_code(1);
    for needle in ["web", green.addr_str().as_str(), "/health", "503"] {
        assert!(
            out.stderr.contains(needle),
            "stderr of a refused switch should list the failure ({needle}):\n{out}"
        );
    }
    assert_traffic(&proxy, "blue", 5, "after a refused switch").await;
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "blue", "{web}");
    assert_eq!(web["previous"], Value::Null, "{web}");

    // The API answer lists the failure in the documented shape.
    let (code, body) = switch_api(&proxy, json!({"color": "green", "services": ["web"]})).await;
    assert_eq!(code, 409, "{body}");
    let failures = body["failures"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 1, "{body}");
    assert_eq!(failures[0]["service"], "web", "{body}");
    assert_eq!(failures[0]["backend"], green.addr_str(), "{body}");
    assert_eq!(failures[0]["path"], "/health", "{body}");
    assert_eq!(failures[0]["ok"], false, "{body}");
    assert_traffic(&proxy, "blue", 2, "after a refused API switch").await;

    let forced = releasectl(&proxy, &["switch", "green", "--skip-smoke"]).await;
    forced.expect_code(0);
    assert_traffic(&proxy, "green", 5, "after switch --skip-smoke").await;
}

// 3. a restart serves the persisted color.
#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_the_switched_color() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut proxy = Proxy::start(&web_config(&[&blue], &[&green], SMOKE)).await;
    releasectl(&proxy, &["switch", "green"])
        .await
        .expect_code(0);
    assert_traffic(&proxy, "green", 2, "after switch").await;

    proxy.signal(libc::SIGTERM);
    let exit = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.is_some(), "switchyard did not exit after SIGTERM");

    // Same config file, same directory, same ports: no command after the start.
    let mut second = Daemon::spawn(&proxy.config_path, proxy.dir.path(), "second");
    second
        .wait_ready(proxy.admin_addr, proxy.http_addr, Duration::from_secs(20))
        .await;
    assert_traffic(&proxy, "green", 5, "after a restart").await;
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "green", "status after restart: {web}");
    assert_eq!(web["previous"], "blue", "status after restart: {web}");
    assert!(second.wait_exit(Duration::ZERO).await.is_none());
}

// 4. a corrupt state file stops the start, naming the file.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_state_file_refuses_to_start() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = crate::support::free_ports(2);
    let cfg = web_config(&[&blue], &[&green], "")
        .replace("{http}", &format!("127.0.0.1:{}", ports[0]))
        .replace("{admin}", &format!("127.0.0.1:{}", ports[1]));
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, cfg).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state").join("state.json"),
        "{\"version\": 1, \"services\": {\"web\": garbage ]]",
    )
    .unwrap();

    let mut d = Daemon::spawn(&config_path, dir.path(), "corrupt");
    let exit = d.wait_exit(Duration::from_secs(15)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "switchyard still running 15 s after starting on a corrupt state.json\n{}",
            d.logs()
        )
    });
    assert!(
        !exit.success(),
        "switchyard exited with success on a corrupt state.json\n{}",
        d.logs()
    );
    assert!(
        d.stderr().contains("state.json"),
        "stderr should name state.json:\n{}",
        d.logs()
    );
    // Nothing was reset: the file is untouched.
    let text = std::fs::read_to_string(dir.path().join("state").join("state.json")).unwrap();
    assert!(text.contains("garbage"), "state.json was rewritten: {text}");
}

// 5. the admin token.
#[tokio::test(flavor = "multi_thread")]
async fn admin_token_is_required() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], "")).await;

    let path = token_path(&proxy);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of {}: {mode:o}", path.display());
    let good = token(&proxy);
    assert!(
        good.len() == 64 && good.chars().all(|c| c.is_ascii_hexdigit()),
        "token is not 64 hex chars: {good:?}"
    );
    // Same length, one character different.
    let mut near = good.clone().into_bytes();
    near[10] = if near[10] == b'a' { b'b' } else { b'a' };
    let near = String::from_utf8(near).unwrap();

    let switch = json!({"color": "green", "services": ["web"], "skip_smoke": true});
    for (label, tok) in [
        ("missing", None),
        ("wrong", Some("not-the-token")),
        ("one character off", Some(near.as_str())),
        ("empty", Some("")),
    ] {
        let (code, body) = admin_call(
            &proxy,
            Method::POST,
            "/v1/switch",
            tok,
            Some(switch.clone()),
        )
        .await;
        assert_eq!(code, 401, "POST /v1/switch with a {label} token: {body}");
        assert!(
            body["error"].is_string(),
            "401 body should be {{\"error\":…}}: {body}"
        );
        let (code, body) = admin_call(&proxy, Method::GET, "/v1/status", tok, None).await;
        assert_eq!(code, 401, "GET /v1/status with a {label} token: {body}");
        assert!(
            body["error"].is_string(),
            "401 body should be {{\"error\":…}}: {body}"
        );
    }
    // A token sent without the Bearer scheme is refused too.
    let resp = proxy
        .client
        .get(proxy.admin_url("/v1/status"))
        .header("authorization", good.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    for env_token in ["wrong-token", near.as_str()] {
        let out = run_releasectl(
            proxy.admin_addr,
            None,
            &[("RELEASECTL_TOKEN", env_token)],
            &["switch", "green", "--skip-smoke"],
        )
        .await;
        out.expect_code(3);
        let out = run_releasectl(
            proxy.admin_addr,
            None,
            &[("RELEASECTL_TOKEN", env_token)],
            &["status"],
        )
        .await;
        out.expect_code(3);
    }

    // Nothing changed.
    assert_traffic(&proxy, "blue", 3, "after refused switches").await;
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "blue", "{web}");
    assert_eq!(web["previous"], Value::Null, "{web}");
    let (code, hist) = admin_call(&proxy, Method::GET, "/v1/history", Some(&good), None).await;
    assert_eq!(code, 200, "{hist}");
    let switches: Vec<&Value> = hist["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["action"] == "switch").collect())
        .unwrap_or_default();
    assert!(
        switches.is_empty(),
        "unauthorised calls left history: {hist}"
    );

    // The right token from the environment works.
    let ok = run_releasectl(
        proxy.admin_addr,
        None,
        &[("RELEASECTL_TOKEN", good.as_str())],
        &["switch", "green", "--skip-smoke"],
    )
    .await;
    ok.expect_code(0);
    assert_traffic(&proxy, "green", 2, "after an authorised switch").await;
}

// 6. replacing a color's backends.
#[tokio::test(flavor = "multi_thread")]
async fn backends_replace_idle_color_and_need_force_for_active() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let green2 = Backend::start("green-2").await;
    let green3 = Backend::start("green-3").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], SMOKE)).await;

    let addr2 = green2.addr_str();
    releasectl(&proxy, &["backends", "green", &addr2, "--service", "web"])
        .await
        .expect_code(0);
    let web = service_status(&proxy, "web").await;
    assert_eq!(addrs_of(&web, "green"), vec![addr2.clone()], "{web}");
    assert_eq!(addrs_of(&web, "blue"), vec![blue.addr_str()], "{web}");
    assert_traffic(&proxy, "blue", 2, "after replacing green's backends").await;
    let state = std::fs::read_to_string(proxy.dir.path().join("state/state.json"))
        .expect("state.json after `releasectl backends`");
    assert!(
        state.contains(&addr2),
        "the override is not persisted: {state}"
    );

    releasectl(&proxy, &["switch", "green"])
        .await
        .expect_code(0);
    assert_traffic(&proxy, "green-2", 5, "switch after `backends`").await;
    assert_eq!(green.hits(), 0, "the replaced green backend got traffic");

    // green is active now: replacing it needs --force.
    let addr3 = green3.addr_str();
    let out = releasectl(&proxy, &["backends", "green", &addr3, "--service", "web"]).await;
    out.expect_code(1);
    let web = service_status(&proxy, "web").await;
    assert_eq!(addrs_of(&web, "green"), vec![addr2.clone()], "{web}");
    assert_traffic(&proxy, "green-2", 3, "after a refused `backends`").await;

    releasectl(
        &proxy,
        &["backends", "green", &addr3, "--service", "web", "--force"],
    )
    .await
    .expect_code(0);
    assert_traffic(&proxy, "green-3", 3, "after `backends --force`").await;

    // An unknown service is a usage error.
    releasectl(&proxy, &["backends", "green", &addr3, "--service", "nope"])
        .await
        .expect_code(2);
}

// 7. reload: a valid config takes effect, an invalid one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_valid_and_refuses_invalid_config() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let extra = Backend::start("extra").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], "")).await;
    let concrete = |cfg: String| {
        cfg.replace("{http}", &proxy.http_addr.to_string())
            .replace("{admin}", &proxy.admin_addr.to_string())
    };

    releasectl(&proxy, &["switch", "green"])
        .await
        .expect_code(0);
    let (code, _) = proxy.get_json("extra.test", "/").await;
    assert_eq!(code, 404, "extra.test answered before it was configured");

    let with_extra = concrete(format!(
        r#"{}
[[route]]
host = "extra.test"
service = "extra"

[service.extra]
backends = ["{}"]
"#,
        web_config(&[&blue], &[&green], ""),
        extra.addr
    ));
    std::fs::write(&proxy.config_path, &with_extra).unwrap();
    releasectl(&proxy, &["reload"]).await.expect_code(0);
    assert_eq!(proxy.backend_of("extra.test", "/").await, "extra");
    // The release state survives a reload.
    assert_traffic(&proxy, "green", 3, "after reload").await;

    // Invalid: a route to a service that does not exist.
    let invalid = format!(
        r#"{with_extra}
[[route]]
host = "broken.test"
service = "no-such-service"
"#
    );
    std::fs::write(&proxy.config_path, &invalid).unwrap();
    let out = releasectl(&proxy, &["reload"]).await;
    out.expect_code(2);
    assert!(
        out.stderr.contains("no-such-service"),
        "a refused reload should print the config errors:\n{out}"
    );
    assert_eq!(proxy.backend_of("extra.test", "/").await, "extra");
    assert_traffic(&proxy, "green", 3, "after a refused reload").await;

    // Not even TOML.
    std::fs::write(&proxy.config_path, "[listen\nhttp = ").unwrap();
    releasectl(&proxy, &["reload"]).await.expect_code(2);
    assert_eq!(proxy.backend_of("extra.test", "/").await, "extra");
    assert_traffic(&proxy, "green", 2, "after a refused reload").await;
}

// 8. zero failed requests while switching back and forth under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_under_load_fails_no_request() {
    const CLIENTS: usize = 6;
    const RAW_CLIENTS: usize = 2;
    const SWITCHES: usize = 20;
    let b1 = Backend::start("blue-1").await;
    let b2 = Backend::start("blue-2").await;
    let g1 = Backend::start("green-1").await;
    let g2 = Backend::start("green-2").await;
    let proxy = Proxy::start(&web_config(&[&b1, &b2], &[&g1, &g2], SMOKE)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let url = proxy.url("/");
        tasks.push(tokio::spawn(async move {
            // One pooled keep-alive client per task.
            let http = client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Every third request is slow, so some are always in flight
                // on the old color when a switch lands.
                let path = if n.is_multiple_of(3) {
                    format!("sleep/{}", 5 + (n * 7 + c as u64 * 13) % 40)
                } else {
                    String::new()
                };
                let r = http
                    .get(format!("{url}{path}?c={c}&n={n}"))
                    .header("host", HOST)
                    .send()
                    .await;
                let failure = match r {
                    Err(e) => Some(format!("client {c} request {n}: {e:?}")),
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.text().await {
                            Err(e) => Some(format!("client {c} request {n}: body: {e:?}")),
                            Ok(_) if !(200..300).contains(&status) => {
                                Some(format!("client {c} request {n}: status {status}"))
                            }
                            Ok(_) => None,
                        }
                    }
                };
                match failure {
                    Some(f) => failures.lock().unwrap().push(f),
                    None => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Two more clients on raw keep-alive sockets: a connection closed or
    // reset under them is a failure, not something a pool hides.
    let reconnects = Arc::new(AtomicUsize::new(0));
    for c in CLIENTS..CLIENTS + RAW_CLIENTS {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let reconnects = reconnects.clone();
        let addr = proxy.http_addr;
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<KeepAlive> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if conn.is_none() {
                    match KeepAlive::connect(addr).await {
                        Ok(k) => conn = Some(k),
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("raw client {c} request {n}: {e}"));
                            continue;
                        }
                    }
                }
                let path = if n.is_multiple_of(4) {
                    format!("/sleep/{}?c={c}&n={n}", 5 + (n * 11) % 30)
                } else {
                    format!("/?c={c}&n={n}")
                };
                match conn.as_mut().unwrap().get(HOST, &path).await {
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("raw keep-alive client {c} request {n}: {e}"));
                        conn = None;
                    }
                    Ok(r) if !(200..300).contains(&r.status) => {
                        failures.lock().unwrap().push(format!(
                            "raw keep-alive client {c} request {n}: status {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                        if r.close {
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if r.close {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            }
        }));
    }

    let blue_hits = || b1.hits() + b2.hits();
    let green_hits = || g1.hits() + g2.hits();
    let started = poll_until(Duration::from_secs(10), || async {
        (blue_hits() >= 50).then_some(())
    })
    .await;
    assert!(started.is_some(), "load never reached blue");

    for i in 0..SWITCHES {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let (code, body) = switch_api(&proxy, json!({"color": to, "services": ["web"]})).await;
        assert_eq!(code, 200, "switch {i} to {to}: {body}");
        assert_eq!(
            body["changed"][0]["to"], to,
            "switch {i} to {to} changed nothing: {body}"
        );
        // Let the load reach the new color before switching again.
        let before = if to == "green" {
            green_hits()
        } else {
            blue_hits()
        };
        let reached = poll_until(Duration::from_secs(10), || async {
            let now = if to == "green" {
                green_hits()
            } else {
                blue_hits()
            };
            (now >= before + 30).then_some(())
        })
        .await;
        assert!(reached.is_some(), "switch {i}: the load never reached {to}");
    }

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total_ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while switching {SWITCHES} times; first ones:\n{}\n{}",
        failures.len(),
        failures.len() + total_ok,
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        proxy.logs()
    );
    assert!(blue_hits() > 0 && green_hits() > 0);
    assert!(
        b1.hits() > 0 && b2.hits() > 0 && g1.hits() > 0 && g2.hits() > 0,
        "round robin left a backend idle: blue {} {}, green {} {}",
        b1.hits(),
        b2.hits(),
        g1.hits(),
        g2.hits()
    );
    eprintln!(
        "{total_ok} requests, 0 failed; blue {} green {}; raw keep-alive reconnects after Connection: close: {}",
        blue_hits(),
        green_hits(),
        reconnects.load(Ordering::Relaxed)
    );
}

/// Reads the next text/binary message within 5 s (pings and pongs skipped).
async fn next_message<S>(ws: &mut S) -> Message
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("websocket error: {e:?}"),
                None => panic!("websocket closed"),
            }
        }
    })
    .await
    .expect("no websocket message within 5 s")
}

// 9. a WebSocket opened before a switch stays on its color.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_survives_switch_and_shows_as_upgraded() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], "drain_timeout_s = 30")).await;

    let mut req = format!("ws://{}/ws", proxy.http_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", HOST.parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("websocket handshake timed out")
    .unwrap_or_else(|e| panic!("websocket handshake through proxy failed: {e:?}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::Text("before".into()));
    assert_eq!(blue.ws_sessions(), 1);

    let upgraded = |svc: &Value, color: &str| svc["upgraded"][color].as_i64();
    let seen = poll_until(Duration::from_secs(5), || async {
        let web = service_status(&proxy, "web").await;
        (upgraded(&web, "blue") == Some(1)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "status does not show the open WebSocket under upgraded.blue: {}",
        service_status(&proxy, "web").await
    );

    releasectl(&proxy, &["switch", "green"])
        .await
        .expect_code(0);
    assert_traffic(&proxy, "green", 3, "after switch").await;

    for i in 0..5 {
        let m = Message::Text(format!("after switch {i}"));
        ws.send(m.clone())
            .await
            .unwrap_or_else(|e| panic!("send on the WebSocket after the switch: {e:?}"));
        assert_eq!(next_message(&mut ws).await, m);
    }
    assert_eq!(blue.ws_sessions(), 1);
    assert_eq!(green.ws_sessions(), 0);
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "green", "{web}");
    assert_eq!(upgraded(&web, "blue"), Some(1), "after switch: {web}");
    assert_eq!(upgraded(&web, "green"), Some(0), "after switch: {web}");
    assert!(
        web["inflight"]["blue"].as_i64().unwrap_or(0) >= 1,
        "the open WebSocket should count as in flight on blue: {web}"
    );

    ws.close(None).await.unwrap();
    let gone = poll_until(Duration::from_secs(5), || async {
        let web = service_status(&proxy, "web").await;
        (upgraded(&web, "blue") == Some(0) && web["inflight"]["blue"].as_i64() == Some(0))
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the closed WebSocket still counts on blue: {}",
        service_status(&proxy, "web").await
    );
}

// 10. switch --wait-drain returns once the old color's requests finished.
#[tokio::test(flavor = "multi_thread")]
async fn switch_wait_drain_waits_for_in_flight_requests() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], "drain_timeout_s = 10")).await;

    let url = proxy.url("/sleep/1500");
    let slow = tokio::spawn(async move {
        let resp = client().get(url).header("host", HOST).send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok::<_, reqwest::Error>((status, body, Instant::now()))
    });
    let arrived = poll_until(Duration::from_secs(5), || async {
        (blue.hits() >= 1).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the slow request never reached blue");
    let web = service_status(&proxy, "web").await;
    assert_eq!(
        web["inflight"]["blue"].as_i64(),
        Some(1),
        "status should show the slow request in flight on blue: {web}"
    );

    let out = releasectl(&proxy, &["--json", "switch", "green", "--wait-drain"]).await;
    let returned = Instant::now();
    out.expect_code(0);
    let (status, body, finished) = slow
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the slow request failed during the switch: {e:?}"));
    assert_eq!(status, 200, "slow request: {body}");
    assert!(
        body.contains("\"blue\""),
        "slow request answered by: {body}"
    );
    assert!(
        out.elapsed >= Duration::from_millis(1000),
        "switch --wait-drain returned after {:?}, before the 1.5 s request on blue finished\n{out}",
        out.elapsed
    );
    // The proxy counts the request done once it wrote the response; the client task notes
    // the time only when it is scheduled after reading it, which on a loaded machine can
    // come a little after releasectl returned. Allow that scheduling slack, no more.
    assert!(
        finished <= returned + Duration::from_millis(250),
        "switch --wait-drain returned {:?} before the slow request finished\n{out}",
        finished - returned
    );
    let v = out.json();
    assert_eq!(v["drain"]["drained"], true, "{v}");
    assert_traffic(&proxy, "green", 2, "after switch --wait-drain").await;
}

/// The backends of `color` that a switch's answer lists as smoke-checked, all of them ok.
fn smoke_checked(answer: &Value) -> Vec<String> {
    let results = answer["smoke"]
        .as_array()
        .unwrap_or_else(|| panic!("no smoke results in {answer}"));
    let mut out: Vec<String> = results
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "a failed check in a done switch: {answer}");
            r["backend"].as_str().unwrap().to_string()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

// 11. A backends change sent while a switch runs its smoke checks waits for the switch:
// what the switch publishes is exactly what it checked, and the change then applies to the
// state the switch left (refused without --force when it names the color now active,
// applied when it names the color now idle).
#[tokio::test(flavor = "multi_thread")]
async fn backends_change_during_smoke_checks_waits_for_the_switch() {
    use crate::support::faulty::Faulty;

    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // Fails every request, smoke checks included: it must never get traffic unchecked.
    let unchecked = Faulty::start("unchecked").await;
    unchecked.set_fail_pct(100);
    const SMOKE_MS: u64 = 2000;
    let proxy = Proxy::start(&web_config(
        &[&blue],
        &[&green],
        &format!(r#"smoke = [{{ path = "/sleep/{SMOKE_MS}", expect_status = 200 }}]"#),
    ))
    .await;
    assert_traffic(&proxy, "blue", 2, "before any switch").await;
    let bad = unchecked.addr.to_string();

    // 1. `switch green` is checking green; `backends green UNCHECKED` (green still idle when
    // it is sent) arrives meanwhile.
    let switch = releasectl(&proxy, &["--json", "switch", "green"]);
    let change = async {
        let checking = poll_until(Duration::from_secs(10), || async {
            (green.hits() >= 1).then_some(())
        })
        .await;
        assert!(checking.is_some(), "the smoke check never reached green");
        releasectl(&proxy, &["backends", "green", &bad, "--service", "web"]).await
    };
    let (sw, bk) = tokio::join!(switch, change);
    sw.expect_code(0);
    let answer = sw.json();
    assert_eq!(
        smoke_checked(&answer),
        vec![green.addr_str()],
        "the switch must have checked green's backend, and only it: {answer}"
    );
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "green", "{web}");
    assert_eq!(
        addrs_of(&web, "green"),
        vec![green.addr_str()],
        "green serves backends the switch never checked: {web}"
    );
    assert_traffic(
        &proxy,
        "green",
        5,
        "after the switch with a backends change during it",
    )
    .await;
    assert_eq!(
        unchecked.hits(),
        0,
        "the unchecked backend got a request (traffic or a smoke check)"
    );
    // The change waited for the switch; green was active by then, so it needs --force.
    bk.expect_code(1);
    assert!(bk.stderr.contains("force"), "{bk}");

    // 2. `switch blue` is checking blue; `backends green UNCHECKED` (green still active when
    // it is sent: refused at once before the fix) waits, then lands on green, idle by then.
    let before = blue.hits();
    let switch = releasectl(&proxy, &["--json", "switch", "blue"]);
    let change = async {
        let checking = poll_until(Duration::from_secs(10), || async {
            (blue.hits() > before).then_some(())
        })
        .await;
        assert!(checking.is_some(), "the smoke check never reached blue");
        releasectl(&proxy, &["backends", "green", &bad, "--service", "web"]).await
    };
    let (sw, bk) = tokio::join!(switch, change);
    sw.expect_code(0);
    assert_eq!(smoke_checked(&sw.json()), vec![blue.addr_str()]);
    bk.expect_code(0);
    let web = service_status(&proxy, "web").await;
    assert_eq!(web["active"], "blue", "{web}");
    assert_eq!(addrs_of(&web, "green"), vec![bad.clone()], "{web}");
    assert_eq!(addrs_of(&web, "blue"), vec![blue.addr_str()], "{web}");
    assert_traffic(&proxy, "blue", 5, "after the second switch").await;
    assert_eq!(
        unchecked.hits(),
        0,
        "the idle unchecked backend got a request"
    );

    // History shows them one after the other: the switch, then the change.
    let t = token(&proxy);
    let (code, hist) =
        admin_call(&proxy, Method::GET, "/v1/history?limit=10", Some(&t), None).await;
    assert_eq!(code, 200, "{hist}");
    let ok: Vec<&str> = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok")
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        ok.iter().rev().take(2).rev().copied().collect::<Vec<_>>(),
        vec!["switch", "backends"],
        "{hist}"
    );

    // A switch to green now checks the new backend, fails, and changes nothing.
    let refused = releasectl(&proxy, &["switch", "green"]).await;
    refused.expect_code(1);
    assert!(refused.stderr.contains(&bad), "{refused}");
    assert_traffic(&proxy, "blue", 2, "after the refused switch").await;
}

// 12. GET /v1/history?limit=N: the newest N events, oldest first; a bad limit is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn history_is_paged_with_limit() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&[&blue], &[&green], SMOKE)).await;
    for color in ["green", "blue", "green", "blue", "green", "blue"] {
        let (code, body) = switch_api(&proxy, json!({ "color": color })).await;
        assert_eq!(code, 200, "{body}");
    }
    let t = token(&proxy);
    let history = |query: &'static str| {
        let (proxy, t) = (&proxy, t.clone());
        async move {
            admin_call(
                proxy,
                Method::GET,
                &format!("/v1/history{query}"),
                Some(&t),
                None,
            )
            .await
        }
    };
    let (code, all) = history("").await;
    assert_eq!(code, 200, "{all}");
    let all = all["events"].as_array().cloned().unwrap();
    let switches: Vec<&Value> = all.iter().filter(|e| e["action"] == "switch").collect();
    assert_eq!(switches.len(), 6, "{all:?}");
    assert_eq!(
        all.last().unwrap()["detail"]["to"],
        "blue",
        "oldest first: {all:?}"
    );

    let (code, three) = history("?limit=3").await;
    assert_eq!(code, 200, "{three}");
    assert_eq!(
        three["events"].as_array().unwrap()[..],
        all[all.len() - 3..],
        "the newest 3, oldest first"
    );
    let (code, max) = history("?limit=1000").await;
    assert_eq!(code, 200, "{max}");
    assert_eq!(max["events"].as_array().unwrap().len(), all.len());

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=abc",
        "?limit=",
        "?limit=-5",
    ] {
        let (code, body) = history(bad).await;
        assert_eq!(code, 400, "GET /v1/history{bad}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains("limit"), "GET /v1/history{bad}: {body}");
    }

    let out = releasectl(&proxy, &["--json", "history", "--limit", "2"]).await;
    out.expect_code(0);
    assert_eq!(
        out.json()["events"].as_array().unwrap()[..],
        all[all.len() - 2..],
        "{out}"
    );
    let text = releasectl(&proxy, &["history", "--limit", "1"]).await;
    text.expect_code(0);
    assert_eq!(
        text.stdout.lines().filter(|l| l.contains("switch")).count(),
        1,
        "{text}"
    );
    for bad in ["0", "1001", "many"] {
        let out = releasectl(&proxy, &["history", "--limit", bad]).await;
        out.expect_code(2);
        assert!(out.stderr.contains("limit"), "{out}");
    }
}

//! Several instances, one site (SPEC "Several instances (etcd)"): `switchyard` instances
//! sharing release state through a real 3-member etcd cluster on loopback
//! (`support::etcd`), with blue and green test backends behind a releasable service.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::etcd::{unique, EtcdCluster};
use crate::support::faulty::Faulty;
use crate::support::release::{admin_call, releasectl, status, switch_api};
use crate::support::{poll_until, Backend, Proxy};

const HOST: &str = "app.test";
/// Goal: every instance serves a committed state within 1 s; asserted with room for CI.
const PROPAGATION: Duration = Duration::from_secs(2);
/// How long an instance may take to notice that etcd is gone, or back.
const STORE_CHANGE: Duration = Duration::from_secs(12);
/// A refused release (etcd down) must still answer within this.
const REFUSAL: Duration = Duration::from_secs(20);

/// Runs a test body with a deadline, so a hung etcd or instance fails instead of hanging.
async fn bounded<F: Future<Output = ()>>(limit: Duration, body: F) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test ran longer than {limit:?}");
    }
}

/// One site: an etcd cluster, a key prefix of its own, blue and green backends.
struct Site {
    etcd: EtcdCluster,
    prefix: String,
    blue: Backend,
    green: Backend,
}

impl Site {
    async fn start(members: usize) -> Site {
        let (etcd, blue, green) = tokio::join!(
            EtcdCluster::start(members),
            Backend::start("blue"),
            Backend::start("green")
        );
        Site {
            etcd,
            prefix: format!("/switchyard/{}/", unique("test")),
            blue,
            green,
        }
    }

    /// An instance's config: `[state] store = "etcd"` on this site's cluster and prefix, a
    /// route `app.test` → releasable service `app`, then `extra` lines in `[service.app]`.
    fn config(&self, extra: &str) -> String {
        format!(
            r#"[listen]
http = "{{http}}"
admin = "{{admin}}"

[state]
dir = "state"
store = "etcd"
etcd_endpoints = {endpoints}
etcd_prefix = "{prefix}"
etcd_lease_s = 2

[server]
grace_s = 2

[[route]]
host = "{HOST}"
service = "app"

[service.app]
blue = ["{blue}"]
green = ["{green}"]
{extra}
"#,
            endpoints = self.etcd.endpoints_toml(),
            prefix = self.prefix,
            blue = self.blue.addr,
            green = self.green.addr,
        )
    }

    /// Two instances of the site, started together, each seeing both in the registry (an
    /// instance is ready as soon as it serves, maybe before it reached etcd).
    async fn two(&self, extra: &str) -> (Proxy, Proxy) {
        let config = self.config(extra);
        let (a, b) = tokio::join!(Proxy::start(&config), Proxy::start(&config));
        tokio::join!(
            wait_instances(&a, 2, Duration::from_secs(10)),
            wait_instances(&b, 2, Duration::from_secs(10))
        );
        (a, b)
    }
}

fn other(color: &str) -> &'static str {
    if color == "blue" {
        "green"
    } else {
        "blue"
    }
}

/// The backend answering `GET app.test/` through `proxy`.
async fn who(proxy: &Proxy) -> String {
    proxy.backend_of(HOST, "/").await
}

/// Polls `proxy` until `app.test` reaches `color`; panics after `within`. Returns how long
/// it took.
async fn wait_serves(proxy: &Proxy, color: &str, within: Duration, ctx: &str) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        last = match tokio::time::timeout(Duration::from_secs(2), who(proxy)).await {
            Ok(b) => b,
            Err(_) => format!("(no answer within 2 s after {last})"),
        };
        if last == color {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!(
                "{ctx}: {} still serves {last} after {within:?}, want {color}\n{}",
                proxy.admin_addr,
                proxy.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` requests in a row reach `color`.
async fn assert_serves(proxy: &Proxy, color: &str, n: usize, ctx: &str) {
    for i in 0..n {
        let got = who(proxy).await;
        assert_eq!(
            got, color,
            "{ctx}: request {i} via {} reached {got}",
            proxy.admin_addr
        );
    }
}

/// `GET ADMIN/health`: status and body.
async fn health(proxy: &Proxy) -> (u16, Value) {
    admin_call(proxy, reqwest::Method::GET, "/health", None, None).await
}

/// Polls `/health` until `"store"` is `want`, asserting a 200 on every poll.
async fn wait_store(proxy: &Proxy, want: &str, within: Duration, ctx: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (code, body) = health(proxy).await;
        assert_eq!(
            code, 200,
            "{ctx}: /health of {} must stay 200: {body}",
            proxy.admin_addr
        );
        if body["store"] == want {
            return start.elapsed();
        }
        if start.elapsed() >= within {
            panic!(
                "{ctx}: /health of {} says store {} after {within:?}, want {want:?}: {body}\n{}",
                proxy.admin_addr,
                body["store"],
                proxy.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric (`name VALUE`, or `name{…} VALUE` for the first sample).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if rest.starts_with('{') {
            &rest[rest.find('}')? + 1..]
        } else if rest.starts_with(' ') {
            rest
        } else {
            return None;
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Polls `/metrics` until `name` has value `want` (within `within`).
async fn wait_metric(proxy: &Proxy, name: &str, want: f64, within: Duration, ctx: &str) {
    let got = poll_until(within, || async {
        let text = proxy.metrics().await;
        (metric(&text, name) == Some(want)).then_some(())
    })
    .await;
    if got.is_none() {
        let text = proxy.metrics().await;
        panic!(
            "{ctx}: {name} of {} is {:?}, want {want}",
            proxy.admin_addr,
            metric(&text, name)
        );
    }
}

/// `POST /v1/switch {"color": color}` through `proxy`.
async fn switch(proxy: &Proxy, color: &str) -> (u16, Value) {
    switch_api(proxy, json!({ "color": color })).await
}

/// Asserts a successful switch answer, with `instances` = {applied ≥ 1, total = `total`}.
fn assert_switched(code: u16, body: &Value, total: u64, ctx: &str) {
    assert_eq!(code, 200, "{ctx}: switch answer: {body}");
    let inst = &body["instances"];
    assert_eq!(
        inst["total"].as_u64(),
        Some(total),
        "{ctx}: instances.total in the switch answer: {body}"
    );
    let applied = inst["applied"]
        .as_u64()
        .unwrap_or_else(|| panic!("{ctx}: no instances.applied in the switch answer: {body}"));
    assert!(
        (1..=total).contains(&applied),
        "{ctx}: instances.applied {applied} of {total}: {body}"
    );
}

/// The `error` text of an answer (or the whole body), lowercased.
fn error_text(body: &Value) -> String {
    body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string())
        .to_lowercase()
}

/// A 409 whose error says the state changed meanwhile.
fn is_conflict(code: u16, body: &Value) -> bool {
    let e = error_text(body);
    code == 409 && (e.contains("changed") || e.contains("moved"))
}

/// A 200 that changed the active color of some service.
fn changed_something(code: u16, body: &Value) -> bool {
    code == 200 && body["changed"].as_array().is_some_and(|c| !c.is_empty())
}

/// `GET /v1/status` → `instances`, polled until there are `n` of them, all on the same
/// applied revision, exactly one of them leader. Returns that list.
async fn wait_instances(proxy: &Proxy, n: usize, within: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let st = status(proxy).await;
        let list = st["instances"].as_array().cloned().unwrap_or_default();
        let revs: Vec<Option<i64>> = list
            .iter()
            .map(|i| i["applied_revision"].as_i64())
            .collect();
        let leaders = list.iter().filter(|i| i["leader"] == true).count();
        let settled = list.len() == n
            && revs.iter().all(|r| r.is_some_and(|r| r > 0))
            && revs.windows(2).all(|w| w[0] == w[1])
            && leaders == 1;
        if settled {
            return list;
        }
        if start.elapsed() >= within {
            panic!(
                "status of {} after {within:?}: want {n} live instances on one applied revision, \
                 one leader; got {}",
                proxy.admin_addr, st["instances"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// 1. A switch through one instance reaches the other; status, health and metrics show the
//    site; everything is stored under the prefix.
#[tokio::test(flavor = "multi_thread")]
async fn switch_through_one_instance_reaches_the_other() {
    bounded(Duration::from_secs(50), async {
        let mut site = Site::start(3).await;
        let (a, b) = site.two("").await;
        assert_serves(&a, "blue", 2, "A before any switch").await;
        assert_serves(&b, "blue", 2, "B before any switch").await;

        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 2, "switch green via A");
        let took = wait_serves(&b, "green", PROPAGATION, "B after a switch through A").await;
        eprintln!("switch via A reached B after {took:?}");
        assert_serves(&a, "green", 3, "A after its own switch").await;

        // Both list both instances: ids, addresses, the revision each applied, one leader.
        let la = wait_instances(&a, 2, Duration::from_secs(5)).await;
        let lb = wait_instances(&b, 2, Duration::from_secs(5)).await;
        for i in la.iter().chain(lb.iter()) {
            assert!(
                i["id"].as_str().is_some_and(|s| !s.is_empty()),
                "instance id: {i}"
            );
            assert!(
                i["address"].as_str().is_some_and(|s| !s.is_empty()),
                "instance address: {i}"
            );
            assert!(i["leader"].is_boolean(), "instance leader flag: {i}");
        }
        let ids = |l: &[Value]| {
            let mut v: Vec<String> = l.iter().map(|i| i["id"].to_string()).collect();
            v.sort();
            v
        };
        assert_ne!(la[0]["id"], la[1]["id"], "two instances, two ids: {la:?}");
        assert_eq!(ids(&la), ids(&lb), "A and B list the same instances");

        // `releasectl status` (text) shows the store and both instances too.
        let out = releasectl(&b, &["status"]).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stdout.contains("store: etcd (ok)"), "{}", out.stdout);
        for i in &la {
            let id = i["id"].as_str().unwrap();
            assert!(out.stdout.contains(id), "instance {id} in:\n{}", out.stdout);
        }

        for (name, p) in [("A", &a), ("B", &b)] {
            let (code, h) = health(p).await;
            assert_eq!(code, 200, "{name} /health: {h}");
            assert_eq!(h["store"], "ok", "{name} /health: {h}");
            let m = p.metrics().await;
            assert_eq!(
                metric(&m, "switchyard_store_up"),
                Some(1.0),
                "{name}: switchyard_store_up"
            );
            let rev = metric(&m, "switchyard_applied_revision")
                .unwrap_or_else(|| panic!("{name}: no switchyard_applied_revision"));
            assert!(rev > 0.0, "{name}: switchyard_applied_revision {rev}");
        }

        // The site's keys live under its prefix, and only there.
        let all = site.etcd.kv_prefix("").await;
        assert!(
            all.iter().any(|(k, _)| k.starts_with(&site.prefix)),
            "nothing stored under {}: {:?}",
            site.prefix,
            all.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        let outside: Vec<&String> = all
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with(&site.prefix))
            .collect();
        assert!(
            outside.is_empty(),
            "keys outside {}: {outside:?}",
            site.prefix
        );

        // releasectl through B reaches A the same way.
        let out = releasectl(&b, &["switch", "blue"]).await;
        out.expect_code(0);
        wait_serves(
            &a,
            "blue",
            PROPAGATION,
            "A after `releasectl switch blue` via B",
        )
        .await;
        assert_serves(&b, "blue", 3, "B after its own switch").await;
    })
    .await;
}

// 2. Two releases at the same moment through two instances: one commits, the other is
//    refused with 409 (state changed) and nothing of it applies; both serve the winner.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_releases_one_wins_the_other_gets_409() {
    bounded(Duration::from_secs(55), async {
        let site = Site::start(3).await;
        // A slow smoke check (300 ms on the target color): both releases are computed from
        // the same revision and are still checking when the first one commits.
        let (a, b) = site
            .two(r#"smoke = [{ path = "/sleep/300", expect_status = 200 }]"#)
            .await;
        let mut current = "blue";

        // Both move to the other color at once: exactly one commits.
        for round in 0..3 {
            let target = other(current);
            let ((ca, ba), (cb, bb)) = tokio::join!(switch(&a, target), switch(&b, target));
            let ctx = format!("round {round}: both switch {target}: A → {ca} {ba}, B → {cb} {bb}");
            let wins = [(ca, &ba), (cb, &bb)]
                .iter()
                .filter(|(c, b)| changed_something(*c, b))
                .count();
            let conflicts = [(ca, &ba), (cb, &bb)]
                .iter()
                .filter(|(c, b)| is_conflict(*c, b))
                .count();
            assert_eq!((wins, conflicts), (1, 1), "{ctx}");
            current = target;
            wait_serves(&a, current, PROPAGATION, &ctx).await;
            wait_serves(&b, current, PROPAGATION, &ctx).await;
        }

        // Opposite colors at once (A to the other color, B to the current one, then the
        // roles swapped): at most one changes anything, a refusal is a 409 saying the state
        // changed, and both serve the color of the one that changed it.
        for round in 0..2 {
            let target = other(current);
            let (mover, stayer) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let ((cm, bm), (cs, bs)) = tokio::join!(switch(mover, target), switch(stayer, current));
            let ctx = format!(
                "opposite round {round}: switch {target} → {cm} {bm}; switch {current} → {cs} {bs}"
            );
            for (c, body) in [(cm, &bm), (cs, &bs)] {
                assert!(c == 200 || is_conflict(c, body), "{ctx}");
            }
            let mover_won = changed_something(cm, &bm);
            let stayer_won = changed_something(cs, &bs);
            assert!(!(mover_won && stayer_won), "{ctx}: both changed the state");
            if mover_won {
                current = target;
            }
            wait_serves(&a, current, PROPAGATION, &ctx).await;
            wait_serves(&b, current, PROPAGATION, &ctx).await;
            assert_serves(&a, current, 3, &ctx).await;
            assert_serves(&b, current, 3, &ctx).await;
        }

        // The same through releasectl: one exits 0, the other 1 naming the change.
        let target = other(current);
        let args = ["switch", target];
        let (oa, ob) = tokio::join!(releasectl(&a, &args), releasectl(&b, &args));
        let codes = [oa.code, ob.code];
        assert!(
            codes.contains(&Some(0)) && codes.contains(&Some(1)),
            "releasectl at once: one exit 0, one exit 1:\n{oa}\n{ob}"
        );
        let loser = if oa.code == Some(1) { &oa } else { &ob };
        let said = format!("{}{}", loser.stdout, loser.stderr).to_lowercase();
        assert!(
            said.contains("changed") || said.contains("moved"),
            "the refused releasectl should say the state changed:\n{loser}"
        );
        current = target;
        wait_serves(&a, current, PROPAGATION, "after the releasectl pair").await;
        wait_serves(&b, current, PROPAGATION, "after the releasectl pair").await;
        for p in [&a, &b] {
            let st = status(p).await;
            assert_eq!(
                st["services"]["app"]["active"], current,
                "status of {} after the races: {st}",
                p.admin_addr
            );
        }
    })
    .await;
}

// 3. etcd down: both keep serving the last applied color, /health stays 200 saying the store
//    is unreachable, releases are refused naming etcd; when etcd is back, everything resumes
//    by itself.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_down_keeps_serving_refuses_releases_and_recovers() {
    bounded(Duration::from_secs(58), async {
        let mut site = Site::start(3).await;
        let (a, b) = site.two("").await;
        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 2, "switch green via A");
        wait_serves(&b, "green", PROPAGATION, "B after the switch").await;

        site.etcd.stop_all();
        let (ta, tb) = tokio::join!(
            wait_store(&a, "unreachable", STORE_CHANGE, "A with etcd down"),
            wait_store(&b, "unreachable", STORE_CHANGE, "B with etcd down")
        );
        eprintln!("etcd down noticed after {ta:?} (A), {tb:?} (B)");
        wait_metric(&a, "switchyard_store_up", 0.0, Duration::from_secs(3), "A").await;
        wait_metric(&b, "switchyard_store_up", 0.0, Duration::from_secs(3), "B").await;
        assert_serves(&a, "green", 5, "A with etcd down").await;
        assert_serves(&b, "green", 5, "B with etcd down").await;

        let (code, body) = tokio::time::timeout(REFUSAL, switch(&a, "blue"))
            .await
            .unwrap_or_else(|_| {
                panic!("a switch with etcd down did not answer within {REFUSAL:?}")
            });
        assert_eq!(code, 503, "switch with etcd down: {body}");
        assert!(
            error_text(&body).contains("etcd"),
            "the refusal should name etcd: {body}"
        );
        let out = tokio::time::timeout(REFUSAL, releasectl(&b, &["switch", "blue"]))
            .await
            .unwrap_or_else(|_| panic!("releasectl with etcd down ran longer than {REFUSAL:?}"));
        out.expect_code(1);
        assert!(
            format!("{}{}", out.stdout, out.stderr)
                .to_lowercase()
                .contains("etcd"),
            "releasectl should name etcd:\n{out}"
        );
        assert_serves(&a, "green", 3, "A after refused switches").await;
        assert_serves(&b, "green", 3, "B after refused switches").await;

        site.etcd.start_all().await;
        let (ta, tb) = tokio::join!(
            wait_store(&a, "ok", STORE_CHANGE, "A with etcd back"),
            wait_store(&b, "ok", STORE_CHANGE, "B with etcd back")
        );
        eprintln!("etcd back noticed after {ta:?} (A), {tb:?} (B)");
        wait_metric(&a, "switchyard_store_up", 1.0, Duration::from_secs(3), "A").await;
        assert_serves(&a, "green", 2, "A with etcd back").await;

        let (code, body) = switch(&b, "blue").await;
        assert_switched(code, &body, 2, "switch blue via B once etcd is back");
        wait_serves(&a, "blue", PROPAGATION, "A after a switch via B, etcd back").await;
    })
    .await;
}

// 4. One member of three dies (the first endpoint, then the raft leader): quorum is kept and
//    releases go on reaching the other instance.
#[tokio::test(flavor = "multi_thread")]
async fn quorum_kept_when_one_etcd_member_dies() {
    bounded(Duration::from_secs(50), async {
        let mut site = Site::start(3).await;
        let (a, b) = site.two("").await;

        site.etcd.kill(0);
        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 2, "switch green via A, member 0 killed");
        wait_serves(&b, "green", PROPAGATION, "B, member 0 killed").await;

        site.etcd.restart(0);
        site.etcd
            .wait_healthy(0, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", site.etcd.logs()));
        let mut leader = None;
        for _ in 0..100 {
            leader = site.etcd.leader().await;
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = leader.expect("an etcd leader within 5 s");
        site.etcd.kill(leader);
        let (code, body) = switch(&b, "blue").await;
        assert_switched(
            code,
            &body,
            2,
            &format!("switch blue via B, leader m{leader} killed"),
        );
        wait_serves(&a, "blue", PROPAGATION, "A, etcd leader killed").await;
        for p in [&a, &b] {
            let (code, h) = health(p).await;
            assert_eq!((code, h["store"].as_str()), (200, Some("ok")), "{h}");
        }
    })
    .await;
}

// 5. An instance starting while etcd is down serves the state cached in its state.dir: ready,
//    on the last applied color, never blue; it catches up when etcd is back.
#[tokio::test(flavor = "multi_thread")]
async fn instance_starting_while_etcd_is_down_serves_its_cache() {
    bounded(Duration::from_secs(55), async {
        let mut site = Site::start(3).await;
        let config = site.config("");
        let a = Proxy::start(&config).await;
        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 1, "switch green, one instance");
        assert_serves(&a, "green", 2, "after the switch").await;
        let dir = a.stop().await;

        site.etcd.stop_all();
        let a = Proxy::start_in(dir, &config).await;
        assert_serves(&a, "green", 20, "started with etcd down").await;
        let (code, h) = health(&a).await;
        assert_eq!(code, 200, "{h}");
        assert_eq!(
            h["store"], "unreachable",
            "/health started with etcd down: {h}"
        );
        // The admin token survived the restart: the refusal is about etcd, not auth.
        let (code, body) = tokio::time::timeout(REFUSAL, switch(&a, "blue"))
            .await
            .expect("a refused switch answers");
        assert_eq!(code, 503, "switch with etcd down: {body}");

        site.etcd.start_all().await;
        wait_store(&a, "ok", STORE_CHANGE, "etcd back").await;
        assert_serves(&a, "green", 5, "etcd back").await;
    })
    .await;
}

// 0. The harness itself, so a failure above is not mistaken for one of etcd: a 3-member
//    cluster keeps its data across a member's kill and restart, a leader's kill and a
//    full stop and start.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_harness_survives_kills_and_restarts() {
    bounded(Duration::from_secs(45), async {
        let mut etcd = EtcdCluster::start(3).await;
        assert_eq!(etcd.endpoints().len(), 3);
        let key = format!("/switchyard/{}/k", unique("harness"));
        etcd.kv_put(&key, b"one").await;
        etcd.kill(0);
        etcd.kv_put(&key, b"two").await;
        etcd.restart(0);
        etcd.wait_healthy(0, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", etcd.logs()));
        let mut leader = None;
        for _ in 0..100 {
            leader = etcd.leader().await;
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader = leader.expect("an etcd leader within 5 s");
        etcd.kill(leader);
        etcd.kv_put(&key, b"three").await;
        etcd.stop_all();
        etcd.start_all().await;
        assert_eq!(etcd.kv_get(&key).await.as_deref(), Some(&b"three"[..]));
        let under = etcd.kv_prefix(&key).await;
        assert_eq!(under.len(), 1, "{under:?}");
        assert!(etcd.revision().await >= 4);
    })
    .await;
}

/// The leader runs the site's canaries: when the leader is killed (-9) mid-canary, the other
/// instance — which never took the canary command — takes over the lead once its lease
/// expires and carries the canary on to its end from the state in etcd.
#[tokio::test(flavor = "multi_thread")]
async fn canary_continues_when_the_leader_is_killed() {
    bounded(Duration::from_secs(50), async {
        let site = Site::start(3).await;
        let (a, b) = site.two("").await;
        let (leader, follower) = leader_and_follower(a, b).await;

        // Started through the leader: 50 % now, 100 % (promote) after 2 s.
        let token = crate::support::release::token(&leader);
        let (code, body) = admin_call(
            &leader,
            reqwest::Method::POST,
            "/v1/canary",
            Some(&token),
            Some(json!({ "color": "green", "steps": [50, 100], "interval_s": 2 })),
        )
        .await;
        assert_eq!(code, 200, "canary through the leader: {body}");
        wait_serves_canary(&follower).await;

        // The leader dies mid-canary.
        leader.signal(libc::SIGKILL);
        let started = Instant::now();

        // The follower becomes leader (after etcd_lease_s = 2) and promotes.
        let promoted = poll_until(Duration::from_secs(20), || async {
            let st = status(&follower).await;
            let app = &st["services"]["app"];
            (app["active"] == "green" && app["canary"].is_null()).then_some(())
        })
        .await;
        assert!(
            promoted.is_some(),
            "the canary was not carried on after the leader died: {}",
            status(&follower).await
        );
        eprintln!(
            "canary promoted {:?} after the leader was killed",
            started.elapsed()
        );
        wait_serves(
            &follower,
            "green",
            PROPAGATION,
            "follower after the promote",
        )
        .await;
        let st = status(&follower).await;
        let me = st["instances"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["leader"] == true).cloned());
        assert_eq!(
            me.as_ref().and_then(|i| i["address"].as_str()),
            Some(follower.admin_addr.to_string().as_str()),
            "the survivor leads: {st}"
        );
    })
    .await;
}

/// The two instances of a site, told apart: (leader, follower).
async fn leader_and_follower(a: Proxy, b: Proxy) -> (Proxy, Proxy) {
    let list = wait_instances(&a, 2, Duration::from_secs(10)).await;
    let leader_addr = list
        .iter()
        .find(|i| i["leader"] == true)
        .and_then(|i| i["address"].as_str())
        .expect("a leader")
        .to_string();
    if leader_addr == a.admin_addr.to_string() {
        (a, b)
    } else {
        (b, a)
    }
}

/// The SLO is judged on the site's figures: a bad release whose every request goes through
/// a follower (the leader sees none) is still rolled back, by the leader, from the window
/// the follower publishes.
#[tokio::test(flavor = "multi_thread")]
async fn leader_rolls_back_on_errors_only_a_follower_sees() {
    bounded(Duration::from_secs(60), async {
        let site = Site::start(3).await;
        let bad = Faulty::start("green").await;
        let config = site
            .config(
                "slo = { max_error_rate = 0.05, window_s = 30, min_requests = 20, watch_s = 60 }",
            )
            .replace(&site.green.addr.to_string(), &bad.addr.to_string());
        let (a, b) = tokio::join!(Proxy::start(&config), Proxy::start(&config));
        let (leader, follower) = leader_and_follower(a, b).await;

        // Through the follower: green passes its smoke checks, then turns bad.
        let (code, body) = switch_api(&follower, json!({ "color": "green" })).await;
        assert_eq!(code, 200, "switch through the follower: {body}");
        let applied = poll_until(PROPAGATION, || async {
            (status(&leader).await["services"]["app"]["active"] == "green").then_some(())
        })
        .await;
        assert!(applied.is_some(), "the leader never applied the switch");
        bad.set_fail_pct(100);
        let hits_before = bad.hits();
        for _ in 0..40 {
            let (code, _) = follower.get_json(HOST, "/").await;
            assert_eq!(code, 500, "green fails every request");
        }
        let errors_sent = Instant::now();

        // Only the leader acts, and it saw none of those requests itself.
        let rolled_back = poll_until(Duration::from_secs(10), || async {
            (status(&follower).await["services"]["app"]["active"] == "blue").then_some(())
        })
        .await;
        assert!(
            rolled_back.is_some(),
            "no rollback: the leader did not judge the follower's figures; status {}",
            status(&leader).await
        );
        eprintln!(
            "rolled back {:?} after the follower's 40th error",
            errors_sent.elapsed()
        );
        assert_eq!(
            bad.hits() - hits_before,
            40,
            "every bad request went through the follower"
        );
        wait_serves(
            &follower,
            "blue",
            PROPAGATION,
            "follower after the rollback",
        )
        .await;
        // The leader records the event once it has published the rollback.
        let token = crate::support::release::token(&leader);
        let recorded = poll_until(Duration::from_secs(5), || async {
            let (_, history) = admin_call(
                &leader,
                reqwest::Method::GET,
                "/v1/history?limit=5",
                Some(&token),
                None,
            )
            .await;
            history.to_string().contains("error_rate").then_some(())
        })
        .await;
        assert!(
            recorded.is_some(),
            "no rollback event naming the breached error rate"
        );
    })
    .await;
}

/// Waits until `proxy` has applied a running canary (its status shows one).
async fn wait_serves_canary(proxy: &Proxy) {
    let seen = poll_until(Duration::from_secs(5), || async {
        let st = status(proxy).await;
        (!st["services"]["app"]["canary"].is_null()).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "the canary never reached {}",
        proxy.admin_addr
    );
}

/// Quorum lost (two of three members down): both instances keep serving, report the store
/// unreachable and refuse releases with 503; when the members return they recover by
/// themselves and releases work again.
#[tokio::test(flavor = "multi_thread")]
async fn quorum_lost_keeps_serving_and_recovers() {
    bounded(Duration::from_secs(60), async {
        let mut site = Site::start(3).await;
        let (a, b) = site.two("").await;
        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 2, "switch green before the loss");
        wait_serves(&b, "green", PROPAGATION, "B before the loss").await;

        site.etcd.kill(0);
        site.etcd.kill(1);
        for (name, p) in [("A", &a), ("B", &b)] {
            let down = poll_until(Duration::from_secs(15), || async {
                let (code, h) = health(p).await;
                (code == 200 && h["store"] == "unreachable").then_some(())
            })
            .await;
            assert!(
                down.is_some(),
                "{name}: /health never said the store is unreachable"
            );
            assert_serves(p, "green", 5, &format!("{name} without quorum")).await;
        }
        let (code, body) = switch(&b, "blue").await;
        assert_eq!(code, 503, "a switch without quorum: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("etcd"),
            "{body}"
        );

        site.etcd.restart(0);
        site.etcd.restart(1);
        for (name, p) in [("A", &a), ("B", &b)] {
            let up = poll_until(Duration::from_secs(20), || async {
                let (_, h) = health(p).await;
                (h["store"] == "ok").then_some(())
            })
            .await;
            assert!(
                up.is_some(),
                "{name}: the store never came back\n{}",
                site.etcd.logs()
            );
        }
        let (code, body) = switch(&b, "blue").await;
        assert_switched(code, &body, 2, "switch blue after quorum is back");
        wait_serves(&a, "blue", PROPAGATION, "A after quorum is back").await;
    })
    .await;
}

/// TLS to etcd with client certificates (`etcd_ca`, `etcd_cert`, `etcd_key`): etcd refuses
/// clients without a certificate, so a site that works proves the files are used; a switch
/// through one instance reaches the other.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_client_certificates() {
    bounded(Duration::from_secs(60), async {
        let (etcd, blue, green) = tokio::join!(
            EtcdCluster::start_tls(1),
            Backend::start("blue"),
            Backend::start("green")
        );
        let site = Site {
            etcd,
            prefix: format!("/switchyard/{}/", unique("tls")),
            blue,
            green,
        };
        assert!(site.etcd.endpoints_toml().contains("https://"));
        let files = site.etcd.tls.as_ref().expect("a TLS cluster");
        let tls_keys = format!(
            "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            files.ca.display(),
            files.client_cert.display(),
            files.client_key.display()
        );
        let config = site.config("").replace(
            "etcd_lease_s = 2\n",
            &format!("etcd_lease_s = 2\n{tls_keys}"),
        );
        let (a, b) = tokio::join!(Proxy::start(&config), Proxy::start(&config));
        wait_store(&a, "ok", STORE_CHANGE, "instance a over TLS").await;
        wait_store(&b, "ok", STORE_CHANGE, "instance b over TLS").await;
        let (code, body) = switch(&a, "green").await;
        assert_switched(code, &body, 2, "switch over TLS");
        wait_serves(&b, "green", PROPAGATION, "the other instance").await;

        // Without the client certificate etcd refuses the instance: it reports the store
        // unreachable (the files are really what let it in).
        let no_cert = site.config("").replace(
            "etcd_lease_s = 2\n",
            &format!("etcd_lease_s = 2\netcd_ca = \"{}\"\n", files.ca.display()),
        );
        let c = Proxy::start(&no_cert).await;
        let refused = poll_until(Duration::from_secs(10), || async {
            site.etcd
                .logs()
                .contains("client didn't provide a certificate")
                .then_some(())
        })
        .await;
        assert!(
            refused.is_some(),
            "etcd never saw the instance without a certificate:\n{}",
            site.etcd.logs()
        );
        let (_, h) = health(&c).await;
        assert_eq!(h["store"], "unreachable", "no client certificate: {h}");
    })
    .await;
}

/// An instance killed in the middle of a release it took (during the smoke checks) leaves
/// nothing half done: the site keeps its state and the other instance takes the same
/// release afterwards. An instance killed while another commits a release serves it once
/// it starts again (from etcd, not from its stale cache).
#[tokio::test(flavor = "multi_thread")]
async fn instances_killed_mid_release() {
    bounded(Duration::from_secs(60), async {
        let site = Site::start(3).await;
        let slow = Faulty::start("green").await;
        slow.set_delay_ms(1500);
        let config = site
            .config("smoke = [{ path = \"/\", expect_status = 200, timeout_ms = 5000 }]")
            .replace(&site.green.addr.to_string(), &slow.addr.to_string());
        let (a, b) = tokio::join!(Proxy::start(&config), Proxy::start(&config));
        wait_instances(&a, 2, Duration::from_secs(10)).await;

        // a takes a switch and is killed while its smoke check waits on green.
        let hits = slow.hits();
        let token = crate::support::release::token(&a);
        let url = a.admin_url("/v1/switch");
        let release = tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "color": "green" }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        let smoking = poll_until(Duration::from_secs(5), || async {
            (slow.hits() > hits).then_some(())
        })
        .await;
        assert!(smoking.is_some(), "the smoke check never reached green");
        a.signal(libc::SIGKILL);
        let answer = release.await.unwrap();
        assert!(answer.is_err(), "a killed instance answered: {answer:?}");
        assert_serves(&b, "blue", 5, "the site after the half-done release").await;
        assert_eq!(status(&b).await["services"]["app"]["active"], "blue");

        // The survivor takes the same release: nothing was left locked or half-written.
        slow.set_delay_ms(0);
        let (code, body) = switch(&b, "green").await;
        assert_eq!(code, 200, "switch through the survivor: {body}");
        wait_serves(&b, "green", PROPAGATION, "survivor").await;

        // a comes back on its old directory (its cache says blue) and serves green.
        let dir = a.stop().await;
        let a = Proxy::start_in(dir, &config).await;
        wait_serves(&a, "green", STORE_CHANGE, "the restarted instance").await;

        // Now b dies while a commits a rollback; b restarted serves the rollback.
        b.signal(libc::SIGKILL);
        let (code, body) = admin_call(
            &a,
            reqwest::Method::POST,
            "/v1/rollback",
            Some(&crate::support::release::token(&a)),
            Some(json!({})),
        )
        .await;
        assert_eq!(code, 200, "rollback while the other instance dies: {body}");
        let dir = b.stop().await;
        let b = Proxy::start_in(dir, &config).await;
        wait_serves(
            &b,
            "blue",
            STORE_CHANGE,
            "the instance killed during the rollback",
        )
        .await;
    })
    .await;
}

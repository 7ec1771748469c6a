//! The verbs against an in-memory store: what each changes, persists and records, and that a
//! refusal or a failed write changes nothing.

use std::time::Duration;

use super::testing::{Fixture, CONFIG};
use super::ControlError;
use crate::api::{
    BackendsRequest, CanaryRequest, RollbackRequest, ServicesRequest, SmokeRequest, SwitchRequest,
};
use crate::core::color::Color;
use crate::core::release::{Change, Refusal};
use crate::persist::memory::MemoryStore;
use crate::persist::store::{PersistedState, STATE_VERSION};

fn switch(color: Color, skip_smoke: bool) -> SwitchRequest {
    SwitchRequest {
        color,
        services: vec![],
        skip_smoke,
        wait_drain: false,
    }
}

fn backends(addrs: &[&str], force: bool) -> BackendsRequest {
    BackendsRequest {
        backends: addrs.iter().map(|a| a.to_string()).collect(),
        force,
    }
}

/// The active color of `web` as published (what requests see).
fn active(f: &Fixture) -> Option<Color> {
    f.controller.status().services["web"].active
}

/// The published backends of `web`'s `color`.
fn addrs(f: &Fixture, color: &str) -> Vec<String> {
    f.controller.status().services["web"].backends[color]
        .iter()
        .map(|b| b.addr.clone())
        .collect()
}

#[tokio::test]
async fn switch_with_skip_smoke_publishes_persists_and_records() {
    let f = Fixture::new();
    assert_eq!(active(&f), Some(Color::Blue));
    let resp = f
        .controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    assert_eq!(
        resp.changed,
        [Change {
            service: "web".into(),
            from: Color::Blue,
            to: Color::Green
        }]
    );
    assert_eq!(resp.services, ["web"]);
    assert!(resp.smoke.is_empty(), "smoke was skipped");
    let web = &resp.status.services["web"];
    assert_eq!(
        (web.active, web.previous),
        (Some(Color::Green), Some(Color::Blue))
    );
    assert_eq!(active(&f), Some(Color::Green));
    let saved = f.store.state().expect("the switch was persisted");
    assert_eq!(saved.version, STATE_VERSION);
    assert_eq!(saved.releases.get("web").active, Color::Green);
    let events = f.store.events();
    let last = events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.result.as_str()),
        ("switch", "ok")
    );
    assert_eq!(last.services, ["web"]);
    assert_eq!(last.detail["skip_smoke"], true);
    assert_eq!(last.detail["changes"][0]["to"], "green");

    // Again: nothing moves, nothing is written or recorded.
    let (saves, recorded) = (f.store.saves(), f.store.events().len());
    let resp = f
        .controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    assert!(resp.changed.is_empty());
    assert_eq!(f.store.saves(), saves);
    assert_eq!(f.store.events().len(), recorded);
}

#[tokio::test]
async fn switch_with_failing_smoke_is_refused_with_every_failure() {
    let f = Fixture::new();
    let err = f
        .controller
        .switch(switch(Color::Green, false))
        .await
        .unwrap_err();
    let ControlError::Refused {
        color, failures, ..
    } = &err
    else {
        panic!("want Refused, got {err:?}");
    };
    assert_eq!(*color, Color::Green);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].backend, "127.0.0.1:2");
    assert_eq!(failures[0].path, "/health");
    assert!(!failures[0].ok);
    assert!(
        err.to_string()
            .contains("1 smoke check(s) failed on green: nothing changed"),
        "{err}"
    );
    assert_eq!(active(&f), Some(Color::Blue));
    assert_eq!(f.store.saves(), 0);
    let last = f.store.events().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.result.as_str()),
        ("switch", "refused")
    );
}

#[tokio::test]
async fn rollback_with_nothing_to_roll_back_is_refused() {
    let f = Fixture::new();
    let err = f
        .controller
        .rollback(RollbackRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NothingToRollBack), "{err:?}");
    let err = f
        .controller
        .rollback(RollbackRequest {
            services: vec!["web".into()],
            wait_drain: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::Release(Refusal::NothingToRollBack { .. })
        ),
        "{err:?}"
    );
    assert_eq!(f.store.saves(), 0);

    // After a switch there is something; after the rollback, nothing again.
    f.controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    let resp = f
        .controller
        .rollback(RollbackRequest::default())
        .await
        .unwrap();
    assert_eq!(resp.changed[0].to, Color::Blue);
    assert_eq!(active(&f), Some(Color::Blue));
    assert_eq!(f.store.events().last().unwrap().action, "rollback");
    assert!(matches!(
        f.controller
            .rollback(RollbackRequest::default())
            .await
            .unwrap_err(),
        ControlError::NothingToRollBack
    ));
}

#[tokio::test]
async fn backends_of_the_active_color_need_force() {
    let f = Fixture::new();
    let err = f
        .controller
        .set_backends("web", "blue", backends(&["127.0.0.1:4"], false))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::ColorServing { service, color: Color::Blue } if service == "web"),
        "{err:?}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(addrs(&f, "blue"), ["127.0.0.1:1"]);
    assert_eq!(f.store.saves(), 0);

    // The idle color needs no force; the override is persisted and published.
    let status = f
        .controller
        .set_backends(
            "web",
            "green",
            backends(&["127.0.0.1:5", "127.0.0.1:5"], false),
        )
        .await
        .unwrap();
    assert_eq!(status.services["web"].backends["green"].len(), 1);
    assert_eq!(addrs(&f, "green"), ["127.0.0.1:5"]);
    let saved = f.store.state().unwrap();
    assert_eq!(saved.overrides["web"][&Color::Green], ["127.0.0.1:5"]);
    assert_eq!(f.store.events().last().unwrap().action, "backends");

    // With force, the active color too.
    f.controller
        .set_backends("web", "blue", backends(&["127.0.0.1:4"], true))
        .await
        .unwrap();
    assert_eq!(addrs(&f, "blue"), ["127.0.0.1:4"]);
}

#[tokio::test]
async fn backends_are_checked_before_anything_changes() {
    let f = Fixture::new();
    let c = &f.controller;
    let err = |r: Result<_, ControlError>| r.unwrap_err();
    assert!(matches!(
        err(c
            .set_backends("web", "purple", backends(&["127.0.0.1:4"], false))
            .await),
        ControlError::Invalid(_)
    ));
    assert!(matches!(
        err(c.set_backends("web", "green", backends(&[], false)).await),
        ControlError::Invalid(_)
    ));
    assert!(matches!(
        err(c
            .set_backends("web", "green", backends(&["not an address"], false))
            .await),
        ControlError::Invalid(_)
    ));
    assert!(matches!(
        err(c
            .set_backends("nope", "green", backends(&["127.0.0.1:4"], false))
            .await),
        ControlError::NotFound { service } if service == "nope"
    ));
    assert!(matches!(
        err(c
            .set_backends("static", "green", backends(&["127.0.0.1:4"], false))
            .await),
        ControlError::NotReleasable { service } if service == "static"
    ));
    assert_eq!(f.store.saves(), 0);
    assert!(f.store.events().is_empty());
}

#[tokio::test]
async fn reload_with_an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let f = Fixture::new();
    f.write_config(&format!("{CONFIG}\n[service.web]\nbogus = 1\n"));
    let err = f.controller.reload().await.unwrap_err();
    let ControlError::InvalidConfig { file, errors } = &err else {
        panic!("want InvalidConfig, got {err:?}");
    };
    assert_eq!(file, &f.config_path);
    assert!(!errors.is_empty());
    assert!(
        err.to_string().contains("the old config keeps serving"),
        "{err}"
    );
    let snap = f.controller.shared().snapshot.load();
    assert_eq!(snap.config.routes.len(), 2, "the old config still serves");
    let last = f.store.events().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.result.as_str()),
        ("reload", "refused")
    );

    // A valid one is published, and the release state stays.
    f.controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    let more = format!("{CONFIG}\n[[route]]\nhost = \"www.web.test\"\nservice = \"web\"\n");
    f.write_config(&more);
    let resp = f.controller.reload().await.unwrap();
    assert_eq!((resp.routes, resp.services), (3, 2));
    assert_eq!(f.controller.shared().snapshot.load().config.routes.len(), 3);
    assert_eq!(active(&f), Some(Color::Green));
    assert_eq!(f.store.events().last().unwrap().action, "reload");
}

#[tokio::test]
async fn a_failed_persist_leaves_state_and_traffic_unchanged() {
    let f = Fixture::new();
    f.store.fail_writes(true);
    let err = f
        .controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotSaved(_)), "{err:?}");
    assert!(err.to_string().ends_with("nothing changed"), "{err}");
    assert_eq!(active(&f), Some(Color::Blue));
    assert_eq!(f.store.state(), None);

    let err = f
        .controller
        .set_backends("web", "green", backends(&["127.0.0.1:5"], false))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotSaved(_)), "{err:?}");
    assert_eq!(addrs(&f, "green"), ["127.0.0.1:2"]);

    // The disk is back: the same switch goes through, from the unchanged state.
    f.store.fail_writes(false);
    let resp = f
        .controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    assert_eq!(resp.changed[0].from, Color::Blue);
    assert_eq!(active(&f), Some(Color::Green));
}

#[tokio::test]
async fn canary_promote_and_abort() {
    let f = Fixture::new();
    let c = &f.controller;
    for verb in ["promote", "abort"] {
        let r = if verb == "promote" {
            c.promote(ServicesRequest::default()).await
        } else {
            c.abort(ServicesRequest::default()).await
        };
        assert!(matches!(r, Err(ControlError::NoCanary)), "{verb}: {r:?}");
    }
    let start = || CanaryRequest {
        color: Color::Green,
        steps: vec![10, 50, 100],
        interval_s: 3600,
        services: vec![],
        skip_smoke: true,
    };
    let resp = c.canary(start()).await.unwrap();
    let canary = resp.status.services["web"].canary.clone().unwrap();
    assert_eq!((canary.color, canary.weight), (Color::Green, 10));
    // A second canary, or a switch, while one runs: the state machine refuses.
    assert!(matches!(
        c.canary(start()).await,
        Err(ControlError::Release(Refusal::CanaryRunning { .. }))
    ));
    assert!(matches!(
        c.switch(switch(Color::Green, true)).await,
        Err(ControlError::Release(Refusal::CanaryRunning { .. }))
    ));
    c.abort(ServicesRequest::default()).await.unwrap();
    assert_eq!(active(&f), Some(Color::Blue));
    assert_eq!(f.store.events().last().unwrap().action, "abort");

    c.canary(start()).await.unwrap();
    let resp = c.promote(ServicesRequest::default()).await.unwrap();
    assert_eq!(resp.changed[0].to, Color::Green);
    assert_eq!(active(&f), Some(Color::Green));
    assert!(f.controller.status().services["web"].canary.is_none());
}

#[tokio::test]
async fn release_verbs_check_their_services() {
    let f = Fixture::new();
    let named = |s: &str| SwitchRequest {
        color: Color::Green,
        services: vec![s.to_string()],
        skip_smoke: true,
        wait_drain: false,
    };
    assert!(matches!(
        f.controller.switch(named("nope")).await,
        Err(ControlError::NotFound { service }) if service == "nope"
    ));
    assert!(matches!(
        f.controller.switch(named("static")).await,
        Err(ControlError::NotReleasable { .. })
    ));
    let f = Fixture::with(
        "[listen]\nhttp = \"127.0.0.1:18080\"\n[[route]]\nhost = \"a.test\"\nservice = \"a\"\n[service.a]\nbackends = [\"127.0.0.1:1\"]\n",
        MemoryStore::default(),
    );
    assert!(matches!(
        f.controller.switch(switch(Color::Green, true)).await,
        Err(ControlError::NoReleasableService)
    ));
}

#[tokio::test]
async fn a_restart_starts_from_the_store() {
    let f = Fixture::new();
    f.controller
        .switch(switch(Color::Green, true))
        .await
        .unwrap();
    f.controller
        .set_backends("web", "blue", backends(&["127.0.0.1:6"], false))
        .await
        .unwrap();
    let again = Fixture::with(CONFIG, f.store.clone());
    assert_eq!(active(&again), Some(Color::Green));
    assert_eq!(addrs(&again, "blue"), ["127.0.0.1:6"]);
}

#[test]
fn a_stored_override_that_does_not_parse_stops_the_start() {
    let mut state = PersistedState {
        version: STATE_VERSION,
        ..Default::default()
    };
    state
        .overrides
        .entry("web".into())
        .or_default()
        .insert(Color::Green, vec!["not an address".into()]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let config = crate::persist::config_files::load(&path).unwrap();
    let err = match super::Controller::with_store(
        config,
        std::sync::Arc::new(MemoryStore::with_state(state)),
    ) {
        Err(e) => e,
        Ok(_) => panic!("started on a broken override"),
    };
    let msg = err.to_string();
    assert!(
        msg.contains("memory") && msg.contains("override of web green"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_dry_run_smoke_does_not_take_the_commit_lock() {
    let f = Fixture::new();
    let _held = f.controller.lock().await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        f.controller.smoke(SmokeRequest {
            color: Color::Green,
            services: vec![],
        }),
    )
    .await
    .expect("smoke waited for the commit lock")
    .unwrap();
    assert!(!resp.passed);
    assert_eq!(resp.results.len(), 1);
}

/// `web` with green given by name; nothing looks it up unless a test does.
const NAMED: &str = r#"
[listen]
http = "127.0.0.1:18080"

[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["127.0.0.1:1"]
green = ["api-green.invalid:8000"]
smoke = [{ path = "/health", expect_status = 200, timeout_ms = 2000 }]
"#;

fn api_green() -> crate::core::config::BackendName {
    crate::core::config::BackendName {
        host: "api-green.invalid".into(),
        port: 8000,
    }
}

/// Hands `found` for `api-green.invalid:8000` to the controller, as a DNS refresh would.
async fn refreshed(f: &Fixture, found: crate::runtime::dns::Found) {
    let mut inner = f.controller.inner.lock().await;
    f.controller
        .publish_resolved(&mut inner, vec![(api_green(), found)]);
}

fn sockets(list: &[&str]) -> Vec<std::net::SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn dns_failures() -> u64 {
    crate::runtime::metrics::global()
        .dns_failures
        .with_label_values(&["api-green.invalid:8000"])
        .get()
}

#[tokio::test]
async fn a_name_never_resolved_leaves_its_pool_empty_and_fails_the_smoke_checks() {
    let f = Fixture::with(NAMED, MemoryStore::default());
    let st = f.controller.status();
    let web = &st.services["web"];
    assert!(web.backends["green"].is_empty(), "{web:?}");
    assert_eq!(web.unresolved["green"], ["api-green.invalid:8000"]);
    let err = f
        .controller
        .switch(switch(Color::Green, false))
        .await
        .unwrap_err();
    let ControlError::Refused { failures, .. } = err else {
        panic!("not refused: {err:?}");
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].backend, "api-green.invalid:8000");
    assert!(failures[0].expected.contains("resolves"), "{failures:?}");
    assert_eq!(active(&f), Some(Color::Blue));
}

#[tokio::test]
async fn a_refresh_publishes_new_addresses_keeps_health_and_survives_failures() {
    let f = Fixture::with(NAMED, MemoryStore::default());
    refreshed(&f, Ok(sockets(&["127.0.0.2:8000"]))).await;
    let web = &f.controller.status().services["web"];
    assert_eq!(web.backends["green"].len(), 1);
    assert_eq!(web.backends["green"][0].addr, "127.0.0.2:8000");
    assert_eq!(
        web.backends["green"][0].name.as_deref(),
        Some("api-green.invalid:8000")
    );
    assert!(web.unresolved.is_empty(), "{web:?}");

    // Health of an address that stays carries over a refresh that adds one.
    let first = f.controller.shared.snapshot.load().services[0].pools[1].backends[0].clone();
    first.record_check(false, 1, 1);
    refreshed(&f, Ok(sockets(&["127.0.0.3:8000", "127.0.0.2:8000"]))).await;
    let snap = f.controller.shared.snapshot.load_full();
    let green = &snap.services[0].pools[1];
    let by_addr = |a: &str| {
        green
            .backends
            .iter()
            .find(|b| b.addr_text == a)
            .unwrap_or_else(|| panic!("{a} not in the pool"))
            .clone()
    };
    assert!(std::sync::Arc::ptr_eq(&by_addr("127.0.0.2:8000"), &first));
    assert!(!by_addr("127.0.0.2:8000").is_healthy());
    assert!(by_addr("127.0.0.3:8000").is_healthy());

    // A failed lookup, or one that finds nothing, keeps the last addresses and publishes
    // nothing new; each counts.
    let before = dns_failures();
    refreshed(&f, Err("NXDOMAIN".into())).await;
    refreshed(&f, Ok(Vec::new())).await;
    assert_eq!(dns_failures(), before + 2);
    assert!(std::sync::Arc::ptr_eq(
        &f.controller.shared.snapshot.load_full(),
        &snap
    ));
    assert_eq!(addrs(&f, "green"), ["127.0.0.2:8000", "127.0.0.3:8000"]);

    // A vanished address leaves the pool; a request still on it holds the old pool.
    refreshed(&f, Ok(sockets(&["127.0.0.3:8000"]))).await;
    assert_eq!(addrs(&f, "green"), ["127.0.0.3:8000"]);
    assert_eq!(green.backends.len(), 2, "the old snapshot is untouched");
}

#[tokio::test]
async fn backends_accepts_names_and_looks_them_up_before_publishing() {
    let f = Fixture::new();
    f.controller
        .set_backends(
            "web",
            "green",
            backends(&["localhost:9", "127.0.0.1:7"], false),
        )
        .await
        .unwrap();
    // `localhost` comes from /etc/hosts, through the system's resolver.
    let web = &f.controller.status().services["web"];
    let green: Vec<(String, Option<String>)> = web.backends["green"]
        .iter()
        .map(|b| (b.addr.clone(), b.name.clone()))
        .collect();
    assert!(
        green.contains(&("127.0.0.1:9".into(), Some("localhost:9".into()))),
        "{green:?}"
    );
    assert!(green.contains(&("127.0.0.1:7".into(), None)), "{green:?}");
    let saved = f.store.state().unwrap();
    assert_eq!(
        saved.overrides["web"][&Color::Green],
        ["localhost:9", "127.0.0.1:7"]
    );
}

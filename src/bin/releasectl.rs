//! `releasectl` — the command line over switchyard's admin API.
//!
//! Exit codes: 0 done; 1 refused or rolled back (a smoke check failed, nothing to roll back);
//! 2 usage or config error; 3 the admin API could not be reached or refused the token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use switchyard::api::*;
use switchyard::core::color::Color;

#[derive(Parser)]
#[command(
    name = "releasectl",
    version,
    about = "Drive switchyard releases: switch, rollback, smoke, backends, history, reload."
)]
struct Cli {
    /// The admin API of the switchyard instance.
    #[arg(
        long,
        global = true,
        env = "RELEASECTL_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    admin: String,
    /// File holding the admin token (default: state/admin.token). RELEASECTL_TOKEN, if set,
    /// holds the token itself and wins.
    #[arg(long, global = true, env = "RELEASECTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Show every service: active and previous color, canary, backends with health, in-flight
    /// requests per color.
    Status,
    /// Run the smoke checks of COLOR and, when all pass, move traffic to it atomically.
    Switch(SwitchArgs),
    /// Return services to their previous color.
    Rollback(RollbackArgs),
    /// Run the smoke checks of COLOR without switching.
    Smoke(SmokeArgs),
    /// Replace the backends of a color of a service (persisted).
    Backends(BackendsArgs),
    /// Show the newest events of the release history, oldest first.
    History {
        /// How many of the newest events to show (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = parse_history_limit)]
        limit: usize,
    },
    /// Re-read the config; an invalid config is refused and the old one keeps serving.
    Reload,
    /// Send a rising share of requests to COLOR, a step per interval while the SLO holds;
    /// promote at the end, drop to 0 on a breach. Follows progress until then.
    Canary(CanaryArgs),
    /// Make the running canary's color active now.
    Promote {
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// Drop the running canary to 0; the active color stays.
    Abort {
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// Show every certificate: host, issuer, validity, days left, next renewal, last error.
    Certs {
        /// Renew now (all hosts, or the HOSTs given) instead of waiting for the schedule.
        #[arg(long)]
        renew: bool,
        hosts: Vec<String>,
    },
}

#[derive(Args)]
struct SwitchArgs {
    /// blue or green.
    color: Color,
    /// Only these services (repeatable); default: every releasable service.
    #[arg(long = "service")]
    services: Vec<String>,
    /// Switch without running the smoke checks.
    #[arg(long)]
    skip_smoke: bool,
    /// Return only when the old color has no request in flight (or its drain timeout passed).
    #[arg(long)]
    wait_drain: bool,
}

#[derive(Args)]
struct CanaryArgs {
    color: Color,
    /// Rising weights in percent.
    #[arg(long, default_value = "5,25,50,100", value_delimiter = ',')]
    steps: Vec<u8>,
    /// Time per step: 30s, 2m, 1h (a bare number is seconds).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    interval: u64,
    #[arg(long = "service")]
    services: Vec<String>,
    #[arg(long)]
    skip_smoke: bool,
    /// Return once the canary started instead of following it.
    #[arg(long)]
    detach: bool,
}

/// `--limit` of `history`: what `GET /v1/history?limit=` accepts.
fn parse_history_limit(s: &str) -> Result<usize, String> {
    switchyard::api::history_limit(&format!("limit={s}"))
}

fn parse_interval(s: &str) -> Result<u64, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 30s, 2m, 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: unit must be s, m or h")),
    };
    if n == 0 {
        return Err("the interval must be at least 1s".into());
    }
    Ok(n * mult)
}

#[derive(Args)]
struct RollbackArgs {
    #[arg(long = "service")]
    services: Vec<String>,
    #[arg(long)]
    wait_drain: bool,
}

#[derive(Args)]
struct SmokeArgs {
    color: Color,
    #[arg(long = "service")]
    services: Vec<String>,
}

#[derive(Args)]
struct BackendsArgs {
    color: Color,
    /// host:port of each backend.
    #[arg(required = true)]
    addrs: Vec<String>,
    #[arg(long)]
    service: String,
    /// Allow replacing the backends of the color serving traffic.
    #[arg(long)]
    force: bool,
}

/// What went wrong, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
    body: Option<Value>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            body: None,
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                3,
                format!("cannot reach the admin API at {}: {e}. Is switchyard running, and is --admin right?", self.base),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = match status {
            401 | 403 => 3,
            409 => 1,
            400..=499 => 2,
            _ => 1,
        };
        let message = if code == 3 {
            format!("{message} (token from RELEASECTL_TOKEN or --token-file)")
        } else {
            message
        };
        Err(Failure {
            code,
            message,
            body: Some(value),
        })
    }
}

fn load_token(cli: &Cli) -> Result<String, Failure> {
    if let Ok(t) = std::env::var("RELEASECTL_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = cli
        .token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("state/admin.token"));
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            Failure::new(
                2,
                format!(
                    "cannot read the token file {}: {e} (set --token-file or RELEASECTL_TOKEN)",
                    path.display()
                ),
            )
        })
}

fn dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn print_status(s: &StatusResponse) {
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "ACTIVE".into(),
        "PREVIOUS".into(),
        "CANARY".into(),
        "BACKENDS".into(),
        "IN-FLIGHT".into(),
    ]];
    for (name, svc) in &s.services {
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|(color, list)| {
                let b: Vec<String> = list
                    .iter()
                    .map(|b| format!("{}{}", b.addr, if b.healthy { "" } else { " (down)" }))
                    .collect();
                if svc.releasable {
                    format!("{color}: {}", b.join(", "))
                } else {
                    b.join(", ")
                }
            })
            .collect();
        let inflight: Vec<String> = svc
            .inflight
            .iter()
            .map(|(color, n)| {
                let up = svc.upgraded.get(color).copied().unwrap_or(0);
                let ws = if up > 0 {
                    format!(" ({up} ws)")
                } else {
                    String::new()
                };
                if svc.releasable {
                    format!("{color} {n}{ws}")
                } else {
                    format!("{n}{ws}")
                }
            })
            .collect();
        rows.push(vec![
            name.clone(),
            dash(svc.active),
            dash(svc.previous),
            svc.canary
                .as_ref()
                .map_or("-".into(), |c| format!("{} {}%", c.color, c.weight)),
            backends.join("; "),
            inflight.join(", "),
        ]);
        if let Some(alarm) = &svc.alarm {
            rows.push(vec![String::new(), format!("ALARM: {alarm}")]);
        }
    }
    print_table(&rows);
}

fn print_failures(failures: &[SmokeResult]) {
    for f in failures {
        eprintln!(
            "  FAIL {} {} {}: expected {}, got {}",
            f.service, f.backend, f.path, f.expected, f.got
        );
    }
}

fn print_release(r: &ReleaseResponse, verb: &str) {
    if r.changed.is_empty() {
        println!("nothing to {verb}: every service already is where asked");
    }
    for c in &r.changed {
        println!("{}: {} → {}", c.service, c.from, c.to);
    }
    let passed = r.smoke.iter().filter(|s| s.ok).count();
    if !r.smoke.is_empty() {
        println!("smoke checks: {passed}/{} passed", r.smoke.len());
    }
    if let Some(d) = &r.drain {
        if d.drained {
            println!("drained in {} ms", d.waited_ms);
        } else {
            println!(
                "drain timeout after {} ms; still in flight: {:?}",
                d.waited_ms, d.remaining
            );
        }
    }
}

/// Polls status until every canary of `services` ended; exit 0 if `color` was promoted,
/// 1 if the canary was dropped (an SLO breach or an abort).
async fn follow_canary(
    client: &Client,
    services: &[String],
    color: Color,
    json: bool,
) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40.green/blue}] {pos:>3}% {msg}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        b.set_prefix(format!("canary {color}"));
        b
    });
    let mut last_weight: Option<u8> = None;
    let started = std::time::Instant::now();
    loop {
        let v = client
            .call(reqwest::Method::GET, "/v1/status", None)
            .await?;
        let st: StatusResponse = decode(&v)?;
        let mut running = false;
        let mut weight = 100u8;
        for s in services {
            if let Some(c) = st.services.get(s).and_then(|s| s.canary.as_ref()) {
                running = true;
                weight = weight.min(c.weight);
            }
        }
        if running {
            if last_weight != Some(weight) {
                last_weight = Some(weight);
                match &bar {
                    Some(b) => b.set_position(weight as u64),
                    None if !json => {
                        println!("{:>5}s  {color} at {weight}%", started.elapsed().as_secs())
                    }
                    None => {}
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let promoted = services
            .iter()
            .all(|s| st.services.get(s).and_then(|s| s.active) == Some(color));
        if let Some(b) = &bar {
            if promoted {
                b.set_position(100);
            }
            b.finish_with_message(if promoted { "promoted" } else { "rolled back" });
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        if promoted {
            if !json {
                println!(
                    "{color} promoted on {} after {}s",
                    services.join(", "),
                    started.elapsed().as_secs()
                );
            }
            return Ok(());
        }
        // Say why, from history.
        let h = client
            .call(reqwest::Method::GET, "/v1/history?limit=20", None)
            .await
            .ok()
            .and_then(|v| serde_json::from_value::<HistoryResponse>(v).ok());
        let why = h
            .and_then(|h| {
                h.events
                    .into_iter()
                    .rev()
                    .find(|e| e.action == "rollback" || e.action == "abort")
            })
            .map(|e| {
                e.detail
                    .get("detail")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
                    .unwrap_or(e.action)
            })
            .unwrap_or_else(|| "the canary ended".into());
        return Err(Failure::new(
            1,
            format!("canary of {color} rolled back: {why}"),
        ));
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    serde_json::from_value(v.clone())
        .map_err(|e| Failure::new(1, format!("unexpected answer from the admin API: {e}")))
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    use reqwest::Method;
    let client = Client {
        http: reqwest::Client::builder()
            .build()
            .map_err(|e| Failure::new(1, e.to_string()))?,
        base: cli.admin.clone(),
        token: load_token(cli)?,
    };
    let out = |v: &Value| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
        cli.json
    };
    match &cli.verb {
        Verb::Status => {
            let v = client.call(Method::GET, "/v1/status", None).await?;
            if !out(&v) {
                print_status(&decode(&v)?);
            }
        }
        Verb::Switch(a) => {
            let req = SwitchRequest {
                color: a.color,
                services: a.services.clone(),
                skip_smoke: a.skip_smoke,
                wait_drain: a.wait_drain,
            };
            let v = client
                .call(
                    Method::POST,
                    "/v1/switch",
                    Some(serde_json::to_value(&req).unwrap()),
                )
                .await?;
            if !out(&v) {
                print_release(&decode(&v)?, "switch");
            }
        }
        Verb::Rollback(a) => {
            let req = RollbackRequest {
                services: a.services.clone(),
                wait_drain: a.wait_drain,
            };
            let v = client
                .call(
                    Method::POST,
                    "/v1/rollback",
                    Some(serde_json::to_value(&req).unwrap()),
                )
                .await?;
            if !out(&v) {
                print_release(&decode(&v)?, "roll back");
            }
        }
        Verb::Smoke(a) => {
            let req = SmokeRequest {
                color: a.color,
                services: a.services.clone(),
            };
            let v = client
                .call(
                    Method::POST,
                    "/v1/smoke",
                    Some(serde_json::to_value(&req).unwrap()),
                )
                .await?;
            let r: SmokeResponse = decode(&v)?;
            if !out(&v) {
                for s in &r.results {
                    println!(
                        "{} {} {} {}: expected {}, got {}",
                        if s.ok { "ok  " } else { "FAIL" },
                        s.service,
                        s.backend,
                        s.path,
                        s.expected,
                        s.got
                    );
                }
                let passed = r.results.iter().filter(|s| s.ok).count();
                println!("{passed}/{} smoke checks passed", r.results.len());
            }
            if !r.passed {
                return Err(Failure::new(
                    1,
                    format!("smoke checks of {} failed", a.color),
                ));
            }
        }
        Verb::Backends(a) => {
            let req = BackendsRequest {
                backends: a.addrs.clone(),
                force: a.force,
            };
            let path = format!("/v1/services/{}/backends/{}", a.service, a.color);
            let v = client
                .call(
                    Method::PUT,
                    &path,
                    Some(serde_json::to_value(&req).unwrap()),
                )
                .await?;
            if !out(&v) {
                println!("{} {} backends: {}", a.service, a.color, a.addrs.join(", "));
            }
        }
        Verb::History { limit } => {
            let v = client
                .call(Method::GET, &format!("/v1/history?limit={limit}"), None)
                .await?;
            if !out(&v) {
                let h: HistoryResponse = decode(&v)?;
                let mut rows = vec![vec![
                    "TIME".to_string(),
                    "ACTION".into(),
                    "SERVICES".into(),
                    "RESULT".into(),
                    "DETAIL".into(),
                ]];
                for e in h.events {
                    rows.push(vec![
                        e.time,
                        e.action,
                        e.services.join(","),
                        e.result,
                        if e.detail.is_null() {
                            String::new()
                        } else {
                            e.detail.to_string()
                        },
                    ]);
                }
                print_table(&rows);
            }
        }
        Verb::Reload => {
            let v = client.call(Method::POST, "/v1/reload", None).await?;
            if !out(&v) {
                let r: ReloadResponse = decode(&v)?;
                println!("reloaded: {} routes, {} services", r.routes, r.services);
            }
        }
        Verb::Certs { renew, hosts } => {
            if *renew {
                let body = serde_json::to_value(RenewRequest {
                    hosts: hosts.clone(),
                })
                .unwrap();
                let v = client
                    .call(Method::POST, "/v1/certs/renew", Some(body))
                    .await?;
                if !out(&v) {
                    let r: RenewResponse = decode(&v)?;
                    println!("renewing now: {}", r.hosts.join(", "));
                }
                return Ok(());
            }
            let v = client.call(Method::GET, "/v1/certs", None).await?;
            if !out(&v) {
                let r: CertsResponse = decode(&v)?;
                let mut rows = vec![vec![
                    "HOST".to_string(),
                    "ISSUER".into(),
                    "NOT BEFORE".into(),
                    "NOT AFTER".into(),
                    "DAYS LEFT".into(),
                    "NEXT RENEWAL".into(),
                    "LAST ERROR".into(),
                ]];
                for c in r.certs {
                    rows.push(vec![
                        c.host,
                        c.issuer,
                        dash(c.not_before),
                        dash(c.not_after),
                        dash(c.days_left),
                        dash(c.next_renewal),
                        dash(c.last_error),
                    ]);
                }
                print_table(&rows);
            }
        }
        Verb::Canary(a) => {
            let req = CanaryRequest {
                color: a.color,
                steps: a.steps.clone(),
                interval_s: a.interval,
                services: a.services.clone(),
                skip_smoke: a.skip_smoke,
            };
            let v = client
                .call(
                    Method::POST,
                    "/v1/canary",
                    Some(serde_json::to_value(&req).unwrap()),
                )
                .await?;
            let started: ReleaseResponse = decode(&v)?;
            // Follow this canary's services only, not unrelated ones running beside it.
            let services = started.services.clone();
            if a.detach {
                if !out(&v) {
                    println!(
                        "canary of {} started on {}: {}% (follow with `releasectl status`)",
                        a.color,
                        services.join(", "),
                        a.steps[0]
                    );
                }
                return Ok(());
            }
            return follow_canary(&client, &services, a.color, cli.json).await;
        }
        Verb::Promote { services } | Verb::Abort { services } => {
            let promote = matches!(cli.verb, Verb::Promote { .. });
            let path = if promote {
                "/v1/canary/promote"
            } else {
                "/v1/canary/abort"
            };
            let body = serde_json::to_value(ServicesRequest {
                services: services.clone(),
            })
            .unwrap();
            let v = client.call(Method::POST, path, Some(body)).await?;
            if !out(&v) {
                let r: ReleaseResponse = decode(&v)?;
                if promote {
                    print_release(&r, "promote");
                } else {
                    println!("canary aborted: traffic stays on the active color");
                }
                print_status(&r.status);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if cli.json {
                if let Some(b) = &f.body {
                    println!("{}", serde_json::to_string_pretty(b).unwrap_or_default());
                }
            }
            eprintln!("releasectl: {}", f.message);
            if let Some(failures) = f
                .body
                .as_ref()
                .and_then(|b| b.get("failures"))
                .and_then(|v| serde_json::from_value::<Vec<SmokeResult>>(v.clone()).ok())
            {
                print_failures(&failures);
            }
            if let Some(errors) = f
                .body
                .as_ref()
                .and_then(|b| b.get("errors"))
                .and_then(Value::as_array)
            {
                for e in errors {
                    eprintln!("  {}", e.as_str().unwrap_or_default());
                }
            }
            ExitCode::from(f.code)
        }
    }
}

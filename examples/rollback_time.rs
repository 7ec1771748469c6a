//! Rollback time: how long a bad release serves clients before switchyard's SLO watch puts
//! traffic back on blue. The driver of `loadtests/rollback-time.sh`.
//!
//! The tool is its own backends: a healthy blue and a bad green (hyper servers on the
//! addresses given), green answering 500 to `--error-pct` % of requests, evenly spread. It
//! puts paced keep-alive load on the proxy (`--rate` req/s over `--conns` connections), and
//! per repetition:
//!
//! 1. starts the load on blue, waits `--warm-ms`;
//! 2. `POST /v1/switch {"color":"green","skip_smoke":true}` (bearer token from the file);
//! 3. polls `/v1/status` until the service is back on blue (or `--timeout-s`), keeps the load
//!    on for `--tail-ms`, stops it and reads the rollback's entry in `/v1/history`;
//! 4. from what the clients saw: **rollback time** = from the first bad response a client
//!    received to the send time of the first request after which every response came from
//!    blue; **failed** = non-2xx responses + connection errors.
//!
//! Between repetitions it waits a little over a second: the SLO watch counts the new color's
//! requests from the second of the switch on, so the next switch starts with a clean window.
//!
//! Each setting's summary is appended as one tab-separated line to `--results` if given.
//! Exit status: 0 every repetition rolled back; 1 one did not (or a switch failed); 2 setup.

// A command-line tool: it exits with its verdict (see .clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Time from the first bad response to traffic back on blue (SLO rollback)")]
struct Args {
    /// Proxy address (ip:port), plain HTTP.
    #[arg(long)]
    proxy: String,
    /// Host header of the load requests (a routed host of the service).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Admin API base URL.
    #[arg(long)]
    admin: String,
    /// File holding the admin token.
    #[arg(long)]
    token_file: PathBuf,
    /// Listen address of the blue backend (healthy).
    #[arg(long)]
    blue: SocketAddr,
    /// Listen address of the green backend (bad).
    #[arg(long)]
    green: SocketAddr,
    /// Share of green's answers that are 500s, in percent.
    #[arg(long, default_value_t = 100.0)]
    error_pct: f64,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Total request rate over all connections (req/s).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Keep-alive client connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Load on blue before the switch.
    #[arg(long, default_value_t = 1000)]
    warm_ms: u64,
    /// Load after the rollback was seen in /v1/status.
    #[arg(long, default_value_t = 500)]
    tail_ms: u64,
    /// Give up on a repetition if no rollback came within this time.
    #[arg(long, default_value_t = 15)]
    timeout_s: u64,
    /// The service.
    #[arg(long, default_value = "web")]
    service: String,
    /// Label: the service's slo.window_s (for the output only).
    #[arg(long, default_value = "?")]
    window_s: String,
    /// Append the summary line (TSV) here.
    #[arg(long)]
    results: Option<PathBuf>,
}

// ------------------------------------------------------------------ backends

/// Green answers 500 to an evenly spread `pct` % of its requests (Bresenham-style: request n
/// is bad when floor((n+1)·p) > floor(n·p)), so 20 % means every 5th request.
fn is_bad(n: u64, pct: f64) -> bool {
    let p = pct / 100.0;
    ((n + 1) as f64 * p).floor() > (n as f64 * p).floor()
}

async fn serve(
    addr: SocketAddr,
    color: &'static str,
    pct: f64,
    counter: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let (status, body) = if req.uri().path() == "/health" {
                            (200, "ok\n".to_string())
                        } else if color == "green"
                            && is_bad(counter.fetch_add(1, Ordering::Relaxed), pct)
                        {
                            (500, "green: internal error\n".to_string())
                        } else {
                            (200, format!("{color}\n"))
                        };
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain")
                            .header("x-backend-color", color)
                            .body(Full::new(Bytes::from(body)))
                            .expect("response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

// ------------------------------------------------------------------ load

const NONE: u8 = 0;
const BLUE: u8 = 1;
const GREEN: u8 = 2;

/// One request as a client saw it; times in µs since the start of the repetition.
#[derive(Clone, Copy)]
struct Rec {
    sent: u64,
    done: u64,
    /// 0 = no response (connection error)
    status: u16,
    color: u8,
}

impl Rec {
    fn failed(&self) -> bool {
        !(200..300).contains(&self.status)
    }
}

fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// One keep-alive connection sending a request every `period`, starting at `offset`.
async fn worker(
    addr: String,
    host: String,
    t0: Instant,
    period: Duration,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> (Vec<Rec>, Vec<String>) {
    let mut recs = Vec::new();
    let mut errors = Vec::new();
    let mut tick = tokio::time::interval_at((Instant::now() + offset).into(), period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'conn: while !stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(e) => {
                let t = us(t0);
                recs.push(Rec {
                    sent: t,
                    done: t,
                    status: 0,
                    color: NONE,
                });
                errors.push(format!("connect: {e}"));
                tick.tick().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            errors.push("handshake failed".into());
            continue;
        };
        tokio::spawn(conn);
        loop {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break 'conn;
            }
            if sender.ready().await.is_err() {
                errors.push("server closed the keep-alive connection".into());
                continue 'conn;
            }
            let req = http::Request::get("/")
                .header(http::header::HOST, host.as_str())
                .body(Empty::<Bytes>::new())
                .expect("request");
            let sent = us(t0);
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let color = match resp.headers().get("x-backend-color").map(|v| v.as_bytes()) {
                        Some(b"blue") => BLUE,
                        Some(b"green") => GREEN,
                        _ => NONE,
                    };
                    let ok = resp.into_body().collect().await.is_ok();
                    recs.push(Rec {
                        sent,
                        done: us(t0),
                        status: if ok { status } else { 0 },
                        color,
                    });
                    if !ok {
                        errors.push("body read failed".into());
                        continue 'conn;
                    }
                }
                Err(e) => {
                    recs.push(Rec {
                        sent,
                        done: us(t0),
                        status: 0,
                        color: NONE,
                    });
                    errors.push(format!("request: {e}"));
                    continue 'conn;
                }
            }
        }
    }
    (recs, errors)
}

// ------------------------------------------------------------------ admin

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| format!("GET {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {path} → {status}: {v}"));
        }
        Ok(v)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("POST {path} → {status}: {v}"));
        }
        Ok(v)
    }

    async fn active(&self, service: &str) -> Result<String, String> {
        let v = self.get("/v1/status").await?;
        v["services"][service]["active"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no active color for `{service}` in {v}"))
    }
}

// ------------------------------------------------------------------ one repetition

struct RepResult {
    rolled_back: bool,
    /// first bad response received → first request of the all-blue tail (ms)
    rollback_ms: Option<f64>,
    /// switch call returned → first request of the all-blue tail (ms)
    green_live_ms: Option<f64>,
    /// switch call returned → /v1/status showed blue again (ms, polled every 10 ms)
    status_ms: Option<f64>,
    failed: u64,
    green: u64,
    total: u64,
    history: String,
    errors: Vec<String>,
}

async fn rep(args: &Args, admin: &Admin, green_counter: &AtomicU64) -> Result<RepResult, String> {
    match admin.active(&args.service).await?.as_str() {
        "blue" => {}
        other => {
            return Err(format!(
                "`{}` is on {other} before the switch; expected blue",
                args.service
            ))
        }
    }
    green_counter.store(0, Ordering::Relaxed);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(args.conns as f64 / args.rate);
    let workers: Vec<_> = (0..args.conns)
        .map(|i| {
            tokio::spawn(worker(
                args.proxy.clone(),
                args.host.clone(),
                t0,
                period,
                period.mul_f64(i as f64 / args.conns as f64),
                stop.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(args.warm_ms)).await;
    let sw = admin
        .post(
            "/v1/switch",
            json!({"color": "green", "services": [args.service], "skip_smoke": true}),
        )
        .await;
    let sw_end = us(t0);
    let mut seen_blue = None;
    if sw.is_ok() {
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
        while Instant::now() < deadline {
            if admin.active(&args.service).await? == "blue" {
                seen_blue = Some(us(t0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(args.tail_ms)).await;
    stop.store(true, Ordering::Relaxed);
    let mut recs = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        let (r, e) = w.await.map_err(|e| format!("worker: {e}"))?;
        recs.extend(r);
        errors.extend(e);
    }
    if let Err(e) = sw {
        return Err(format!("switch to green failed: {e}"));
    }
    if seen_blue.is_none() {
        // leave the service as we found it for the next repetition
        let _ = admin
            .post("/v1/rollback", json!({"services": [args.service]}))
            .await;
    }
    recs.sort_by_key(|r| r.sent);

    let first_bad = recs.iter().filter(|r| r.failed()).map(|r| r.done).min();
    // the all-blue tail: every request from this one on was answered 2xx by blue
    let mut b = recs.len();
    while b > 0 && recs[b - 1].color == BLUE && !recs[b - 1].failed() {
        b -= 1;
    }
    let back_on_blue = if b < recs.len() && seen_blue.is_some() {
        Some(recs[b].sent)
    } else {
        None
    };
    let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1000.0;

    let history = match admin.get("/v1/history?limit=5").await {
        Ok(v) => v["events"]
            .as_array()
            .and_then(|ev| ev.iter().rev().find(|e| e["action"] == "rollback"))
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e["time"].as_str().unwrap_or("?"),
                    e["result"].as_str().unwrap_or("?"),
                    e["detail"]["detail"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "no rollback in history".into()),
        Err(e) => e,
    };
    Ok(RepResult {
        rolled_back: seen_blue.is_some(),
        rollback_ms: match (first_bad, back_on_blue) {
            (Some(f), Some(b)) => Some(ms(b, f)),
            _ => None,
        },
        green_live_ms: back_on_blue.map(|b| ms(b, sw_end)),
        status_ms: seen_blue.map(|s| ms(s, sw_end)),
        failed: recs.iter().filter(|r| r.failed()).count() as u64,
        green: recs.iter().filter(|r| r.color == GREEN).count() as u64,
        total: recs.len() as u64,
        history,
        errors,
    })
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (s[0], med, s[n - 1])
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.conns == 0
        || args.rate <= 0.0
        || args.reps == 0
        || !(0.0..=100.0).contains(&args.error_pct)
    {
        eprintln!(
            "rollback_time: --conns, --rate, --reps must be > 0 and --error-pct within 0..100"
        );
        std::process::exit(2);
    }
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("rollback_time: reading {}: {e}", args.token_file.display());
            std::process::exit(2);
        }
    };
    let admin = Admin {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client"),
        base: args.admin.trim_end_matches('/').to_string(),
        token,
    };
    let green_counter = Arc::new(AtomicU64::new(0));
    for (addr, color, counter) in [
        (args.blue, "blue", Arc::new(AtomicU64::new(0))),
        (args.green, "green", green_counter.clone()),
    ] {
        if let Err(e) = serve(addr, color, args.error_pct, counter).await {
            eprintln!("rollback_time: {color} backend on {addr}: {e}");
            std::process::exit(2);
        }
    }

    println!(
        "== window_s {}, green error share {} %, {} req/s over {} connections, {} repetition(s)",
        args.window_s, args.error_pct, args.rate, args.conns, args.reps
    );
    let mut rb = Vec::new();
    let mut failed = Vec::new();
    let mut live = Vec::new();
    let mut bad_reps = 0;
    for i in 0..args.reps {
        if i > 0 {
            // a new second for the SLO window (see the header)
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        match rep(&args, &admin, &green_counter).await {
            Ok(r) => {
                let f = |x: Option<f64>| {
                    x.map(|v| format!("{v:.0} ms"))
                        .unwrap_or_else(|| "n/a".into())
                };
                println!(
                    "rep {}: back on blue {} after the first bad response ({} after the switch returned; status showed blue after {}); failed requests {} (green answered {}, total {}){}",
                    i + 1,
                    f(r.rollback_ms),
                    f(r.green_live_ms),
                    f(r.status_ms),
                    r.failed,
                    r.green,
                    r.total,
                    if r.rolled_back { "" } else { "  — NO ROLLBACK" }
                );
                println!("       history: {}", r.history);
                let conn_errs: Vec<&String> = r.errors.iter().take(3).collect();
                if !conn_errs.is_empty() {
                    println!("       client errors ({}): {:?}", r.errors.len(), conn_errs);
                }
                if let Some(v) = r.rollback_ms {
                    rb.push(v);
                }
                if let Some(v) = r.green_live_ms {
                    live.push(v);
                }
                failed.push(r.failed as f64);
                if !r.rolled_back {
                    bad_reps += 1;
                }
            }
            Err(e) => {
                println!("rep {}: ERROR {e}", i + 1);
                bad_reps += 1;
            }
        }
    }
    let (rmin, rmed, rmax) = stats(&rb);
    let (fmin, fmed, fmax) = stats(&failed);
    let (lmin, lmed, lmax) = stats(&live);
    println!(
        "SUMMARY window_s={} error_pct={} reps={} rolled_back={} rollback_ms min/med/max {rmin:.0}/{rmed:.0}/{rmax:.0} failed min/med/max {fmin:.0}/{fmed:.0}/{fmax:.0} green_live_ms {lmin:.0}/{lmed:.0}/{lmax:.0}",
        args.window_s,
        args.error_pct,
        args.reps,
        args.reps - bad_reps
    );
    if let Some(path) = &args.results {
        let line = format!(
            "{}\t{}\t{}\t{}\t{rmin:.0}\t{rmed:.0}\t{rmax:.0}\t{fmin:.0}\t{fmed:.0}\t{fmax:.0}\t{lmed:.0}\n",
            args.window_s,
            args.error_pct,
            args.reps,
            args.reps - bad_reps
        );
        let ok = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = ok {
            eprintln!("rollback_time: writing {}: {e}", path.display());
        }
    }
    std::process::exit(if bad_reps > 0 { 1 } else { 0 });
}

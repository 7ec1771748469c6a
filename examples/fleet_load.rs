//! Several instances, one site: the measuring side of `loadtests/fleet.sh`.
//!
//! The script starts the etcd cluster and the switchyard instances; this tool is their blue
//! and green backends and measures, one subcommand per figure:
//!
//! - `backends`: blue and green HTTP backends that tag their answers (`x-backend-color`),
//!   each with a failure share (500s, evenly spread) set at runtime through a control port
//!   (`GET /fail/<color>/<percent>`); `/health` always answers 200. Runs until killed.
//! - `propagate`: N switches (alternating colors) through one instance's admin API; one
//!   keep-alive poller per instance sends a request every `--poll-ms` to its data port, and
//!   per switch the tool records when each instance first answered with the new color,
//!   measured from when the switch was sent and from when the call returned.
//! - `failover`: one repetition: finds the site's leader, optionally starts a canary through
//!   it (a step a second), kills it with SIGKILL, and measures until a survivor counts
//!   itself leader (`switchyard_leader 1` on its /metrics), until a survivor's status lists a
//!   new leader, and until the canary takes its next step.
//! - `rollback`: per repetition, a switch to green (smoke checks pass), then green fails every
//!   request while paced load goes through one follower only; from the first 5xx the client
//!   saw, until every instance serves blue again (the leader rolls back on the site's
//!   figures, which the follower publishes).
//! - `etcd-writes`: what the site writes to etcd over a period: the cluster revision (one per
//!   write transaction, whatever the key), the events under the site's prefix by key kind
//!   and instance (a watch through etcd's JSON gateway), and from the members' /metrics the
//!   puts, transactions and deletes applied, lease keep-alives and range reads received.
//!
//! Every subcommand prints a summary and a machine-readable `RESULT key=value …` line.
//! Exit status: 0 ok; 1 a measurement failed (a switch refused, a failed request where none
//! may fail, a timeout); 2 bad arguments or setup.

// A command-line tool: it exits with its verdict (see .clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Load tests of a site of several switchyard instances (loadtests/fleet.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Site {
    /// Data ports of the instances (ip:port, comma-separated), in instance order.
    #[arg(long, value_delimiter = ',')]
    data: Vec<String>,
    /// Admin API base URLs of the instances (comma-separated), in the same order.
    #[arg(long, value_delimiter = ',')]
    admins: Vec<String>,
    /// File holding the admin token (the same on every instance).
    #[arg(long)]
    token_file: PathBuf,
    /// Host header of data requests (a routed host of the service).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The releasable service.
    #[arg(long, default_value = "web")]
    service: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Blue and green backends with a control port.
    Backends {
        #[arg(long)]
        blue: SocketAddr,
        #[arg(long)]
        green: SocketAddr,
        #[arg(long)]
        control: SocketAddr,
    },
    /// Switch propagation to every instance.
    Propagate {
        #[command(flatten)]
        site: Site,
        /// Number of switches.
        #[arg(long, default_value_t = 100)]
        switches: usize,
        /// Index (0-based) of the instance whose admin API takes the switches.
        #[arg(long, default_value_t = 0)]
        via: usize,
        /// Time between one poll request's start and the next, per instance.
        #[arg(long, default_value_t = 2)]
        poll_ms: u64,
        /// Pause after every instance serves the new color, before the next switch.
        #[arg(long, default_value_t = 100)]
        gap_ms: u64,
        /// Give up on a switch not served everywhere after this long.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Write one line per switch here (tab-separated).
        #[arg(long)]
        per_switch: Option<PathBuf>,
    },
    /// Leader failover: one repetition.
    Failover {
        #[command(flatten)]
        site: Site,
        /// Process ids of the instances, in the same order.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<i32>,
        /// Also run a canary (a step a second) through the leader and time its next step.
        #[arg(long)]
        canary: bool,
        #[arg(long, default_value_t = 15000)]
        timeout_ms: u64,
    },
    /// Fleet rollback from the first bad response.
    Rollback {
        #[command(flatten)]
        site: Site,
        /// Control port of the backends (`backends --control`).
        #[arg(long)]
        control: String,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Request rate through the follower (req/s, over --conns connections).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Status polls of every instance, period.
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        #[arg(long, default_value_t = 15000)]
        timeout_ms: u64,
        /// Pause between blue everywhere and the next switch to green (the previous
        /// repetition's windows must be gone).
        #[arg(long, default_value_t = 2000)]
        gap_ms: u64,
    },
    /// etcd writes (and keep-alives, reads) over a period.
    EtcdWrites {
        /// etcd client URLs (comma-separated).
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// The site's key prefix.
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Instances in the site (for the per-instance figures).
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// A name for this period in the RESULT line.
        #[arg(long, default_value = "period")]
        label: String,
    },
}

// ------------------------------------------------------------------------------------ common

const NONE: u8 = 0;
const BLUE: u8 = 1;
const GREEN: u8 = 2;

fn color_name(c: u8) -> &'static str {
    match c {
        BLUE => "blue",
        GREEN => "green",
        _ => "-",
    }
}

fn color_of(name: &str) -> u8 {
    match name {
        "blue" => BLUE,
        "green" => GREEN,
        _ => NONE,
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("fleet_load: {msg}");
    std::process::exit(1);
}

fn setup_fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("fleet_load: {msg}");
    std::process::exit(2);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

/// "p50 X  p99 Y  max Z" (ms) of `v`.
fn p50_p99_max(v: &[f64]) -> (f64, f64, f64) {
    let s = sorted(v);
    (
        quantile(&s, 0.5),
        quantile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

fn min_med_max(v: &[f64]) -> (f64, f64, f64) {
    let s = sorted(v);
    (
        s.first().copied().unwrap_or(f64::NAN),
        quantile(&s, 0.5),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("reqwest client")
}

struct Admin {
    http: reqwest::Client,
    token: String,
}

impl Admin {
    fn new(site: &Site) -> Admin {
        let token = std::fs::read_to_string(&site.token_file)
            .unwrap_or_else(|e| setup_fail(format!("{}: {e}", site.token_file.display())))
            .trim()
            .to_string();
        Admin {
            http: http_client(),
            token,
        }
    }

    async fn get(&self, base: &str, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("GET {base}{path}: {e}"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("GET {base}{path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {base}{path} → {status}: {v}"));
        }
        Ok(v)
    }

    async fn status(&self, base: &str) -> Result<Value, String> {
        self.get(base, "/v1/status").await
    }

    /// POST; the status code and the JSON body.
    async fn post(&self, base: &str, path: &str, body: Value) -> Result<(u16, Value), String> {
        let r = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {base}{path}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn metrics(&self, base: &str) -> Result<String, String> {
        self.http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| format!("GET {base}/metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET {base}/metrics: {e}"))
    }
}

/// The active color of `service` in a status answer.
fn active(st: &Value, service: &str) -> u8 {
    color_of(st["services"][service]["active"].as_str().unwrap_or(""))
}

/// The admin port at the end of a base URL (`http://127.0.0.1:9901` → "9901").
fn port_of(base: &str) -> &str {
    base.rsplit(':').next().unwrap_or("")
}

/// The index of the instance whose id (`<hostname>:<admin port>`) is `id`.
fn index_of_id(site: &Site, id: &str) -> Option<usize> {
    let port = id.rsplit(':').next()?;
    site.admins.iter().position(|a| port_of(a) == port)
}

/// The value of the first sample of metric `name` (unlabelled or with labels).
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

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbl, value) = if let Some(r) = rest.strip_prefix('{') {
                let end = r.find('}')?;
                (&r[..end], &r[end + 1..])
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            labels
                .iter()
                .all(|want| lbl.split(',').any(|l| l == *want))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// One plain-HTTP/1.1 keep-alive connection to a data port (hyper, no pool, no retry).
struct DataConn {
    addr: String,
    host: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    connects: u64,
}

impl DataConn {
    fn new(addr: &str, host: &str) -> DataConn {
        DataConn {
            addr: addr.to_string(),
            host: host.to_string(),
            sender: None,
            connects: 0,
        }
    }

    /// `GET /`: (status, color). An error drops the connection (the next call reconnects).
    async fn get(&mut self) -> Result<(u16, u8), String> {
        if self.sender.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake {}: {e}", self.addr))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
            self.connects += 1;
        }
        let sender = self.sender.as_mut().expect("connected");
        let result = async {
            sender
                .ready()
                .await
                .map_err(|e| format!("connection closed: {e}"))?;
            let req = http::Request::get("/")
                .header(http::header::HOST, self.host.as_str())
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let color = match resp.headers().get("x-backend-color").map(|v| v.as_bytes()) {
                Some(b"blue") => BLUE,
                Some(b"green") => GREEN,
                _ => NONE,
            };
            resp.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((status, color))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

// ------------------------------------------------------------------------------------ backends

#[derive(Default)]
struct Backend {
    fail_pct: AtomicU32,
    seq: AtomicU64,
    hits: AtomicU64,
    failures: AtomicU64,
}

async fn serve_backend(listener: TcpListener, name: &'static str, st: Arc<Backend>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let st = st.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let st = st.clone();
                async move {
                    let mut status = 200;
                    if req.uri().path() != "/health" {
                        st.hits.fetch_add(1, Ordering::Relaxed);
                        // Evenly spread: exactly `pct` of every 100 consecutive requests fail.
                        let pct = u64::from(st.fail_pct.load(Ordering::Relaxed));
                        let n = st.seq.fetch_add(1, Ordering::Relaxed);
                        if (n + 1) * pct / 100 != n * pct / 100 {
                            status = 500;
                            st.failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let body = if status == 200 {
                        format!("{name}\n")
                    } else {
                        format!("{name} failing\n")
                    };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("x-backend-color", name)
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(body)))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn control(listener: TcpListener, blue: Arc<Backend>, green: Arc<Backend>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (blue, green) = (blue.clone(), green.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (blue, green) = (blue.clone(), green.clone());
                async move {
                    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
                    let (status, body) = match parts.as_slice() {
                        ["fail", color, pct] => {
                            let b = match *color {
                                "blue" => Some(&blue),
                                "green" => Some(&green),
                                _ => None,
                            };
                            match (b, pct.parse::<u32>()) {
                                (Some(b), Ok(p)) if p <= 100 => {
                                    b.fail_pct.store(p, Ordering::SeqCst);
                                    (200, format!("{color} fails {p} %\n"))
                                }
                                _ => (400, "want /fail/<blue|green>/<0-100>\n".into()),
                            }
                        }
                        ["stats"] => (
                            200,
                            json!({
                                "blue": {"hits": blue.hits.load(Ordering::Relaxed), "failures": blue.failures.load(Ordering::Relaxed)},
                                "green": {"hits": green.hits.load(Ordering::Relaxed), "failures": green.failures.load(Ordering::Relaxed)},
                            })
                            .to_string(),
                        ),
                        _ => (404, "not found\n".into()),
                    };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn backends(blue: SocketAddr, green: SocketAddr, ctl: SocketAddr) {
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a)
            .await
            .unwrap_or_else(|e| setup_fail(format!("bind {a}: {e}")))
    };
    let (lb, lg, lc) = (bind(blue).await, bind(green).await, bind(ctl).await);
    let (b, g) = (Arc::new(Backend::default()), Arc::new(Backend::default()));
    eprintln!("fleet_load backends: blue {blue}, green {green}, control {ctl}");
    tokio::join!(
        serve_backend(lb, "blue", b.clone()),
        serve_backend(lg, "green", g.clone()),
        control(lc, b, g)
    );
}

// ------------------------------------------------------------------------------------ propagate

/// What one instance's poller saw for the current switch.
#[derive(Default, Clone, Copy)]
struct Seen {
    /// µs since t0 when the first answer of the new color arrived (0 = not yet).
    first_new: u64,
    /// Answers of the old color after one of the new (must stay 0).
    flaps: u64,
    errors: u64,
}

struct Poller {
    /// The color wanted now (NONE: idle).
    target: AtomicU8,
    /// Switch number the `seen` belongs to.
    epoch: AtomicU64,
    seen: Mutex<Seen>,
    requests: AtomicU64,
    stop: AtomicBool,
}

async fn poll_loop(p: Arc<Poller>, mut conn: DataConn, period: Duration, t0: Instant) {
    let mut next = tokio::time::Instant::now();
    while !p.stop.load(Ordering::Relaxed) {
        next += period;
        let epoch = p.epoch.load(Ordering::Acquire);
        let target = p.target.load(Ordering::Acquire);
        let got = conn.get().await;
        let done = t0.elapsed().as_micros() as u64;
        p.requests.fetch_add(1, Ordering::Relaxed);
        if epoch == p.epoch.load(Ordering::Acquire) && target != NONE {
            let mut s = p.seen.lock().unwrap();
            match got {
                Ok((200, c)) if c == target => {
                    if s.first_new == 0 {
                        s.first_new = done;
                    }
                }
                Ok((200, _)) => {
                    if s.first_new != 0 {
                        s.flaps += 1;
                    }
                }
                _ => s.errors += 1,
            }
        }
        let now = tokio::time::Instant::now();
        if next < now {
            next = now; // a slow answer: no burst to catch up
        }
        tokio::time::sleep_until(next).await;
    }
}

struct SwitchRec {
    to: u8,
    sent: u64,
    returned: u64,
    ok: bool,
    applied: String,
    /// Per instance: first answer of the new color, µs since t0 (0 = never).
    first_new: Vec<u64>,
    flaps: u64,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
async fn propagate(
    site: Site,
    switches: usize,
    via: usize,
    poll_ms: u64,
    gap_ms: u64,
    timeout_ms: u64,
    per_switch: Option<PathBuf>,
) {
    let n = site.data.len();
    if n == 0 || site.admins.len() != n || via >= n {
        setup_fail("--data and --admins must name the same instances; --via one of them");
    }
    let admin = Admin::new(&site);
    let st = admin
        .status(&site.admins[via])
        .await
        .unwrap_or_else(|e| setup_fail(e));
    let mut current = active(&st, &site.service);
    if current == NONE {
        setup_fail(format!("service {}: no active color in {st}", site.service));
    }
    let t0 = Instant::now();
    let us = |t0: Instant| t0.elapsed().as_micros() as u64;
    let pollers: Vec<Arc<Poller>> = (0..n)
        .map(|_| {
            Arc::new(Poller {
                target: AtomicU8::new(NONE),
                epoch: AtomicU64::new(0),
                seen: Mutex::new(Seen::default()),
                requests: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, p) in pollers.iter().enumerate() {
        tasks.push(tokio::spawn(poll_loop(
            p.clone(),
            DataConn::new(&site.data[i], &site.host),
            Duration::from_millis(poll_ms.max(1)),
            t0,
        )));
    }
    let mut recs: Vec<SwitchRec> = Vec::with_capacity(switches);
    for k in 0..switches {
        let to = if current == BLUE { GREEN } else { BLUE };
        for p in &pollers {
            *p.seen.lock().unwrap() = Seen::default();
            p.target.store(to, Ordering::Release);
            p.epoch.store(k as u64 + 1, Ordering::Release);
        }
        let sent = us(t0);
        let answer = admin
            .post(
                &site.admins[via],
                "/v1/switch",
                json!({ "color": color_name(to), "services": [site.service] }),
            )
            .await;
        let returned = us(t0);
        let (ok, applied) = match &answer {
            Ok((200, v)) => (
                true,
                format!("{}/{}", v["instances"]["applied"], v["instances"]["total"]),
            ),
            Ok((code, v)) => {
                eprintln!(
                    "fleet_load: switch {} to {}: {code} {v}",
                    k + 1,
                    color_name(to)
                );
                (false, "-".into())
            }
            Err(e) => {
                eprintln!("fleet_load: switch {} to {}: {e}", k + 1, color_name(to));
                (false, "-".into())
            }
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        if ok {
            current = to;
            loop {
                if pollers
                    .iter()
                    .all(|p| p.seen.lock().unwrap().first_new != 0)
                    || Instant::now() >= deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // the gap keeps the pollers on this switch's epoch: an old color now is a flap
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let seen: Vec<Seen> = pollers.iter().map(|p| *p.seen.lock().unwrap()).collect();
        recs.push(SwitchRec {
            to,
            sent,
            returned,
            ok,
            applied,
            first_new: seen.iter().map(|s| s.first_new).collect(),
            flaps: seen.iter().map(|s| s.flaps).sum(),
            errors: seen.iter().map(|s| s.errors).sum(),
        });
    }
    for p in &pollers {
        p.stop.store(true, Ordering::Relaxed);
    }
    for t in tasks {
        let _ = t.await;
    }
    let poll_requests: u64 = pollers
        .iter()
        .map(|p| p.requests.load(Ordering::Relaxed))
        .sum();

    // ------------------------------------------------------------------ figures
    let good: Vec<&SwitchRec> = recs.iter().filter(|r| r.ok).collect();
    let failed_switches = recs.len() - good.len();
    let missing = good.iter().filter(|r| r.first_new.contains(&0)).count();
    let flaps: u64 = recs.iter().map(|r| r.flaps).sum();
    let poll_errors: u64 = recs.iter().map(|r| r.errors).sum();
    let calls: Vec<f64> = good
        .iter()
        .map(|r| (r.returned - r.sent) as f64 / 1000.0)
        .collect();
    let from_send = |r: &SwitchRec, i: usize| (r.first_new[i] as f64 - r.sent as f64) / 1000.0;
    let from_ret = |r: &SwitchRec, i: usize| (r.first_new[i] as f64 - r.returned as f64) / 1000.0;
    let complete: Vec<&&SwitchRec> = good
        .iter()
        .filter(|r| r.first_new.iter().all(|&t| t != 0))
        .collect();
    if let Some(path) = &per_switch {
        let mut out = String::from("switch\tto\tcall_ms\tapplied");
        for i in 0..n {
            out.push_str(&format!(
                "\ti{}_from_send_ms\ti{}_from_return_ms",
                i + 1,
                i + 1
            ));
        }
        out.push('\n');
        for (k, r) in recs.iter().enumerate() {
            out.push_str(&format!(
                "{}\t{}\t{:.3}\t{}",
                k + 1,
                color_name(r.to),
                (r.returned - r.sent) as f64 / 1000.0,
                r.applied
            ));
            for i in 0..n {
                if r.first_new[i] == 0 {
                    out.push_str("\t-\t-");
                } else {
                    out.push_str(&format!("\t{:.3}\t{:.3}", from_send(r, i), from_ret(r, i)));
                }
            }
            out.push('\n');
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("fleet_load: {}: {e}", path.display());
        }
    }
    println!(
        "== propagation: {} switches through instance {} (POST /v1/switch, smoke checks included), a poll request every {poll_ms} ms per instance",
        recs.len(),
        via + 1
    );
    let (c50, c99, cmax) = p50_p99_max(&calls);
    println!(
        "switch call (ms)            p50 {c50:8.2}  p99 {c99:8.2}  max {cmax:8.2}   (the call answers once this instance applied it and waited up to 2 s for the others)"
    );
    let applied_all = good
        .iter()
        .filter(|r| {
            let mut it = r.applied.split('/');
            matches!((it.next(), it.next()), (Some(a), Some(b)) if a == b)
        })
        .count();
    println!(
        "answers with instances.applied = total: {applied_all} of {}",
        good.len()
    );
    println!("serves the new color (ms)   ------- from the switch sent -------   ------ from the call returned ------");
    let mut result = format!(
        "RESULT switches={} failed_switches={failed_switches} missing={missing} flaps={flaps} poll_errors={poll_errors} poll_requests={poll_requests} call_p50={c50:.3} call_p99={c99:.3} call_max={cmax:.3} applied_all={applied_all}",
        recs.len()
    );
    let mut row = |name: String, send: Vec<f64>, ret: Vec<f64>, key: String| {
        let (s50, s99, smax) = p50_p99_max(&send);
        let (r50, r99, rmax) = p50_p99_max(&ret);
        println!(
            "{name:<26}  p50 {s50:7.2} p99 {s99:7.2} max {smax:7.2}   p50 {r50:7.2} p99 {r99:7.2} max {rmax:7.2}"
        );
        result.push_str(&format!(
            " {key}_send_p50={s50:.3} {key}_send_p99={s99:.3} {key}_send_max={smax:.3} {key}_ret_p50={r50:.3} {key}_ret_p99={r99:.3} {key}_ret_max={rmax:.3}"
        ));
    };
    for i in 0..n {
        let name = format!(
            "instance {}{}",
            i + 1,
            if i == via { " (took the switch)" } else { "" }
        );
        row(
            name,
            complete.iter().map(|r| from_send(r, i)).collect(),
            complete.iter().map(|r| from_ret(r, i)).collect(),
            format!("i{}", i + 1),
        );
    }
    row(
        format!("all {n}"),
        complete
            .iter()
            .map(|r| (0..n).map(|i| from_send(r, i)).fold(f64::MIN, f64::max))
            .collect(),
        complete
            .iter()
            .map(|r| (0..n).map(|i| from_ret(r, i)).fold(f64::MIN, f64::max))
            .collect(),
        "all".into(),
    );
    println!(
        "(a negative 'from the call returned' = that instance served the new color before the call answered; resolution: the poll period + one request)"
    );
    println!(
        "failed switches {failed_switches}, switches not seen on every instance within {timeout_ms} ms: {missing}, old color after the new one (flaps): {flaps}, poll request errors: {poll_errors} of {poll_requests}"
    );
    println!("{result}");
    let bad = failed_switches > 0 || missing > 0 || flaps > 0 || poll_errors > 0 || recs.is_empty();
    std::process::exit(i32::from(bad));
}

// ------------------------------------------------------------------------------------ failover

/// The site's leader as `admin` sees it: (index, id).
async fn find_leader(admin: &Admin, site: &Site, ask: usize) -> Result<(usize, String), String> {
    let st = admin.status(&site.admins[ask]).await?;
    let list = st["instances"].as_array().cloned().unwrap_or_default();
    let leaders: Vec<&Value> = list.iter().filter(|i| i["leader"] == true).collect();
    if leaders.len() != 1 {
        return Err(format!("want one leader, got {}", st["instances"]));
    }
    let id = leaders[0]["id"].as_str().unwrap_or("").to_string();
    let idx = index_of_id(site, &id).ok_or_else(|| format!("leader {id} is none of --admins"))?;
    Ok((idx, id))
}

fn canary_weight(st: &Value, service: &str) -> Option<u64> {
    st["services"][service]["canary"]["weight"].as_u64()
}

async fn failover(site: Site, pids: Vec<i32>, with_canary: bool, timeout_ms: u64) {
    let n = site.admins.len();
    if pids.len() != n || n < 2 {
        setup_fail("--pids must name every instance of --admins (at least 2)");
    }
    let admin = Admin::new(&site);
    let (leader, leader_id) = find_leader(&admin, &site, 0)
        .await
        .unwrap_or_else(|e| fail(e));
    let survivors: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    // Every instance must agree before the kill.
    for &i in &survivors {
        let (l, _) = find_leader(&admin, &site, i)
            .await
            .unwrap_or_else(|e| fail(e));
        if l != leader {
            fail(format!(
                "instance {} sees instance {} as leader, instance 1 sees {}",
                i + 1,
                l + 1,
                leader + 1
            ));
        }
    }
    let mut weight_at_kill = None;
    if with_canary {
        let st = admin
            .status(&site.admins[leader])
            .await
            .unwrap_or_else(|e| fail(e));
        let to = if active(&st, &site.service) == BLUE {
            "green"
        } else {
            "blue"
        };
        let steps: Vec<u64> = (1..=19).map(|s| s * 5).collect();
        let (code, body) = admin
            .post(
                &site.admins[leader],
                "/v1/canary",
                json!({ "color": to, "steps": steps, "interval_s": 1, "services": [site.service], "skip_smoke": true }),
            )
            .await
            .unwrap_or_else(|e| fail(e));
        if code != 200 {
            fail(format!("canary through the leader: {code} {body}"));
        }
        // Kill right after a step the leader took (a survivor applied weight 10): the next
        // one is due a second later.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = admin
                .status(&site.admins[survivors[0]])
                .await
                .unwrap_or_else(|e| fail(e));
            if let Some(w) = canary_weight(&st, &site.service).filter(|&w| w >= 10) {
                weight_at_kill = Some(w);
                break;
            }
            if Instant::now() >= deadline {
                fail(format!("the canary's second step never showed: {st}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // SIGKILL: no goodbye to etcd, the lease has to expire.
    let killed_at = Instant::now();
    if unsafe { libc::kill(pids[leader], libc::SIGKILL) } != 0 {
        fail(format!(
            "kill -9 {}: {}",
            pids[leader],
            std::io::Error::last_os_error()
        ));
    }
    let deadline = killed_at + Duration::from_millis(timeout_ms);
    let (mut t_metric, mut t_status, mut t_step, mut t_step_all) = (None, None, None, None);
    let mut new_leader = None;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        let mut stepped_on = 0;
        for &i in &survivors {
            if t_metric.is_none() {
                match admin.metrics(&site.admins[i]).await {
                    Ok(text) if metric(&text, "switchyard_leader") == Some(1.0) => {
                        t_metric = Some(killed_at.elapsed());
                        new_leader = Some(i);
                    }
                    Ok(_) => {}
                    Err(e) => last_err = e,
                }
            }
            match admin.status(&site.admins[i]).await {
                Ok(st) => {
                    let listed = st["instances"].as_array().is_some_and(|l| {
                        l.iter()
                            .any(|x| x["leader"] == true && x["id"].as_str() != Some(&leader_id))
                    });
                    if listed && t_status.is_none() {
                        t_status = Some(killed_at.elapsed());
                    }
                    if let Some(w0) = weight_at_kill {
                        let moved = match canary_weight(&st, &site.service) {
                            Some(w) => w > w0,
                            None => true, // promoted (or dropped): the leader acted
                        };
                        if moved {
                            stepped_on += 1;
                            if t_step.is_none() {
                                t_step = Some(killed_at.elapsed());
                            }
                        }
                    }
                }
                Err(e) => last_err = e,
            }
        }
        if with_canary && stepped_on == survivors.len() && t_step_all.is_none() {
            t_step_all = Some(killed_at.elapsed());
        }
        if t_metric.is_some() && t_status.is_some() && (!with_canary || t_step_all.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Leave the site as it was: no canary running.
    if with_canary {
        let via = new_leader.unwrap_or(survivors[0]);
        for _ in 0..10 {
            match admin
                .post(
                    &site.admins[via],
                    "/v1/canary/abort",
                    json!({ "services": [site.service] }),
                )
                .await
            {
                Ok((200, _)) => break,
                Ok((code, body)) => {
                    last_err = format!("abort: {code} {body}");
                    // 409: the leader stepped meanwhile; a canary already ended: nothing to do
                    if body.to_string().contains("no canary") {
                        break;
                    }
                }
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let f = |t: Option<Duration>| t.map_or("-".to_string(), |d| format!("{:.1}", ms(d)));
    println!(
        "killed instance {} (the leader, pid {}); survivor leader after {} ms (its /metrics), listed by a survivor's /v1/status after {} ms; new leader instance {}{}",
        leader + 1,
        pids[leader],
        f(t_metric),
        f(t_status),
        new_leader.map_or("-".into(), |i| (i + 1).to_string()),
        if with_canary {
            format!(
                "; canary (weight {} at the kill, a step a second) took its next step after {} ms, on every survivor after {} ms",
                weight_at_kill.unwrap_or(0),
                f(t_step),
                f(t_step_all)
            )
        } else {
            String::new()
        }
    );
    println!(
        "RESULT killed={} leader_metric_ms={} leader_status_ms={} canary_step_ms={} canary_step_all_ms={} new_leader={}",
        leader + 1,
        f(t_metric),
        f(t_status),
        f(t_step),
        f(t_step_all),
        new_leader.map_or("-".into(), |i| (i + 1).to_string())
    );
    if t_metric.is_none() || t_status.is_none() || (with_canary && t_step_all.is_none()) {
        fail(format!(
            "no new leader (or no canary step) within {timeout_ms} ms; last error: {last_err}"
        ));
    }
}

// ------------------------------------------------------------------------------------ rollback

#[derive(Clone, Copy)]
struct Rec {
    sent: u64,
    done: u64,
    status: u16,
}

/// Paced load on one data port: `rate` req/s over `conns` connections until `stop`.
async fn paced_load(
    addr: String,
    host: String,
    rate: f64,
    conns: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Rec>, Vec<String>) {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, host, stop) = (addr.clone(), host.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = DataConn::new(&addr, &host);
            let mut recs = Vec::new();
            let mut errors = Vec::new();
            // spread the connections' phases over one period
            let mut next = tokio::time::Instant::now() + per_conn * c as u32 / conns as u32;
            tokio::time::sleep_until(next).await;
            while !stop.load(Ordering::Relaxed) {
                next += per_conn;
                let sent = t0.elapsed().as_micros() as u64;
                let got = conn.get().await;
                let done = t0.elapsed().as_micros() as u64;
                match got {
                    Ok((status, _)) => recs.push(Rec { sent, done, status }),
                    Err(e) => {
                        recs.push(Rec {
                            sent,
                            done,
                            status: 0,
                        });
                        errors.push(e);
                    }
                }
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now;
                }
                tokio::time::sleep_until(next).await;
            }
            (recs, errors)
        }));
    }
    let mut recs = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (r, e) = t.await.expect("load task");
        recs.extend(r);
        errors.extend(e);
    }
    recs.sort_by_key(|r| r.sent);
    (recs, errors)
}

async fn wait_active_everywhere(
    admin: &Admin,
    site: &Site,
    color: u8,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for a in &site.admins {
            if active(&admin.status(a).await?, &site.service) != color {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not every instance on {} within {within:?}",
                color_name(color)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn set_fail(http: &reqwest::Client, control: &str, color: &str, pct: u32) {
    let url = format!("http://{control}/fail/{color}/{pct}");
    match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => fail(format!("{url}: {}", r.status())),
        Err(e) => fail(format!("{url}: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn rollback(
    site: Site,
    control: String,
    reps: usize,
    rate: f64,
    conns: usize,
    poll_ms: u64,
    timeout_ms: u64,
    gap_ms: u64,
) {
    let n = site.admins.len();
    if site.data.len() != n || n < 2 || rate <= 0.0 || conns == 0 {
        setup_fail(
            "--data and --admins must name the same instances (at least 2); --rate, --conns > 0",
        );
    }
    let admin = Admin::new(&site);
    let t0 = Instant::now();
    // The wall clock at t0, to show where in a second the errors start. (A follower
    // publishes its window once per second of its own clock, seconds since its process
    // started: the wait for that publication is what varies from one repetition to the next.)
    let wall0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let us = || t0.elapsed().as_micros() as u64;
    println!("rep  via (follower)  leader  first 5xx at (s.ms)  first 5xx→all blue (ms)  per instance: blue after first 5xx (ms)      follower's clients: 5xx / requests, last 5xx after first (ms)");
    let mut all_ms = Vec::new();
    let mut client_ms = Vec::new();
    let mut failed_counts = Vec::new();
    let mut failures = 0;
    for rep in 1..=reps {
        set_fail(&admin.http, &control, "green", 0).await;
        let (leader, _) = find_leader(&admin, &site, 0)
            .await
            .unwrap_or_else(|e| fail(e));
        let follower = (0..n).find(|&i| i != leader).expect("a follower");
        let st = admin
            .status(&site.admins[follower])
            .await
            .unwrap_or_else(|e| fail(e));
        if active(&st, &site.service) != BLUE {
            let (code, body) = admin
                .post(
                    &site.admins[follower],
                    "/v1/switch",
                    json!({ "color": "blue", "services": [site.service] }),
                )
                .await
                .unwrap_or_else(|e| fail(e));
            if code != 200 {
                fail(format!("switch to blue: {code} {body}"));
            }
        }
        wait_active_everywhere(&admin, &site, BLUE, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| fail(e));
        // The watch counts the new color's requests from the second of the switch on, and a
        // follower's published window of green lives on for a second after its watch ended:
        // start clean. Plus 0-999 ms, so that the errors start anywhere in a second.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_micros()) % 1000);
        tokio::time::sleep(Duration::from_millis(gap_ms + jitter)).await;
        let (code, body) = admin
            .post(
                &site.admins[follower],
                "/v1/switch",
                json!({ "color": "green", "services": [site.service] }),
            )
            .await
            .unwrap_or_else(|e| fail(e));
        if code != 200 {
            fail(format!(
                "rep {rep}: switch to green through the follower: {code} {body}"
            ));
        }
        wait_active_everywhere(&admin, &site, GREEN, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| fail(e));
        // Green turns bad; the follower's clients are the only ones to see it.
        set_fail(&admin.http, &control, "green", 100).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(paced_load(
            site.data[follower].clone(),
            site.host.clone(),
            rate,
            conns,
            t0,
            stop.clone(),
        ));
        let started = Instant::now();
        let deadline = started + Duration::from_millis(timeout_ms);
        let mut blue_at: Vec<Option<u64>> = vec![None; n];
        while Instant::now() < deadline && blue_at.iter().any(Option::is_none) {
            for (at, base) in blue_at.iter_mut().zip(&site.admins) {
                if at.is_some() {
                    continue;
                }
                if let Ok(st) = admin.status(base).await {
                    if active(&st, &site.service) == BLUE {
                        *at = Some(us());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        }
        // Some more load on blue, so the clients' view ends on blue too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let (recs, errors) = load.await.expect("load");
        set_fail(&admin.http, &control, "green", 0).await;
        let bad: Vec<&Rec> = recs.iter().filter(|r| r.status != 200).collect();
        let first_bad = bad.first().map(|r| r.done);
        let last_bad = bad.last().map(|r| r.done);
        let conn_errors = recs.iter().filter(|r| r.status == 0).count();
        let rolled = blue_at.iter().all(Option::is_some) && first_bad.is_some();
        let per: Vec<String> = blue_at
            .iter()
            .enumerate()
            .map(|(i, t)| match (t, first_bad) {
                (Some(t), Some(fb)) => format!(
                    "i{}{} {:.1}",
                    i + 1,
                    if i == leader {
                        "(L)"
                    } else if i == follower {
                        "(F)"
                    } else {
                        ""
                    },
                    (*t as f64 - fb as f64) / 1000.0
                ),
                _ => format!("i{} -", i + 1),
            })
            .collect();
        if rolled {
            let fb = first_bad.unwrap();
            let all = blue_at.iter().map(|t| t.unwrap()).max().unwrap();
            let all_v = (all as f64 - fb as f64) / 1000.0;
            let cli_v = (last_bad.unwrap() as f64 - fb as f64) / 1000.0;
            all_ms.push(all_v);
            client_ms.push(cli_v);
            failed_counts.push(bad.len() as f64);
            println!(
                "{rep:>3}  instance {:<6}  i{:<5}  {:>19}  {:>23.1}  {:<44}  {} / {}, {:.1}",
                follower + 1,
                leader + 1,
                format!("x.{:03}", (wall0_ms + fb / 1000) % 1000),
                all_v,
                per.join("  "),
                bad.len(),
                recs.len(),
                cli_v
            );
        } else if first_bad.is_none() && blue_at.iter().all(Option::is_some) {
            failures += 1;
            println!(
                "{rep:>3}  instance {:<6}  i{:<5}  ROLLED BACK BEFORE ANY 5xx ({}; {} requests)",
                follower + 1,
                leader + 1,
                per.join("  "),
                recs.len()
            );
        } else {
            failures += 1;
            println!(
                "{rep:>3}  instance {:<6}  i{:<5}  NO ROLLBACK within {timeout_ms} ms ({}; {} 5xx of {} requests)",
                follower + 1,
                leader + 1,
                per.join("  "),
                bad.len(),
                recs.len()
            );
        }
        if conn_errors > 0 {
            println!(
                "     connection errors: {conn_errors} (e.g. {:?})",
                errors.first()
            );
        }
        // The rollback's history event, as the leader wrote it.
        if let Ok(h) = admin.get(&site.admins[leader], "/v1/history?limit=3").await {
            let last = h["events"]
                .as_array()
                .and_then(|e| {
                    e.iter()
                        .rev()
                        .find(|e| e.to_string().contains("error_rate"))
                })
                .map(|e| e.to_string())
                .unwrap_or_else(|| "(no SLO rollback event in the last 3)".into());
            println!("     history: {}", &last[..last.len().min(300)]);
        }
    }
    let (a0, a1, a2) = min_med_max(&all_ms);
    let (c0, c1, c2) = min_med_max(&client_ms);
    let (f0, f1, f2) = min_med_max(&failed_counts);
    println!(
        "== fleet rollback, first 5xx a client saw → every instance serves blue (ms): min {a0:.1}  median {a1:.1}  max {a2:.1}   ({} of {reps} rolled back)",
        all_ms.len()
    );
    println!(
        "   the follower's clients: last 5xx after the first (ms): min {c0:.1}  median {c1:.1}  max {c2:.1};  5xx per repetition: min {f0:.0}  median {f1:.0}  max {f2:.0}  (at {rate} req/s)"
    );
    println!(
        "RESULT reps={reps} rolled_back={} all_min={a0:.1} all_med={a1:.1} all_max={a2:.1} client_min={c0:.1} client_med={c1:.1} client_max={c2:.1} fail_min={f0:.0} fail_med={f1:.0} fail_max={f2:.0} all_list={}",
        all_ms.len(),
        all_ms
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    if failures > 0 {
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------------------------ etcd writes

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if j <= chunk.len() {
                B64[((v >> shift) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn etcd_revision(http: &reqwest::Client, etcd: &[String]) -> Result<i64, String> {
    let mut last = String::new();
    for e in etcd {
        match http
            .post(format!("{e}/v3/kv/range"))
            .json(&json!({ "key": b64(b"\0") }))
            .send()
            .await
        {
            Ok(r) => match r.json::<Value>().await {
                Ok(v) => {
                    if let Some(rev) = v["header"]["revision"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                    {
                        return Ok(rev);
                    }
                    last = format!("{e}: no revision in {v}");
                }
                Err(err) => last = format!("{e}: {err}"),
            },
            Err(err) => last = format!("{e}: {err}"),
        }
    }
    Err(last)
}

/// Every member's /metrics, summed over members (counters of requests a member received),
/// and the first member's text (counters every member applies alike).
async fn etcd_metrics(http: &reqwest::Client, etcd: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in etcd {
        out.push(match http.get(format!("{e}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        });
    }
    out
}

/// A write seen by the watch: which instance wrote it and what kind of key it is.
fn classify(key: &str, value: &[u8], prefix: &str) -> (String, String) {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    if let Some(id) = rest.strip_prefix("instances/") {
        return (id.to_string(), "instances/<id> (registry)".into());
    }
    if let Some(r) = rest.strip_prefix("slo/") {
        let id = r.splitn(3, '/').nth(2).unwrap_or("?");
        return (
            id.to_string(),
            "slo/<service>/<color>/<id> (SLO window)".into(),
        );
    }
    if let Some(r) = rest.strip_prefix("history/") {
        let id = r.split_once('-').map_or("?", |(_, id)| id);
        return (id.to_string(), "history/…".into());
    }
    if rest == "leader" {
        return (String::from_utf8_lossy(value).to_string(), "leader".into());
    }
    if rest == "state" {
        return ("(site)".into(), "state".into());
    }
    (
        "(other)".into(),
        rest.split('/').next().unwrap_or(rest).to_string(),
    )
}

async fn etcd_writes(
    etcd: Vec<String>,
    prefix: String,
    secs: u64,
    instances: usize,
    label: String,
) {
    if etcd.is_empty() || instances == 0 {
        setup_fail("--etcd and --instances");
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let rev0 = etcd_revision(&http, &etcd)
        .await
        .unwrap_or_else(|e| setup_fail(e));
    let m0 = etcd_metrics(&http, &etcd).await;
    let started = Instant::now();
    // The watch: every event under the prefix after rev0, through the JSON gateway.
    let body = json!({ "create_request": {
        "key": b64(prefix.as_bytes()),
        "range_end": b64(&prefix_end(prefix.as_bytes())),
        "start_revision": (rev0 + 1).to_string(),
    }});
    let mut resp = http
        .post(format!("{}/v3/watch", etcd[0]))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| setup_fail(format!("watch: {e}")));
    // (instance, kind) → (events, distinct revisions)
    let mut events: BTreeMap<(String, String), (u64, std::collections::BTreeSet<i64>)> =
        BTreeMap::new();
    let mut revs_seen = std::collections::BTreeSet::new();
    let mut buf: Vec<u8> = Vec::new();
    let end = started + Duration::from_secs(secs);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let chunk = match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => break,
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => fail("the etcd watch ended"),
            Ok(Err(e)) => fail(format!("the etcd watch: {e}")),
        };
        buf.extend_from_slice(&chunk);
        // one JSON object per line
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            for ev in v["result"]["events"].as_array().into_iter().flatten() {
                let kv = &ev["kv"];
                let key =
                    String::from_utf8_lossy(&unb64(kv["key"].as_str().unwrap_or(""))).to_string();
                let value = unb64(kv["value"].as_str().unwrap_or(""));
                let rev: i64 = kv["mod_revision"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                let (who, mut kind) = classify(&key, &value, &prefix);
                if ev["type"] == "DELETE" {
                    kind = format!("{kind} DELETE");
                }
                let e = events.entry((who, kind)).or_default();
                e.0 += 1;
                e.1.insert(rev);
                revs_seen.insert(rev);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(resp);
    let rev1 = etcd_revision(&http, &etcd)
        .await
        .unwrap_or_else(|e| fail(e));
    let m1 = etcd_metrics(&http, &etcd).await;
    let delta_all = |name: &str, labels: &[&str]| -> f64 {
        m1.iter().map(|t| metric_sum(t, name, labels)).sum::<f64>()
            - m0.iter().map(|t| metric_sum(t, name, labels)).sum::<f64>()
    };
    // applied on every member alike: the first member's view
    let delta_one =
        |name: &str| -> f64 { metric_sum(&m1[0], name, &[]) - metric_sum(&m0[0], name, &[]) };
    let per_s = |v: f64| v / elapsed;
    let revs = (rev1 - rev0) as f64;
    println!("== etcd writes, {label}: {elapsed:.1} s, {instances} instances");
    println!(
        "cluster revision +{revs:.0} = {:.2} write txns/s = {:.2} per instance per s   (each put, delete or txn with writes, any key, +1)",
        per_s(revs),
        per_s(revs) / instances as f64
    );
    println!(
        "under the site's prefix (watch): {} events in {} write revisions",
        events.values().map(|e| e.0).sum::<u64>(),
        revs_seen.len()
    );
    for ((who, kind), (n, r)) in &events {
        println!(
            "  {who:<28} {kind:<40} {n:>5} events, {:>5} revisions = {:.2}/s",
            r.len(),
            per_s(r.len() as f64)
        );
    }
    let puts = delta_one("etcd_mvcc_put_total");
    let dels = delta_one("etcd_mvcc_delete_total");
    let txns = delta_one("etcd_mvcc_txn_total");
    let range_rpc = delta_all("grpc_server_handled_total", &["grpc_method=\"Range\""]);
    let txn_rpc = delta_all("grpc_server_handled_total", &["grpc_method=\"Txn\""]);
    let put_rpc = delta_all("grpc_server_handled_total", &["grpc_method=\"Put\""]);
    let ka = delta_all(
        "grpc_server_msg_received_total",
        &["grpc_method=\"LeaseKeepAlive\""],
    );
    println!(
        "etcd /metrics (member 1, applied alike on all): etcd_mvcc_put_total +{puts:.0}, etcd_mvcc_delete_total +{dels:.0}, etcd_mvcc_txn_total +{txns:.0}"
    );
    println!(
        "gRPC calls received (all members): Put {put_rpc:.0} ({:.2}/s), Txn {txn_rpc:.0} ({:.2}/s, with read-only txns), Range {range_rpc:.0} ({:.2}/s, reads, with this tool's), LeaseKeepAlive messages {ka:.0} ({:.2}/s = {:.2} per instance per s; not KV writes)",
        per_s(put_rpc),
        per_s(txn_rpc),
        per_s(range_rpc),
        per_s(ka),
        per_s(ka) / instances as f64
    );
    println!(
        "RESULT label={label} secs={elapsed:.1} revisions={revs:.0} writes_per_s={:.3} writes_per_instance_s={:.3} prefix_revisions={} mvcc_put={puts:.0} mvcc_delete={dels:.0} mvcc_txn={txns:.0} keepalive_per_instance_s={:.3} range_per_s={:.3}",
        per_s(revs),
        per_s(revs) / instances as f64,
        revs_seen.len(),
        per_s(ka) / instances as f64,
        per_s(range_rpc)
    );
}

// ------------------------------------------------------------------------------------ main

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Backends {
            blue,
            green,
            control,
        } => backends(blue, green, control).await,
        Cmd::Propagate {
            site,
            switches,
            via,
            poll_ms,
            gap_ms,
            timeout_ms,
            per_switch,
        } => propagate(site, switches, via, poll_ms, gap_ms, timeout_ms, per_switch).await,
        Cmd::Failover {
            site,
            pids,
            canary,
            timeout_ms,
        } => failover(site, pids, canary, timeout_ms).await,
        Cmd::Rollback {
            site,
            control,
            reps,
            rate,
            conns,
            poll_ms,
            timeout_ms,
            gap_ms,
        } => {
            rollback(
                site, control, reps, rate, conns, poll_ms, timeout_ms, gap_ms,
            )
            .await
        }
        Cmd::EtcdWrites {
            etcd,
            prefix,
            secs,
            instances,
            label,
        } => etcd_writes(etcd, prefix, secs, instances, label).await,
    }
}

//! Switch under load: steady keep-alive load on the proxy while blue/green switches go back
//! and forth. The driver of `loadtests/switch-under-load.sh`.
//!
//! `CONNS` client connections (plain HTTP/1.1 keep-alive, one request at a time each, as fast
//! as the proxy answers) run for the whole test. After a warm-up the tool switches
//! `--switches` times, alternating colors, one switch every `--interval-ms`, either through
//! `POST /v1/switch` (smoke checks included) or by running `releasectl switch <color>`.
//! Every request is recorded (send time, end time, status, `x-backend-color`), so that for
//! every switch returning at T it can say whether any request *sent* after T still reached
//! the old color.
//!
//! Each client connection is a raw hyper 1 client connection (`hyper::client::conn::http1`) on
//! a TCP socket of its own: no pool, no silent retry, every reconnect is counted. (hyper's
//! `client` feature comes with reqwest, a dependency of the crate.)
//!
//! Exit status: 0 all good; 1 a request failed (non-2xx, connection error or reset, server
//! closing a keep-alive connection), a switch call failed, or a request sent after a switch
//! returned was answered by the old color; 2 bad arguments or setup.

// A command-line tool: it exits with its verdict (see .clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Steady keep-alive load through the proxy while switching blue/green")]
struct Args {
    /// Proxy address (ip:port), plain HTTP; several, comma-separated, spread the connections
    /// over them (round robin: connection i goes to address i mod n).
    #[arg(long, value_delimiter = ',')]
    proxy: Vec<String>,
    /// Host header of the load requests (a routed host of the service).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Admin API base URL.
    #[arg(long)]
    admin: String,
    /// File holding the admin token.
    #[arg(long)]
    token_file: PathBuf,
    /// Concurrent keep-alive client connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Number of switches (alternating colors, starting with the idle one).
    #[arg(long, default_value_t = 20)]
    switches: usize,
    /// Time from one switch call's start to the next one's.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Load before the first switch.
    #[arg(long, default_value_t = 2000)]
    warmup_ms: u64,
    /// Load after the last switch.
    #[arg(long, default_value_t = 2000)]
    tail_ms: u64,
    /// Switch by running this releasectl binary instead of calling the API directly.
    #[arg(long)]
    releasectl: Option<PathBuf>,
    /// Service to switch (default: every releasable one) and whose state is read.
    #[arg(long, default_value = "web")]
    service: String,
    /// Print each switch's figures.
    #[arg(long)]
    verbose: bool,
}

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

/// One request as the client saw it. Times are µs since the start of the test.
#[derive(Clone, Copy)]
struct Rec {
    sent: u64,
    done: u64,
    /// HTTP status; 0 = no response (connection error).
    status: u16,
    color: u8,
}

#[derive(Default)]
struct WorkerOut {
    recs: Vec<Rec>,
    errors: Vec<String>,
    connects: u64,
    /// The server closed an idle keep-alive connection between two requests.
    closed_by_server: u64,
}

fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

async fn worker(
    addr: String,
    host: String,
    path: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    'conn: while !stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(e) => {
                let t = us(t0);
                out.recs.push(Rec {
                    sent: t,
                    done: t,
                    status: 0,
                    color: NONE,
                });
                out.errors.push(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        out.connects += 1;
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    out.errors.push(format!("handshake: {e}"));
                    continue;
                }
            };
        // ends by itself once `sender` is dropped or the server closes the connection
        tokio::spawn(conn);
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'conn;
            }
            if sender.ready().await.is_err() {
                out.closed_by_server += 1;
                out.errors
                    .push("server closed the keep-alive connection".into());
                continue 'conn;
            }
            let req = http::Request::get(path.as_str())
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
                    match resp.into_body().collect().await {
                        Ok(_) => out.recs.push(Rec {
                            sent,
                            done: us(t0),
                            status,
                            color,
                        }),
                        Err(e) => {
                            out.recs.push(Rec {
                                sent,
                                done: us(t0),
                                status: 0,
                                color,
                            });
                            out.errors.push(format!("body: {e}"));
                            continue 'conn;
                        }
                    }
                }
                Err(e) => {
                    out.recs.push(Rec {
                        sent,
                        done: us(t0),
                        status: 0,
                        color: NONE,
                    });
                    out.errors.push(format!("request: {e}"));
                    continue 'conn;
                }
            }
        }
    }
    out
}

/// One switch as the switcher saw it. Times in µs since the start.
#[derive(Clone)]
struct Switch {
    from: u8,
    to: u8,
    start: u64,
    end: u64,
    ok: bool,
    detail: String,
}

async fn active_color(
    http: &reqwest::Client,
    admin: &str,
    token: &str,
    service: &str,
) -> Result<u8, String> {
    let v: Value = http
        .get(format!("{admin}/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("GET /v1/status: {e}"))?
        .error_for_status()
        .map_err(|e| format!("GET /v1/status: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET /v1/status: {e}"))?;
    match v["services"][service]["active"].as_str() {
        Some("blue") => Ok(BLUE),
        Some("green") => Ok(GREEN),
        other => Err(format!("service `{service}`: active color is {other:?}")),
    }
}

async fn do_switch(args: &Args, http: &reqwest::Client, token: &str, to: u8) -> (bool, String) {
    let color = color_name(to);
    if let Some(bin) = &args.releasectl {
        let out = tokio::process::Command::new(bin)
            .arg("--admin")
            .arg(&args.admin)
            .arg("--token-file")
            .arg(&args.token_file)
            .args(["switch", color, "--service", &args.service])
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => (true, String::new()),
            Ok(o) => (
                false,
                format!(
                    "releasectl exit {:?}: {}{}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout).trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => (false, format!("running {}: {e}", bin.display())),
        }
    } else {
        let r = http
            .post(format!("{}/v1/switch", args.admin))
            .bearer_auth(token)
            .json(&json!({ "color": color, "services": [args.service] }))
            .send()
            .await;
        match r {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    (true, String::new())
                } else {
                    (false, format!("POST /v1/switch → {status}: {body}"))
                }
            }
            Err(e) => (false, format!("POST /v1/switch: {e}")),
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min_med_max(v: &[f64]) -> String {
    let mn = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let mx = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("min {mn:.3}  median {:.3}  max {mx:.3}", median(v))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.conns == 0 || args.interval_ms == 0 || args.proxy.is_empty() {
        eprintln!("switch_load: --proxy, --conns and --interval-ms must be given, > 0");
        std::process::exit(2);
    }
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("switch_load: reading {}: {e}", args.token_file.display());
            std::process::exit(2);
        }
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    let mut current = match active_color(&http, &args.admin, &token, &args.service).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switch_load: {e}");
            std::process::exit(2);
        }
    };

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        workers.push(tokio::spawn(worker(
            args.proxy[i % args.proxy.len()].clone(),
            args.host.clone(),
            args.path.clone(),
            t0,
            stop.clone(),
        )));
    }

    tokio::time::sleep(Duration::from_millis(args.warmup_ms)).await;
    let mut switches: Vec<Switch> = Vec::with_capacity(args.switches);
    let first = Instant::now();
    for i in 0..args.switches {
        let to = if current == BLUE { GREEN } else { BLUE };
        let start = us(t0);
        let (ok, detail) = do_switch(&args, &http, &token, to).await;
        let end = us(t0);
        if !ok {
            eprintln!(
                "switch_load: switch {} to {} failed: {detail}",
                i + 1,
                color_name(to)
            );
        }
        switches.push(Switch {
            from: current,
            to,
            start,
            end,
            ok,
            detail,
        });
        if ok {
            current = to;
        }
        let next = first + Duration::from_millis(args.interval_ms * (i as u64 + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep(Duration::from_millis(args.tail_ms)).await;
    stop.store(true, Ordering::Relaxed);
    let load_end = us(t0);

    let mut recs: Vec<Rec> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let (mut connects, mut closed) = (0u64, 0u64);
    for w in workers {
        let o = w.await.expect("worker panicked");
        recs.extend_from_slice(&o.recs);
        errors.extend(o.errors);
        connects += o.connects;
        closed += o.closed_by_server;
    }
    recs.sort_by_key(|r| r.sent);

    // ---------------------------------------------------------------- whole run
    let total = recs.len() as u64;
    let non2xx = recs
        .iter()
        .filter(|r| r.status != 0 && !(200..300).contains(&r.status))
        .count() as u64;
    let conn_errs = recs.iter().filter(|r| r.status == 0).count() as u64;
    let no_color = recs
        .iter()
        .filter(|r| (200..300).contains(&r.status) && r.color == NONE)
        .count() as u64;
    let failures = non2xx + conn_errs;
    let secs = load_end as f64 / 1e6;
    let mut lat: Vec<f64> = recs
        .iter()
        .filter(|r| r.status != 0)
        .map(|r| (r.done - r.sent) as f64 / 1000.0)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let blue = recs.iter().filter(|r| r.color == BLUE).count();
    let green = recs.iter().filter(|r| r.color == GREEN).count();

    // ---------------------------------------------------------------- per switch
    let mut leak_ms = Vec::new();
    let mut leak_n_total = 0u64;
    let mut inflight = Vec::new();
    let mut drain_ms = Vec::new();
    let mut inflight_swap = Vec::new();
    let mut call_ms = Vec::new();
    let mut failed_switches = 0;
    if args.verbose {
        println!("switch  from→to       call ms  new color from (ms)  in flight on old then  old after return (ms, reqs)  in flight on old at return  old drained after return (ms)");
    }
    for (i, s) in switches.iter().enumerate() {
        call_ms.push((s.end - s.start) as f64 / 1000.0);
        if !s.ok {
            failed_switches += 1;
            continue;
        }
        // requests sent after this switch returned and before the next one started
        let until = switches.get(i + 1).map(|n| n.start).unwrap_or(u64::MAX);
        let after: Vec<&Rec> = recs
            .iter()
            .filter(|r| r.sent >= s.end && r.sent < until && r.color == s.from)
            .collect();
        let leak = after
            .last()
            .map(|r| (r.sent - s.end) as f64 / 1000.0)
            .unwrap_or(0.0);
        leak_n_total += after.len() as u64;
        // requests to the old color still open when the call returned
        let open: Vec<&Rec> = recs
            .iter()
            .filter(|r| r.sent < s.end && r.done > s.end && r.color == s.from)
            .collect();
        let drain = open
            .iter()
            .map(|r| (r.done - s.end) as f64 / 1000.0)
            .fold(0.0, f64::max);
        // the swap as the clients saw it: the first request of this switch's window answered
        // by the new color, and the old color's requests still open when it was sent
        let first_new = recs
            .iter()
            .find(|r| r.sent >= s.start && r.sent < until && r.color == s.to)
            .map(|r| r.sent);
        let open_at_swap = first_new.map(|t| {
            recs.iter()
                .filter(|r| r.sent < t && r.done > t && r.color == s.from)
                .count()
        });
        if let Some(n) = open_at_swap {
            inflight_swap.push(n as f64);
        }
        if args.verbose {
            println!(
                "{:>6}  {:>5}→{:<6} {:>8.2}  {:>19}  {:>21}  {:>12.3} ms, {:>4}       {:>26}  {:>29.3}",
                i + 1,
                color_name(s.from),
                color_name(s.to),
                (s.end - s.start) as f64 / 1000.0,
                first_new
                    .map(|t| format!("{:.2}", (t as f64 - s.start as f64) / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                open_at_swap.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                leak,
                after.len(),
                open.len(),
                drain
            );
        }
        leak_ms.push(leak);
        inflight.push(open.len() as f64);
        drain_ms.push(drain);
    }

    println!();
    println!(
        "== switch under load: {} connections, {} switches every {} ms via {}",
        args.conns,
        switches.len(),
        args.interval_ms,
        if args.releasectl.is_some() {
            "releasectl"
        } else {
            "POST /v1/switch"
        }
    );
    println!(
        "requests          {total} in {secs:.1} s = {:.0} req/s  (blue {blue}, green {green})",
        total as f64 / secs
    );
    println!(
        "failures          {failures}  (non-2xx {non2xx}, connection errors/resets {conn_errs}; keep-alive closed by server {closed}; connections opened {connects} for {} clients)",
        args.conns
    );
    if no_color > 0 {
        println!("without x-backend-color  {no_color}");
    }
    println!(
        "latency (ms)      p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        quantile(&lat, 0.999),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "switch call (ms)  {}   ({} ok, {failed_switches} failed; smoke checks included{})",
        min_med_max(&call_ms),
        switches.len() - failed_switches,
        if args.releasectl.is_some() {
            ", plus releasectl process start"
        } else {
            ""
        }
    );
    if !leak_ms.is_empty() {
        println!(
            "old color after return (ms)  {}   ({leak_n_total} requests sent after a switch returned reached the old color)",
            min_med_max(&leak_ms)
        );
        println!(
            "in flight on old color when the first request reached the new one  {}",
            min_med_max(&inflight_swap)
        );
        println!(
            "in flight on old color at return  {}",
            min_med_max(&inflight)
        );
        println!(
            "old color drained after return (ms)  {}",
            min_med_max(&drain_ms)
        );
    }
    let mut shown = std::collections::BTreeMap::<String, u64>::new();
    for e in &errors {
        *shown.entry(e.clone()).or_default() += 1;
    }
    for (e, n) in shown.iter().take(10) {
        println!("  error ×{n}: {e}");
    }
    for s in switches.iter().filter(|s| !s.ok).take(5) {
        println!("  failed switch to {}: {}", color_name(s.to), s.detail);
    }
    // machine-readable line for the script
    println!(
        "RESULT total={total} secs={secs:.3} rps={:.0} failures={failures} non2xx={non2xx} conn_errors={conn_errs} closed_by_server={closed} connects={connects} switches={} failed_switches={failed_switches} call_med_ms={:.3} call_max_ms={:.3} leak_min_ms={:.3} leak_med_ms={:.3} leak_max_ms={:.3} leak_reqs={leak_n_total} inflight_swap_med={:.1} inflight_swap_max={:.0} inflight_med={:.1} inflight_max={:.0} drain_med_ms={:.3} drain_max_ms={:.3}",
        total as f64 / secs,
        switches.len(),
        median(&call_ms),
        call_ms.iter().cloned().fold(0.0, f64::max),
        leak_ms.iter().cloned().fold(f64::INFINITY, f64::min),
        median(&leak_ms),
        leak_ms.iter().cloned().fold(0.0, f64::max),
        median(&inflight_swap),
        inflight_swap.iter().cloned().fold(0.0, f64::max),
        median(&inflight),
        inflight.iter().cloned().fold(0.0, f64::max),
        median(&drain_ms),
        drain_ms.iter().cloned().fold(0.0, f64::max),
    );
    let bad = failures > 0 || closed > 0 || failed_switches > 0 || leak_n_total > 0 || total == 0;
    std::process::exit(if bad { 1 } else { 0 });
}

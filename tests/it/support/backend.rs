//! A scriptable upstream for the tests.
//!
//! Every request gets 200 with a JSON body
//! `{"backend": NAME, "method": …, "path": …, "query": …, "headers": {lowercase name: value}}`
//! except for:
//! - `/health`: 200, or 503 after `set_healthy(false)` (not counted in `hits()`);
//! - `/sleep/MS`: sleeps MS milliseconds, then answers as above;
//! - `/ws` with an Upgrade: websocket: a WebSocket echo server;
//! - `/body/N`: N bytes of text ([`text_body`]), `Content-Type: text/plain` unless the query
//!   says `type=…`; `encoding=…` and `cache_control=…` in the query set those headers,
//!   `h=name:value` any other.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

#[derive(Default)]
struct State {
    healthy: AtomicBool,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    ws_sessions: AtomicUsize,
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 (a port chosen by the kernel) in the
    /// current tokio runtime.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    /// Starts a backend on `addr` (e.g. `127.0.0.3:PORT`, for a name that resolves to
    /// several loopback addresses with one port); an error when it is taken.
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        Ok(Self::serve(name, TcpListener::bind(addr).await?))
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.healthy.store(true, Ordering::SeqCst);
        let name_owned = name.to_string();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let name = name_owned.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(handle(req, &name, &st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    /// `127.0.0.1:PORT`, as written in configs.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests received, health probes (`/health`) excluded. Counted when the
    /// request head arrives (before any `/sleep`).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Health probes (`GET /health`) received.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// WebSocket sessions accepted.
    pub fn ws_sessions(&self) -> usize {
        self.state.ws_sessions.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of `/body/N`: `n` bytes of numbered lines (compressible, not a repeated block).
pub fn text_body(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!("line {i}: the quick brown fox {}\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

/// `/body/N?type=…&encoding=…&cache_control=…`
fn body_response(n: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let n: usize = n.parse().unwrap_or(0).min(64 << 20);
    let mut resp = Response::new(Full::new(Bytes::from(text_body(n))));
    let h = resp.headers_mut();
    h.insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    for pair in query.unwrap_or("").split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v
            .replace("%2F", "/")
            .replace("%20", " ")
            .replace("%3B", ";");
        let (name, value) = match k {
            "type" => ("content-type".to_string(), v),
            "encoding" => ("content-encoding".to_string(), v),
            "cache_control" => ("cache-control".to_string(), v),
            // `h=name:value`: any response header.
            "h" => match v.split_once(':') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => continue,
            },
            _ => continue,
        };
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        h.insert(name, v_value(&value));
    }
    resp
}

fn v_value(v: &str) -> hyper::header::HeaderValue {
    hyper::header::HeaderValue::from_str(v).unwrap()
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(mut req: Request<Incoming>, name: &str, st: &Arc<State>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();

    if path == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        return if st.healthy.load(Ordering::SeqCst) {
            text(StatusCode::OK, "ok")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        };
    }

    st.hits.fetch_add(1, Ordering::SeqCst);

    let wants_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("websocket"))
        .unwrap_or(false);
    if path == "/ws" && wants_ws {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return text(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
        };
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let st = st.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            st.ws_sessions.fetch_add(1, Ordering::SeqCst);
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }

    if let Some(n) = path.strip_prefix("/body/") {
        return body_response(n, req.uri().query());
    }

    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        headers
            .entry(k.as_str().to_ascii_lowercase())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

//! A test upstream whose failure share and added latency change at runtime.
//!
//! Every request (except `/health`) is counted, waits `delay_ms`, then gets either
//! 500 or 200 with a JSON body `{"backend": NAME, "status": CODE, "path": …}`.
//! Failures are spread evenly rather than drawn at random: with a share of
//! `p` %, exactly `p` of every 100 consecutive requests fail (Bresenham-style),
//! so a test knows what error rate the proxy sees.
//! `/health` answers 200, or 503 after `set_healthy(false)`, and is not counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    /// Percent of requests answered 500 (0–100).
    fail_pct: AtomicU32,
    /// Added latency before answering, in ms.
    delay_ms: AtomicU64,
    healthy: AtomicBool,
    hits: AtomicUsize,
    failures: AtomicUsize,
    health_hits: AtomicUsize,
    /// Sequence number used to spread failures evenly.
    seq: AtomicU64,
}

pub struct Faulty {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Faulty {
    /// Starts a healthy backend (no failures, no delay) on 127.0.0.1.
    pub async fn start(name: &str) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind faulty backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.healthy.store(true, Ordering::SeqCst);
        let st = state.clone();
        let name_owned = name.to_string();
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
                        .await;
                });
            }
        });
        Faulty {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    /// Share of requests answered 500, in percent (clamped to 100).
    pub fn set_fail_pct(&self, pct: u32) {
        self.state.fail_pct.store(pct.min(100), Ordering::SeqCst);
    }

    /// Latency added to every request (not to `/health`).
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests received, `/health` excluded.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests answered 500.
    pub fn failures(&self) -> usize {
        self.state.failures.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>, name: &str, st: &State) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let ok = st.healthy.load(Ordering::SeqCst);
        return Response::builder()
            .status(if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            })
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(if ok {
                b"ok"
            } else {
                b"unhealthy"
            })))
            .unwrap();
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let pct = st.fail_pct.load(Ordering::SeqCst) as u64;
    let n = st.seq.fetch_add(1, Ordering::SeqCst);
    // Request n fails when the running count of failures owed steps up.
    let fail = (n + 1) * pct / 100 > n * pct / 100;
    let status = if fail {
        st.failures.fetch_add(1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "backend": name,
        "status": status.as_u16(),
        "path": path,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

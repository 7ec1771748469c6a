//! Shared helpers for the integration tests: free ports, a managed `switchyard`
//! child process, scriptable test backends, a raw HTTP/1.1 client and
//! Prometheus text helpers.

#![allow(dead_code)]

mod backend;
pub mod dns;
pub mod etcd;
pub mod faulty;
pub mod l4;
pub mod pebble;
mod proxy;
mod raw;
pub mod recorder;
pub mod release;
pub mod tls;

pub use backend::{text_body, Backend};
pub use proxy::{client, Proxy, BASE};
#[allow(unused_imports)]
pub use raw::{raw_request, read_response, RawResponse};

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A TCP port that was free a moment ago (bind 127.0.0.1:0, read it, drop it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// `n` distinct free ports below the kernel's ephemeral range, for servers a test stops and
/// starts again on the same port (etcd members): a port from `free_port` is an ephemeral
/// one, and while its server is down any outgoing connection on the machine may take it as
/// its local port, so the restart fails with "address already in use".
pub fn stable_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(1).max(10_001));
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free port in {from}..{to}");
        // Random (RandomState is seeded per instance), so parallel tests rarely pick alike.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(tries);
        let p = from + (h.finish() % u64::from(to - from)) as u16;
        if ports.contains(&p) || TcpListener::bind(("127.0.0.1", p)).is_err() {
            continue;
        }
        ports.push(p);
    }
    ports
}

/// An address on loopback where nothing listens (connections are refused).
pub fn closed_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
/// Returns `None` when the deadline passed.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines of a Prometheus text exposition for metric `name` (with labels).
pub fn metric_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .collect::<Vec<_>>()
}

/// The value of the first sample of `name` whose labels include every
/// `(label, value)` pair of `labels` (in any order).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_lines(text, name).into_iter().find_map(|line| {
        let close = line.rfind('}')?;
        let label_part = &line[name.len() + 1..close];
        let all = labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
        if !all {
            return None;
        }
        line[close + 1..].split_whitespace().next()?.parse().ok()
    })
}

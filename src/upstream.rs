//! Upstream HTTP/1 connections: connect with a deadline, and keep idle ones per worker thread.
//!
//! Each pingora worker thread runs its own single-threaded runtime (`work_stealing = false`),
//! so a request never changes thread between taking a connection and giving it back. The
//! idle connections can therefore live in a thread-local list: no lock, no task per idle
//! connection (pingora's pool spawns one to watch each), no wake-up to hand one over. A
//! connection is checked when taken: closed by the upstream, readable or older than the idle
//! timeout, it is dropped and the next one is tried.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt as _;

use crate::metrics::UpstreamErrorKind;
use crate::proxy::UPSTREAM_IDLE_TIMEOUT;

/// Idle connections kept per backend and worker thread; more are closed when released.
pub const MAX_IDLE_PER_BACKEND: usize = 256;

struct Idle {
    stream: Stream,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `addr` that is still usable, most recently used first.
pub fn take(addr: SocketAddr) -> Option<Stream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(mut conn) = list.pop() {
            if conn.since.elapsed() < UPSTREAM_IDLE_TIMEOUT && still_idle(&mut conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Keeps a connection whose last response was read completely, for the next request to
/// `addr`. Connections past the idle timeout are closed on the way.
pub fn release(addr: SocketAddr, stream: Stream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        let now = Instant::now();
        // Oldest first: drop the expired prefix so an idle list never outgrows its use.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) >= UPSTREAM_IDLE_TIMEOUT)
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { stream, since: now });
        }
    });
}

/// An idle connection must have nothing to read: data or EOF means the upstream closed it
/// or broke the protocol. The read never waits.
fn still_idle(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut buf))
        .now_or_never()
        .is_none()
}

/// A new connection to `addr`, within `deadline`.
pub async fn connect(addr: SocketAddr, deadline: Duration) -> Result<Stream, UpstreamErrorKind> {
    let tcp = match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(_)) => return Err(UpstreamErrorKind::ConnectRefused),
        Err(_) => return Err(UpstreamErrorKind::ConnectTimeout),
    };
    // Requests and responses are written whole; Nagle would only delay them.
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(L4Stream::from(tcp)))
}

/// The number of idle connections this thread keeps to `addr` (for tests).
#[cfg(test)]
pub fn idle_count(addr: SocketAddr) -> usize {
    IDLE.with(|idle| idle.borrow().get(&addr).map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_open_connections_and_drops_closed_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (a, _) = listener.accept().await.unwrap();
            let (b, _) = listener.accept().await.unwrap();
            (a, b)
        });
        let one = connect(addr, Duration::from_secs(1)).await.unwrap();
        let two = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (server_one, mut server_two) = accept.await.unwrap();

        release(addr, one);
        release(addr, two);
        assert_eq!(idle_count(addr), 2);

        // The upstream closes one and writes on the other: neither may be reused.
        drop(server_one);
        server_two.write_all(b"unexpected").await.unwrap();
        // Loopback delivery is synchronous; a yield lets the reactor see both events.
        tokio::task::yield_now().await;
        assert!(take(addr).is_none());
        assert_eq!(idle_count(addr), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn takes_an_open_idle_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let _server = listener.accept().await.unwrap();
        release(addr, conn);
        assert!(take(addr).is_some());
        assert!(take(addr).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_refused_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = connect(addr, Duration::from_secs(1)).await.err();
        assert_eq!(e, Some(UpstreamErrorKind::ConnectRefused));
    }
}

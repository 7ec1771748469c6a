//! Upstream HTTP/1 connections: connect with a deadline, and keep idle ones per worker thread.
//!
//! Each pingora worker thread runs its own single-threaded runtime (`work_stealing = false`),
//! so a request never changes thread between taking a connection and giving it back. The
//! idle connections can therefore live in a thread-local list: no lock, no task per idle
//! connection (pingora's pool spawns one to watch each), no wake-up to hand one over. A
//! connection is checked when taken: closed by the upstream, readable or older than the idle
//! timeout, it is dropped and the next one is tried. Every `SWEEP_EVERY` a release also
//! sweeps the thread's whole list, so connections to backends no longer asked (after a
//! switch, a reload) and ones their backend closed are not kept open.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::edge::proxy::UPSTREAM_IDLE_TIMEOUT;
use crate::runtime::metrics::UpstreamErrorKind;

/// Idle connections kept per backend and worker thread; more are closed when released.
pub const MAX_IDLE_PER_BACKEND: usize = 256;

/// How often a release sweeps every backend's idle list of its thread.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

struct IdleLists {
    // foldhash: the idle list is looked up twice per request, and SipHash of an address
    // cost more than the rest of the lookup. No client chooses these keys.
    by_backend: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::FixedState>,
    last_sweep: Instant,
}

thread_local! {
    static IDLE: RefCell<IdleLists> = RefCell::new(IdleLists {
        by_backend: HashMap::default(),
        last_sweep: Instant::now(),
    });
}

/// An idle connection to `addr` that is still usable, most recently used first.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.by_backend.get_mut(&addr)?;
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
pub fn release(addr: SocketAddr, stream: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let now = Instant::now();
        if now.duration_since(idle.last_sweep) >= SWEEP_EVERY {
            idle.last_sweep = now;
            sweep(&mut idle.by_backend, now);
        }
        let list = idle.by_backend.entry(addr).or_default();
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

/// Drops every idle connection that expired or that its backend closed, and the lists left
/// empty.
fn sweep(
    by_backend: &mut HashMap<SocketAddr, Vec<Idle>, foldhash::fast::FixedState>,
    now: Instant,
) {
    by_backend.retain(|_, list| {
        list.retain_mut(|c| {
            now.duration_since(c.since) < UPSTREAM_IDLE_TIMEOUT && still_idle(&mut c.stream)
        });
        !list.is_empty()
    });
}

/// An idle connection must have nothing to read: data or EOF means the upstream closed it
/// or broke the protocol. The read never waits.
fn still_idle(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut buf))
        .now_or_never()
        .is_none()
}

/// A new connection to `addr`, within `deadline`. A plain tokio socket, not pingora's
/// stream: nothing upstream needs its buffering, digests or timing (its read path alone
/// cost about 1,000 instructions per request).
pub async fn connect(addr: SocketAddr, deadline: Duration) -> Result<TcpStream, UpstreamErrorKind> {
    let tcp = match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(_)) => return Err(UpstreamErrorKind::ConnectRefused),
        Err(_) => return Err(UpstreamErrorKind::ConnectTimeout),
    };
    // Requests and responses are written whole; Nagle would only delay them.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The number of idle connections this thread keeps to `addr` (for tests).
#[cfg(test)]
pub fn idle_count(addr: SocketAddr) -> usize {
    IDLE.with(|idle| idle.borrow().by_backend.get(&addr).map_or(0, Vec::len))
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
    async fn a_release_sweeps_closed_connections_of_other_backends() {
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (gone_addr, live_addr) = (gone.local_addr().unwrap(), live.local_addr().unwrap());
        let conn = connect(gone_addr, Duration::from_secs(1)).await.unwrap();
        let (server_side, _) = gone.accept().await.unwrap();
        release(gone_addr, conn);
        assert_eq!(idle_count(gone_addr), 1);

        // The backend closes its end; nobody asks for that backend again.
        drop(server_side);
        tokio::task::yield_now().await;
        IDLE.with(|idle| idle.borrow_mut().last_sweep -= SWEEP_EVERY);
        let other = connect(live_addr, Duration::from_secs(1)).await.unwrap();
        let _server_other = live.accept().await.unwrap();
        release(live_addr, other);
        assert_eq!(idle_count(gone_addr), 0, "the closed connection was swept");
        IDLE.with(|idle| assert!(!idle.borrow().by_backend.contains_key(&gone_addr)));
        assert_eq!(idle_count(live_addr), 1);
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

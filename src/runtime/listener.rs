//! A client listener: accepts TCP connections and hands each, as a pingora stream, to its app
//! on one of the service's threads.
//!
//! Why not pingora's listening service: its task per connection holds the listener's TLS
//! handshake future inline (and an L4 write buffer), about 14 KiB that every connection kept
//! for its whole life, idle or not — an idle keep-alive connection cost 18 KiB of RSS here
//! (loadtests/README.md, "Idle connections"). This task holds only the app's own future,
//! which keeps nothing but the connection while it waits for a request.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::net::{TcpListener, TcpSocket};

/// The kernel's queue of connections not yet accepted (pingora's value).
const BACKLOG: u32 = 65535;

/// After EMFILE/ENFILE, accept() fails at once until a descriptor is freed: wait this long
/// rather than spin.
const OUT_OF_FILES_PAUSE: Duration = Duration::from_secs(1);

pub struct ClientListener<A> {
    name: String,
    addr: SocketAddr,
    app: Option<Arc<A>>,
}

impl<A> ClientListener<A> {
    pub fn new(name: &str, addr: SocketAddr, app: A) -> ClientListener<A> {
        ClientListener {
            name: name.to_string(),
            addr,
            app: Some(Arc::new(app)),
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for ClientListener<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let app = self.app.take().expect("a listener starts once");
        let listener = match bind(self.addr) {
            Ok(listener) => Arc::new(listener),
            Err(e) => {
                // `server::run` bound the address once before starting: this is a race.
                tracing::error!(listener = %self.name, addr = %self.addr, "cannot listen: {e}");
                return;
            }
        };
        let loops: Vec<_> = (0..listeners_per_fd.max(1))
            .map(|_| {
                pingora_runtime::current_handle().spawn(accept_loop(
                    listener.clone(),
                    app.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for l in loops {
            let _ = l.await;
        }
        app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Accepts until the server shuts down; each connection becomes a task on a thread of the
/// service's pool (pingora's `current_handle` picks one).
async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    listener: Arc<TcpListener>,
    app: Arc<A>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => match changed {
                Ok(()) if !*shutdown.borrow() => continue,
                _ => break,
            },
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    tracing::warn!("accept: {e}; pausing");
                    tokio::time::sleep(OUT_OF_FILES_PAUSE).await;
                } else {
                    tracing::debug!("accept: {e}");
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut stream = L4Stream::from(tcp);
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        stream.set_socket_digest(digest);
        let app = app.clone();
        let shutdown = shutdown.clone();
        pingora_runtime::current_handle().spawn(async move {
            let _floor = crate::runtime::timer_floor::hold();
            app.process_new(Box::new(stream), &shutdown).await;
        });
    }
}

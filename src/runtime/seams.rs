//! The two small traits through which `edge` and `tls` meet without importing each other:
//! the edge answers ACME http-01 challenges from whatever holds them, and the TLS front hands
//! decrypted connections to whatever serves them. `server` wires the concrete types.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::core::config::Limits;

/// Key authorizations of the http-01 challenges in flight, by token.
pub trait Http01Answers: Send + Sync {
    fn http01_answer(&self, token: &str) -> Option<String>;
}

/// What serves a client connection once its TLS is terminated.
#[async_trait]
pub trait ConnectionServer: Send + Sync + 'static {
    /// The limits in force (the config's, as of the last reload).
    fn limits(&self) -> Limits;

    /// Waits for a connection slot (`limits.max_connections`, shared by every listener);
    /// the permit goes with the connection.
    async fn admit_connection(&self) -> Option<OwnedSemaphorePermit>;

    /// Before anything else is read (the TLS handshake included): the PROXY protocol header,
    /// when the peer must send one (`listen.proxy_protocol_from`). `false`: close the
    /// connection.
    async fn read_proxy_header(&self, tcp: &mut L4Stream, accepted: Instant) -> bool;

    /// Serves the connection until it closes; `accepted` starts the first head's deadline.
    async fn serve_connection(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        accepted: Instant,
    );

    /// The listener stopped: wake idle connections so they close.
    async fn stop(&self);
}

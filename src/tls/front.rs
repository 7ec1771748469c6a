//! The HTTPS listener: our own rustls handshake in front of pingora's HTTP proxy.
//!
//! pingora's `TlsSettings` takes one fixed ALPN list, and rustls refuses a client whose ALPN
//! offer shares nothing with it. tls-alpn-01 needs `acme-tls/1` next to `h2` and `http/1.1`,
//! so the handshake happens here (tokio-rustls, wrapped by `tls::stream`), and the
//! TLS stream is handed, as any other pingora stream, to whatever serves the listener's
//! connections (a `runtime::seams::ConnectionServer`: `server` gives it the edge) — the
//! pattern pingora's own docs show for custom acceptors.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use rustls::ServerConfig;

use super::store::{CertStore, ACME_TLS_ALPN};
use super::stream::TlsConn;
use crate::runtime::seams::ConnectionServer;

/// TLS 1.2 and 1.3 only; ALPN h2, http/1.1 and acme-tls/1 (chosen only by an ACME
/// validator, which offers nothing else); certificates chosen by SNI from the store.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

pub struct TlsFront<A> {
    acceptor: tokio_rustls::TlsAcceptor,
    proxy: Arc<A>,
}

impl<A: ConnectionServer> TlsFront<A> {
    pub fn new(config: Arc<ServerConfig>, proxy: Arc<A>) -> TlsFront<A> {
        TlsFront {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            proxy,
        }
    }
}

#[async_trait]
impl<A: ConnectionServer> ServerApp for TlsFront<A> {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // The listener hands us a boxed plain TCP stream; the handshake wants the concrete type.
        // The connection cap counts TLS connections from before their handshake.
        let _permit = self.proxy.admit_connection().await?;
        let accepted = tokio::time::Instant::now();
        let Ok(mut tcp) = io.into_any().downcast::<L4Stream>() else {
            tracing::error!("HTTPS listener got a stream that is not TCP");
            return None;
        };
        // A balancer's PROXY protocol header comes first, in the clear.
        if !self.proxy.read_proxy_header(&mut tcp, accepted).await {
            return None;
        }
        // The handshake counts against the first request's head deadline (slowloris on TLS).
        let deadline = accepted + self.proxy.limits().header_timeout;
        // Boxed: the handshake's state is freed once it is done, not kept for the connection's life.
        let handshake = Box::pin(self.acceptor.accept(*tcp));
        let tls = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return None;
            }
        };
        let tls = TlsConn::new(tls);
        if tls.alpn() == Some(ACME_TLS_ALPN) {
            // The validator only needed the handshake.
            return None;
        }
        let stream: Stream = Box::new(tls);
        self.proxy
            .clone()
            .serve_connection(stream, shutdown, accepted)
            .await;
        None
    }

    async fn cleanup(&self) {
        // The listener stopped: wake idle keep-alive connections so they close (SIGTERM).
        self.proxy.stop().await;
    }
}

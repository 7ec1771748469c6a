//! A bare pingora proxy of the same pingora version as switchyard: one upstream, no routing,
//! no metrics, no headers. The baseline of `loadtests/bench-http.sh`.
//!
//! `bare_pingora LISTEN UPSTREAM THREADS` (e.g. `127.0.0.1:8000 127.0.0.1:9000 1`).
//! Set `BARE_WORK_STEALING=1` to leave pingora's default work stealing on.

// A command-line tool: it exits with its verdict (see .clippy.toml).
#![allow(clippy::disallowed_methods)]

use async_trait::async_trait;
use pingora_core::prelude::HttpPeer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, threads) = match args.as_slice() {
        [_, l, u, t] => (
            l.clone(),
            u.parse().expect("UPSTREAM"),
            t.parse().expect("THREADS"),
        ),
        _ => {
            eprintln!("usage: bare_pingora LISTEN UPSTREAM THREADS");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads,
        work_stealing: std::env::var("BARE_WORK_STEALING").is_ok(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}

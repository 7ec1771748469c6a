//! Wires the pingora `Server`: the proxy listeners, the admin listener, health checks, the
//! readiness probe and, for the demo, the built-in backends. The only module that sees all
//! the parts.
//!
//! **Readiness.** `/health` answers 503 until `config`, `state` and every client listener
//! are up (`admin::readiness`). The config is up once validated, the state once the
//! controller has loaded it and built the first snapshot. A listener is up once a connection
//! of ours has gone through it to the app behind it: pingora marks a listening service
//! ready *before* it binds its sockets, so its own readiness says nothing about them, and a
//! bare TCP connect would also succeed against another process that took the port. The
//! `readiness` background service connects to each listener from a local address it notes
//! first; [`Probed`], in front of the listener's app, recognises that connection by its
//! source address, closes it, and marks the listener up.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::token;
use crate::admin::{AdminApp, Latch, Readiness};
use crate::control::{Controller, DnsService, FirstRound, SiteService, WatchService};
use crate::core::color::Color;
use crate::core::config::{BackendSpec, Config, Pools};
use crate::demo::DemoBackend;
use crate::edge::h1::EdgeApp;
use crate::edge::proxy::EdgeProxy;
use crate::runtime::health::HealthChecker;
use crate::runtime::listener::ClientListener;
use crate::runtime::rate_limiter::RateLimitSweeper;
use crate::runtime::seams::Http01Answers;
use crate::runtime::shared::Shared;
use crate::tls::front::TlsFront;
use crate::tls::{self, CertManager, CertService};

pub struct RunOptions {
    /// Start the built-in blue and green demo backends on the addresses of the demo service.
    pub demo_service: Option<String>,
}

/// Fails early, with the key's name, when a listen address is taken: pingora would panic.
fn preflight_bind(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("cannot listen on {what} = {addr}"))
}

/// Runs until SIGTERM (graceful) or SIGINT (at once).
pub fn run(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    // Our TLS configs name their provider; the etcd client's (tonic) takes the process
    // default, which must be chosen since rustls is built with two providers.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Arc::new(config);
    if let Some(a) = config.listen.http {
        preflight_bind("listen.http", a)?;
    }
    preflight_bind("listen.admin", config.listen.admin)?;
    if let Some(a) = config.listen.https {
        preflight_bind("listen.https", a)?;
    }

    let mut parts = vec!["config", "state"];
    if config.listen.http.is_some() {
        parts.push("listen.http");
    }
    if config.tls.is_some() && config.listen.https.is_some() {
        parts.push("listen.https");
    }
    // Backend names: ready once they were looked up once (see `control::dns`).
    let names = !config.names().is_empty();
    if names {
        parts.push("dns");
    }
    let readiness = Readiness::new(&parts);
    // `run` is handed a validated config.
    readiness.latch("config").release();

    let controller = Controller::open((*config).clone())?;
    readiness.latch("state").release();
    let shared = controller.shared().clone();
    let token = token::load_or_create(&config.token_file)
        .with_context(|| format!("admin.token_file {}", config.token_file.display()))?;

    // Certificates before listeners: HTTPS answers from the first connection.
    let certs = match (&config.tls, config.listen.https) {
        (Some(_), Some(_)) => {
            let m = CertManager::new(shared.clone());
            m.prepare(&config)?;
            Some(m)
        }
        _ => None,
    };
    controller.set_certs(certs.clone());

    let conf = ServerConf {
        threads: config.threads,
        work_stealing: false,
        // The drain itself is bounded by our own watcher (see `Signals`); pingora's sleep is
        // only the upper bound.
        grace_period_seconds: Some(config.grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut services: Vec<Box<dyn pingora_core::services::ServiceWithDependents>> = Vec::new();
    let mut probes = Vec::new();
    // `[limits] max_connections` covers every client listener together.
    let connections = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    if let Some(http) = config.listen.http {
        let edge = EdgeProxy {
            shared: shared.clone(),
            tls: false,
            certs: certs
                .as_ref()
                .map(|c| c.store.clone() as Arc<dyn Http01Answers>),
            https_port: config.listen.https.map(|a| a.port()),
        };
        let app = EdgeApp::new(edge, connections.clone());
        let probe = ListenerProbe::new("listen.http", http);
        probes.push((probe.clone(), readiness.latch("listen.http")));
        services.push(Box::new(ClientListener::new(
            "proxy http",
            http,
            Probed::new(app, probe),
        )));
    }
    if let (Some(https), Some(certs)) = (config.listen.https, &certs) {
        let edge = EdgeProxy {
            shared: shared.clone(),
            tls: true,
            certs: Some(certs.store.clone() as Arc<dyn Http01Answers>),
            https_port: Some(https.port()),
        };
        let proxy = Arc::new(EdgeApp::new(edge, connections.clone()));
        let front = TlsFront::new(tls::front::server_config(certs.store.clone()), proxy);
        let probe = ListenerProbe::new("listen.https", https);
        probes.push((probe.clone(), readiness.latch("listen.https")));
        services.push(Box::new(ClientListener::new(
            "proxy https",
            https,
            Probed::new(front, probe),
        )));
        services.push(Box::new(background_service(
            "certificates",
            CertService(certs.clone()),
        )));
    }

    let dns_ready: Option<FirstRound> = if names {
        let latch = readiness.latch("dns");
        Some(Box::new(move || latch.release()))
    } else {
        None
    };
    services.push(Box::new(background_service(
        "backend names (dns)",
        DnsService {
            controller: controller.clone(),
            first_round: Mutex::new(dns_ready),
        },
    )));

    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp {
            controller: controller.clone(),
            token,
            readiness,
        },
    );
    admin.add_tcp(&config.listen.admin.to_string());
    admin.threads = Some(1);
    services.push(Box::new(admin));

    services.push(Box::new(background_service(
        "site (etcd)",
        SiteService(controller.clone()),
    )));
    services.push(Box::new(background_service(
        "release watch",
        WatchService(controller.clone()),
    )));
    let health = background_service(
        "health checks",
        HealthChecker {
            shared: shared.clone(),
        },
    );
    services.push(Box::new(health));
    services.push(Box::new(background_service(
        "rate limit sweeper",
        RateLimitSweeper(shared.clone()),
    )));
    services.push(Box::new(background_service(
        "readiness",
        ListenersUp {
            pending: Mutex::new(probes),
        },
    )));

    if let Some(name) = &opts.demo_service {
        let Some(svc) = config.service(name) else {
            bail!("the demo config has no service `{name}`");
        };
        let Pools::Colors { blue, green } = &svc.pools else {
            bail!("the demo service `{name}` needs blue and green backends");
        };
        for (color, specs) in [(Color::Blue, blue), (Color::Green, green)] {
            for spec in specs {
                let BackendSpec::Addr(addr) = spec else {
                    bail!("the demo backends are ip:port addresses, not names ({spec})");
                };
                preflight_bind(&format!("demo {color} backend"), *addr)?;
                let mut backend = Service::new(
                    format!("demo {color} {addr}"),
                    DemoBackend {
                        color: color.as_str(),
                    },
                );
                backend.add_tcp(&addr.to_string());
                backend.threads = Some(1);
                services.push(Box::new(backend));
            }
        }
    }
    for s in services {
        server.add_boxed_service(s);
    }

    tracing::info!(
        http = ?config.listen.http,
        https = ?config.listen.https,
        admin = %config.listen.admin,
        threads = config.threads,
        routes = config.routes.len(),
        services = config.services.len(),
        "switchyard is running"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            controller,
            shared,
            grace: config.grace,
        }),
    });
    Ok(())
}

/// SIGTERM: stop accepting, let in-flight requests finish, and exit as soon as none is left
/// (or the grace runs out). SIGINT: exit at once.
struct Signals {
    controller: Arc<Controller>,
    shared: Arc<Shared>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    // SIGINT ends the process here, at once (see .clippy.toml on `std::process::exit`).
    #[allow(clippy::disallowed_methods)]
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(grace_s = self.grace.as_secs(), "SIGTERM: draining in-flight requests");
                    let shared = self.shared.clone();
                    let grace = self.grace;
                    std::thread::spawn(move || exit_when_drained(&shared, grace));
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => {
                    // Exit here rather than through pingora's fast shutdown, which was seen to
                    // leave an accept loop spinning on a runtime being torn down.
                    tracing::info!("SIGINT: exiting now");
                    std::process::exit(0);
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // Errors are logged by the controller; the old config keeps serving. The
                    // reload runs beside this loop so a SIGTERM is never kept waiting.
                    let controller = self.controller.clone();
                    tokio::spawn(async move {
                        let _ = controller.reload().await;
                    });
                }
            }
        }
    }
}

// Runs on a std thread of its own, outside the runtimes being shut down: it may sleep, and it
// ends the process once the drain is done (see .clippy.toml).
#[allow(clippy::disallowed_methods)]
fn exit_when_drained(shared: &Shared, grace: Duration) {
    let deadline = Instant::now() + grace;
    // Let the listeners see the shutdown before counting.
    std::thread::sleep(Duration::from_millis(50));
    let mut idle_polls = 0;
    while Instant::now() < deadline {
        if shared.retained.total_inflight() <= 0 {
            idle_polls += 1;
            if idle_polls >= 3 {
                tracing::info!("drained: exiting");
                std::process::exit(0);
            }
        } else {
            idle_polls = 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        inflight = shared.retained.total_inflight(),
        "grace period over: exiting with requests still in flight"
    );
    std::process::exit(0);
}

/// How long a probe waits for its connection, then for the app to see it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a client listener is ours and accepting (see the module doc).
struct ListenerProbe {
    name: &'static str,
    /// Where the probe connects: the listen address, or loopback for an unspecified one.
    target: SocketAddr,
    /// The local port of the probe in flight; 0 when none is.
    port: AtomicU16,
    /// The app has seen a probe connection.
    seen: AtomicBool,
}

impl ListenerProbe {
    fn new(name: &'static str, listen: SocketAddr) -> Arc<ListenerProbe> {
        let mut target = listen;
        if target.ip().is_unspecified() {
            target.set_ip(match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Arc::new(ListenerProbe {
            name,
            target,
            port: AtomicU16::new(0),
            seen: AtomicBool::new(false),
        })
    }

    /// Is this accepted connection the probe in flight?
    fn is_probe(&self, io: &Stream) -> bool {
        let port = self.port.load(Ordering::Acquire);
        port != 0
            && io
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
                .is_some_and(|peer| peer == SocketAddr::new(self.target.ip(), port))
    }

    /// One probe: connect from a noted local address and wait for the app to see it.
    async fn probe(&self) -> std::io::Result<bool> {
        let socket = match self.target {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.target.ip(), 0))?;
        self.port
            .store(socket.local_addr()?.port(), Ordering::Release);
        let conn = match tokio::time::timeout(PROBE_TIMEOUT, socket.connect(self.target)).await {
            Ok(conn) => conn?,
            Err(_) => return Ok(false),
        };
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            if self.seen.load(Ordering::Acquire) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(conn);
        Ok(false)
    }
}

/// A client listener's app behind its readiness probe: the probe's connection is closed
/// here, every other one goes to the app. Once the probe was seen, this costs one atomic
/// load per connection.
struct Probed<A> {
    app: Arc<A>,
    probe: Arc<ListenerProbe>,
}

impl<A> Probed<A> {
    fn new(app: A, probe: Arc<ListenerProbe>) -> Probed<A> {
        Probed {
            app: Arc::new(app),
            probe,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Probed<A> {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if !self.probe.seen.load(Ordering::Acquire) && self.probe.is_probe(&io) {
            self.probe.seen.store(true, Ordering::Release);
            return None;
        }
        self.app.process_new(io, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Probes each client listener until a probe gets through, then releases its latch.
struct ListenersUp {
    pending: Mutex<Vec<(Arc<ListenerProbe>, Latch)>>,
}

#[async_trait]
impl BackgroundService for ListenersUp {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        let start = Instant::now();
        let mut up = Vec::with_capacity(pending.len());
        for (probe, latch) in pending {
            let mut warned = false;
            loop {
                match probe.probe().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::debug!(listener = probe.name, "readiness probe: {e}"),
                }
                if !warned && start.elapsed() > Duration::from_secs(10) {
                    warned = true;
                    tracing::warn!(
                        listener = probe.name,
                        addr = %probe.target,
                        "the listener does not accept yet: /health answers 503"
                    );
                }
                tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            up.push(latch);
        }
        // Logged before the latches open: whoever sees /health answer 200 finds this line.
        tracing::info!(
            after_ms = start.elapsed().as_millis() as u64,
            "ready: the listeners accept, /health answers 200"
        );
        for latch in up {
            latch.release();
        }
    }
}

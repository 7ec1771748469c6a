//! TLS termination: certificates per host from ACME, a local CA or files, swapped into a
//! lock-free store read at every handshake, and renewed in the background.
//!
//! - `store`: the certificate map and the rustls SNI resolver.
//! - `front`: the HTTPS listener (our handshake, then the `ConnectionServer` it was given).
//! - `internal`, `acme`: the issuers.
//! - this file: [`CertManager`], which decides what to issue and when.

pub mod acme;
pub mod front;
pub mod internal;
pub mod store;
pub mod stream;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::Notify;

use crate::api::CertInfo;
use crate::core::config::{Config, Issuer, TlsConfig};
use crate::persist::etcd::{EtcdStore, SiteCertSink};
use crate::persist::store::{rfc3339, write_atomic};
use crate::runtime::metrics;
use crate::runtime::shared::Shared;
use store::{covers, load_pem, unix_now, CertStore, LoadedCert};

/// Longest sleep between two looks at the certificates.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Retries of a failed order back off exponentially up to this.
const MAX_BACKOFF_S: u64 = 6 * 3600;
/// In a site, how often an instance that does not lead looks again whether it leads now.
const FOLLOWER_LOOK: Duration = Duration::from_secs(1);

/// Where a host's certificate and key live in `cert_dir`.
pub fn cert_paths(dir: &std::path::Path, host: &str) -> (PathBuf, PathBuf) {
    let stem = host.replace('*', "_wildcard");
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// When a certificate is due for renewal: `renew_before_days` before expiry if set, else
/// with a third of its lifetime left (so 6-day and 90-day certificates both work).
///
/// `renew_before_days` is capped at half the lifetime: a value at or above the lifetime
/// (30 days before expiry of a 30-day certificate) would renew on every pass.
pub fn renewal_due(cert: &LoadedCert, renew_before_days: Option<u64>) -> u64 {
    let lifetime = cert.lifetime().as_secs();
    match renew_before_days {
        Some(days) => cert
            .not_after
            .saturating_sub((days * 86_400).min(lifetime / 2)),
        None => cert.not_after.saturating_sub(lifetime / 3),
    }
}

/// Delay before retry number `failures` (1-based): base, 2×base, 4×base… capped at 6 h.
pub fn backoff(base_s: u64, failures: u32) -> u64 {
    let exp = failures.saturating_sub(1).min(20);
    base_s.saturating_mul(1u64 << exp).min(MAX_BACKOFF_S)
}

#[derive(Default, Clone)]
struct HostState {
    last_error: Option<String>,
    failures: u32,
    /// Unix seconds before which no new attempt is made (backoff).
    next_attempt: u64,
    /// Unix seconds suggested by the CA's renewal information, when it gave one.
    ari_due: Option<u64>,
    forced: bool,
}

pub struct CertManager {
    pub store: Arc<CertStore>,
    shared: Arc<Shared>,
    hosts: Mutex<BTreeMap<String, HostState>>,
    wake: Notify,
    account: tokio::sync::Mutex<Option<instant_acme::Account>>,
    /// With `store = "etcd"`: the site whose leader orders for every instance (see
    /// `persist::etcd::certs`).
    site: std::sync::OnceLock<Arc<EtcdStore>>,
}

fn tls_of(config: &Config) -> Option<&TlsConfig> {
    config.tls.as_ref()
}

/// The hosts that need a certificate: every routed host the issuer can serve. ACME with
/// http-01/tls-alpn-01 cannot prove a wildcard or an IP address; those are skipped with a
/// warning (they can use `internal` or `files`).
pub fn wanted_hosts(config: &Config) -> Vec<String> {
    let Some(tls) = tls_of(config) else {
        return Vec::new();
    };
    let mut hosts: Vec<String> = match tls.issuer {
        Issuer::Files => tls.files.keys().cloned().collect(),
        _ => config.routes.iter().map(|r| r.host.clone()).collect(),
    };
    hosts.sort();
    hosts.dedup();
    if tls.issuer == Issuer::Acme {
        hosts.retain(|h| {
            let ok = !h.starts_with("*.") && h.parse::<IpAddr>().is_err() && h != "localhost";
            if !ok {
                tracing::warn!(host = %h, "ACME cannot issue for a wildcard, an IP or localhost: no certificate for it");
            }
            ok
        });
    }
    hosts
}

impl CertManager {
    pub fn new(shared: Arc<Shared>) -> Arc<CertManager> {
        // Exported from the start at 0, so that `increase()` sees the first order.
        for result in ["ok", "error"] {
            metrics::global().acme_orders.with_label_values(&[result]);
        }
        Arc::new(CertManager {
            store: Arc::new(CertStore::default()),
            shared,
            hosts: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            account: tokio::sync::Mutex::new(None),
            site: std::sync::OnceLock::new(),
        })
    }

    /// Joins a site: its leader orders ACME certificates for every instance, which serve
    /// what it commits and answer the challenges of its orders.
    pub fn join_site(self: &Arc<Self>, site: Arc<EtcdStore>) {
        site.set_cert_sink(self.clone());
        let _ = self.site.set(site);
    }

    /// The site, when this instance belongs to one and the certificates are ACME's.
    fn acme_site(&self, tls: &TlsConfig) -> Option<&Arc<EtcdStore>> {
        self.site.get().filter(|_| tls.issuer == Issuer::Acme)
    }

    /// At start, before serving: load what `cert_dir` (or `[tls.files]`) holds, and for the
    /// internal issuer create what is missing, so HTTPS answers from the first connection.
    /// ACME orders run in the background afterwards.
    pub fn prepare(&self, config: &Config) -> anyhow::Result<()> {
        let Some(tls) = tls_of(config) else {
            return Ok(());
        };
        std::fs::create_dir_all(&tls.cert_dir)
            .with_context(|| format!("cannot create tls.cert_dir {}", tls.cert_dir.display()))?;
        for host in wanted_hosts(config) {
            let (cert, key) = match tls.issuer {
                Issuer::Files => tls.files[&host].clone(),
                _ => cert_paths(&tls.cert_dir, &host),
            };
            match load_files(&cert, &key) {
                Ok(c) if covers(&c, &host) => self.install(&host, c),
                Ok(_) if tls.issuer == Issuer::Files => {
                    anyhow::bail!("{} does not cover {host}", cert.display())
                }
                Ok(_) => {
                    tracing::warn!(%host, file = %cert.display(), "certificate on disk does not cover the host: replacing it")
                }
                Err(e) if tls.issuer == Issuer::Files => {
                    return Err(e.context(format!("[tls.files] \"{host}\"")))
                }
                Err(_) => {}
            }
            if tls.issuer == Issuer::Internal && self.store.get(&host).is_none() {
                self.issue_internal(tls, &host)?;
            }
        }
        Ok(())
    }

    fn install(&self, host: &str, cert: LoadedCert) {
        metrics::global()
            .cert_expiry
            .with_label_values(&[host])
            .set(cert.not_after as f64);
        tracing::info!(%host, not_after = %rfc3339(cert.not_after), serial = %cert.serial, "certificate installed");
        self.store.insert(host, cert);
    }

    fn issue_internal(&self, tls: &TlsConfig, host: &str) -> anyhow::Result<()> {
        let ca = internal::InternalCa::load_or_create(&tls.cert_dir)?;
        let (cert_pem, key_pem) = ca.issue(host)?;
        self.save_and_install(tls, host, &cert_pem, &key_pem)
    }

    fn save_and_install(
        &self,
        tls: &TlsConfig,
        host: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        let loaded = load_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        let (cert_path, key_path) = cert_paths(&tls.cert_dir, host);
        // Key first: a crash between the two leaves a new key beside the old certificate,
        // which the next start detects (covers/parse) and replaces.
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_path.display()))?;
        write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", cert_path.display()))?;
        self.install(host, loaded);
        Ok(())
    }

    /// Asks for a renewal of `hosts` (all when empty) at the next look, now.
    pub fn force_renew(&self, hosts: &[String]) -> Vec<String> {
        let config = self.shared.snapshot.load().config.clone();
        let out = self.mark_forced(&config, hosts);
        if let Some(site) = tls_of(&config).and_then(|t| self.acme_site(t)).cloned() {
            // The leader orders for the site, whichever instance was asked.
            let hosts = out.clone();
            tokio::spawn(async move {
                for h in hosts {
                    if let Err(e) = site.request_renewal(&h).await {
                        tracing::warn!(host = %h, "cannot pass the renewal on to the site's leader: {e}");
                    }
                }
            });
        }
        out
    }

    /// Marks the wanted hosts among `hosts` (all when empty) for renewal at the next look,
    /// now; returns them.
    fn mark_forced(&self, config: &Config, hosts: &[String]) -> Vec<String> {
        let mut m = self.hosts.lock().unwrap();
        let mut out = Vec::new();
        for h in wanted_hosts(config) {
            if hosts.is_empty() || hosts.contains(&h) {
                let st = m.entry(h.clone()).or_default();
                st.forced = true;
                st.next_attempt = 0;
                out.push(h);
            }
        }
        drop(m);
        self.wake.notify_one();
        out
    }

    /// Wakes the loop after a reload changed the hosts.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub fn infos(&self) -> Vec<CertInfo> {
        let config = self.shared.snapshot.load().config.clone();
        let Some(tls) = tls_of(&config) else {
            return Vec::new();
        };
        let issuer = match tls.issuer {
            Issuer::Acme => "acme",
            Issuer::Internal => "internal",
            Issuer::Files => "files",
        };
        let m = self.hosts.lock().unwrap();
        let now = unix_now();
        wanted_hosts(&config)
            .into_iter()
            .map(|host| {
                let st = m.get(&host).cloned().unwrap_or_default();
                let cert = self.store.get(&host);
                let next = cert.as_ref().map(|c| {
                    let due = self.due(c, tls, &st);
                    due.max(st.next_attempt)
                });
                CertInfo {
                    issuer: issuer.to_string(),
                    not_before: cert.as_ref().map(|c| rfc3339(c.not_before)),
                    not_after: cert.as_ref().map(|c| rfc3339(c.not_after)),
                    days_left: cert.as_ref().map(|c| {
                        ((c.not_after as f64 - now as f64) / 86_400.0 * 10.0).round() / 10.0
                    }),
                    next_renewal: if tls.issuer == Issuer::Files {
                        None
                    } else {
                        next.map(rfc3339)
                    },
                    serial: cert.as_ref().map(|c| c.serial.clone()),
                    last_error: st.last_error.clone(),
                    host,
                }
            })
            .collect()
    }

    fn due(&self, cert: &LoadedCert, tls: &TlsConfig, st: &HostState) -> u64 {
        let mut due = renewal_due(cert, tls.renew_before_days);
        if let Some(ari) = st.ari_due {
            due = due.min(ari);
        }
        if st.forced {
            due = 0;
        }
        due
    }

    /// One pass: obtain every missing or due certificate whose backoff allows it. Returns how
    /// long to sleep before the next pass.
    async fn pass(&self) -> Duration {
        let config = self.shared.snapshot.load().config.clone();
        let Some(tls) = tls_of(&config) else {
            return MAX_SLEEP;
        };
        if tls.issuer == Issuer::Files {
            return MAX_SLEEP;
        }
        if self.acme_site(tls).is_some_and(|s| !s.is_leader()) {
            // The leader orders for the site; its certificates arrive through etcd.
            return FOLLOWER_LOOK;
        }
        let mut next_wake = unix_now() + MAX_SLEEP.as_secs();
        for host in wanted_hosts(&config) {
            let now = unix_now();
            let st = self
                .hosts
                .lock()
                .unwrap()
                .get(&host)
                .cloned()
                .unwrap_or_default();
            let cert = self.store.get(&host);
            let due = cert.as_ref().map_or(0, |c| self.due(c, tls, &st));
            let when = due.max(st.next_attempt);
            if when > now {
                next_wake = next_wake.min(when);
                continue;
            }
            let result = self.obtain(tls, &host).await;
            let mut m = self.hosts.lock().unwrap();
            let st = m.entry(host.clone()).or_default();
            match result {
                Ok(()) => {
                    // A forced renewal stays asked for until it succeeds.
                    if std::mem::take(&mut st.forced) {
                        if let Some(site) = self.acme_site(tls).cloned() {
                            let host = host.clone();
                            tokio::spawn(async move {
                                let _ = site.renewal_done(&host).await;
                            });
                        }
                    }
                    metrics::global()
                        .acme_orders
                        .with_label_values(&["ok"])
                        .inc();
                    st.failures = 0;
                    st.last_error = None;
                    st.next_attempt = 0;
                    st.ari_due = None;
                }
                Err(e) => {
                    metrics::global()
                        .acme_orders
                        .with_label_values(&["error"])
                        .inc();
                    st.failures += 1;
                    let delay = backoff(tls.retry_base_s, st.failures);
                    st.next_attempt = unix_now() + delay;
                    st.last_error = Some(format!("{e:#}"));
                    next_wake = next_wake.min(st.next_attempt);
                    tracing::warn!(%host, retry_in_s = delay, failures = st.failures, "could not obtain a certificate: {e:#} (the current certificate, if any, keeps serving)");
                }
            }
        }
        // Renewal information from the CA can move a renewal earlier (best effort).
        if tls.issuer == Issuer::Acme {
            self.refresh_ari(tls).await;
        }
        Duration::from_secs(next_wake.saturating_sub(unix_now()).max(1)).min(MAX_SLEEP)
    }

    async fn obtain(&self, tls: &TlsConfig, host: &str) -> anyhow::Result<()> {
        match tls.issuer {
            Issuer::Internal => self.issue_internal(tls, host),
            Issuer::Files => Ok(()),
            Issuer::Acme => {
                let site = self.acme_site(tls).map(Arc::as_ref);
                let mut account = self.account.lock().await;
                for attempt in 0..2 {
                    if account.is_none() {
                        *account = Some(match site {
                            Some(site) => acme::site_account(tls, site).await?,
                            None => acme::account(tls).await?,
                        });
                    }
                    let acct = account.as_ref().expect("set above");
                    tracing::info!(%host, challenge = ?tls.challenge, "ordering a certificate");
                    match acme::order(acct, host, tls.challenge, &self.store, site).await {
                        Ok((chain, key)) => {
                            self.save_and_install(tls, host, &chain, &key)?;
                            if let Some(site) = site {
                                // Every other instance installs it from the site's copy,
                                // which only a leader that still leads can commit.
                                site.put_certificate(host, &chain, &key)
                                    .await
                                    .context("committing the certificate to the site")?;
                            }
                            return Ok(());
                        }
                        Err(e) if attempt == 0 && acme::account_gone(&e) => {
                            // The CA no longer knows the account: register again, once.
                            tracing::warn!(%host, "the ACME account no longer exists at the CA: registering a new one");
                            *account = None;
                            match site {
                                Some(site) => acme::retire_site_account(tls, site).await,
                                None => acme::retire_account(tls),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                unreachable!("the second attempt returns")
            }
        }
    }

    async fn refresh_ari(&self, tls: &TlsConfig) {
        let mut account = self.account.lock().await;
        if account.is_none() {
            // Certificates loaded from disk at start deserve the CA's advice too.
            *account = acme::account(tls).await.ok();
        }
        let Some(acct) = account.as_ref() else { return };
        let config = self.shared.snapshot.load().config.clone();
        for host in wanted_hosts(&config) {
            let Some(cert) = self.store.get(&host) else {
                continue;
            };
            let Some(leaf) = cert.key.cert.first() else {
                continue;
            };
            if let Some(due) = acme::renewal_info(acct, leaf).await {
                self.hosts.lock().unwrap().entry(host).or_default().ari_due = Some(due);
            }
        }
    }
}

/// What the site's leader commits, every instance installs (and caches in `cert_dir`, so it
/// serves it from the first connection after a restart, etcd or not).
impl SiteCertSink for CertManager {
    fn certificate(&self, host: &str, cert_pem: &str, key_pem: &str) {
        let config = self.shared.snapshot.load().config.clone();
        let Some(tls) = tls_of(&config).filter(|t| t.issuer == Issuer::Acme) else {
            return;
        };
        let loaded = match load_pem(cert_pem.as_bytes(), key_pem.as_bytes()) {
            Ok(c) if covers(&c, host) => c,
            Ok(_) => {
                tracing::error!(%host, "the site's certificate does not cover its host: ignored");
                return;
            }
            Err(e) => {
                tracing::error!(%host, "the site's certificate is not valid: {e:#}");
                return;
            }
        };
        if self
            .store
            .get(host)
            .is_some_and(|c| c.serial == loaded.serial)
        {
            return;
        }
        if let Err(e) = self.save_and_install(tls, host, cert_pem, key_pem) {
            tracing::warn!(%host, "the site's certificate could not be cached: {e:#}");
            self.install(host, loaded);
        }
    }

    fn http01(&self, token: &str, key_authorization: Option<&str>) {
        self.store
            .set_http_challenge(token, key_authorization.map(str::to_string));
    }

    fn tls_alpn01(&self, host: &str, cert_and_key: Option<(&str, &str)>) {
        match cert_and_key {
            Some((cert, key)) => match acme::alpn_challenge_from_pem(cert, key) {
                Ok(k) => self.store.set_alpn_challenge(host, Some(k)),
                Err(e) => {
                    tracing::error!(%host, "a tls-alpn-01 challenge of the site is not valid: {e:#}")
                }
            },
            None => self.store.set_alpn_challenge(host, None),
        }
    }

    fn renewal_requested(&self, host: &str) {
        let config = self.shared.snapshot.load().config.clone();
        self.mark_forced(&config, &[host.to_string()]);
    }
}

fn load_files(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<LoadedCert> {
    let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    load_pem(&c, &k).with_context(|| format!("{} / {}", cert.display(), key.display()))
}

/// The renewal loop as a pingora background service.
pub struct CertService(pub Arc<CertManager>);

#[async_trait]
impl BackgroundService for CertService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let sleep = self.0.pass().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.0.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(60, 1), 60);
        assert_eq!(backoff(60, 2), 120);
        assert_eq!(backoff(60, 5), 960);
        assert_eq!(backoff(60, 40), MAX_BACKOFF_S);
    }

    #[test]
    fn renewal_at_a_third_of_the_lifetime_or_fixed_days() {
        let ca = internal::InternalCa::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let (c, k) = ca.issue("a.example").unwrap();
        let cert = load_pem(c.as_bytes(), k.as_bytes()).unwrap();
        let life = cert.not_after - cert.not_before;
        assert_eq!(renewal_due(&cert, None), cert.not_after - life / 3);
        assert_eq!(renewal_due(&cert, Some(2)), cert.not_after - 2 * 86_400);
        // At or above the lifetime: capped at half of it, never "always due".
        assert_eq!(renewal_due(&cert, Some(30)), cert.not_after - life / 2);
        assert!(covers(&cert, "a.example"));
        assert!(!covers(&cert, "b.example"));
    }

    #[test]
    fn wildcard_and_ip_leaves_cover_their_names() {
        let ca = internal::InternalCa::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let (c, k) = ca.issue("*.example.com").unwrap();
        let cert = load_pem(c.as_bytes(), k.as_bytes()).unwrap();
        assert!(covers(&cert, "www.example.com"));
        assert!(!covers(&cert, "a.b.example.com"));
        let (c, k) = ca.issue("127.0.0.1").unwrap();
        assert!(covers(
            &load_pem(c.as_bytes(), k.as_bytes()).unwrap(),
            "127.0.0.1"
        ));
    }
}

//! `issuer = "acme"`: one ACME order per host with instant-acme, answering http-01 on the
//! HTTP listener or tls-alpn-01 on the HTTPS listener through the [`CertStore`].
//!
//! Call order (instant-acme's `examples/provision.rs`): new_order → authorizations →
//! challenge set_ready → poll_ready → finalize → poll_certificate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::store::CertStore;
use crate::core::config::{Challenge, TlsConfig};
use crate::persist::etcd::EtcdStore;
use crate::persist::store::write_atomic;

pub const ACCOUNT_FILE: &str = "acme-account.json";

/// How long one order may take, challenges included, before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// In a site, the time given to every instance's watch to receive a challenge answer before
/// the CA is told to validate (a watch event takes milliseconds on a healthy cluster).
const SITE_PROPAGATION: Duration = Duration::from_millis(500);

fn builder(cfg: &TlsConfig) -> anyhow::Result<instant_acme::AccountBuilder> {
    Ok(match &cfg.acme_root_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("tls.acme_root_ca {}", ca.display()))?,
        None => Account::builder().context("ACME HTTP client")?,
    })
}

/// The ACME account: created once, its credentials (key included) kept in
/// `cert_dir/acme-account.json` with mode 0600 and reused afterwards.
pub async fn account(cfg: &TlsConfig) -> anyhow::Result<Account> {
    let path = cfg.cert_dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let stored_dir = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("directory")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            });
        if stored_dir.as_deref() == Some(cfg.acme_directory.as_str()) {
            return restore(cfg, &text)
                .await
                .with_context(|| path.display().to_string());
        }
        // The account belongs to another CA (staging → production, say): keep it aside and
        // register with the configured one.
        tracing::warn!(stored = ?stored_dir, configured = %cfg.acme_directory, "the stored ACME account is for another directory: creating a new one");
        retire_account(cfg);
    }
    let (account, creds) = create(cfg).await?;
    let json = serde_json::to_vec_pretty(&creds)?;
    write_atomic(&path, &json, 0o600).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(directory = %cfg.acme_directory, "created the ACME account");
    Ok(account)
}

/// The site's ACME account (`store = "etcd"`): its credentials live in etcd, created once by
/// whichever leader needs them first; an account for another directory is replaced.
pub async fn site_account(cfg: &TlsConfig, site: &EtcdStore) -> anyhow::Result<Account> {
    let stored = site.acme_account().await?;
    if let Some(text) = &stored {
        let stored_dir = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("directory")?.as_str().map(str::to_string));
        if stored_dir.as_deref() == Some(cfg.acme_directory.as_str()) {
            return restore(cfg, text).await;
        }
        tracing::warn!(stored = ?stored_dir, configured = %cfg.acme_directory, "the site's ACME account is for another directory: creating a new one");
    }
    let (account, creds) = create(cfg).await?;
    let json = serde_json::to_string_pretty(&creds)?;
    let now = site.set_acme_account(stored.as_deref(), &json).await?;
    if now == json {
        tracing::info!(directory = %cfg.acme_directory, "created the site's ACME account");
        Ok(account)
    } else {
        // Another leader stored one first: use it (ours stays unused at the CA).
        restore(cfg, &now).await
    }
}

/// The site's account was refused by the CA (it no longer exists): forget it, so the next
/// [`site_account`] registers a new one.
pub async fn retire_site_account(cfg: &TlsConfig, site: &EtcdStore) {
    match site.acme_account().await {
        Ok(Some(old)) => match create(cfg).await {
            Ok((_, creds)) => {
                let json = serde_json::to_string_pretty(&creds).unwrap_or_default();
                if let Err(e) = site.set_acme_account(Some(&old), &json).await {
                    tracing::warn!("cannot replace the site's ACME account: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot create a new ACME account: {e:#}"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read the site's ACME account: {e}"),
    }
}

async fn restore(cfg: &TlsConfig, text: &str) -> anyhow::Result<Account> {
    let creds: AccountCredentials =
        serde_json::from_str(text).context("the stored ACME account is not valid")?;
    builder(cfg)?
        .from_credentials(creds)
        .await
        .context("restoring the ACME account")
}

async fn create(cfg: &TlsConfig) -> anyhow::Result<(Account, AccountCredentials)> {
    let contact = cfg.acme_email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    builder(cfg)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.acme_directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", cfg.acme_directory))
}

/// Moves the stored account aside (`acme-account.json.retired-UNIX`), so the next
/// [`account`] call registers a new one.
pub fn retire_account(cfg: &TlsConfig) {
    let path = cfg.cert_dir.join(ACCOUNT_FILE);
    let aside = cfg.cert_dir.join(format!(
        "{ACCOUNT_FILE}.retired-{}",
        super::store::unix_now()
    ));
    if let Err(e) = std::fs::rename(&path, &aside) {
        tracing::warn!("cannot move {} aside: {e}", path.display());
    }
}

/// True when the CA says the account does not exist (deactivated, or a CA that lost it).
pub fn account_gone(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| match c.downcast_ref::<instant_acme::Error>() {
            Some(instant_acme::Error::Api(p)) => p
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with("accountDoesNotExist")),
            _ => false,
        })
}

/// Removes a challenge answer from the store when the order ends, however it ends.
struct ChallengeGuard<'a> {
    store: &'a CertStore,
    host: String,
    tokens: Vec<String>,
}

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.store.set_http_challenge(t, None);
        }
        self.store.set_alpn_challenge(&self.host, None);
    }
}

/// The self-signed certificate that answers tls-alpn-01 (RFC 8737): the host as its only SAN
/// and the SHA-256 of the key authorization in the critical acmeIdentifier extension.
/// Also returns the certificate and key as PEM, for the other instances of a site.
fn alpn_challenge_cert(
    host: &str,
    digest: &[u8],
) -> anyhow::Result<(Arc<CertifiedKey>, String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![host.to_string()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let pems = (cert.pem(), key.serialize_pem());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
    Ok((
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signing,
        )),
        pems.0,
        pems.1,
    ))
}

/// A tls-alpn-01 challenge certificate from its PEM (as another instance published it).
pub fn alpn_challenge_from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("challenge certificate PEM")?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .context("challenge key PEM")?
        .context("no key in the challenge PEM")?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// What an order published to its site, withdrawn when the order ends however it ends.
#[derive(Default)]
struct SiteAnswers {
    tokens: Vec<String>,
    alpn: bool,
}

impl SiteAnswers {
    async fn withdraw(self, site: &EtcdStore, host: &str) {
        for t in &self.tokens {
            if let Err(e) = site.set_http01(t, None).await {
                tracing::debug!("withdrawing an http-01 answer: {e}");
            }
        }
        if self.alpn {
            if let Err(e) = site.set_tls_alpn01(host, None).await {
                tracing::debug!("withdrawing a tls-alpn-01 answer: {e}");
            }
        }
    }
}

/// Orders a certificate for `host`: (chain PEM, key PEM). The key is ECDSA P-256, generated
/// here (instant-acme's `finalize` uses rcgen's default).
///
/// In a site (`site` set), the challenge answers also go to etcd, so that every instance
/// answers the CA's validation, whichever the balancer picks; they are withdrawn at the end.
pub async fn order(
    account: &Account,
    host: &str,
    challenge: Challenge,
    store: &CertStore,
    site: Option<&EtcdStore>,
) -> anyhow::Result<(String, String)> {
    let mut published = SiteAnswers::default();
    let result = order_once(account, host, challenge, store, site, &mut published).await;
    if let Some(site) = site {
        published.withdraw(site, host).await;
    }
    result
}

async fn order_once(
    account: &Account,
    host: &str,
    challenge: Challenge,
    store: &CertStore,
    site: Option<&EtcdStore>,
    published: &mut SiteAnswers,
) -> anyhow::Result<(String, String)> {
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("new order")?;
    let mut guard = ChallengeGuard {
        store,
        host: host.to_string(),
        tokens: Vec::new(),
    };
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let mut ch = authz
            .challenge(kind.clone())
            .with_context(|| format!("the CA offers no {kind:?} challenge for {host}"))?;
        let key_auth = ch.key_authorization();
        match challenge {
            Challenge::Http01 => {
                let token = ch.token.clone();
                store.set_http_challenge(&token, Some(key_auth.as_str().to_string()));
                guard.tokens.push(token.clone());
                if let Some(site) = site {
                    published.tokens.push(token.clone());
                    site.set_http01(&token, Some(key_auth.as_str()))
                        .await
                        .context("publishing the http-01 answer to the site")?;
                }
            }
            Challenge::TlsAlpn01 => {
                let (cert, cert_pem, key_pem) =
                    alpn_challenge_cert(host, key_auth.digest().as_ref())?;
                store.set_alpn_challenge(host, Some(cert));
                if let Some(site) = site {
                    published.alpn = true;
                    site.set_tls_alpn01(host, Some((&cert_pem, &key_pem)))
                        .await
                        .context("publishing the tls-alpn-01 answer to the site")?;
                }
            }
        }
        if site.is_some() {
            tokio::time::sleep(SITE_PROPAGATION).await;
        }
        ch.set_ready().await.context("challenge ready")?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retry)
        .await
        .context("waiting for validation")?;
    if status != OrderStatus::Ready {
        let mut detail = String::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            if let Some(ch) = a.challenge(kind.clone()) {
                if let Some(err) = &ch.error {
                    detail = format!(": {}", err.detail.clone().unwrap_or_default());
                }
            }
        }
        bail!("order for {host} is {status:?}{detail}");
    }
    let key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .context("downloading the certificate")?;
    drop(guard);
    Ok((chain_pem, key_pem))
}

/// The CA's suggested renewal time (ARI, RFC 9773) as unix seconds, when the CA offers it.
pub async fn renewal_info(account: &Account, cert: &CertificateDer<'_>) -> Option<u64> {
    let id = instant_acme::CertificateIdentifier::try_from(cert).ok()?;
    match account.renewal_info(&id).await {
        Ok((info, _retry_after)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp();
            // A random point in the window, as RFC 9773 §4.2 asks.
            let span = (end - start).max(0) as u64;
            let pick = if span > 0 {
                rand::random::<u64>() % span
            } else {
                0
            };
            Some(start.max(0) as u64 + pick)
        }
        Err(_) => None,
    }
}

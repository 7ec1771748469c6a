//! ACME across a site: the account, the certificates and keys, and the challenge answers of
//! orders in flight live in etcd, so one instance (the leader) orders and every instance
//! serves and answers.
//!
//! Keys under the prefix:
//! - `acme/account` — the ACME account's credentials (its key included), created once.
//! - `certs/<host>` — `{"cert": chain PEM, "key": key PEM}`, written by the leader only
//!   (fenced on its leadership), read and served by every instance.
//! - `acme/renew/<host>` — a renewal asked for through any instance, until the leader's
//!   order for it succeeds.
//! - `challenges/http-01/<token>` — the key authorization; `challenges/tls-alpn-01/<host>`
//!   — the challenge certificate and key. Both under the leader's lease, so an order that
//!   dies with its leader leaves nothing behind.
//!
//! Every instance hands what it reads (at the start of each session, then from the watch)
//! to its [`SiteCertSink`] — the TLS layer's certificate store.
//!
//! The values hold private keys: protect etcd with TLS and authentication (docs/fleet.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::EtcdStore;
use crate::persist::store::StoreError;

/// Where the TLS layer takes what the site shares.
pub trait SiteCertSink: Send + Sync {
    /// A certificate for `host` committed by the leader (PEM).
    fn certificate(&self, host: &str, cert_pem: &str, key_pem: &str);
    /// An http-01 answer appeared (`Some`) or went (`None`).
    fn http01(&self, token: &str, key_authorization: Option<&str>);
    /// A tls-alpn-01 challenge certificate for `host` appeared or went.
    fn tls_alpn01(&self, host: &str, cert_and_key: Option<(&str, &str)>);
    /// Some instance asked for `host`'s certificate to be renewed now (the leader acts).
    fn renewal_requested(&self, host: &str);
}

/// A certificate and its key, as stored.
#[derive(Serialize, Deserialize)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

const CERTS: &str = "certs/";
const RENEW: &str = "acme/renew/";
const HTTP01: &str = "challenges/http-01/";
const ALPN: &str = "challenges/tls-alpn-01/";

impl EtcdStore {
    /// Where this instance hands the site's certificates and challenges (set once, at start).
    pub fn set_cert_sink(&self, sink: Arc<dyn SiteCertSink>) {
        let _ = self.cert_sink.set(sink);
    }

    /// Hands a `certs/` or `challenges/` key to the sink; `value` is `None` for a delete.
    /// False when the key is none of those.
    pub(super) fn on_cert_key(&self, key: &[u8], value: Option<&[u8]>) -> bool {
        let Some(rest) = key
            .strip_prefix(self.cfg.prefix.as_bytes())
            .and_then(|r| std::str::from_utf8(r).ok())
        else {
            return false;
        };
        let Some(sink) = self.cert_sink.get() else {
            return rest.starts_with(CERTS)
                || rest.starts_with("challenges/")
                || rest.starts_with(RENEW);
        };
        if let Some(host) = rest.strip_prefix(RENEW) {
            if value.is_some() {
                sink.renewal_requested(host);
            }
            return true;
        }
        if let Some(host) = rest.strip_prefix(CERTS) {
            match value.map(serde_json::from_slice::<PemPair>) {
                Some(Ok(p)) => sink.certificate(host, &p.cert, &p.key),
                Some(Err(e)) => {
                    tracing::error!(%host, "the site's certificate in etcd is not valid: {e}")
                }
                // A deleted certificate keeps serving until a new one comes.
                None => {}
            }
        } else if let Some(token) = rest.strip_prefix(HTTP01) {
            let answer = value.and_then(|v| std::str::from_utf8(v).ok());
            sink.http01(token, answer);
        } else if let Some(host) = rest.strip_prefix(ALPN) {
            match value.map(serde_json::from_slice::<PemPair>) {
                Some(Ok(p)) => sink.tls_alpn01(host, Some((&p.cert, &p.key))),
                Some(Err(e)) => {
                    tracing::error!(%host, "a tls-alpn-01 challenge in etcd is not valid: {e}")
                }
                None => sink.tls_alpn01(host, None),
            }
        } else {
            return false;
        }
        true
    }

    /// At the start of a session: every certificate and pending challenge of the site.
    pub(super) async fn read_site_certs(
        &self,
        client: &mut Client,
    ) -> Result<(), etcd_client::Error> {
        for prefix in [CERTS, "challenges/", RENEW] {
            let resp = client
                .get(self.key(prefix), Some(GetOptions::new().with_prefix()))
                .await?;
            for kv in resp.kvs() {
                self.on_cert_key(kv.key(), Some(kv.value()));
            }
        }
        Ok(())
    }

    /// Passes a watch event on, when it is a certificate or a challenge.
    pub(super) fn on_cert_event(&self, ev: &etcd_client::Event) -> bool {
        let Some(kv) = ev.kv() else { return false };
        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
        self.on_cert_key(kv.key(), value)
    }

    /// The site's ACME account credentials (JSON), if one was created.
    pub async fn acme_account(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.connected_soon().await?;
        let resp = self
            .call(client.get(self.key("acme/account"), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Stores the site's ACME account: replaces `expected` (the credentials read before, or
    /// none) only. Returns the credentials now stored: another leader's, if it was faster.
    pub async fn set_acme_account(
        &self,
        expected: Option<&str>,
        credentials: &str,
    ) -> Result<String, StoreError> {
        let mut client = self.connected_soon().await?;
        let key = self.key("acme/account");
        let cond = match expected {
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
            Some(old) => Compare::value(key.clone(), CompareOp::Equal, old),
        };
        let txn = Txn::new()
            .when([cond])
            .and_then([TxnOp::put(key.clone(), credentials, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.call(client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(credentials.to_string());
        }
        let theirs = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        Ok(theirs.unwrap_or_else(|| credentials.to_string()))
    }

    /// Commits a certificate for the site: only while this instance leads (fenced on the
    /// `leader` key and its lease in the same transaction).
    pub async fn put_certificate(
        &self,
        host: &str,
        cert: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&PemPair {
            cert: cert.to_string(),
            key: key.to_string(),
        })
        .expect("a pair serialises");
        self.put_as_leader(&format!("{CERTS}{host}"), value, false)
            .await
    }

    /// Publishes (`Some`) or withdraws (`None`) an http-01 answer for the whole site.
    pub async fn set_http01(
        &self,
        token: &str,
        key_authorization: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = format!("{HTTP01}{token}");
        match key_authorization {
            Some(v) => self.put_as_leader(&key, v.as_bytes().to_vec(), true).await,
            None => self.delete(&key).await,
        }
    }

    /// Publishes or withdraws a tls-alpn-01 challenge certificate for the whole site.
    pub async fn set_tls_alpn01(
        &self,
        host: &str,
        cert_and_key: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let key = format!("{ALPN}{host}");
        match cert_and_key {
            Some((cert, k)) => {
                let value = serde_json::to_vec(&PemPair {
                    cert: cert.to_string(),
                    key: k.to_string(),
                })
                .expect("a pair serialises");
                self.put_as_leader(&key, value, true).await
            }
            None => self.delete(&key).await,
        }
    }

    /// Asks the site's leader to renew `host` now (from any instance).
    pub async fn request_renewal(&self, host: &str) -> Result<(), StoreError> {
        let mut client = self.connected_soon().await?;
        let key = self.key(&format!("{RENEW}{host}"));
        self.call(client.put(key, self.id.clone(), None)).await?;
        Ok(())
    }

    /// The leader renewed `host`: the request is done.
    pub async fn renewal_done(&self, host: &str) -> Result<(), StoreError> {
        self.delete(&format!("{RENEW}{host}")).await
    }

    async fn put_as_leader(
        &self,
        rest: &str,
        value: Vec<u8>,
        leased: bool,
    ) -> Result<(), StoreError> {
        let mut client = self.connected_soon().await?;
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let lease = self.lease.load(Ordering::Relaxed);
        let txn = Txn::new().when(self.still_leader()).and_then([TxnOp::put(
            self.key(rest),
            value,
            leased.then(|| PutOptions::new().with_lease(lease)),
        )]);
        let resp = self.call(client.txn(txn)).await?;
        if !resp.succeeded() {
            self.leader.store(false, Ordering::Relaxed);
            return Err(StoreError::NotLeader);
        }
        Ok(())
    }

    async fn delete(&self, rest: &str) -> Result<(), StoreError> {
        let mut client = self.connected_soon().await?;
        self.call(client.delete(self.key(rest), None)).await?;
        Ok(())
    }
}

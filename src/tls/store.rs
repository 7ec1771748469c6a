//! Certificates in memory: an arc-swapped map from host name to certified key, read by the
//! rustls resolver at every handshake, plus the live ACME challenge answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of the tls-alpn-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate ready to serve, with the facts `releasectl certs` shows.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub not_before: u64,
    pub not_after: u64,
    pub serial: String,
}

impl LoadedCert {
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.not_after.saturating_sub(self.not_before))
    }
}

#[derive(Default)]
pub struct CertStore {
    /// host → certificate; `*.example.com` entries serve one label below example.com.
    certs: ArcSwap<HashMap<String, Arc<LoadedCert>>>,
    /// host → the tls-alpn-01 challenge certificate while an order runs.
    alpn_challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// token → key authorization, for http-01.
    http_challenges: Mutex<HashMap<String, String>>,
    /// Serialises writers of the maps (readers never lock).
    write: Mutex<()>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("hosts", &self.certs.load().len())
            .finish()
    }
}

impl CertStore {
    pub fn insert(&self, host: &str, cert: LoadedCert) {
        let _g = self.write.lock().unwrap();
        let mut next = HashMap::clone(&self.certs.load());
        next.insert(host.to_string(), Arc::new(cert));
        self.certs.store(Arc::new(next));
    }

    pub fn get(&self, host: &str) -> Option<Arc<LoadedCert>> {
        self.certs.load().get(host).cloned()
    }

    pub fn set_alpn_challenge(&self, host: &str, key: Option<Arc<CertifiedKey>>) {
        let _g = self.write.lock().unwrap();
        let mut next = HashMap::clone(&self.alpn_challenges.load());
        match key {
            Some(k) => next.insert(host.to_string(), k),
            None => next.remove(host),
        };
        self.alpn_challenges.store(Arc::new(next));
    }

    pub fn set_http_challenge(&self, token: &str, key_authorization: Option<String>) {
        let mut m = self.http_challenges.lock().unwrap();
        match key_authorization {
            Some(k) => m.insert(token.to_string(), k),
            None => m.remove(token),
        };
    }

    /// The key authorization for an http-01 token (a rare path; the lock is uncontended).
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.lock().unwrap().get(token).cloned()
    }
}

impl crate::runtime::seams::Http01Answers for CertStore {
    fn http01_answer(&self, token: &str) -> Option<String> {
        self.http_challenge(token)
    }
}

impl CertStore {
    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(c) = certs.get(name) {
            return Some(c.key.clone());
        }
        let (_, parent) = name.split_once('.')?;
        // Avoid an allocation per handshake for the common exact-match case only; the
        // wildcard probe is rare enough to build its key.
        certs.get(&format!("*.{parent}")).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        // The challenge certificate is served only to a client that offers acme-tls/1 and
        // nothing else, like rustls-acme: a browser can never be given it.
        let acme = hello
            .alpn()
            .map(|mut protocols| {
                let first = protocols.next();
                first == Some(ACME_TLS_ALPN) && protocols.next().is_none()
            })
            .unwrap_or(false);
        if acme {
            return self.alpn_challenges.load().get(name.as_deref()?).cloned();
        }
        match name {
            Some(n) => self.lookup(&n),
            // No SNI (an IP literal, an old client): serve the only certificate if there is
            // exactly one, as nginx's default server would.
            None => {
                let certs = self.certs.load();
                (certs.len() == 1)
                    .then(|| certs.values().next().map(|c| c.key.clone()))
                    .flatten()
            }
        }
    }
}

/// Parses a PEM chain and key into a certificate rustls can serve.
pub fn load_pem(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<LoadedCert> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("certificate PEM: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the PEM data");
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| anyhow::anyhow!("key PEM: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("no private key in the PEM data"))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("unsupported private key: {e}"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
    let validity = x509.validity();
    let not_before = validity.not_before.timestamp().max(0) as u64;
    let not_after = validity.not_after.timestamp().max(0) as u64;
    let serial = x509.raw_serial_as_string();
    let key = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate would fail every handshake (a crash
    // between writing the key and the certificate could leave such a pair).
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => anyhow::bail!("the private key does not match the certificate: {e}"),
    }
    Ok(LoadedCert {
        key: Arc::new(key),
        not_before,
        not_after,
        serial,
    })
}

/// Does the leaf certificate cover `host` (exact or by wildcard)?
pub fn covers(cert: &LoadedCert, host: &str) -> bool {
    let Some(leaf) = cert.key.cert.first() else {
        return false;
    };
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => {
            let d = d.to_ascii_lowercase();
            d == host
                || d.strip_prefix("*.").is_some_and(|suffix| {
                    host.split_once('.')
                        .is_some_and(|(_, parent)| parent == suffix)
                })
        }
        x509_parser::extensions::GeneralName::IPAddress(ip) => {
            let text = match ip.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                _ => return false,
            };
            text == host
        }
        _ => false,
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

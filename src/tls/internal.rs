//! `issuer = "internal"`: a local CA created once in `cert_dir` (like Caddy's), signing a
//! short-lived ECDSA P-256 leaf per host. Clients trust it with `--cacert cert_dir/ca.crt`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::persist::store::write_atomic;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// Leaves live 30 days and are renewed with a third left, like any other certificate.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

pub struct InternalCa {
    pub cert_path: PathBuf,
    cert_pem: String,
    key: KeyPair,
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

impl InternalCa {
    /// Loads the CA from `dir`, or creates it (key mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<InternalCa> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() || key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("reading {}", cert_path.display()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a private key", key_path.display()))?;
            Issuer::from_ca_cert_pem(&cert_pem, &key)
                .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
            return Ok(InternalCa {
                cert_path,
                cert_pem,
                key,
            });
        }
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Switchyard Local CA");
        dn.push(DnType::OrganizationName, "Switchyard");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key).context("signing the CA")?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_path.display()))?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", cert_path.display()))?;
        tracing::info!(ca = %cert_path.display(), "created the internal CA");
        Ok(InternalCa {
            cert_path,
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A fresh leaf for `host` (a name, `*.name` or an IP): (cert PEM, key PEM).
    pub fn issue(&self, host: &str) -> anyhow::Result<(String, String)> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into()?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_LIFETIME);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

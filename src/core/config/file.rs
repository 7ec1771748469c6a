//! The raw shape of a config file, exactly as serde reads it.
//!
//! Nothing outside `config` sees these types: its `Validator` turns them into [`super::Config`].
//! Every table denies unknown keys, and every value a later check may complain about is
//! `Spanned` so the error can name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type SpannedAddrs = Spanned<Vec<Spanned<String>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Spanned<FileListen>>,
    pub server: Option<Spanned<FileServer>>,
    pub admin: Option<Spanned<FileAdmin>>,
    pub state: Option<Spanned<FileState>>,
    pub tls: Option<Spanned<FileTls>>,
    pub log: Option<Spanned<FileLog>>,
    pub limits: Option<Spanned<FileLimits>>,
    pub dns: Option<Spanned<FileDns>>,
    #[serde(default)]
    pub route: Vec<Spanned<FileRoute>>,
    #[serde(default)]
    pub service: BTreeMap<Spanned<String>, Spanned<FileService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListen {
    pub http: Option<Spanned<String>>,
    pub https: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    pub proxy_protocol_from: Option<SpannedAddrs>,
    pub trusted_proxies: Option<SpannedAddrs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub threads: Option<Spanned<usize>>,
    pub grace_s: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub header_timeout_s: Option<Spanned<u64>>,
    pub body_timeout_s: Option<Spanned<u64>>,
    pub idle_timeout_s: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub h2_max_concurrent_streams: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub refresh_s: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    pub dir: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub etcd_endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    pub etcd_prefix: Option<Spanned<String>>,
    pub etcd_lease_s: Option<Spanned<u64>>,
    pub etcd_ca: Option<Spanned<String>>,
    pub etcd_cert: Option<Spanned<String>>,
    pub etcd_key: Option<Spanned<String>>,
    pub etcd_user: Option<Spanned<String>>,
    pub etcd_password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
    pub access: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub issuer: Option<Spanned<String>>,
    pub acme_directory: Option<Spanned<String>>,
    pub acme_email: Option<Spanned<String>>,
    pub acme_root_ca: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub cert_dir: Option<Spanned<String>>,
    pub renew_before_days: Option<Spanned<u64>>,
    pub retry_base_s: Option<Spanned<u64>>,
    pub redirect_http: Option<bool>,
    pub hsts: Option<bool>,
    #[serde(default)]
    pub files: BTreeMap<Spanned<String>, Spanned<FileCertFiles>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertFiles {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub host: Spanned<String>,
    pub path_prefix: Option<Spanned<String>>,
    pub service: Spanned<String>,
    pub security_headers: Option<bool>,
    pub response_headers: Option<Spanned<FileHeaders>>,
    pub request_headers: Option<Spanned<FileHeaders>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    pub compress: Option<Spanned<FileCompress>>,
}

/// `{ "Header-Name" = "value", … }`: names chosen by the user.
pub type FileHeaders = BTreeMap<Spanned<String>, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub per_client_per_s: Spanned<f64>,
    pub burst: Option<Spanned<u64>>,
}

/// `compress = true`, or a table of options. (Untagged: the fields of the table cannot be
/// `Spanned`, so its mistakes point at the `compress` key.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileCompress {
    Enabled(bool),
    Options(FileCompressOptions),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCompressOptions {
    pub min_bytes: Option<u64>,
    pub encodings: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    pub backends: Option<SpannedAddrs>,
    pub blue: Option<SpannedAddrs>,
    pub green: Option<SpannedAddrs>,
    pub health_check: Option<Spanned<FileHealthCheck>>,
    #[serde(default)]
    pub smoke: Vec<Spanned<FileSmoke>>,
    pub slo: Option<Spanned<FileSlo>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub read_timeout_ms: Option<Spanned<u64>>,
    pub drain_timeout_s: Option<Spanned<u64>>,
    pub sticky: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub path: Spanned<String>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub expect_status: Option<Spanned<u16>>,
    pub fall: Option<Spanned<u32>>,
    pub rise: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSmoke {
    pub path: Spanned<String>,
    pub expect_status: Option<Spanned<u16>>,
    pub body_contains: Option<String>,
    pub timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSlo {
    pub max_error_rate: Option<Spanned<f64>>,
    pub max_p95_ms: Option<Spanned<u64>>,
    pub max_p99_ms: Option<Spanned<u64>>,
    pub window_s: Option<Spanned<u64>>,
    pub min_requests: Option<Spanned<u64>>,
    pub watch_s: Option<Spanned<u64>>,
}

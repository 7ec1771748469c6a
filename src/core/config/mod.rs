//! Configuration: TOML files read into raw `File*` types, then validated into [`Config`].
//!
//! Validation collects every mistake it finds instead of stopping at the first one, and each
//! mistake names its file, line and key, so `switchyard check` reads like `nginx -t`.

mod addr;
mod file;
mod keys;
mod middlewares;

pub use middlewares::{
    Compress, Encoding, HeaderEdit, RateLimit, RouteMiddlewares, DEFAULT_COMPRESS_MIN_BYTES,
};

pub use addr::{parse_ip_port, BackendName, BackendSpec};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use file::*;
use toml::Spanned;

use crate::core::ip_set::IpSet;

/// The routes file `switchyard demo` runs when given no `--config`.
pub const DEMO_TOML: &str = include_str!("../../../routes/demo.toml");

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the mistake has no line (a missing file, say).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key at fault, e.g. `service.api.blue`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file.display())?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

/// Every mistake found in one load.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    Acme,
    Internal,
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Peers that must open each connection with a PROXY protocol header (v1 or v2), whose
    /// source is then the client address.
    pub proxy_protocol_from: IpSet,
    /// Peers whose X-Forwarded-For is believed: the client is the rightmost entry not in
    /// this set.
    pub trusted_proxies: IpSet,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub issuer: Issuer,
    pub acme_directory: String,
    pub acme_email: Option<String>,
    pub acme_root_ca: Option<PathBuf>,
    pub challenge: Challenge,
    pub cert_dir: PathBuf,
    pub renew_before_days: Option<u64>,
    /// First retry delay after a failed order; doubles per failure up to 6 h.
    pub retry_base_s: u64,
    pub redirect_http: bool,
    pub hsts: bool,
    /// issuer = "files": host → (cert, key).
    pub files: BTreeMap<String, (PathBuf, PathBuf)>,
}

/// `[limits]`: what one client may take of an instance (see docs/config.md). The defaults
/// follow nginx and HAProxy at an internet edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head must arrive within this, from its first byte (or from the
    /// accept, for a connection's first request): slowloris.
    pub header_timeout: Duration,
    /// Longest wait for request body progress (see `edge::relay::BodyReader` for what counts).
    pub body_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// 0 = unlimited.
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65_536,
            max_headers: 100,
            max_body_bytes: 0,
            max_connections: 20_000,
            h2_max_concurrent_streams: 128,
        }
    }
}

/// The most headers `[limits] max_headers` may allow: pingora's h1 codec parses at most this
/// many (its `MAX_HEADERS`).
pub const MAX_HEADERS_CAP: usize = 256;

/// Where release state, history and (later) certificates of a site are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `state.dir` only: one instance.
    File,
    /// Shared by every instance with the same `etcd_prefix`; `state.dir` caches the last
    /// applied state.
    Etcd(EtcdConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
    pub lease: Duration,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lower-case; `*.example.com` for a wildcard.
    pub host: String,
    pub path_prefix: String,
    pub service: String,
    pub middlewares: RouteMiddlewares,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub expect_status: Option<u16>,
    /// Consecutive failures that mark a backend down.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmokeCheck {
    pub path: String,
    pub expect_status: u16,
    pub body_contains: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub max_error_rate: f64,
    pub max_p95_ms: Option<u64>,
    pub max_p99_ms: Option<u64>,
    pub window_s: u64,
    pub min_requests: u64,
    pub watch_s: u64,
}

/// The backends of a service: one pool, or a blue and a green one.
#[derive(Debug, Clone, PartialEq)]
pub enum Pools {
    Single(Vec<BackendSpec>),
    Colors {
        blue: Vec<BackendSpec>,
        green: Vec<BackendSpec>,
    },
}

impl Pools {
    /// (color label, backends) of each pool: `("default", …)` or blue then green.
    pub fn lists(&self) -> Vec<(&'static str, &[BackendSpec])> {
        match self {
            Pools::Single(b) => vec![("default", b.as_slice())],
            Pools::Colors { blue, green } => {
                vec![("blue", blue.as_slice()), ("green", green.as_slice())]
            }
        }
    }
}

/// `[dns]`: how backend names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask; empty: the system's resolver (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolvers: Vec<SocketAddr>,
    /// How often every backend name is looked up again.
    pub refresh: Duration,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            resolvers: Vec::new(),
            refresh: Duration::from_secs(DEFAULT_DNS_REFRESH_S),
        }
    }
}

/// Looks up a listen address given as `name:port` (`listen.*`). Core does no I/O: the loader
/// that reads the files passes the system's lookup in.
pub type ListenLookup<'a> = &'a dyn Fn(&str) -> Result<SocketAddr, String>;

/// The lookup of configs that come from no file (the embedded demo, tests): addresses only.
pub fn no_listen_lookup(s: &str) -> Result<SocketAddr, String> {
    Err(format!("`{s}` is not an ip:port address"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub pools: Pools,
    pub health_check: Option<HealthCheck>,
    pub smoke: Vec<SmokeCheck>,
    pub slo: Option<Slo>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub drain_timeout: Duration,
    pub sticky: bool,
}

impl ServiceConfig {
    pub fn releasable(&self) -> bool {
        matches!(self.pools, Pools::Colors { .. })
    }
}

/// A validated configuration. Paths are absolute (resolved against the config's directory).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file or directory it was read from.
    pub source: PathBuf,
    pub listen: Listen,
    pub threads: usize,
    pub grace: Duration,
    pub token_file: PathBuf,
    pub state_dir: PathBuf,
    pub store: StoreConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub access_log: bool,
    pub limits: Limits,
    pub dns: DnsConfig,
    pub tls: Option<TlsConfig>,
    pub routes: Vec<Route>,
    pub services: BTreeMap<String, ServiceConfig>,
}

impl Config {
    /// Validates config text that did not come from disk (the embedded demo); relative paths
    /// resolve against `base_dir` (which should be absolute).
    pub fn from_str(name: &str, text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let sources = vec![(PathBuf::from(name), text.to_string())];
        Self::from_sources(Path::new(name), base_dir, &sources, &no_listen_lookup)
    }

    /// Validates the text of config files already read (`persist::config_files::load` reads
    /// them): `source` is the file or directory they came from and `base_dir` the directory
    /// relative paths resolve against, both absolute. No I/O happens here: a listen address
    /// given as a name goes to `lookup`, and backend names stay names.
    pub fn from_sources(
        source: &Path,
        base_dir: &Path,
        sources: &[(PathBuf, String)],
        lookup: ListenLookup<'_>,
    ) -> Result<Config, ConfigErrors> {
        let mut v = Validator {
            sources,
            lookup,
            errors: Vec::new(),
        };
        let mut parsed = Vec::new();
        for (i, (_, text)) in sources.iter().enumerate() {
            let unknown = keys::unknown_keys(text);
            for k in &unknown {
                let name = k.path.rsplit('.').next().unwrap_or(&k.path).to_string();
                let name = name.split('[').next().unwrap_or(&name).to_string();
                v.push(
                    i,
                    k.span.clone(),
                    &k.path,
                    format!(
                        "unknown key `{name}` (expected one of: {})",
                        k.expected.join(", ")
                    ),
                );
            }
            // Then the rest of the file, read without its unknown keys (blanked out in a
            // copy, every other byte in place, so spans and lines still point into `text`):
            // every mistake of every kind is reported at once.
            let lenient;
            let readable = if unknown.is_empty() {
                text.as_str()
            } else {
                lenient = keys::blank_unknown(text, &unknown);
                lenient.as_str()
            };
            match toml::from_str::<FileConfig>(readable) {
                Ok(fc) => parsed.push((i, fc)),
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    let message = e.message().trim().to_string();
                    let key = key_from_serde_message(&message)
                        .map(|k| key_path_at(text, span.start, &k))
                        .unwrap_or_default();
                    v.push(i, span, &key, message);
                }
            }
        }
        let config = v.build(source, base_dir, parsed);
        if v.errors.is_empty() {
            Ok(config.expect("no errors means a config"))
        } else {
            v.errors
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(ConfigErrors(v.errors))
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.get(name)
    }

    /// Every backend name of every service, with where it is written (`service.api.green`).
    pub fn backend_names(&self) -> BTreeMap<BackendName, Vec<String>> {
        let mut out: BTreeMap<BackendName, Vec<String>> = BTreeMap::new();
        for (name, svc) in &self.services {
            for (color, list) in svc.pools.lists() {
                let key = if color == "default" {
                    format!("service.{name}.backends")
                } else {
                    format!("service.{name}.{color}")
                };
                for n in list.iter().filter_map(BackendSpec::name) {
                    let at = out.entry(n.clone()).or_default();
                    if !at.contains(&key) {
                        at.push(key.clone());
                    }
                }
            }
        }
        out
    }

    /// The backend names of every service.
    pub fn names(&self) -> BTreeSet<BackendName> {
        self.backend_names().into_keys().collect()
    }
}

/// `unknown field `bogus`, expected …` → `bogus`.
fn key_from_serde_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_string())
}

/// The dotted table path in effect at byte `at` (the last `[table]` header above it), joined
/// with `key`: enough to point a reader at `service.api.bogus` rather than `bogus`.
fn key_path_at(text: &str, at: usize, key: &str) -> String {
    let before = &text[..at.min(text.len())];
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match header {
        Some(h) if !h.is_empty() => format!("{h}.{key}"),
        _ => key.to_string(),
    }
}

struct Validator<'a> {
    sources: &'a [(PathBuf, String)],
    lookup: ListenLookup<'a>,
    errors: Vec<ConfigError>,
}

/// Where a value came from: its file and byte span.
#[derive(Clone)]
struct Loc {
    file: usize,
    span: Range<usize>,
}

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_DRAIN_TIMEOUT_S: u64 = 30;
const DEFAULT_GRACE_S: u64 = 10;
const DEFAULT_DNS_REFRESH_S: u64 = 5;

impl Validator<'_> {
    fn push(&mut self, file: usize, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (path, text) = &self.sources[file];
        let (line, column) = line_col(text, span.start);
        self.errors.push(ConfigError {
            file: path.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn at<T>(&mut self, file: usize, s: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.push(file, s.span(), key, message);
    }

    /// Takes a section that may appear in only one file.
    fn single<T>(
        &mut self,
        name: &str,
        slot: &mut Option<(usize, Spanned<T>)>,
        file: usize,
        value: Option<Spanned<T>>,
    ) {
        let Some(value) = value else { return };
        if let Some((first, prev)) = slot {
            let (path, text) = &self.sources[*first];
            let (line, _) = line_col(text, prev.span().start);
            let msg = format!(
                "section [{name}] is already defined at {}:{line}",
                path.display()
            );
            self.at(file, &value, name, msg);
        } else {
            *slot = Some((file, value));
        }
    }

    /// A listen address: `ip:port`, or `name:port` looked up by the loader's `lookup`.
    fn addr(&mut self, file: usize, s: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let found = match BackendSpec::parse(s.get_ref()) {
            Ok(BackendSpec::Addr(a)) => Ok(a),
            Ok(BackendSpec::Name(_)) => (self.lookup)(s.get_ref().trim()),
            Err(m) => Err(m),
        };
        match found {
            Ok(a) => Some(a),
            Err(m) => {
                self.at(file, s, key, m);
                None
            }
        }
    }

    fn build(
        &mut self,
        source: &Path,
        base_dir: &Path,
        parsed: Vec<(usize, FileConfig)>,
    ) -> Option<Config> {
        let mut listen = None;
        let mut server = None;
        let mut admin = None;
        let mut state = None;
        let mut tls = None;
        let mut log = None;
        let mut limits = None;
        let mut dns = None;
        let mut routes: Vec<(usize, Spanned<FileRoute>)> = Vec::new();
        let mut services: BTreeMap<String, (usize, Spanned<String>, Spanned<FileService>)> =
            BTreeMap::new();
        for (f, fc) in parsed {
            self.single("listen", &mut listen, f, fc.listen);
            self.single("server", &mut server, f, fc.server);
            self.single("admin", &mut admin, f, fc.admin);
            self.single("state", &mut state, f, fc.state);
            self.single("tls", &mut tls, f, fc.tls);
            self.single("log", &mut log, f, fc.log);
            self.single("limits", &mut limits, f, fc.limits);
            self.single("dns", &mut dns, f, fc.dns);
            routes.extend(fc.route.into_iter().map(|r| (f, r)));
            for (name, svc) in fc.service {
                let key = format!("service.{}", name.get_ref());
                if let Some((pf, pname, _)) = services.get(name.get_ref()) {
                    let (path, text) = &self.sources[*pf];
                    let (line, _) = line_col(text, pname.span().start);
                    let msg = format!(
                        "service `{}` is already defined at {}:{line}",
                        name.get_ref(),
                        path.display()
                    );
                    self.at(f, &name, &key, msg);
                    continue;
                }
                services.insert(name.get_ref().clone(), (f, name, svc));
            }
        }

        // [listen]
        let mut http = None;
        let mut https = None;
        let mut admin_addr = Some("127.0.0.1:9901".parse().unwrap());
        let mut proxy_protocol_from = IpSet::default();
        let mut trusted_proxies = IpSet::default();
        match &listen {
            Some((f, l)) => {
                let l = l.get_ref();
                if let Some(a) = &l.http {
                    http = self.addr(*f, a, "listen.http");
                }
                if let Some(a) = &l.https {
                    https = self.addr(*f, a, "listen.https");
                }
                if let Some(a) = &l.admin {
                    admin_addr = self.addr(*f, a, "listen.admin");
                }
                proxy_protocol_from = self.ip_set(
                    *f,
                    l.proxy_protocol_from.as_ref(),
                    "listen.proxy_protocol_from",
                );
                trusted_proxies =
                    self.ip_set(*f, l.trusted_proxies.as_ref(), "listen.trusted_proxies");
                if l.http.is_none() && l.https.is_none() {
                    let loc = listen.as_ref().map(|(f, l)| (*f, l.span())).unwrap();
                    self.push(loc.0, loc.1, "listen", "set `http`, `https` or both");
                }
            }
            None => http = Some("0.0.0.0:80".parse().unwrap()),
        }

        // [server]
        let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut grace = Duration::from_secs(DEFAULT_GRACE_S);
        if let Some((f, s)) = &server {
            let s = s.get_ref();
            if let Some(t) = &s.threads {
                if *t.get_ref() == 0 || *t.get_ref() > 1024 {
                    self.at(*f, t, "server.threads", "must be between 1 and 1024");
                }
                threads = *t.get_ref();
            }
            if let Some(g) = &s.grace_s {
                grace = Duration::from_secs(*g.get_ref());
            }
        }

        let limits = self.limits(limits.as_ref());
        let dns = self.dns(dns.as_ref());

        let state_dir = state
            .as_ref()
            .and_then(|(_, s)| s.get_ref().dir.as_ref())
            .map(|d| base_dir.join(d.get_ref()))
            .unwrap_or_else(|| base_dir.join("state"));
        let store = self.store(state.as_ref(), base_dir);
        let token_file = admin
            .as_ref()
            .and_then(|(_, a)| a.get_ref().token_file.as_ref())
            .map(|d| base_dir.join(d.get_ref()))
            .unwrap_or_else(|| state_dir.join("admin.token"));

        // [log]
        let mut log_format = LogFormat::Text;
        let mut log_level = "info".to_string();
        let mut access_log = false;
        if let Some((f, l)) = &log {
            let l = l.get_ref();
            if let Some(fmt) = &l.format {
                match fmt.get_ref().as_str() {
                    "text" => log_format = LogFormat::Text,
                    "json" => log_format = LogFormat::Json,
                    other => self.at(
                        *f,
                        fmt,
                        "log.format",
                        format!("`{other}` is not a log format: use \"text\" or \"json\""),
                    ),
                }
            }
            if let Some(level) = &l.level {
                let ok = ["error", "warn", "info", "debug", "trace"];
                if ok.contains(&level.get_ref().as_str()) {
                    log_level = level.get_ref().clone();
                } else {
                    self.at(
                        *f,
                        level,
                        "log.level",
                        format!("use one of {}", ok.join(", ")),
                    );
                }
            }
            access_log = l.access.unwrap_or(false);
        }

        let tls_loc = tls.as_ref().map(|(f, t)| (*f, t.span()));
        let tls = tls.and_then(|(f, t)| self.tls(f, t, base_dir));
        if let (Some(tls), Some((f, span))) = (&tls, tls_loc) {
            if https.is_none() {
                self.push(
                    f,
                    span.clone(),
                    "listen.https",
                    "[tls] is set but listen.https is not",
                );
            }
            if tls.issuer == Issuer::Acme && tls.challenge == Challenge::Http01 && http.is_none() {
                self.push(
                    f,
                    span,
                    "tls.challenge",
                    "http-01 is answered on listen.http, which is not set (set it, or use \"tls-alpn-01\")",
                );
            }
        }
        // Two listeners on one address would split connections between them at random.
        if let Some((f, l)) = &listen {
            let named = [
                ("listen.http", http),
                ("listen.https", https),
                ("listen.admin", admin_addr),
            ];
            for (i, (ka, a)) in named.iter().enumerate() {
                for (kb, b) in &named[i + 1..] {
                    if a.is_some() && a == b {
                        self.at(*f, l, kb, format!("{kb} is the same address as {ka}"));
                    }
                }
            }
        }

        // services
        let mut out_services = BTreeMap::new();
        for (name, (f, sname, svc)) in &services {
            if let Some(s) = self.service(*f, name, sname, svc) {
                out_services.insert(name.clone(), s);
            }
        }

        // routes
        let mut out_routes = Vec::new();
        let mut seen: HashMap<(String, String), Loc> = HashMap::new();
        for (i, (f, r)) in routes.iter().enumerate() {
            let key = format!("route[{i}]");
            let rr = r.get_ref();
            // A trailing dot (the DNS root) is dropped, as requests' hosts are matched without it.
            let host = rr
                .host
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if let Err(m) = check_host(&host) {
                self.at(*f, &rr.host, &format!("{key}.host"), m);
                continue;
            }
            let prefix = match &rr.path_prefix {
                Some(p) if !p.get_ref().starts_with('/') => {
                    self.at(*f, p, &format!("{key}.path_prefix"), "must start with `/`");
                    continue;
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_string(),
            };
            if !services.contains_key(rr.service.get_ref()) {
                let msg = format!(
                    "route to undefined service `{}` (define [service.{}])",
                    rr.service.get_ref(),
                    rr.service.get_ref()
                );
                self.at(*f, &rr.service, &format!("{key}.service"), msg);
                continue;
            }
            let k = (host.clone(), prefix.clone());
            if let Some(prev) = seen.get(&k) {
                let (path, text) = &self.sources[prev.file];
                let (line, _) = line_col(text, prev.span.start);
                let msg = format!(
                    "host `{host}` with path_prefix `{prefix}` is already routed at {}:{line}",
                    path.display()
                );
                self.at(*f, &rr.host, &format!("{key}.host"), msg);
                continue;
            }
            seen.insert(
                k,
                Loc {
                    file: *f,
                    span: rr.host.span(),
                },
            );
            let middlewares = self.middlewares(*f, &key, rr);
            out_routes.push(Route {
                host,
                path_prefix: prefix,
                service: rr.service.get_ref().clone(),
                middlewares,
            });
        }

        if !self.errors.is_empty() {
            return None;
        }
        Some(Config {
            source: source.to_path_buf(),
            listen: Listen {
                http,
                https,
                admin: admin_addr?,
                proxy_protocol_from,
                trusted_proxies,
            },
            threads,
            grace,
            token_file,
            state_dir,
            store,
            log_format,
            log_level,
            access_log,
            limits,
            dns,
            tls,
            routes: out_routes,
            services: out_services,
        })
    }

    fn store(&mut self, section: Option<&(usize, Spanned<FileState>)>, base: &Path) -> StoreConfig {
        let Some((f, st)) = section else {
            return StoreConfig::File;
        };
        let (f, st) = (*f, st.get_ref());
        let kind = st.store.as_ref().map_or("file", |s| s.get_ref().as_str());
        let etcd_keys = st.etcd_endpoints.is_some() || st.etcd_prefix.is_some();
        match kind {
            "file" => {
                if etcd_keys {
                    let at = st
                        .etcd_endpoints
                        .as_ref()
                        .map(|e| e.span())
                        .or(st.etcd_prefix.as_ref().map(|p| p.span()));
                    self.push(
                        f,
                        at.unwrap_or(0..0),
                        "state.store",
                        "etcd_* keys need `store = \"etcd\"`",
                    );
                }
                StoreConfig::File
            }
            "etcd" => {
                let endpoints: Vec<String> = st
                    .etcd_endpoints
                    .as_ref()
                    .map(|e| e.get_ref().iter().map(|s| s.get_ref().clone()).collect())
                    .unwrap_or_default();
                if endpoints.is_empty() {
                    let span = st.store.as_ref().map_or(0..0, |s| s.span());
                    self.push(f, span, "state.etcd_endpoints", "store = \"etcd\" needs at least one endpoint, e.g. [\"http://10.0.0.10:2379\"]");
                }
                if let Some(list) = &st.etcd_endpoints {
                    for e in list.get_ref() {
                        let v = e.get_ref();
                        if !(v.starts_with("http://") || v.starts_with("https://")) {
                            self.at(
                                f,
                                e,
                                "state.etcd_endpoints",
                                format!("`{v}`: an endpoint is a URL, e.g. http://10.0.0.10:2379"),
                            );
                        }
                    }
                }
                let mut prefix = st
                    .etcd_prefix
                    .as_ref()
                    .map_or("/switchyard/".to_string(), |p| p.get_ref().clone());
                if !prefix.starts_with('/') {
                    let span = st.etcd_prefix.as_ref().map_or(0..0, |p| p.span());
                    self.push(
                        f,
                        span,
                        "state.etcd_prefix",
                        "must start with `/`, e.g. \"/switchyard/prod/\"",
                    );
                }
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                let lease_s = st.etcd_lease_s.as_ref().map_or(5, |l| *l.get_ref());
                if !(1..=60).contains(&lease_s) {
                    if let Some(l) = &st.etcd_lease_s {
                        self.at(f, l, "state.etcd_lease_s", "must be between 1 and 60");
                    }
                }
                let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| base.join(p.get_ref()));
                if let Some(list) = &st.etcd_endpoints {
                    let https = list
                        .get_ref()
                        .iter()
                        .filter(|e| e.get_ref().starts_with("https://"))
                        .count();
                    let all = list.get_ref().len();
                    if https > 0 && https < all {
                        self.at(
                            f,
                            list,
                            "state.etcd_endpoints",
                            "mixes http:// and https:// endpoints: a site talks to etcd one way",
                        );
                    } else if https > 0 && st.etcd_ca.is_none() {
                        self.at(f, list, "state.etcd_endpoints", "https:// endpoints need state.etcd_ca (the CA that signed etcd's certificates)");
                    } else if https == 0 && all > 0 {
                        if let Some(k) = st.etcd_ca.as_ref().or(st.etcd_cert.as_ref()) {
                            self.at(
                                f,
                                k,
                                "state.etcd_ca",
                                "TLS to etcd needs https:// endpoints (they are http://)",
                            );
                        }
                    }
                }
                if st.etcd_cert.is_some() && st.etcd_ca.is_none() {
                    if let Some(c) = &st.etcd_cert {
                        self.at(
                            f,
                            c,
                            "state.etcd_cert",
                            "a client certificate needs state.etcd_ca too",
                        );
                    }
                }
                if st.etcd_cert.is_some() != st.etcd_key.is_some() {
                    let span = st
                        .etcd_cert
                        .as_ref()
                        .or(st.etcd_key.as_ref())
                        .map_or(0..0, |s| s.span());
                    self.push(
                        f,
                        span,
                        "state.etcd_cert",
                        "etcd_cert and etcd_key go together",
                    );
                }
                if st.etcd_user.is_some() != st.etcd_password_file.is_some() {
                    let span = st
                        .etcd_user
                        .as_ref()
                        .or(st.etcd_password_file.as_ref())
                        .map_or(0..0, |s| s.span());
                    self.push(
                        f,
                        span,
                        "state.etcd_user",
                        "etcd_user and etcd_password_file go together",
                    );
                }
                StoreConfig::Etcd(EtcdConfig {
                    endpoints,
                    prefix,
                    lease: Duration::from_secs(lease_s.clamp(1, 60)),
                    ca: path(&st.etcd_ca),
                    cert: path(&st.etcd_cert),
                    key: path(&st.etcd_key),
                    user: st.etcd_user.as_ref().map(|u| u.get_ref().clone()),
                    password_file: path(&st.etcd_password_file),
                })
            }
            other => {
                let span = st.store.as_ref().map_or(0..0, |s| s.span());
                self.push(
                    f,
                    span,
                    "state.store",
                    format!("`{other}`: expected \"file\" or \"etcd\""),
                );
                StoreConfig::File
            }
        }
    }

    fn limits(&mut self, section: Option<&(usize, Spanned<FileLimits>)>) -> Limits {
        let mut out = Limits::default();
        let Some((f, l)) = section else { return out };
        let (f, l) = (*f, l.get_ref());
        let mut positive = |v: &Option<Spanned<u64>>, key: &str, min: u64, max: u64| {
            let v = v.as_ref()?;
            let n = *v.get_ref();
            if n < min || n > max {
                self.at(f, v, key, format!("must be between {min} and {max}"));
                return None;
            }
            Some(n)
        };
        let day = 86_400;
        if let Some(n) = positive(&l.header_timeout_s, "limits.header_timeout_s", 1, day) {
            out.header_timeout = Duration::from_secs(n);
        }
        if let Some(n) = positive(&l.body_timeout_s, "limits.body_timeout_s", 1, day) {
            out.body_timeout = Duration::from_secs(n);
        }
        if let Some(n) = positive(&l.idle_timeout_s, "limits.idle_timeout_s", 1, day) {
            out.idle_timeout = Duration::from_secs(n);
        }
        if let Some(n) = positive(
            &l.max_header_bytes,
            "limits.max_header_bytes",
            1024,
            1 << 20,
        ) {
            out.max_header_bytes = n as usize;
        }
        let cap = MAX_HEADERS_CAP as u64;
        if let Some(n) = positive(&l.max_headers, "limits.max_headers", 1, cap) {
            out.max_headers = n as usize;
        }
        if let Some(n) = positive(&l.max_body_bytes, "limits.max_body_bytes", 0, u64::MAX) {
            out.max_body_bytes = n;
        }
        if let Some(n) = positive(&l.max_connections, "limits.max_connections", 1, 10_000_000) {
            out.max_connections = n as usize;
        }
        let key = "limits.h2_max_concurrent_streams";
        if let Some(n) = positive(&l.h2_max_concurrent_streams, key, 1, 10_000) {
            out.h2_max_concurrent_streams = n as u32;
        }
        out
    }

    fn dns(&mut self, section: Option<&(usize, Spanned<FileDns>)>) -> DnsConfig {
        let mut out = DnsConfig::default();
        let Some((f, d)) = section else { return out };
        let (f, d) = (*f, d.get_ref());
        if let Some(list) = &d.resolvers {
            for r in list.get_ref() {
                match parse_ip_port(r.get_ref(), 53) {
                    Ok(a) if !out.resolvers.contains(&a) => out.resolvers.push(a),
                    Ok(a) => self.at(f, r, "dns.resolvers", format!("{a} is listed twice")),
                    Err(m) => self.at(f, r, "dns.resolvers", m),
                }
            }
        }
        if let Some(r) = &d.refresh_s {
            let n = *r.get_ref();
            if (1..=86_400).contains(&n) {
                out.refresh = Duration::from_secs(n);
            } else {
                self.at(f, r, "dns.refresh_s", "must be between 1 and 86400");
            }
        }
        out
    }

    fn addrs(&mut self, f: usize, list: &SpannedAddrs, key: &str) -> Vec<BackendSpec> {
        if list.get_ref().is_empty() {
            self.at(f, list, key, "a color or pool needs at least one backend");
        }
        let mut out = Vec::new();
        for a in list.get_ref() {
            match BackendSpec::parse(a.get_ref()) {
                Ok(spec) => {
                    if out.contains(&spec) {
                        self.at(f, a, key, format!("backend {spec} is listed twice"));
                    }
                    out.push(spec);
                }
                Err(m) => self.at(f, a, key, m),
            }
        }
        out
    }

    fn service(
        &mut self,
        f: usize,
        name: &str,
        sname: &Spanned<String>,
        svc: &Spanned<FileService>,
    ) -> Option<ServiceConfig> {
        let key = format!("service.{name}");
        let s = svc.get_ref();
        let errors_before = self.errors.len();
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.at(
                f,
                sname,
                &key,
                "service names use letters, digits, `-` and `_`",
            );
        }
        let pools = match (&s.backends, &s.blue, &s.green) {
            (Some(b), None, None) => Pools::Single(self.addrs(f, b, &format!("{key}.backends"))),
            (None, Some(b), Some(g)) => Pools::Colors {
                blue: self.addrs(f, b, &format!("{key}.blue")),
                green: self.addrs(f, g, &format!("{key}.green")),
            },
            (None, Some(one), None) | (None, None, Some(one)) => {
                let (has, missing) = if s.blue.is_some() {
                    ("blue", "green")
                } else {
                    ("green", "blue")
                };
                self.at(
                    f,
                    one,
                    &format!("{key}.{has}"),
                    format!("a releasable service needs both colors: `{missing}` is missing"),
                );
                return None;
            }
            (Some(b), _, _) => {
                self.at(
                    f,
                    b,
                    &format!("{key}.backends"),
                    "use either `backends` (one pool) or `blue` and `green`, not both",
                );
                return None;
            }
            (None, None, None) => {
                self.at(
                    f,
                    svc,
                    &key,
                    "no backends: set `backends` (one pool) or `blue` and `green`",
                );
                return None;
            }
        };
        let health_check = s.health_check.as_ref().map(|h| {
            let hk = format!("{key}.health_check");
            let hr = h.get_ref();
            if !hr.path.get_ref().starts_with('/') {
                self.at(f, &hr.path, &format!("{hk}.path"), "must start with `/`");
            }
            let interval_ms = hr.interval_ms.as_ref().map_or(2000, |v| *v.get_ref());
            if interval_ms < 10 {
                let at = hr.interval_ms.as_ref().unwrap();
                self.at(f, at, &format!("{hk}.interval_ms"), "must be at least 10");
            }
            let timeout_ms = hr
                .timeout_ms
                .as_ref()
                .map_or(interval_ms.clamp(10, 2000), |v| *v.get_ref());
            HealthCheck {
                path: hr.path.get_ref().clone(),
                interval: Duration::from_millis(interval_ms.max(10)),
                timeout: Duration::from_millis(timeout_ms.max(1)),
                expect_status: hr.expect_status.as_ref().map(|v| *v.get_ref()),
                fall: hr.fall.as_ref().map_or(2, |v| *v.get_ref()).max(1),
                rise: hr.rise.as_ref().map_or(2, |v| *v.get_ref()).max(1),
            }
        });
        let mut smoke = Vec::new();
        for (i, sm) in s.smoke.iter().enumerate() {
            let sk = format!("{key}.smoke[{i}]");
            let smr = sm.get_ref();
            if !smr.path.get_ref().starts_with('/') {
                self.at(f, &smr.path, &format!("{sk}.path"), "must start with `/`");
            }
            let expect = smr.expect_status.as_ref().map_or(200, |v| *v.get_ref());
            if !(100..=599).contains(&expect) {
                let at = smr.expect_status.as_ref().unwrap();
                self.at(f, at, &format!("{sk}.expect_status"), "not an HTTP status");
            }
            if let Some(t) = smr.timeout_ms.as_ref().filter(|t| *t.get_ref() == 0) {
                self.at(f, t, &format!("{sk}.timeout_ms"), "must be greater than 0");
            }
            smoke.push(SmokeCheck {
                path: smr.path.get_ref().clone(),
                expect_status: expect,
                body_contains: smr.body_contains.clone(),
                timeout: Duration::from_millis(
                    smr.timeout_ms.as_ref().map_or(5000, |v| *v.get_ref()),
                ),
            });
        }
        let slo = s.slo.as_ref().map(|slo| {
            let sk = format!("{key}.slo");
            let r = slo.get_ref();
            let max_error_rate = r.max_error_rate.as_ref().map_or(0.02, |v| *v.get_ref());
            if !(0.0..=1.0).contains(&max_error_rate) {
                let at = r.max_error_rate.as_ref().unwrap();
                self.at(
                    f,
                    at,
                    &format!("{sk}.max_error_rate"),
                    "a share between 0 and 1 (0.02 = 2 %)",
                );
            }
            let window_s = r.window_s.as_ref().map_or(30, |v| *v.get_ref());
            if window_s == 0 || window_s > crate::core::slo::MAX_WINDOW_S {
                let at = r.window_s.as_ref().unwrap();
                self.at(
                    f,
                    at,
                    &format!("{sk}.window_s"),
                    format!("must be between 1 and {}", crate::core::slo::MAX_WINDOW_S),
                );
            }
            Slo {
                max_error_rate,
                max_p95_ms: r.max_p95_ms.as_ref().map(|v| *v.get_ref()),
                max_p99_ms: r.max_p99_ms.as_ref().map(|v| *v.get_ref()),
                window_s: window_s.clamp(1, crate::core::slo::MAX_WINDOW_S),
                min_requests: r.min_requests.as_ref().map_or(20, |v| *v.get_ref()),
                watch_s: r.watch_s.as_ref().map_or(300, |v| *v.get_ref()),
            }
        });
        if (!s.smoke.is_empty() || s.slo.is_some() || s.sticky.is_some())
            && matches!(pools, Pools::Single(_))
        {
            self.at(
                f,
                svc,
                &key,
                "smoke, slo and sticky apply to releasable services (with `blue` and `green`)",
            );
        }
        let ms = |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |v| *v.get_ref());
        for (v, k) in [
            (&s.connect_timeout_ms, "connect_timeout_ms"),
            (&s.read_timeout_ms, "read_timeout_ms"),
        ] {
            if let Some(v) = v {
                if *v.get_ref() == 0 {
                    self.at(f, v, &format!("{key}.{k}"), "must be greater than 0");
                }
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(ServiceConfig {
            name: name.to_string(),
            pools,
            health_check,
            smoke,
            slo,
            connect_timeout: Duration::from_millis(ms(
                &s.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )),
            read_timeout: Duration::from_millis(ms(&s.read_timeout_ms, DEFAULT_READ_TIMEOUT_MS)),
            drain_timeout: Duration::from_secs(ms(&s.drain_timeout_s, DEFAULT_DRAIN_TIMEOUT_S)),
            sticky: s.sticky.unwrap_or(false),
        })
    }

    fn tls(&mut self, f: usize, t: Spanned<FileTls>, base_dir: &Path) -> Option<TlsConfig> {
        let tr = t.get_ref();
        let errors_before = self.errors.len();
        let issuer = match tr.issuer.as_ref().map(|i| (i, i.get_ref().as_str())) {
            None | Some((_, "acme")) => Issuer::Acme,
            Some((_, "internal")) => Issuer::Internal,
            Some((_, "files")) => Issuer::Files,
            Some((i, other)) => {
                self.at(
                    f,
                    i,
                    "tls.issuer",
                    format!("`{other}` is not an issuer: use \"acme\", \"internal\" or \"files\""),
                );
                Issuer::Acme
            }
        };
        let challenge = match tr.challenge.as_ref().map(|c| (c, c.get_ref().as_str())) {
            None | Some((_, "http-01")) => Challenge::Http01,
            Some((_, "tls-alpn-01")) => Challenge::TlsAlpn01,
            Some((c, other)) => {
                self.at(
                    f,
                    c,
                    "tls.challenge",
                    format!("`{other}` is not a challenge: use \"http-01\" or \"tls-alpn-01\""),
                );
                Challenge::Http01
            }
        };
        let acme_directory = match &tr.acme_directory {
            Some(d)
                if !d.get_ref().starts_with("https://") && !d.get_ref().starts_with("http://") =>
            {
                self.at(f, d, "tls.acme_directory", "must be an http(s):// URL");
                String::new()
            }
            Some(d) => d.get_ref().clone(),
            None => "https://acme-v02.api.letsencrypt.org/directory".to_string(),
        };
        let mut files = BTreeMap::new();
        for (host, cf) in &tr.files {
            let c = cf.get_ref();
            files.insert(
                host.get_ref().to_ascii_lowercase(),
                (
                    base_dir.join(c.cert.get_ref()),
                    base_dir.join(c.key.get_ref()),
                ),
            );
        }
        if issuer == Issuer::Files && files.is_empty() {
            self.at(
                f,
                &t,
                "tls.files",
                "issuer = \"files\" needs [tls.files] entries: \"host\" = { cert = \"…\", key = \"…\" }",
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(TlsConfig {
            issuer,
            acme_directory,
            acme_email: tr.acme_email.as_ref().map(|e| e.get_ref().clone()),
            acme_root_ca: tr.acme_root_ca.as_ref().map(|p| base_dir.join(p.get_ref())),
            challenge,
            cert_dir: tr
                .cert_dir
                .as_ref()
                .map(|d| base_dir.join(d.get_ref()))
                .unwrap_or_else(|| base_dir.join("certs")),
            renew_before_days: tr.renew_before_days.as_ref().map(|d| *d.get_ref()),
            retry_base_s: tr.retry_base_s.as_ref().map_or(60, |d| *d.get_ref()).max(1),
            redirect_http: tr.redirect_http.unwrap_or(true),
            hsts: tr.hsts.unwrap_or(true),
            files,
        })
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() {
        return Err("empty host".into());
    }
    if name.contains('*') {
        return Err(format!(
            "`{host}`: a wildcard is only allowed as the first label (`*.example.com`)"
        ));
    }
    if name.contains(':') || name.contains('/') {
        return Err(format!("`{host}`: a host has no port or path"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok(())
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests;

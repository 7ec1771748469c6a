//! A real etcd cluster on loopback for the fleet tests: `n` members of the `etcd` binary
//! (Debian `etcd-server`, 3.4.23; `scripts/test.sh` installs it), each with its own client
//! and peer port, all under one temp dir, killed on drop.
//!
//! Readiness is `GET /health` answering `{"health":"true"}` on every member (a leader
//! elected and a quorum read done), never a sleep. `kv_*` read and write keys through
//! etcd's v3 JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`, base64 keys and values),
//! which 3.4 serves on the client port.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::stable_ports;

/// How long a cluster (or a restarted member) may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Whole-cluster start attempts (a free port taken by another test meanwhile makes a
/// member exit; the next attempt picks new ports).
const START_ATTEMPTS: usize = 3;

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH, else `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return p;
            }
        }
    }
    for p in ["/usr/bin/etcd", "/usr/sbin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("no etcd binary (set ETCD_BIN, or run `scripts/deps.sh etcd=etcd-server`)");
}

/// A token unique to this process and moment: cluster tokens and key prefixes.
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        CLUSTERS.fetch_add(1, Ordering::SeqCst)
    )
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
    http: reqwest::Client,
    /// Client TLS (with client certificates required) when started with `start_tls`.
    pub tls: Option<EtcdTls>,
}

/// The files of a TLS cluster: its CA, and a client certificate it accepts.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    /// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.
    fn create(dir: &Path) -> EtcdTls {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let leaf = |server: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.extended_key_usages = if server {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(true);
        let (client_pem, client_key_pem) = leaf(false);
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        EtcdTls {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
        }
    }

    /// A reqwest client that trusts the CA and presents the client certificate.
    fn http_client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca).unwrap();
        let mut identity = std::fs::read(&self.client_cert).unwrap();
        identity.extend(std::fs::read(&self.client_key).unwrap());
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap()
    }
}

impl EtcdCluster {
    /// Starts an `n`-member cluster and waits until every member is healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, false).await
    }

    /// Starts an `n`-member cluster whose clients must use TLS with a client certificate
    /// (`https://` endpoints; the files are in [`EtcdCluster::tls`]).
    pub async fn start_tls(n: usize) -> EtcdCluster {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, tls: bool) -> EtcdCluster {
        assert!(n >= 1, "an etcd cluster needs a member");
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::spawn_new(n, tls);
            match cluster.wait_all_healthy(READY_TIMEOUT).await {
                Ok(()) => return cluster,
                Err(e) => {
                    last_err = format!("attempt {attempt}: {e}\n{}", cluster.logs());
                    cluster.kill_all();
                }
            }
        }
        panic!("etcd cluster of {n} did not start:\n{last_err}");
    }

    fn spawn_new(n: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("etcd-it-")
            .tempdir()
            .expect("tempdir for etcd");
        // Members are stopped and started again on their ports: not ephemeral ones.
        let ports = stable_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log_path: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let tls = tls.then(|| EtcdTls::create(dir.path()));
        let http = match &tls {
            Some(t) => t.http_client(),
            None => reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(3))
                .connect_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        };
        let mut cluster = EtcdCluster {
            dir,
            token: unique("switchyard-it"),
            members,
            http,
            tls,
        };
        for i in 0..n {
            cluster.spawn_member(i, "new");
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_member(&mut self, i: usize, state: &str) {
        let initial_cluster = self.initial_cluster();
        let token = self.token.clone();
        let m = &mut self.members[i];
        assert!(
            m.child.is_none(),
            "etcd member {} is already running",
            m.name
        );
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .expect("etcd log file");
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&token)
            // Fast failure detection, with room for a busy 2-core CI machine (the defaults
            // are 100 / 1000): a dead leader is replaced within ~1-2 s.
            .arg("--heartbeat-interval")
            .arg("100")
            .arg("--election-timeout")
            .arg("1000")
            .args(self.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            // Neither the environment nor a config file may steer it elsewhere.
            .env_clear()
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Die with the test thread that started it, even if the test process is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        m.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    /// Members in the cluster (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `http://127.0.0.1:P` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The endpoints as a TOML array: `["http://…", "http://…"]`.
    pub fn endpoints_toml(&self) -> String {
        let list = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[{list}]")
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir and ports (`--initial-cluster-state existing`).
    /// Does not wait: alone it has no quorum; see [`Self::wait_healthy`].
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn_member(i, "existing");
    }

    /// SIGKILL every member.
    pub fn stop_all(&mut self) {
        self.kill_all();
    }

    fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member again and waits until all are healthy.
    pub async fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                self.members[i].child = None;
                self.spawn_member(i, "existing");
            }
        }
        if let Err(e) = self.wait_all_healthy(READY_TIMEOUT).await {
            panic!("etcd did not come back: {e}\n{}", self.logs());
        }
    }

    /// `GET /health` of member `i` says `{"health":"true"}`.
    pub async fn healthy(&self, i: usize) -> bool {
        match self
            .http
            .get(format!("{}/health", self.endpoint(i)))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                r.json::<Value>().await.is_ok_and(|v| v["health"] == "true")
            }
            _ => false,
        }
    }

    /// Polls member `i`'s health every 20 ms for at most `timeout`.
    pub async fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(i) {
                return Err(format!("etcd member m{i} is not running (exited)"));
            }
            if self.healthy(i).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("etcd member m{i} not healthy after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_all_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_healthy(i, left.max(Duration::from_millis(1)))
                .await?;
        }
        Ok(())
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "----- etcd {} (client {}, peer {}) -----\n{}\n",
                m.name,
                m.client_port,
                m.peer_port,
                tail.join("\n")
            ));
        }
        out
    }

    /// One POST to the v3 JSON gateway of the first healthy-looking running member.
    async fn gateway(&mut self, path: &str, body: Value) -> Result<Value, String> {
        let mut errors = Vec::new();
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let url = format!("{}{path}", self.endpoint(i));
            match self.http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    return r.json::<Value>().await.map_err(|e| format!("{url}: {e}"))
                }
                Ok(r) => {
                    let status = r.status();
                    errors.push(format!(
                        "{url}: {status} {}",
                        r.text().await.unwrap_or_default()
                    ))
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(format!("no etcd member answered {path}: {errors:?}"))
    }

    /// `put key value`.
    pub async fn kv_put(&mut self, key: &str, value: &[u8]) {
        let body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Err(e) = self.gateway("/v3/kv/put", body).await {
            panic!("etcd put {key}: {e}");
        }
    }

    /// The value of `key`, if any.
    pub async fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        let body = json!({ "key": b64(key.as_bytes()) });
        let v = self
            .gateway("/v3/kv/range", body)
            .await
            .unwrap_or_else(|e| panic!("etcd get {key}: {e}"));
        v["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| unb64(kv["value"].as_str().unwrap_or("")))
    }

    /// Every `(key, value)` whose key starts with `prefix` ("" = every key), in key order.
    pub async fn kv_prefix(&mut self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let body = if prefix.is_empty() {
            // key "\0" with range_end "\0": the whole keyspace.
            json!({ "key": b64(b"\0"), "range_end": b64(b"\0") })
        } else {
            json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes())) })
        };
        let v = self
            .gateway("/v3/kv/range", body)
            .await
            .unwrap_or_else(|e| panic!("etcd range {prefix:?}: {e}"));
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let k = unb64(kv["key"].as_str().unwrap_or(""));
                        let val = unb64(kv["value"].as_str().unwrap_or(""));
                        (String::from_utf8_lossy(&k).to_string(), val)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The index of the raft leader, as the running members see it (`/v3/maintenance/status`:
    /// `leader` against each member's `header.member_id`).
    pub async fn leader(&mut self) -> Option<usize> {
        let mut ids: Vec<Option<String>> = vec![None; self.members.len()];
        let mut leader = None;
        for (i, id) in ids.iter_mut().enumerate() {
            if !self.is_running(i) {
                continue;
            }
            let url = format!("{}/v3/maintenance/status", self.endpoint(i));
            let Ok(r) = self.http.post(&url).json(&json!({})).send().await else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            *id = v["header"]["member_id"].as_str().map(str::to_string);
            if let Some(l) = v["leader"].as_str().filter(|l| *l != "0") {
                leader = Some(l.to_string());
            }
        }
        let leader = leader?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
    }

    /// The cluster's current revision (`header.revision` of a range).
    pub async fn revision(&mut self) -> i64 {
        let v = self
            .gateway("/v3/kv/range", json!({ "key": b64(b"\0") }))
            .await
            .unwrap_or_else(|e| panic!("etcd revision: {e}"));
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no header.revision in {v}"))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.kill_all();
    }
}

/// The range end that covers every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what etcd's gateway expects for `bytes` fields).
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if j <= chunk.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); panics on anything else.
pub fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("/switchyard/x/", "L3N3aXRjaHlhcmQveC8="),
        ] {
            assert_eq!(b64(plain.as_bytes()), enc);
            assert_eq!(unb64(enc), plain.as_bytes());
        }
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    }
}

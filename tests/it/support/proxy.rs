//! A `switchyard` child process with its own config, state dir and logs.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_ports;

/// The common head of test configs: `{http}` and `{admin}` are replaced by
/// free loopback addresses in `Proxy::start`.
pub const BASE: &str = r#"[listen]
http = "{http}"
admin = "{admin}"

[state]
dir = "state"
"#;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A reqwest client for talking to the proxy: no environment proxies,
/// bounded timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub struct Proxy {
    child: Child,
    exit: Option<ExitStatus>,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub client: reqwest::Client,
}

impl Proxy {
    /// `switchyard run --config <tempdir>/switchyard.toml`, ready when
    /// `GET http://ADMIN/health` answers 200 and the http listener accepts.
    pub async fn start(config_toml: &str) -> Proxy {
        Self::spawn("run", config_toml).await
    }

    /// `switchyard demo --config <tempdir>/switchyard.toml`.
    pub async fn start_demo(config_toml: &str) -> Proxy {
        Self::spawn("demo", config_toml).await
    }

    pub async fn spawn(subcommand: &str, config_toml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_in(subcommand, dir, config_toml).await
    }

    /// `switchyard run` in an existing directory (e.g. the one [`Proxy::stop`] returned:
    /// its `state/` kept), on new ports; the logs are appended to.
    pub async fn start_in(dir: tempfile::TempDir, config_toml: &str) -> Proxy {
        Self::spawn_in("run", dir, config_toml).await
    }

    async fn spawn_in(subcommand: &str, dir: tempfile::TempDir, config_toml: &str) -> Proxy {
        let ports = free_ports(2);
        let http_addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
        let config = config_toml
            .replace("{http}", &http_addr.to_string())
            .replace("{admin}", &admin_addr.to_string());
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let log = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let stdout = log("stdout.log");
        let stderr = log("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg(subcommand)
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn switchyard");
        let mut proxy = Proxy {
            child,
            exit: None,
            http_addr,
            admin_addr,
            dir,
            config_path,
            client: super::client(),
        };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let health = format!("http://{}/health", self.admin_addr);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit = Some(status);
                panic!(
                    "switchyard exited before becoming ready: {status}\n{}",
                    self.logs()
                );
            }
            // Both listeners must be *ours*: a free port picked by one test process can be
            // taken by another's backend before switchyard binds it.
            let admin_ok = match probe.get(&health).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    r.text().await.is_ok_and(|b| b.contains("\"routes\""))
                }
                _ => false,
            };
            let http_ok = admin_ok
                && match probe
                    .get(format!("http://{}/", self.http_addr))
                    .header("host", "readiness-probe.invalid")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => r
                        .text()
                        .await
                        .is_ok_and(|b| b.contains("no route for this host")),
                    _ => false,
                };
            if http_ok {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "switchyard not ready after {READY_TIMEOUT:?} (admin {} /health 200: {admin_ok})\n{}",
                    self.admin_addr,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait up to 10 s for the exit (then SIGKILL), and hand back the directory
    /// (config, state, logs) for a later [`Proxy::start_in`].
    pub async fn stop(mut self) -> tempfile::TempDir {
        if self.exit.is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).await.is_none() {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Polls for the child's exit for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit {
                return Some(s);
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exit = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// stdout + stderr of the child so far.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "----- switchyard stdout -----\n{}\n----- switchyard stderr -----\n{}\n-----",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// GET through the proxy with the given Host header.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path} via proxy: {e:?}\n{}", self.logs()))
    }

    /// GET through the proxy; returns the status and the body parsed as the
    /// test backends' JSON echo (or `Value::Null` if it is not JSON).
    pub async fn get_json(&self, host: &str, path: &str) -> (u16, serde_json::Value) {
        let resp = self.get(host, path).await;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// GET through the proxy; returns the name of the backend that answered.
    /// Panics unless the answer is a 200 from a test backend.
    pub async fn backend_of(&self, host: &str, path: &str) -> String {
        let (status, json) = self.get_json(host, path).await;
        assert_eq!(
            status, 200,
            "GET {host}{path}: status {status}, body {json}"
        );
        json["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {host}{path}: not a backend echo: {json}"))
            .to_string()
    }

    /// `GET ADMIN/metrics` as text.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics status");
        resp.text().await.unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

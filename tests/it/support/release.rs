//! Helpers for the release-controller tests: running `releasectl`, calling the
//! admin API with or without the token, and managing a `switchyard` process
//! outside `Proxy` (restart on the same directory, a start expected to fail).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Proxy;

/// How long one `releasectl` invocation may take (a `--wait-drain` included).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables that would change what `releasectl` talks to.
const CTL_ENV: &[&str] = &[
    "RELEASECTL_TOKEN",
    "RELEASECTL_TOKEN_FILE",
    "RELEASECTL_ADMIN",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What a `releasectl` run did.
#[derive(Debug)]
pub struct CtlOutput {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CtlOutput {
    /// stdout parsed as JSON (for `--json` runs).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("releasectl stdout is not JSON ({e}):\n{self}"))
    }

    /// Panics with the whole run unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected releasectl exit code:\n{self}"
        );
        self
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "releasectl {} → exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Where the proxy's admin token lives (`[state] dir = "state"`, default token_file).
pub fn token_path(proxy: &Proxy) -> PathBuf {
    proxy.dir.path().join("state").join("admin.token")
}

/// The admin token the proxy created.
pub fn token(proxy: &Proxy) -> String {
    std::fs::read_to_string(token_path(proxy))
        .expect("read the admin token file")
        .trim()
        .to_string()
}

/// `releasectl --admin http://ADMIN --token-file <state>/admin.token ARGS…`.
pub async fn releasectl(proxy: &Proxy, args: &[&str]) -> CtlOutput {
    let token_file = token_path(proxy);
    run_releasectl(proxy.admin_addr, Some(&token_file), &[], args).await
}

/// Runs `releasectl` with `--admin http://ADMIN`, an optional `--token-file`,
/// extra environment variables and `args`; the environment that would steer it
/// elsewhere (proxies, RELEASECTL_*) is cleared first.
pub async fn run_releasectl(
    admin: SocketAddr,
    token_file: Option<&Path>,
    env: &[(&str, &str)],
    args: &[&str],
) -> CtlOutput {
    let mut all: Vec<String> = vec!["--admin".into(), format!("http://{admin}")];
    if let Some(t) = token_file {
        all.push("--token-file".into());
        all.push(t.display().to_string());
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_releasectl"));
    cmd.args(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for k in CTL_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = tokio::time::timeout(CTL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "releasectl {} ran longer than {CTL_TIMEOUT:?}",
                all.join(" ")
            )
        })
        .expect("spawn releasectl");
    CtlOutput {
        args: all,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        elapsed: start.elapsed(),
    }
}

/// One admin API call. `token`: the bearer token to send, or none at all.
/// Returns the status and the body as JSON (`Value::String` if it is not JSON).
pub async fn admin_call(
    proxy: &Proxy,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = proxy.client.request(method.clone(), proxy.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin API: {e:?}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// `GET /v1/status` with the right token; panics unless 200.
pub async fn status(proxy: &Proxy) -> Value {
    let t = token(proxy);
    let (code, body) = admin_call(proxy, reqwest::Method::GET, "/v1/status", Some(&t), None).await;
    assert_eq!(code, 200, "GET /v1/status: {body}");
    body
}

/// The status of one service (`status.services[service]`).
pub async fn service_status(proxy: &Proxy, service: &str) -> Value {
    let s = status(proxy).await;
    let svc = s["services"][service].clone();
    assert!(svc.is_object(), "no service {service} in status: {s}");
    svc
}

/// `POST /v1/switch` with the right token.
pub async fn switch_api(proxy: &Proxy, body: Value) -> (u16, Value) {
    let t = token(proxy);
    admin_call(
        proxy,
        reqwest::Method::POST,
        "/v1/switch",
        Some(&t),
        Some(body),
    )
    .await
}

/// A `switchyard run` child started outside `Proxy`: on an existing directory
/// (a restart) or one expected to refuse to start. Killed on drop if still
/// running.
pub struct Daemon {
    child: Child,
    exit: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Daemon {
    /// `switchyard run --config CONFIG` with `cwd` as working directory; output
    /// goes to `cwd/<tag>.stdout.log` and `cwd/<tag>.stderr.log`.
    pub fn spawn(config: &Path, cwd: &Path, tag: &str) -> Daemon {
        let stdout_path = cwd.join(format!("{tag}.stdout.log"));
        let stderr_path = cwd.join(format!("{tag}.stderr.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn switchyard");
        Daemon {
            child,
            exit: None,
            stdout_path,
            stderr_path,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "----- switchyard stdout -----\n{}\n----- switchyard stderr -----\n{}\n-----",
            std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            self.stderr()
        )
    }

    /// Polls for the child's exit for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exit.is_some() {
                return self.exit;
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exit = Some(s);
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready when `GET http://ADMIN/health` answers 200 and `http` accepts;
    /// panics (with the logs) if the child exits first or after `timeout`.
    pub async fn wait_ready(&mut self, admin: SocketAddr, http: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let health = format!("http://{admin}/health");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit = Some(status);
                panic!(
                    "switchyard exited before becoming ready: {status}\n{}",
                    self.logs()
                );
            }
            let admin_ok = matches!(
                probe.get(&health).send().await,
                Ok(r) if r.status() == reqwest::StatusCode::OK
            );
            if admin_ok && tokio::net::TcpStream::connect(http).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard not ready after {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
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

/// One HTTP/1.1 keep-alive connection, used for request after request: it
/// notices what a pooled client would hide (a connection closed or reset
/// under it).
pub struct KeepAlive {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One response on a [`KeepAlive`] connection.
pub struct KeepAliveResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The response said `Connection: close`.
    pub close: bool,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Result<KeepAlive, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    /// `GET path` with `Host: host`; 15 s at most.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<KeepAliveResponse, String> {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: keepalive-test\r\n\r\n");
        tokio::time::timeout(Duration::from_secs(15), async {
            use tokio::io::AsyncWriteExt;
            self.stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.read_response().await
        })
        .await
        .map_err(|_| "no response within 15 s".to_string())?
    }

    async fn fill(&mut self) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed by the proxy ({} bytes of a response read)",
                self.buf.len()
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> Result<KeepAliveResponse, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = false;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => content_length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
        let body = if chunked {
            let mut out = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_str = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_str:?}"))?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                out.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
            out
        } else {
            let len = content_length.unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        };
        Ok(KeepAliveResponse {
            status,
            body,
            close,
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

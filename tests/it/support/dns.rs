//! A real DNS server whose records a test changes: `pebble-challtestsrv` (Debian package
//! `pebble`) serving DNS on a free loopback port, its A records set through its management
//! API. It answers only the names a test added (no default address): any other name gets an
//! answer with no address. Killed on drop. A missing binary is a test failure, never a skip
//! (`scripts/test.sh` installs it).

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::free_ports;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DnsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Where it answers DNS (UDP and TCP): `[dns] resolvers = ["<addr>"]`.
    pub addr: SocketAddr,
    mgmt: SocketAddr,
    client: reqwest::Client,
}

fn log_file(dir: &std::path::Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("challtestsrv.log"))
        .expect("open log file")
}

/// `name` as a fully qualified name (with its final dot), as challtestsrv keys records.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl DnsServer {
    /// Starts the server; returns once its management API accepts (it starts the DNS
    /// listeners before that).
    pub async fn start() -> DnsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(2);
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
        let mgmt: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
        let child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .args(["-dns01", &addr.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &mgmt.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file(dir.path()))
            .stderr(log_file(dir.path()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `pebble-challtestsrv` (Debian package `pebble`; \
                     scripts/test.sh installs it): {e}"
                )
            });
        let mut server = DnsServer {
            child: Some(child),
            dir,
            addr,
            mgmt,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pebble-challtestsrv exited: {status}\n{}", server.logs());
            }
            if tokio::net::TcpStream::connect(mgmt).await.is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv not ready after {READY_TIMEOUT:?}\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://{}{path}", self.mgmt);
        let resp = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:?}\n{}", self.logs()));
        assert!(
            resp.status().is_success(),
            "POST {url} {body}: {}\n{}",
            resp.status(),
            self.logs()
        );
    }

    /// `name` answers with exactly these IPv4 addresses from now on.
    pub async fn set_a(&self, name: &str, ips: &[&str]) {
        self.clear_a(name).await;
        self.call("/add-a", json!({ "host": fqdn(name), "addresses": ips }))
            .await;
    }

    /// `name` answers with no address from now on.
    pub async fn clear_a(&self, name: &str) {
        self.call("/clear-a", json!({ "host": fqdn(name) })).await;
    }

    pub fn logs(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("challtestsrv.log")).unwrap_or_default();
        format!("----- pebble-challtestsrv -----\n{log}\n-----")
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

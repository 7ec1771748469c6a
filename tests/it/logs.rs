//! Logs written to something that is not a terminal (a pipe, a file, journald) carry no
//! ANSI escape codes.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{client, free_ports, poll_until};

/// `switchyard run` with stderr to a pipe (text logs, access log on, `NO_COLOR` unset so
/// that only the terminal check decides): its log lines are plain text.
#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_pipe_have_no_ansi_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let http: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"[listen]
http = "{http}"
admin = "{admin}"

[state]
dir = "state"

[log]
format = "text"
level = "info"
access = true

[[route]]
host = "web.test"
service = "web"

[service.web]
backends = ["{}"]
"#,
            crate::support::closed_addr()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("NO_COLOR")
        .env_remove("SWITCHYARD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    // Read the pipe as it fills, so the child never blocks on a full pipe.
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    });

    let c = client();
    let up = poll_until(Duration::from_secs(20), || async {
        let r = c.get(format!("http://{admin}/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // A routed request whose backend refuses: an access line and a warning.
    let answered = match up {
        Some(()) => c
            .get(format!("http://{http}/"))
            .header("host", "web.test")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        None => None,
    };

    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let exited = poll_until(Duration::from_secs(15), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();

    assert!(up.is_some(), "switchyard never became ready:\n{stderr}");
    assert_eq!(answered, Some(502), "{stderr}");
    assert!(
        exited.is_some(),
        "no exit within 15 s of SIGTERM:\n{stderr}"
    );
    assert!(
        stderr.contains("switchyard is running") && stderr.contains("INFO"),
        "the start was not logged in plain text:\n{stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "ANSI escape codes in logs written to a pipe:\n{}",
        stderr.escape_debug()
    );
}

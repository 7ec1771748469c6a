//! `releasectl` as a command line: a closed stdout, help, exit codes of the errors that
//! happen before (or instead of) an answer of the admin API. docs/releasectl.md.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::release::{run_releasectl, switch_api, token_path};
use crate::support::{closed_addr, Backend, Proxy, BASE};

/// Environment that would steer `releasectl` elsewhere (as in support/release.rs).
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

const TIMEOUT: Duration = Duration::from_secs(30);

fn web_config(blue: &Backend, green: &Backend) -> String {
    format!(
        r#"{BASE}
[[route]]
host = "web.test"
service = "web"

[service.web]
blue = ["{}"]
green = ["{}"]
"#,
        blue.addr, green.addr
    )
}

/// `releasectl --admin http://ADMIN --token-file FILE ARGS…` with a clean environment.
fn ctl(admin: SocketAddr, token_file: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_releasectl"));
    cmd.arg("--admin")
        .arg(format!("http://{admin}"))
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for k in CTL_ENV {
        cmd.env_remove(k);
    }
    cmd
}

/// `releasectl history | head -1` and the like: the reader closes stdout before
/// `releasectl` writes. It exits 0 and says nothing — no panic ("failed printing to
/// stdout"), no error message — as ripgrep does.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_quietly_with_0() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proxy::start(&web_config(&blue, &green)).await;
    for color in ["green", "blue", "green", "blue", "green", "blue"] {
        let (code, body) = switch_api(&proxy, json!({ "color": color })).await;
        assert_eq!(code, 200, "{body}");
    }
    let token_file = token_path(&proxy);

    // Deterministic: the read end is closed before releasectl has its answer to print.
    for args in [
        &["history"][..],
        &["--json", "history"][..],
        &["status"][..],
        &["--json", "status"][..],
        &["history", "--limit", "1000"][..],
    ] {
        let mut child = ctl(proxy.admin_addr, &token_file, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn releasectl");
        drop(child.stdout.take());
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("releasectl {args:?} ran longer than {TIMEOUT:?}"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.is_empty(),
            "releasectl {args:?} with stdout closed should say nothing, said:\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "releasectl {args:?} with stdout closed: {}\n{stderr}",
            out.status
        );
    }

    // As typed: a shell pipeline into `head -1` (whether releasectl's write comes before or
    // after head exits, the pipeline is quiet and 0).
    let script = r#"set -o pipefail; "$@" | head -n 1"#;
    for args in [&["history"][..], &["--json", "history"][..]] {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("bash")
            .arg(env!("CARGO_BIN_EXE_releasectl"))
            .arg("--admin")
            .arg(format!("http://{}", proxy.admin_addr))
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for k in CTL_ENV {
            cmd.env_remove(k);
        }
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .expect("the pipeline ended")
            .expect("spawn bash");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "releasectl {args:?} | head -n 1\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.is_empty(),
            "releasectl {args:?} | head -n 1: {stderr}"
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
    }
}

/// `releasectl VERB --help`: exit 0, on stdout, every flag of the verb and the globals.
#[tokio::test]
async fn every_verb_help_lists_its_flags() {
    const GLOBALS: &[&str] = &[
        "--admin",
        "RELEASECTL_ADMIN",
        "--token-file",
        "RELEASECTL_TOKEN_FILE",
        "--json",
    ];
    let verbs: &[(&str, &[&str])] = &[
        ("status", &[]),
        (
            "switch",
            &["<COLOR>", "--service", "--skip-smoke", "--wait-drain"],
        ),
        ("rollback", &["--service", "--wait-drain"]),
        ("smoke", &["<COLOR>", "--service"]),
        ("backends", &["<COLOR>", "<ADDR>", "--service", "--force"]),
        ("history", &["--limit"]),
        ("reload", &[]),
        (
            "canary",
            &[
                "<COLOR>",
                "--steps",
                "--interval",
                "--service",
                "--skip-smoke",
                "--detach",
            ],
        ),
        ("promote", &["--service"]),
        ("abort", &["--service"]),
        ("certs", &["--renew", "[HOST]"]),
    ];
    let admin: SocketAddr = closed_addr().parse().unwrap();
    let top = run_releasectl(admin, None, &[], &["--help"]).await;
    top.expect_code(0);
    for (verb, _) in verbs {
        assert!(top.stdout.contains(verb), "`--help` lists {verb}:\n{top}");
    }
    for (verb, flags) in verbs {
        let out = run_releasectl(admin, None, &[], &[verb, "--help"]).await;
        out.expect_code(0);
        for flag in flags.iter().chain(GLOBALS) {
            assert!(
                out.stdout.contains(flag),
                "`releasectl {verb} --help` should list {flag}:\n{out}"
            );
        }
        assert!(out.stderr.is_empty(), "{out}");
    }
}

/// Nothing listens at --admin: exit 3, the message names the address and the way to fix it.
#[tokio::test]
async fn an_unreachable_admin_api_is_exit_3_naming_the_address() {
    let admin: SocketAddr = closed_addr().parse().unwrap();
    let env = [("RELEASECTL_TOKEN", "some-token")];
    for args in [
        &["status"][..],
        &["--json", "history"][..],
        &["switch", "green"][..],
    ] {
        let out = run_releasectl(admin, None, &env, args).await;
        out.expect_code(3);
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("releasectl: cannot reach the admin API at ")
                && first.contains(&format!("http://{admin}"))
                && first.contains("--admin")
                && first.contains("RELEASECTL_ADMIN"),
            "the error names the address and the fix, on one line:\n{out}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(!out.stderr.contains("panicked"), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
}

/// Flags clap refuses are usage errors (exit 2) that name the flag, before any call.
#[tokio::test]
async fn bad_flags_are_exit_2() {
    let admin: SocketAddr = closed_addr().parse().unwrap();
    let env = [("RELEASECTL_TOKEN", "some-token")];
    for bad in ["0", "1001", "many", "-1", "", "2.5"] {
        let limit = format!("--limit={bad}");
        let out = run_releasectl(admin, None, &env, &["history", &limit]).await;
        out.expect_code(2);
        assert!(out.stderr.contains("--limit"), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    for (args, needle) in [
        (&["canary", "green", "--interval", "0"][..], "--interval"),
        (&["canary", "green", "--interval", "5d"][..], "--interval"),
        (&["canary", "green", "--steps", "5,x"][..], "--steps"),
        (&["switch", "purple"][..], "purple"),
        (&["backends", "green", "--service", "web"][..], "ADDR"),
        (&["no-such-verb"][..], "no-such-verb"),
        (&[][..], "Usage"),
    ] {
        let out = run_releasectl(admin, None, &env, args).await;
        out.expect_code(2);
        assert!(out.stderr.contains(needle), "{needle}:\n{out}");
    }
}

/// No RELEASECTL_TOKEN and no readable token file: exit 2, naming the file and the fix.
#[tokio::test]
async fn a_missing_token_file_is_exit_2_naming_it() {
    let admin: SocketAddr = closed_addr().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.token");
    let out = run_releasectl(admin, Some(&missing), &[], &["status"]).await;
    out.expect_code(2);
    assert!(
        out.stderr.contains(&missing.display().to_string())
            && out.stderr.contains("RELEASECTL_TOKEN"),
        "{out}"
    );
}

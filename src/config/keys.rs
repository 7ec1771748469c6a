//! Every key a config file may hold, checked before serde reads the file, so that all
//! unknown keys of a file are reported at once (serde stops at the first).

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike};

/// The keys allowed in the table at `pattern` (`*` stands for a name the user chooses);
/// `None` when any key is allowed (the names of services, the hosts of `[tls.files]`).
fn allowed(pattern: &str) -> Option<&'static [&'static str]> {
    Some(match pattern {
        "" => &[
            "listen", "server", "admin", "state", "tls", "log", "limits", "route", "service",
        ],
        "listen" => &["http", "https", "admin"],
        "server" => &["threads", "grace_s"],
        "admin" => &["token_file"],
        "limits" => &[
            "header_timeout_s",
            "body_timeout_s",
            "idle_timeout_s",
            "max_header_bytes",
            "max_headers",
            "max_body_bytes",
            "max_connections",
            "h2_max_concurrent_streams",
        ],
        "state" => &["dir"],
        "log" => &["format", "level", "access"],
        "tls" => &[
            "issuer",
            "acme_directory",
            "acme_email",
            "acme_root_ca",
            "challenge",
            "cert_dir",
            "renew_before_days",
            "retry_base_s",
            "redirect_http",
            "hsts",
            "files",
        ],
        "tls.files.*" => &["cert", "key"],
        "route" => &["host", "path_prefix", "service"],
        "service.*" => &[
            "backends",
            "blue",
            "green",
            "health_check",
            "smoke",
            "slo",
            "connect_timeout_ms",
            "read_timeout_ms",
            "drain_timeout_s",
            "sticky",
        ],
        "service.*.health_check" => &[
            "path",
            "interval_ms",
            "timeout_ms",
            "expect_status",
            "fall",
            "rise",
        ],
        "service.*.smoke" => &["path", "expect_status", "body_contains", "timeout_ms"],
        "service.*.slo" => &[
            "max_error_rate",
            "max_p95_ms",
            "max_p99_ms",
            "window_s",
            "min_requests",
            "watch_s",
        ],
        _ => return None,
    })
}

/// Tables whose keys are names chosen by the user.
fn named(pattern: &str) -> bool {
    matches!(pattern, "service" | "tls.files")
}

pub struct UnknownKey {
    pub span: Range<usize>,
    /// Dotted path, e.g. `service.api.bogus`.
    pub path: String,
    pub expected: &'static [&'static str],
}

/// The unknown keys of a file; empty when the file does not parse (serde reports that).
pub fn unknown_keys(text: &str) -> Vec<UnknownKey> {
    let Ok(doc) = ImDocument::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(doc.as_table(), "", "", &mut out);
    out
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

fn walk(t: &dyn TableLike, pattern: &str, path: &str, out: &mut Vec<UnknownKey>) {
    let allowed = allowed(pattern);
    for (k, item) in t.iter() {
        if let Some(list) = allowed {
            if !list.contains(&k) {
                let span = t
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .unwrap_or(0..0);
                out.push(UnknownKey {
                    span,
                    path: join(path, k),
                    expected: list,
                });
                continue;
            }
        }
        let child_pattern = join(pattern, if named(pattern) { "*" } else { k });
        let child_path = join(path, k);
        descend(item, &child_pattern, &child_path, out);
    }
}

fn descend(item: &Item, pattern: &str, path: &str, out: &mut Vec<UnknownKey>) {
    if let Some(t) = item.as_table_like() {
        walk(t, pattern, path, out);
    } else if let Some(aot) = item.as_array_of_tables() {
        for (i, t) in aot.iter().enumerate() {
            walk(t, pattern, &format!("{path}[{i}]"), out);
        }
    } else if let Some(arr) = item.as_array() {
        for (i, v) in arr.iter().enumerate() {
            if let Some(t) = v.as_inline_table() {
                walk(t, pattern, &format!("{path}[{i}]"), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_unknown_key_with_its_path() {
        let text = r#"
bogus = 1
[listen]
http = "127.0.0.1:1"
htp = "x"
[[route]]
host = "a"
service = "s"
colour = "blue"
[service.s]
blue = ["127.0.0.1:1"]
green = ["127.0.0.1:2"]
health_check = { path = "/", intervl_ms = 5 }
smoke = [{ path = "/", expect = 200 }]
"#;
        let found: Vec<String> = unknown_keys(text).into_iter().map(|k| k.path).collect();
        assert_eq!(
            found,
            vec![
                "bogus",
                "listen.htp",
                "route[0].colour",
                "service.s.health_check.intervl_ms",
                "service.s.smoke[0].expect"
            ]
        );
    }

    #[test]
    fn a_valid_file_has_none() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes/example.toml"))
                .unwrap();
        assert!(unknown_keys(&text).is_empty());
    }
}

//! Every key a config file may hold, checked before serde reads the file, so that all
//! unknown keys of a file are reported at once (serde stops at the first). The file is then
//! read once more with its unknown keys blanked out ([`blank_unknown`]), so that every other
//! mistake in it is reported too.

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike};

/// The keys allowed in the table at `pattern` (`*` stands for a name the user chooses);
/// `None` when any key is allowed (the names of services, the hosts of `[tls.files]`).
fn allowed(pattern: &str) -> Option<&'static [&'static str]> {
    Some(match pattern {
        "" => &[
            "listen", "server", "admin", "state", "tls", "log", "limits", "dns", "route", "service",
        ],
        "dns" => &["resolvers", "refresh_s"],
        "listen" => &[
            "http",
            "https",
            "admin",
            "proxy_protocol_from",
            "trusted_proxies",
        ],
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
        "state" => &[
            "dir",
            "store",
            "etcd_endpoints",
            "etcd_prefix",
            "etcd_lease_s",
            "etcd_ca",
            "etcd_cert",
            "etcd_key",
            "etcd_user",
            "etcd_password_file",
        ],
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
        "route" => &[
            "host",
            "path_prefix",
            "service",
            "security_headers",
            "response_headers",
            "request_headers",
            "rate_limit",
            "compress",
        ],
        "route.rate_limit" => &["per_client_per_s", "burst"],
        "route.compress" => &["min_bytes", "encodings"],
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
    matches!(
        pattern,
        "service" | "tls.files" | "route.response_headers" | "route.request_headers"
    )
}

pub struct UnknownKey {
    pub span: Range<usize>,
    /// Dotted path, e.g. `service.api.bogus`.
    pub path: String,
    pub expected: &'static [&'static str],
    /// What to blank to remove the key with its value: in a table, every line its
    /// `key = value` (or its `[section]`s) spans; in an inline table, `key = value` itself.
    blank: Vec<Range<usize>>,
    /// The key sits in an inline table (`{ … }`): its separating comma goes with it.
    inline: bool,
}

/// The unknown keys of a file; empty when the file does not parse (serde reports that).
pub fn unknown_keys(text: &str) -> Vec<UnknownKey> {
    let Ok(doc) = ImDocument::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(doc.as_table(), "", "", false, &mut out);
    out
}

/// `text` with every key of `unknown` (and its value) replaced by spaces; newlines stay, so
/// every byte offset and line of the rest is where it was in `text`. serde then reads what
/// remains and reports the file's other mistakes at their own lines.
pub fn blank_unknown(text: &str, unknown: &[UnknownKey]) -> String {
    let mut b = text.as_bytes().to_vec();
    let fill = |b: &mut Vec<u8>, r: Range<usize>| {
        for c in &mut b[r] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let blank_space = |c: u8| c == b' ' || c == b'\t';
    for k in unknown {
        if k.inline {
            // `{ a = 1, bogus = 2 }`: the comma before or after goes too, so what remains
            // is still an inline table (TOML 1.0 allows no trailing comma there).
            let Some(r) = k.blank.first() else { continue };
            let (mut start, mut end) = (r.start.min(b.len()), r.end.min(b.len()));
            let mut j = end;
            while j < b.len() && blank_space(b[j]) {
                j += 1;
            }
            if j < b.len() && b[j] == b',' {
                end = j + 1;
            } else {
                let mut i = start;
                while i > 0 && blank_space(b[i - 1]) {
                    i -= 1;
                }
                if i > 0 && b[i - 1] == b',' {
                    start = i - 1;
                }
            }
            fill(&mut b, start..end);
        } else {
            // Whole lines: in a table, a `key = value` or a `[header]` starts its line and
            // only a comment may follow it.
            for r in &k.blank {
                let start = b[..r.start.min(b.len())]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let end = b[r.end.min(b.len())..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |i| r.end + i);
                fill(&mut b, start..end);
            }
        }
    }
    // Only ASCII bytes were written, over whole multi-byte characters at worst.
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The spans an item occupies: each value, and each table's `[header]` through its last
/// `key = value`; tables made implicitly (by `[a.b]` or `a.b = 1`) by their children.
fn spans(item: &Item, out: &mut Vec<Range<usize>>) {
    let table = |t: &toml_edit::Table, out: &mut Vec<Range<usize>>| {
        if !t.is_implicit() && !t.is_dotted() {
            out.extend(t.span());
        }
        for (_, child) in t.iter() {
            spans(child, out);
        }
    };
    match item {
        Item::None => {}
        Item::Value(v) => match (v.span(), v.as_inline_table()) {
            (Some(s), _) => out.push(s),
            (None, Some(t)) => {
                for (_, child) in t.iter() {
                    out.extend(child.span());
                }
            }
            (None, None) => {}
        },
        Item::Table(t) => table(t, out),
        Item::ArrayOfTables(a) => {
            for t in a.iter() {
                table(t, out);
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// `inline`: `t` is an inline table (`{ … }`).
fn walk(t: &dyn TableLike, pattern: &str, path: &str, inline: bool, out: &mut Vec<UnknownKey>) {
    let allowed = allowed(pattern);
    for (k, item) in t.iter() {
        if let Some(list) = allowed {
            if !list.contains(&k) {
                let span = t
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .unwrap_or(0..0);
                let mut blank = Vec::new();
                spans(item, &mut blank);
                if inline {
                    // From the key to the end of its value, on the inline table's line.
                    let end = blank.iter().map(|r| r.end).max().unwrap_or(span.end);
                    let whole = span.start..end.max(span.end);
                    blank.clear();
                    blank.push(whole);
                } else if !span.is_empty() {
                    blank.push(span.clone());
                }
                out.push(UnknownKey {
                    span,
                    path: join(path, k),
                    expected: list,
                    blank,
                    inline,
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
    if let Some(t) = item.as_table() {
        walk(t, pattern, path, false, out);
    } else if let Some(t) = item.as_table_like() {
        walk(t, pattern, path, true, out);
    } else if let Some(aot) = item.as_array_of_tables() {
        for (i, t) in aot.iter().enumerate() {
            walk(t, pattern, &format!("{path}[{i}]"), false, out);
        }
    } else if let Some(arr) = item.as_array() {
        for (i, v) in arr.iter().enumerate() {
            if let Some(t) = v.as_inline_table() {
                walk(t, pattern, &format!("{path}[{i}]"), true, out);
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

    /// Blanks the unknown keys of `text`; the rest must parse, keep its lines, and hold
    /// exactly `known` at the top level.
    fn blanked(text: &str) -> String {
        let out = blank_unknown(text, &unknown_keys(text));
        assert_eq!(out.len(), text.len());
        assert_eq!(out.lines().count(), text.lines().count());
        assert!(
            unknown_keys(&out).is_empty(),
            "left unknown keys in:\n{out}"
        );
        out
    }

    #[test]
    fn blanking_removes_unknown_keys_and_keeps_the_rest_in_place() {
        let text = r#"
bogus = 1
multi = [
  1,
  2,
]
[listen]
http = "127.0.0.1:1"  # kept
htp = "x" # comment too
[[route]]
host = "a"
service = "s"
colour = "blue"
[mystery]
a = 1
b = { c = 2 }
[mystery.deeper]
d = 3
[[also_unknown]]
x = 1
[service.s]
blue = ["127.0.0.1:1"]
green = ["127.0.0.1:2"]
health_check = { intervl_ms = 5, path = "/", timeout = 1 }
smoke = [{ path = "/", expect = 200 }, { nope = 1 }, { a = 1, path = "/x", b = 2 }]
slo.bogus = 1
slo.max_error_rate = 0.5
[[also_unknown]]
y = "ü"
[log]
level = "info"
"#;
        let out = blanked(text);
        let v: toml::Value = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let top: Vec<&String> = v.as_table().unwrap().keys().collect();
        assert_eq!(top, ["listen", "log", "route", "service"], "{out}");
        assert_eq!(v["listen"]["http"].as_str(), Some("127.0.0.1:1"));
        assert_eq!(v["route"][0]["service"].as_str(), Some("s"));
        assert_eq!(v["log"]["level"].as_str(), Some("info"));
        let s = &v["service"]["s"];
        assert_eq!(s["health_check"]["path"].as_str(), Some("/"));
        assert_eq!(s["smoke"][0]["path"].as_str(), Some("/"));
        assert_eq!(s["smoke"][2]["path"].as_str(), Some("/x"));
        assert_eq!(s["slo"]["max_error_rate"].as_float(), Some(0.5));
        // What is kept stays where it was: blanking only writes spaces.
        for (i, (a, b)) in text.bytes().zip(out.bytes()).enumerate() {
            assert!(a == b || b == b' ', "byte {i}: {a} became {b}");
        }
    }

    #[test]
    fn a_valid_file_has_none() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes/example.toml"))
                .unwrap();
        assert!(unknown_keys(&text).is_empty());
    }
}

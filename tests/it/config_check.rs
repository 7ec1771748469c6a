//! `switchyard check --config PATH`: exit 0 for valid configs; exit 2 and every
//! error with FILE:LINE and the key for invalid ones.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A valid config. Each negative test changes one thing in it.
const VALID: &str = r#"[listen]
http = "127.0.0.1:18080"
admin = "127.0.0.1:19901"

[state]
dir = "state"

[[route]]
host = "app.example.com"
service = "app"

[[route]]
host = "api.example.com"
path_prefix = "/api"
service = "api"

[service.app]
blue = ["127.0.0.1:3001"]
green = ["127.0.0.1:3002"]

[service.api]
backends = ["127.0.0.1:4001"]
health_check = { path = "/health", interval_ms = 2000 }
"#;

struct Checked {
    code: Option<i32>,
    output: String,
}

fn check(path: &Path) -> Checked {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run switchyard check");
    Checked {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Writes `text` as `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// 1-based line of the `nth` (0-based) line containing `needle`.
fn line_of_nth(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} (#{nth}) not in config:\n{text}"))
        .0
        + 1
}

fn line_of(text: &str, needle: &str) -> usize {
    line_of_nth(text, needle, 0)
}

/// Checks a single bad file and asserts exit 2, `FILE:LINE` for one of `lines`
/// and every substring of `mentions`.
fn assert_rejected(text: &str, lines: &[usize], mentions: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", text);
    let c = check(&path);
    assert_eq!(
        c.code,
        Some(2),
        "check of a bad config should exit 2; output:\n{}\nconfig:\n{text}",
        c.output
    );
    assert!(
        lines.iter().any(|l| points_at(&c.output, "bad.toml", *l)),
        "output should point at bad.toml:{lines:?}; output:\n{}\nconfig:\n{}",
        c.output,
        numbered(text)
    );
    for m in mentions {
        assert!(
            c.output.contains(m),
            "output should mention {m:?}; output:\n{}\nconfig:\n{}",
            c.output,
            numbered(text)
        );
    }
    c.output
}

/// `output` contains `FILE:LINE` not followed by another digit (so line 1 does
/// not match `FILE:12`).
fn points_at(output: &str, file: &str, line: usize) -> bool {
    let needle = format!("{file}:{line}");
    output.match_indices(&needle).any(|(i, _)| {
        !output[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:3} {l}\n", i + 1))
        .collect()
}

#[test]
fn valid_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ok.toml", VALID);
    let c = check(&path);
    assert_eq!(c.code, Some(0), "valid config rejected:\n{}", c.output);
}

#[test]
fn shipped_route_files_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["routes/demo.toml", "routes/example.toml"] {
        let p = root.join(f);
        assert!(p.exists(), "{f} is missing");
        let c = check(&p);
        assert_eq!(c.code, Some(0), "{f} rejected:\n{}", c.output);
    }
}

#[test]
fn unknown_key_is_rejected() {
    let text = VALID.replace(
        "backends = [\"127.0.0.1:4001\"]\n",
        "backends = [\"127.0.0.1:4001\"]\nbogus = 1\n",
    );
    let line = line_of(&text, "bogus = 1");
    assert_rejected(&text, &[line], &["bogus"]);
}

#[test]
fn unknown_top_level_key_is_rejected() {
    let text = VALID.replace("[state]\n", "[state]\nmystery_setting = true\n");
    let line = line_of(&text, "mystery_setting");
    assert_rejected(&text, &[line], &["mystery_setting"]);
}

#[test]
fn syntax_error_is_rejected() {
    let text = VALID.replace("[service.api]", "[service.api");
    let line = line_of(&text, "[service.api");
    assert_rejected(&text, &[line], &[]);
}

#[test]
fn route_to_undefined_service_is_rejected() {
    let text = format!("{VALID}\n[[route]]\nhost = \"nope.example.com\"\nservice = \"nope\"\n");
    let line = line_of(&text, "service = \"nope\"");
    assert_rejected(&text, &[line], &["service", "nope"]);
}

#[test]
fn same_host_routed_twice_is_rejected() {
    let text = format!("{VALID}\n[[route]]\nhost = \"app.example.com\"\nservice = \"api\"\n");
    let line = line_of_nth(&text, "host = \"app.example.com\"", 1);
    assert_rejected(&text, &[line], &["host", "app.example.com"]);
}

#[test]
fn same_host_with_different_path_prefix_is_fine() {
    let text = format!(
        "{VALID}\n[[route]]\nhost = \"app.example.com\"\npath_prefix = \"/other\"\nservice = \"api\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let c = check(&write(dir.path(), "ok.toml", &text));
    assert_eq!(
        c.code,
        Some(0),
        "same host with another path_prefix should be valid:\n{}",
        c.output
    );
}

#[test]
fn unparsable_backend_address_is_rejected() {
    let text = VALID.replace("\"127.0.0.1:4001\"", "\"127.0.0.1:notaport\"");
    let line = line_of(&text, "notaport");
    assert_rejected(&text, &[line], &["backends"]);
}

#[test]
fn unparsable_listen_address_is_rejected() {
    let text = VALID.replace("http = \"127.0.0.1:18080\"", "http = \"not an address\"");
    let line = line_of(&text, "not an address");
    assert_rejected(&text, &[line], &["http"]);
}

#[test]
fn service_with_one_color_is_rejected() {
    let text = VALID.replace("green = [\"127.0.0.1:3002\"]\n", "");
    // No `green` key to point at: the table header or the `blue` key will do.
    let lines = [line_of(&text, "[service.app]"), line_of(&text, "blue = [")];
    assert_rejected(&text, &lines, &["app", "green"]);
}

#[test]
fn color_with_no_backends_is_rejected() {
    let text = VALID.replace("blue = [\"127.0.0.1:3001\"]", "blue = []");
    let line = line_of(&text, "blue = []");
    assert_rejected(&text, &[line], &["blue"]);
}

#[test]
fn every_error_is_reported() {
    // Two independent semantic mistakes: both must be reported.
    let text = format!("{VALID}\n[[route]]\nhost = \"nope.example.com\"\nservice = \"nope\"\n")
        .replace("blue = [\"127.0.0.1:3001\"]", "blue = []");
    let l1 = line_of(&text, "service = \"nope\"");
    let l2 = line_of(&text, "blue = []");
    let out = assert_rejected(&text, &[l1], &["nope", "blue"]);
    assert!(
        points_at(&out, "bad.toml", l2),
        "second error (bad.toml:{l2}, blue = []) not reported:\n{out}"
    );
}

fn dir_head() -> &'static str {
    r#"[listen]
http = "127.0.0.1:18080"
admin = "127.0.0.1:19901"

[state]
dir = "state"
"#
}

#[test]
fn valid_directory_passes() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.toml",
        &format!(
            "{}\n[[route]]\nhost = \"a.example.com\"\nservice = \"a\"\n\n[service.a]\nbackends = [\"127.0.0.1:3001\"]\n",
            dir_head()
        ),
    );
    write(
        dir.path(),
        "b.toml",
        "[[route]]\nhost = \"b.example.com\"\nservice = \"b\"\n\n[service.b]\nblue = [\"127.0.0.1:3002\"]\ngreen = [\"127.0.0.1:3003\"]\n",
    );
    // Not a *.toml file: ignored.
    write(dir.path(), "README.txt", "not toml [");
    let c = check(dir.path());
    assert_eq!(c.code, Some(0), "valid directory rejected:\n{}", c.output);
}

#[test]
fn directory_with_duplicate_service_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!(
        "{}\n[[route]]\nhost = \"dup.example.com\"\nservice = \"dup\"\n\n[service.dup]\nbackends = [\"127.0.0.1:3001\"]\n",
        dir_head()
    );
    let b = "# second definition\n\n[service.dup]\nbackends = [\"127.0.0.1:3002\"]\n";
    write(dir.path(), "a.toml", &a);
    write(dir.path(), "b.toml", b);
    let c = check(dir.path());
    assert_eq!(
        c.code,
        Some(2),
        "duplicate service across files should exit 2:\n{}",
        c.output
    );
    assert!(
        c.output.contains("dup"),
        "output should name the duplicate:\n{}",
        c.output
    );
    let la = line_of(&a, "[service.dup]");
    let lb = line_of(b, "[service.dup]");
    assert!(
        points_at(&c.output, "a.toml", la) || points_at(&c.output, "b.toml", lb),
        "output should point at a.toml:{la} or b.toml:{lb}:\n{}",
        c.output
    );
}

#[test]
fn directory_with_duplicate_route_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!(
        "{}\n[[route]]\nhost = \"same.example.com\"\nservice = \"a\"\n\n[service.a]\nbackends = [\"127.0.0.1:3001\"]\n",
        dir_head()
    );
    let b = "[[route]]\nhost = \"same.example.com\"\nservice = \"b\"\n\n[service.b]\nbackends = [\"127.0.0.1:3002\"]\n";
    write(dir.path(), "a.toml", &a);
    write(dir.path(), "b.toml", b);
    let c = check(dir.path());
    assert_eq!(
        c.code,
        Some(2),
        "the same host in two files should exit 2:\n{}",
        c.output
    );
    assert!(c.output.contains("same.example.com"), "{}", c.output);
    let la = line_of(&a, "host = \"same.example.com\"");
    let lb = line_of(b, "host = \"same.example.com\"");
    assert!(
        points_at(&c.output, "a.toml", la) || points_at(&c.output, "b.toml", lb),
        "output should point at a.toml:{la} or b.toml:{lb}:\n{}",
        c.output
    );
}

/// The output line pointing at `file:line`, if any.
fn line_at<'a>(output: &'a str, file: &str, line: usize) -> Option<&'a str> {
    output.lines().find(|l| points_at(l, file, line))
}

#[test]
fn unknown_keys_do_not_hide_other_errors() {
    // An unknown key (three kinds: a key, a key in an inline table, a whole section), a
    // route to an undefined service and an unparsable address, all in one file: every one
    // is reported, each with its line and key.
    let text = format!("{VALID}\n[[route]]\nhost = \"nope.example.com\"\nservice = \"nope\"\n\n[mystery]\nsetting = 1\n")
        .replace(
            "backends = [\"127.0.0.1:4001\"]\n",
            "backends = [\"127.0.0.1:4001\"]\nbogus = 1\n",
        )
        .replace("interval_ms = 2000 }", "interval_ms = 2000, intervl = 5 }")
        .replace("green = [\"127.0.0.1:3002\"]", "green = [\"127.0.0.1:notaport\"]");
    let out = assert_rejected(&text, &[line_of(&text, "bogus = 1")], &[]);
    let expect = [
        (line_of(&text, "bogus = 1"), "service.api.bogus"),
        (
            line_of(&text, "intervl = 5"),
            "service.api.health_check.intervl",
        ),
        (line_of(&text, "[mystery]"), "mystery"),
        (line_of(&text, "service = \"nope\""), "nope"),
        (line_of(&text, "notaport"), "service.app.green"),
    ];
    for (line, key) in expect {
        let l = line_at(&out, "bad.toml", line).unwrap_or_else(|| {
            panic!(
                "no error at bad.toml:{line} ({key}); output:\n{out}\nconfig:\n{}",
                numbered(&text)
            )
        });
        assert!(
            l.contains(key),
            "bad.toml:{line} should name {key}: {l}\n{out}"
        );
    }
    let errors = out
        .lines()
        .filter(|l| l.contains("bad.toml:") && l.contains(": key `"));
    assert_eq!(errors.count(), 5, "{out}");
}

#[test]
fn unknown_keys_in_one_file_do_not_hide_errors_in_others() {
    // a.toml has unknown keys and a bad address; b.toml routes to a.toml's service (fine)
    // and to an undefined one (an error).
    let dir = tempfile::tempdir().unwrap();
    let a = format!(
        "{}\nlisten_typo = 1\n\n[service.a]\nbackends = [\"127.0.0.1:3001\"]\ncolour = \"blue\"\n\n[service.a2]\nbackends = [\"127.0.0.1\"]\n",
        dir_head()
    );
    let b = "[[route]]\nhost = \"a.example.com\"\nservice = \"a\"\n\n[[route]]\nhost = \"b.example.com\"\nservice = \"missing\"\n";
    write(dir.path(), "a.toml", &a);
    write(dir.path(), "b.toml", b);
    let c = check(dir.path());
    assert_eq!(c.code, Some(2), "{}", c.output);
    for (file, line, key) in [
        ("a.toml", line_of(&a, "listen_typo"), "listen_typo"),
        ("a.toml", line_of(&a, "colour"), "service.a.colour"),
        (
            "a.toml",
            line_of_nth(&a, "backends", 1),
            "service.a2.backends",
        ),
        ("b.toml", line_of(b, "\"missing\""), "missing"),
    ] {
        let l = line_at(&c.output, file, line)
            .unwrap_or_else(|| panic!("no error at {file}:{line} ({key}):\n{}", c.output));
        assert!(l.contains(key), "{file}:{line} should name {key}: {l}");
    }
    assert!(
        !c.output.contains("service `a`"),
        "service a is defined in a.toml:\n{}",
        c.output
    );
}

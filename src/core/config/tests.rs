use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_str("test.toml", text, Path::new("/tmp"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    load(text).expect_err("config should be refused").0
}

const BASE: &str = r#"
[listen]
http = "127.0.0.1:8080"

[[route]]
host = "Example.com"
service = "web"

[service.web]
blue = ["127.0.0.1:3001"]
green = ["127.0.0.1:3002"]
"#;

#[test]
fn a_valid_config_loads_with_defaults() {
    let c = load(BASE).unwrap();
    assert_eq!(c.listen.admin, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.routes[0].host, "example.com");
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.state_dir, Path::new("/tmp/state"));
    assert_eq!(c.token_file, Path::new("/tmp/state/admin.token"));
    let web = c.service("web").unwrap();
    assert!(web.releasable());
    assert_eq!(web.connect_timeout, Duration::from_secs(3));
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = format!("{BASE}bogus = 1\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 12);
    assert_eq!(e[0].key, "service.web.bogus");
    assert!(e[0].to_string().starts_with("test.toml:12:"), "{}", e[0]);
}

#[test]
fn every_semantic_error_is_reported() {
    let text = r#"
[listen]
http = "127.0.0.1:8080"

[[route]]
host = "a.com"
service = "missing"

[[route]]
host = "b.com"
service = "one"

[[route]]
host = "B.com"
service = "one"

[service.one]
blue = ["127.0.0.1:1"]

[service.empty]
blue = []
green = ["not-an-address"]
"#;
    let e = errors(text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"route[0].service"), "{keys:?}");
    assert!(keys.contains(&"service.one.blue"), "{keys:?}");
    assert!(keys.contains(&"service.empty.blue"), "{keys:?}");
    assert!(keys.contains(&"service.empty.green"), "{keys:?}");
    let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
    assert!(lines.contains(&7), "{lines:?}");
    assert!(lines.contains(&18), "{lines:?}");
}

#[test]
fn duplicate_route_is_refused() {
    let text = format!("{BASE}\n[[route]]\nhost = \"example.com\"\nservice = \"web\"\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].message.contains("already routed at test.toml:6"),
        "{}",
        e[0]
    );
}

#[test]
fn wildcard_and_prefix_rules() {
    let text = format!(
        "{BASE}\n[[route]]\nhost = \"*.example.com\"\npath_prefix = \"api\"\nservice = \"web\"\n"
    );
    let e = errors(&text);
    assert_eq!(e[0].key, "route[1].path_prefix");
    let text = format!("{BASE}\n[[route]]\nhost = \"a.*.com\"\nservice = \"web\"\n");
    assert_eq!(errors(&text)[0].key, "route[1].host");
}

#[test]
fn single_pool_service_cannot_have_colors_features() {
    let text = r#"
[[route]]
host = "a.com"
service = "g"

[service.g]
backends = ["127.0.0.1:3000"]
smoke = [{ path = "/" }]
"#;
    assert_eq!(errors(text)[0].key, "service.g");
}

#[test]
fn syntax_error_has_a_line() {
    let e = errors("[listen\nhttp = 1\n");
    assert_eq!(e[0].line, 1);
}

#[test]
fn listeners_on_one_address_and_http01_without_http_are_refused() {
    let e = errors("[listen]\nhttp = \"127.0.0.1:9901\"\n");
    assert!(e[0].message.contains("same address"), "{}", e[0]);
    let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\nissuer = \"acme\"\n";
    let e = errors(text);
    assert_eq!(e[0].key, "tls.challenge", "{e:?}");
}

#[test]
fn trailing_dot_hosts_are_normalised() {
    let text = BASE.replace("Example.com", "Example.com.");
    assert_eq!(load(&text).unwrap().routes[0].host, "example.com");
}

#[test]
fn etcd_tls_keys_must_match_the_endpoints() {
    let with_state = |state: &str| format!("[state]\nstore = \"etcd\"\n{state}\n{BASE}");
    // https:// without a CA to check etcd's certificate.
    let e = errors(&with_state(r#"etcd_endpoints = ["https://10.0.0.1:2379"]"#));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].key, "state.etcd_endpoints");
    assert!(e[0].to_string().contains("etcd_ca"), "{}", e[0]);
    // A CA with http:// endpoints would silently not be used.
    let e = errors(&with_state(
        "etcd_endpoints = [\"http://10.0.0.1:2379\"]\netcd_ca = \"ca.pem\"",
    ));
    assert_eq!(e[0].key, "state.etcd_ca");
    assert_eq!(e[0].line, 4);
    // Mixed schemes.
    let e = errors(&with_state(
        "etcd_endpoints = [\"http://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\netcd_ca = \"ca.pem\"",
    ));
    assert!(e.iter().any(|e| e.key == "state.etcd_endpoints"), "{e:?}");
    // A client certificate without a CA.
    let e = errors(&with_state(
        "etcd_endpoints = [\"https://10.0.0.1:2379\"]\netcd_cert = \"c.pem\"\netcd_key = \"c.key\"",
    ));
    assert!(e.iter().any(|e| e.key == "state.etcd_cert"), "{e:?}");
    // The whole set loads, with paths relative to the config file.
    let c = load(&with_state(
        "etcd_endpoints = [\"https://10.0.0.1:2379\"]\netcd_ca = \"ca.pem\"\netcd_cert = \"c.pem\"\netcd_key = \"c.key\"",
    ))
    .unwrap();
    match &c.store {
        StoreConfig::Etcd(e) => {
            assert_eq!(e.ca.as_deref(), Some(Path::new("/tmp/ca.pem")));
            assert_eq!(e.key.as_deref(), Some(Path::new("/tmp/c.key")));
        }
        other => panic!("{other:?}"),
    }
}

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

#[test]
fn backend_names_stay_names_and_nothing_is_looked_up() {
    // `.invalid` never resolves (RFC 2606): a lookup here would fail the load.
    let text = BASE
        .replace("127.0.0.1:3002", "API-Green.invalid:8000")
        .replace(
            "\"127.0.0.1:3001\"",
            "\"127.0.0.1:3001\", \"api-blue.invalid:8000\"",
        );
    let c = load(&text).unwrap();
    let Pools::Colors { blue, green } = &c.service("web").unwrap().pools else {
        panic!("web is releasable");
    };
    assert_eq!(
        blue[0],
        BackendSpec::Addr("127.0.0.1:3001".parse().unwrap())
    );
    assert_eq!(blue[1].to_string(), "api-blue.invalid:8000");
    assert_eq!(green[0].to_string(), "api-green.invalid:8000");
    let names = c.backend_names();
    assert_eq!(names.len(), 2);
    assert_eq!(
        names[green[0].name().unwrap()],
        vec!["service.web.green".to_string()]
    );
    assert_eq!(c.dns, DnsConfig::default());
    assert_eq!(c.dns.refresh, Duration::from_secs(5));
}

#[test]
fn a_name_listed_twice_and_a_malformed_one_are_refused() {
    let text = BASE.replace(
        "\"127.0.0.1:3002\"",
        "\"api.test:80\", \"API.test:80\", \"api test:80\"",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].message.contains("api.test:80 is listed twice"),
        "{}",
        e[0]
    );
    assert!(
        e[1].message.contains("expected ip:port or name:port"),
        "{}",
        e[1]
    );
    assert!(e.iter().all(|e| e.key == "service.web.green"), "{e:?}");
}

#[test]
fn dns_section_is_validated() {
    let ok =
        format!("{BASE}\n[dns]\nresolvers = [\"127.0.0.11\", \"127.0.0.1:5353\"]\nrefresh_s = 2\n");
    let c = load(&ok).unwrap();
    assert_eq!(
        c.dns.resolvers,
        vec![
            "127.0.0.11:53".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        ]
    );
    assert_eq!(c.dns.refresh, Duration::from_secs(2));

    let bad = format!(
        "{BASE}\n[dns]\nresolvers = [\"dns.example\", \"127.0.0.11\", \"127.0.0.11:53\"]\nrefresh_s = 0\nttl = 3\n"
    );
    let e = errors(&bad);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["dns.resolvers", "dns.resolvers", "dns.refresh_s", "dns.ttl"],
        "{e:?}"
    );
    assert!(e[0].message.contains("cannot be a name"), "{}", e[0]);
    assert!(e[1].message.contains("listed twice"), "{}", e[1]);
    assert!(e[2].message.contains("between 1 and 86400"), "{}", e[2]);
    assert!(e[3].message.contains("resolvers, refresh_s"), "{}", e[3]);
}

#[test]
fn a_listen_name_goes_to_the_loaders_lookup() {
    let text = BASE.replace("127.0.0.1:8080", "edge.internal:8080");
    // Text that came from no file has no lookup: addresses only.
    let e = errors(&text);
    assert_eq!(e[0].key, "listen.http", "{e:?}");
    let sources = vec![(PathBuf::from("test.toml"), text.clone())];
    let lookup = |s: &str| -> Result<SocketAddr, String> {
        assert_eq!(s, "edge.internal:8080");
        Ok("10.1.2.3:8080".parse().unwrap())
    };
    let c =
        Config::from_sources(Path::new("test.toml"), Path::new("/tmp"), &sources, &lookup).unwrap();
    assert_eq!(c.listen.http, Some("10.1.2.3:8080".parse().unwrap()));
}

const MIDDLEWARES: &str = r#"
[listen]
http = "127.0.0.1:8080"
proxy_protocol_from = ["10.0.0.0/8", "192.0.2.7"]
trusted_proxies = ["2001:db8::/32"]

[[route]]
host = "app.example.com"
service = "web"
security_headers = true
response_headers = { "Content-Security-Policy" = "default-src 'self'", "X-Powered-By" = "" }
request_headers = { "X-Env" = "prod" }
rate_limit = { per_client_per_s = 50, burst = 100 }
compress = true

[[route]]
host = "api.example.com"
service = "web"
rate_limit = { per_client_per_s = 0.5 }
compress = { min_bytes = 256, encodings = ["gzip", "br"] }

[[route]]
host = "plain.example.com"
service = "web"
compress = false

[service.web]
backends = ["127.0.0.1:3001"]
"#;

#[test]
fn middleware_keys_load_parsed() {
    let c = load(MIDDLEWARES).unwrap();
    assert!(c
        .listen
        .proxy_protocol_from
        .contains("10.9.8.7".parse().unwrap()));
    assert!(c
        .listen
        .proxy_protocol_from
        .contains("192.0.2.7".parse().unwrap()));
    assert!(!c
        .listen
        .proxy_protocol_from
        .contains("192.0.2.8".parse().unwrap()));
    assert!(c
        .listen
        .trusted_proxies
        .contains("2001:db8::1".parse().unwrap()));
    let m = &c.routes[0].middlewares;
    assert!(m.security_headers);
    // Sorted by name; names lower-case, an empty value removes.
    assert_eq!(m.response_headers.len(), 2);
    assert_eq!(m.response_headers[0].0.as_str(), "content-security-policy");
    assert_eq!(
        m.response_headers[0].1.as_ref().unwrap(),
        "default-src 'self'"
    );
    assert_eq!(m.response_headers[1].0.as_str(), "x-powered-by");
    assert!(m.response_headers[1].1.is_none());
    assert_eq!(m.request_headers[0].0.as_str(), "x-env");
    assert_eq!(
        m.rate_limit,
        Some(RateLimit {
            per_client_per_s: 50.0,
            burst: 100
        })
    );
    let compress = m.compress.as_ref().unwrap();
    assert_eq!(compress.min_bytes, DEFAULT_COMPRESS_MIN_BYTES);
    assert_eq!(compress.encodings, Encoding::ALL);

    let api = &c.routes[1].middlewares;
    assert_eq!(api.rate_limit.unwrap().burst, 1, "Traefik's default burst");
    assert_eq!(api.rate_limit.unwrap().per_client_per_s, 0.5);
    let compress = api.compress.as_ref().unwrap();
    assert_eq!(compress.min_bytes, 256);
    assert_eq!(compress.encodings, [Encoding::Gzip, Encoding::Brotli]);
    assert!(c.routes[2].middlewares.is_empty());
}

/// Line of the first line of `text` holding `needle` (1-based).
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn bad_middleware_values_name_their_line_and_key() {
    let text = r#"
[listen]
http = "127.0.0.1:8080"
proxy_protocol_from = ["10.0.0.0/33"]
trusted_proxies = ["proxy.internal"]

[[route]]
host = "a.example.com"
service = "web"
response_headers = { "Bad Name" = "x", "Content-Length" = "5", "X-Ok" = "a\u0001b" }
request_headers = { "X-Forwarded-For" = "1.2.3.4", "x-env" = "a", "X-Env" = "b" }
rate_limit = { per_client_per_s = 0, burst = 0 }
compress = { encodings = ["gzip", "deflate", "gzip"] }

[service.web]
backends = ["127.0.0.1:3001"]
"#;
    let e = errors(text);
    let find = |key: &str| {
        e.iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no error for {key}: {e:#?}"))
    };
    assert_eq!(
        find("listen.proxy_protocol_from").line,
        line_with(text, "proxy_protocol_from")
    );
    assert_eq!(
        find("listen.trusted_proxies").line,
        line_with(text, "trusted_proxies")
    );
    let rh = line_with(text, "response_headers");
    assert_eq!(find("route[0].response_headers.Bad Name").line, rh);
    assert!(find("route[0].response_headers.Content-Length")
        .message
        .contains("set by the proxy"));
    assert!(find("route[0].response_headers.X-Ok")
        .message
        .contains("not a valid header value"));
    let qh = line_with(text, "request_headers");
    assert_eq!(find("route[0].request_headers.X-Forwarded-For").line, qh);
    assert!(e
        .iter()
        .any(|e| e.key.starts_with("route[0].request_headers.") && e.message.contains("twice")));
    let rl = line_with(text, "rate_limit");
    assert_eq!(find("route[0].rate_limit.per_client_per_s").line, rl);
    assert_eq!(find("route[0].rate_limit.burst").line, rl);
    let cl = line_with(text, "compress");
    let compress: Vec<_> = e
        .iter()
        .filter(|e| e.key == "route[0].compress.encodings")
        .collect();
    assert_eq!(compress.len(), 2, "{compress:#?}");
    assert!(compress.iter().all(|e| e.line == cl));
}

#[test]
fn unknown_middleware_keys_are_refused() {
    let text = format!(
        "{BASE}\n[[route]]\nhost = \"b.com\"\nservice = \"web\"\nrate_limit = {{ per_client_per_s = 1, average = 5 }}\ncompress = {{ level = 9 }}\nheaders = true\n"
    );
    let keys: Vec<String> = errors(&text).into_iter().map(|e| e.key).collect();
    assert!(
        keys.contains(&"route[1].rate_limit.average".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"route[1].compress.level".to_string()),
        "{keys:?}"
    );
    assert!(keys.contains(&"route[1].headers".to_string()), "{keys:?}");
}

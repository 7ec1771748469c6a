//! `security_headers`, `response_headers` and `request_headers`: fixed header edits, the
//! names and values parsed when the config was loaded.

use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::core::config::RouteMiddlewares;

/// What `security_headers = true` adds to a response that does not carry its own (Traefik's
/// `contentTypeNosniff`, `frameDeny`-like `customFrameOptionsValue`, `referrerPolicy`).
static SECURITY: [(HeaderName, HeaderValue); 3] = [
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("SAMEORIGIN"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    ),
];

/// A response on its way to the client: the security headers the backend did not set, then
/// `response_headers` over whatever it set.
pub fn on_response(mw: &RouteMiddlewares, resp: &mut ResponseHeader) -> Result<()> {
    if mw.security_headers {
        for (name, value) in &SECURITY {
            if !resp.headers.contains_key(name) {
                resp.insert_header(name.clone(), value.clone())?;
            }
        }
    }
    for (name, value) in &mw.response_headers {
        match value {
            Some(v) => resp.insert_header(name.clone(), v.clone())?,
            None => drop(resp.remove_header(name)),
        }
    }
    Ok(())
}

/// A request on its way upstream: `request_headers` over the client's (and the proxy's Host).
pub fn on_request(mw: &RouteMiddlewares, req: &mut RequestHeader) -> Result<()> {
    for (name, value) in &mw.request_headers {
        match value {
            Some(v) => req.insert_header(name.clone(), v.clone())?,
            None => drop(req.remove_header(name)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::HeaderEdit;

    fn mw(security: bool, resp: &[(&str, &str)], req: &[(&str, &str)]) -> RouteMiddlewares {
        let edits = |list: &[(&str, &str)]| -> Vec<HeaderEdit> {
            list.iter()
                .map(|(n, v)| {
                    let value = (!v.is_empty()).then(|| HeaderValue::from_str(v).unwrap());
                    (HeaderName::from_bytes(n.as_bytes()).unwrap(), value)
                })
                .collect()
        };
        RouteMiddlewares {
            security_headers: security,
            response_headers: edits(resp),
            request_headers: edits(req),
            ..Default::default()
        }
    }

    fn get(h: &http::HeaderMap, name: &str) -> Option<String> {
        h.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn security_headers_fill_in_what_the_backend_did_not_set() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("x-frame-options", "DENY").unwrap();
        on_response(&mw(true, &[], &[]), &mut resp).unwrap();
        assert_eq!(
            get(&resp.headers, "x-frame-options").as_deref(),
            Some("DENY")
        );
        assert_eq!(
            get(&resp.headers, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            get(&resp.headers, "referrer-policy").as_deref(),
            Some("strict-origin-when-cross-origin")
        );
    }

    #[test]
    fn response_headers_override_and_an_empty_value_removes() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-security-policy", "none")
            .unwrap();
        resp.insert_header("x-powered-by", "php").unwrap();
        let m = mw(
            true,
            &[
                ("Content-Security-Policy", "default-src 'self'"),
                ("X-Powered-By", ""),
                ("X-Frame-Options", "DENY"),
            ],
            &[],
        );
        on_response(&m, &mut resp).unwrap();
        assert_eq!(
            get(&resp.headers, "content-security-policy").as_deref(),
            Some("default-src 'self'")
        );
        assert_eq!(get(&resp.headers, "x-powered-by"), None);
        // response_headers come after the security defaults.
        assert_eq!(
            get(&resp.headers, "x-frame-options").as_deref(),
            Some("DENY")
        );
    }

    #[test]
    fn request_headers_set_and_remove() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-env", "dev").unwrap();
        req.insert_header("cookie", "a=1").unwrap();
        on_request(
            &mw(false, &[], &[("X-Env", "prod"), ("Cookie", "")]),
            &mut req,
        )
        .unwrap();
        assert_eq!(get(&req.headers, "x-env").as_deref(), Some("prod"));
        assert_eq!(get(&req.headers, "cookie"), None);
    }
}

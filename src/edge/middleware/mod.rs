//! A route's edge middlewares, on both request paths (`edge::h1` and pingora-proxy's HTTP/2
//! path through `edge::proxy`): what teams configure as Traefik middlewares. Each is resolved
//! once per snapshot (`runtime::snapshot::RouteEdge`); a route without any costs its requests
//! one `None` check.
//!
//! - `headers`: `security_headers`, `response_headers`, `request_headers`;
//! - `rate_limit`: 429 + Retry-After beyond a client's token bucket;
//! - `compress`: gzip, br or zstd by the client's Accept-Encoding.

pub mod compress;
pub mod headers;
pub mod rate_limit;

//! A route's edge middlewares, on the request path of both protocols (`edge::relay`, through
//! `edge::proxy`): what teams configure as Traefik middlewares. Each is resolved
//! once per snapshot (`runtime::snapshot::RouteEdge`); a route without any costs its requests
//! one `None` check.
//!
//! - `headers`: `security_headers`, `response_headers`, `request_headers`;
//! - `rate_limit`: 429 + Retry-After beyond a client's token bucket;
//! - `compress`: gzip, br or zstd by the client's Accept-Encoding.

pub mod compress;
pub mod headers;
pub mod rate_limit;

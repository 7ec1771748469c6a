//! The client side of the proxy: connections and requests from the internet.
//!
//! `h1` serves HTTP/1 connections (limits, strict heads, keep-alive) and hands HTTP/2 to
//! `h2` (pingora's HTTP/2 server, our per-stream code); `relay` is the request path both
//! share, over `downstream`'s view of a client session; `client_h1` and `upstream_h1` are the
//! HTTP/1 sessions toward the client and the backend, `body` how both read a body by its
//! framing and `chunked` their chunked decoder,
//! `coalesce` sends a response head and short body in one write; `proxy` holds the
//! per-request decisions (route, color, headers, metrics);
//! `presence` notes which headers an HTTP/1 request has, so absent ones are not looked up;
//! `client_addr` says who the client is (PROXY protocol, trusted X-Forwarded-For);
//! `middleware` holds a route's header edits, rate limit and compression; `upstream` keeps
//! idle backend connections per thread; `replay` gives back bytes read ahead.

pub mod body;
pub mod chunked;
pub mod client_addr;
pub mod client_h1;
pub mod coalesce;
pub mod downstream;
pub mod h1;
pub mod h2;
pub mod middleware;
pub mod presence;
pub mod proxy;
pub mod relay;
pub mod replay;
pub mod upstream;
pub mod upstream_h1;

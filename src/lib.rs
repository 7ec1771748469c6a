//! Switchyard: an edge proxy and blue/green release controller on pingora.
//!
//! Layers (docs/architecture.md draws them), each importing only those listed before it:
//! - `core` — the pure domain: config, routing, colors, the release state machine, SLO
//!   arithmetic, the request-head rules. No I/O, no pingora, no tokio.
//! - `runtime` — what the request path reads: the arc-swapped routing snapshot, backend pools,
//!   health checks, metrics.
//! - `persist` — where release state and history live (the file store, atomic writes).
//! - `control` — the release controller: every change of release state, backends or config
//!   goes through its one commit lock; smoke checks; the SLO watch.
//! - `edge` — the client side: HTTP/1 connections, HTTP/2 streams (pingora's HTTP/2
//!   server), the request path both share, the per-request decisions, the upstream pool.
//! - `tls` — certificates (ACME, internal CA, files) and the TLS front. `edge` and `tls`
//!   never import each other: they meet through small traits in `runtime`.
//! - `admin` — the admin API (HTTP status codes live here), its token.
//! - `api` — the admin API's wire types, shared with `releasectl`.
//! - `server` — the one module that wires everything into a pingora `Server`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod control;
pub mod core;
pub mod demo;
pub mod edge;
pub mod logging;
pub mod persist;
pub mod runtime;
pub mod server;
pub mod tls;

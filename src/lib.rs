//! Switchyard: an edge proxy and blue/green release controller on pingora.
//!
//! The pure core — `config`, `routing`, `color` — knows nothing of pingora or tokio. Around
//! it: `snapshot` (the arc-swapped routing table), `pool` and `health` (backends),
//! `proxy` (the request path), `admin` (the admin listener), `metrics`, and `server`, the one
//! place that wires a pingora `Server` together.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod color;
pub mod config;
pub mod controller;
pub mod demo;
pub mod h1;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod release;
pub mod replay;
pub mod request_head;
pub mod routing;
pub mod server;
pub mod shared;
pub mod slo;
pub mod smoke;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod token;
pub mod upstream;

//! Integration tests for Switchyard over real sockets: a `switchyard` child
//! process in front of in-process test backends.

mod support;

mod admin;
mod canary;
mod config_check;
mod demo;
mod dns;
mod errors;
mod fleet;
mod fleet_acme;
mod h1_path;
mod health;
mod hostile;
mod layers;
mod lifecycle;
mod logs;
mod metrics;
mod middlewares;
mod release;
mod releasectl_cli;
mod routing;
mod selftest;
mod tls;
mod websocket;

//! Integration tests for Switchyard over real sockets: a `switchyard` child
//! process in front of in-process test backends.

mod support;

mod config_check;
mod demo;
mod errors;
mod health;
mod lifecycle;
mod metrics;
mod routing;
mod selftest;
mod websocket;

//! The pure core: what Switchyard decides, with no I/O. Everything here is tested without a
//! socket, and imports nothing else of the crate.

pub mod color;
pub mod config;
pub mod ip_set;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod release;
pub mod request_head;
pub mod routing;
pub mod slo;

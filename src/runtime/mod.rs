//! What the request path reads at run time: the routing snapshot (swapped whole with
//! arc-swap), backend pools and their health checks, and the metrics handles.

pub mod dns;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod rate_limiter;
pub mod seams;
pub mod shared;
pub mod snapshot;
pub mod timer_floor;
pub mod wrapped_stream;

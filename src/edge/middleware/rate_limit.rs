//! `rate_limit`: a token bucket per client address (`runtime::rate_limiter`); beyond it the
//! proxy answers 429 with `Retry-After` itself, and nothing goes upstream.

use std::net::IpAddr;

use crate::core::rate_limit::retry_after_s;
use crate::core::request_head::Rejection;
use crate::edge::proxy::LocalResponse;
use crate::runtime::metrics;
use crate::runtime::rate_limiter::RateLimiter;

/// `None`: the request may go on. A client without an address (none of ours today) is not
/// limited: there is nothing to key its bucket on.
pub(crate) fn check(limiter: &RateLimiter, client: Option<IpAddr>) -> Option<LocalResponse> {
    let limited = limiter.check(client?).err()?;
    metrics::global().rejected(Rejection::RateLimited);
    let mut local = LocalResponse::text(429, b"too many requests\n");
    // Whole seconds, at least 1 (RFC 9110 §10.2.3), like Traefik.
    local.retry_after = Some(retry_after_s(limited.wait.as_nanos() as u64));
    Some(local)
}

//! The buckets of a route's `rate_limit`, one per client address, in memory that stays
//! bounded however many clients come.
//!
//! - **No global lock**: the clients are spread over [`SHARDS`] maps, each behind its own
//!   mutex, held for one lookup. Two requests contend only when their clients hash to the
//!   same shard.
//! - **Small entries**: a client is a `u64` key (an IPv4 address, or the /64 network of an
//!   IPv6 address) and a `u64` (the GCRA time its bucket is full again, `core::rate_limit`).
//! - **Idle clients leave**: a bucket that has filled up again holds nothing a new bucket
//!   would not, so [`RateLimiter::sweep`] (every second, `RateLimitSweeper`) drops them.
//! - **A hard cap**: a shard holds at most [`SHARD_CAP`] clients; a new client in a full
//!   shard first sweeps it (at most once a second), then takes the place of another client.
//!
//! IPv6 clients are keyed by their /64: a host usually owns a whole /64 and picks addresses
//! in it at will, so keying by address would give it billions of buckets.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::core::config::RateLimit;
use crate::core::rate_limit::Gcra;
use crate::runtime::metrics;
use crate::runtime::shared::Shared;

/// Shards per limiter (a power of two).
pub const SHARDS: usize = 64;

/// Clients per shard at most: 917,504 per route in all. At 16 bytes an entry (and the hash
/// table's control bytes, at its 7/8 load) a full limiter takes about 18 MB.
pub const SHARD_CAP: usize = 14 * 1024;

/// How often idle buckets are swept out.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct RateLimiter {
    limit: RateLimit,
    gcra: Gcra,
    epoch: Instant,
    /// Mixed into the shard choice, so which clients share a shard cannot be planned.
    seed: u64,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Default)]
struct Shard {
    /// Client key → the time (ns since `epoch`) its bucket is full again.
    buckets: HashMap<u64, u64, RandomState>,
    /// When the shard was last swept because it was full (ns since `epoch`).
    last_full_sweep: u64,
}

/// What a refused client is told: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub wait: Duration,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            gcra: Gcra::new(limit.per_client_per_s, limit.burst),
            epoch: Instant::now(),
            seed: rand::random::<u64>() | 1,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    #[inline]
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        let h = (key ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> (64 - SHARDS.trailing_zeros())) as usize]
    }

    /// One request from `client`: allowed (a token taken), or refused with the wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        let key = client_key(client);
        let now = self.now();
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let refused = |wait: u64| Limited {
            wait: Duration::from_nanos(wait),
        };
        if let Some(tat) = shard.buckets.get_mut(&key) {
            return self.gcra.check(tat, now).map_err(refused);
        }
        if shard.buckets.len() >= SHARD_CAP {
            shard.make_room(now);
        }
        let mut tat = now;
        let verdict = self.gcra.check(&mut tat, now).map_err(refused);
        shard.buckets.insert(key, tat);
        verdict
    }

    /// Drops the buckets that have filled up again, one shard at a time (each locked only
    /// for its own pass), and gives back the memory of shards that emptied. Returns the
    /// clients left.
    pub fn sweep(&self) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let now = self.now();
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.sweep(now);
            left += shard.buckets.len();
        }
        left
    }

    /// Clients with a bucket now (full ones not yet swept included).
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.buckets.retain(|_, tat| !Gcra::is_full(*tat, now));
        // After a crowd has gone, the table shrinks back (hash tables never do by themselves).
        let cap = self.buckets.capacity();
        if cap > 1024 && self.buckets.len() < cap / 4 {
            self.buckets.shrink_to(self.buckets.len() * 2);
        }
    }

    /// A new client comes to a full shard: sweep it (at most once a second: a sweep is a
    /// pass over the shard), and if every bucket is still in use, one client gives its place.
    /// It loses its bucket (it starts again with a full one): the limit bends a little for
    /// it, rather than not at all for the newcomer.
    #[cold]
    fn make_room(&mut self, now: u64) {
        if now.saturating_sub(self.last_full_sweep) >= SWEEP_EVERY.as_nanos() as u64 {
            self.last_full_sweep = now;
            self.sweep(now);
        }
        while self.buckets.len() >= SHARD_CAP {
            let Some(&victim) = self.buckets.keys().next() else {
                break;
            };
            self.buckets.remove(&victim);
        }
    }
}

/// An IPv4 client by its address, an IPv6 one by its /64. IPv4 keys have their upper 32
/// bits zero: as a /64 that is inside `::/32`, which no internet client has.
#[inline]
pub fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u32::from(v4) as u64,
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

/// Sweeps the limiters of the routes being served, every [`SWEEP_EVERY`].
pub struct RateLimitSweeper(pub Arc<Shared>);

#[async_trait]
impl BackgroundService for RateLimitSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.0.snapshot.load_full();
            let clients: usize = snapshot.limiters().map(|l| l.sweep()).sum();
            metrics::global().rate_limit_clients.set(clients as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_client_per_s: rate,
            burst,
        })
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let l = limiter(1.0, 2);
        let a = v4(0x0a00_0001);
        let b = v4(0x0a00_0002);
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let refused = l.check(a).unwrap_err();
        assert!(refused.wait > Duration::from_millis(900), "{refused:?}");
        assert!(l.check(b).is_ok());
        assert_eq!(l.clients(), 2);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let l = limiter(1.0, 1);
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        // A mapped IPv4 address is its IPv4 address.
        assert!(l.check("192.0.2.7".parse().unwrap()).is_ok());
        assert!(l.check("::ffff:192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn full_buckets_are_swept_and_memory_given_back() {
        // A high rate: every bucket is full again within a millisecond.
        let l = limiter(1_000_000.0, 1);
        for n in 0..50_000 {
            l.check(v4(n)).unwrap();
        }
        assert_eq!(l.clients(), 50_000);
        let start = Instant::now();
        while l.now() < 5_000_000 {
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        l.sweep();
        assert_eq!(l.clients(), 0);
        let capacity: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.capacity())
            .sum();
        assert!(capacity < 50_000, "capacity {capacity} after the sweep");
    }

    #[test]
    fn busy_buckets_stay() {
        let l = limiter(0.001, 1);
        for n in 0..1000 {
            l.check(v4(n)).unwrap();
        }
        l.sweep();
        assert_eq!(l.clients(), 1000);
        assert!(l.check(v4(7)).is_err());
    }

    #[test]
    fn a_full_shard_makes_room_and_never_grows_past_its_cap() {
        // Buckets that stay busy for 1000 s: sweeping frees nothing.
        let l = limiter(0.001, 1);
        let total = SHARDS * SHARD_CAP + 20_000;
        for n in 0..total as u32 {
            // Every newcomer is served: it starts with a full bucket.
            assert!(l.check(v4(n)).is_ok());
        }
        for s in l.shards.iter() {
            assert!(s.lock().unwrap().buckets.len() <= SHARD_CAP);
        }
        assert!(l.clients() <= SHARDS * SHARD_CAP);
        assert!(l.clients() > SHARDS * SHARD_CAP * 9 / 10);
    }

    #[test]
    fn keys() {
        assert_eq!(client_key("0.0.0.1".parse().unwrap()), 1);
        assert_eq!(
            client_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            0x2001_0db8_0001_0002
        );
    }
}

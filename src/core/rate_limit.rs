//! The token bucket of a route's `rate_limit`, as GCRA (the generic cell rate algorithm):
//! the same decisions as a bucket of `burst` tokens refilled at `per_client_per_s`, kept as
//! one number per client — the time its bucket will be full again (its "theoretical arrival
//! time"). Pure arithmetic on nanoseconds; `runtime::rate_limiter` keeps the numbers.

/// One route's limit, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one token takes to come back: 1 s / per_client_per_s.
    interval: u64,
    /// How far ahead of now a client's bucket may run: `burst` tokens' worth.
    tolerance: u64,
}

impl Gcra {
    /// `per_client_per_s` > 0 (fractions allowed: 0.5 = one every 2 s), `burst` ≥ 1.
    pub fn new(per_client_per_s: f64, burst: u32) -> Gcra {
        let interval = (1e9 / per_client_per_s)
            .round()
            .clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) as u64),
        }
    }

    /// One request at `now`, from a client whose bucket is full again at `*tat` (`now` or
    /// earlier for a client not seen lately). `Ok`: allowed, `*tat` moved on by one token.
    /// `Err(wait)`: refused, nothing taken; one token is back after `wait` ns.
    #[inline]
    pub fn check(&self, tat: &mut u64, now: u64) -> Result<(), u64> {
        let next = (*tat).max(now).saturating_add(self.interval);
        let allowed_from = next.saturating_sub(self.tolerance);
        if now < allowed_from {
            return Err(allowed_from - now);
        }
        *tat = next;
        Ok(())
    }

    /// A bucket full again by `now` holds nothing worth keeping: a new one starts full.
    #[inline]
    pub fn is_full(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

/// `Retry-After` for a wait of `wait_ns`: whole seconds, rounded up, at least 1.
pub fn retry_after_s(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_new_client_gets_its_burst_then_the_rate() {
        let g = Gcra::new(10.0, 5);
        let mut tat = 0;
        let now = 100 * S;
        for i in 0..5 {
            assert_eq!(g.check(&mut tat, now), Ok(()), "request {i} of the burst");
        }
        // The 6th waits for one token: 100 ms.
        assert_eq!(g.check(&mut tat, now), Err(S / 10));
        // A refusal takes nothing: still 100 ms.
        assert_eq!(g.check(&mut tat, now), Err(S / 10));
        assert_eq!(g.check(&mut tat, now + S / 10), Ok(()));
        assert!(g.check(&mut tat, now + S / 10).is_err());
    }

    #[test]
    fn a_sustained_client_gets_the_rate_and_no_more() {
        let g = Gcra::new(50.0, 100);
        let mut tat = 0;
        let start = 10 * S;
        let mut allowed = 0;
        // 1000 requests per second for 10 s.
        for ms in 0..10_000u64 {
            if g.check(&mut tat, start + ms * 1_000_000).is_ok() {
                allowed += 1;
            }
        }
        // The burst, then 50 per second.
        assert!((599..=601).contains(&allowed), "{allowed}");
    }

    #[test]
    fn an_idle_bucket_fills_up_and_is_then_full() {
        let g = Gcra::new(1.0, 3);
        let mut tat = 0;
        let now = 5 * S;
        for _ in 0..3 {
            g.check(&mut tat, now).unwrap();
        }
        assert!(!Gcra::is_full(tat, now));
        assert!(!Gcra::is_full(tat, now + 2 * S));
        assert!(Gcra::is_full(tat, now + 3 * S));
        // Once full, three in a row again.
        let later = now + 3 * S;
        for _ in 0..3 {
            g.check(&mut tat, later).unwrap();
        }
        assert!(g.check(&mut tat, later).is_err());
    }

    #[test]
    fn fractional_rates_and_retry_after_in_whole_seconds() {
        let g = Gcra::new(0.5, 1);
        let mut tat = 0;
        g.check(&mut tat, S).unwrap();
        let wait = g.check(&mut tat, S).unwrap_err();
        assert_eq!(wait, 2 * S);
        assert_eq!(retry_after_s(wait), 2);
        assert_eq!(retry_after_s(1), 1);
        assert_eq!(retry_after_s(0), 1);
        assert_eq!(retry_after_s(S + 1), 2);
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let g = Gcra::new(1e-9, u32::MAX);
        let mut tat = u64::MAX - 5;
        let _ = g.check(&mut tat, u64::MAX - 1);
        let g = Gcra::new(1e12, 1);
        let mut tat = 0;
        assert!(g.check(&mut tat, 0).is_ok());
    }
}

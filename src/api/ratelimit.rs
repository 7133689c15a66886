//! Per-key request quotas (token bucket), off by default. The `naver`
//! profile mimics the vendor's published figure for API 2.0: 300 requests per
//! second per key. Over the quota: 429 in the dialect's envelope with
//! `Retry-After`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed token bucket.
#[derive(Debug, Clone)]
pub struct KeyRateLimiter {
    inner: Arc<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    checks: Arc<AtomicU64>,
    /// Requests per second, for messages.
    pub rps: u32,
}

impl KeyRateLimiter {
    /// A limiter of `rps` requests per second with bursts of `burst`.
    pub fn new(rps: u32, burst: u32) -> Option<Self> {
        let rps_nz = NonZeroU32::new(rps)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rps_nz);
        let clock = DefaultClock::default();
        Some(KeyRateLimiter {
            inner: Arc::new(RateLimiter::dashmap_with_clock(
                Quota::per_second(rps_nz).allow_burst(burst),
                clock.clone(),
            )),
            clock,
            checks: Arc::new(AtomicU64::new(0)),
            rps,
        })
    }

    /// Takes one request for `key`; `Err(wait)` when over the quota.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.inner.retain_recent();
        }
        self.inner
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Takes `n` requests for `key` at once (one per item of a batch), or
    /// none: `Err(Some(wait))` when over the quota, `Err(None)` when `n` is
    /// larger than the burst and can never pass.
    pub fn check_n(&self, key: &str, n: u32) -> Result<(), Option<Duration>> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.inner.retain_recent();
        }
        match self.inner.check_key_n(&key.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_names_the_wait() {
        let l = KeyRateLimiter::new(5, 5).unwrap();
        for _ in 0..5 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
        // Another key has its own bucket.
        assert!(l.check("b").is_ok());
    }

    #[test]
    fn batches_take_one_unit_per_item() {
        let l = KeyRateLimiter::new(1, 10).unwrap();
        assert!(l.check_n("a", 7).is_ok());
        assert!(matches!(l.check_n("a", 4), Err(Some(_))));
        assert!(l.check_n("a", 3).is_ok());
        assert!(l.check("a").is_err());
        assert_eq!(l.check_n("b", 11), Err(None));
        assert!(l.check_n("b", 10).is_ok());
    }
}

//! Token-bucket rate limits keyed by a value (a product, a source address), with the
//! time passed in.
//!
//! Each key has a bucket of `burst` tokens refilled at `rate` per second; an event takes
//! one token or is refused. The map of buckets is bounded: when it reaches its limit,
//! buckets that have refilled completely (indistinguishable from absent ones) are
//! dropped, and if none has, the event is refused rather than the map grown, so a flood
//! of distinct keys cannot exhaust memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// A set of token buckets.
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// Tokens per second; 0 disables the limit.
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, (f64, u64)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` events per second per key, bursts of up to `rate` (at least 1); `rate` 0
    /// allows everything.
    pub fn new(rate: u32, max_keys: usize) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(rate.max(1)),
            max_keys,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the limit is off.
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// Takes a token for `key` at `now_ms`; false when the key is over its rate.
    pub fn allow(&self, key: &K, now_ms: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let refill = |(tokens, at): (f64, u64)| {
            let elapsed = now_ms.saturating_sub(at) as f64 / 1000.0;
            (tokens + elapsed * self.rate).min(self.burst)
        };
        if let Some(bucket) = buckets.get_mut(key) {
            let tokens = refill(*bucket);
            if tokens < 1.0 {
                *bucket = (tokens, now_ms);
                return false;
            }
            *bucket = (tokens - 1.0, now_ms);
            return true;
        }
        if buckets.len() >= self.max_keys {
            let burst = self.burst;
            buckets.retain(|_, b| refill(*b) < burst);
            if buckets.len() >= self.max_keys {
                return false;
            }
        }
        buckets.insert(key.clone(), (self.burst - 1.0, now_ms));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(10, 100);
        assert!((0..10).all(|_| l.allow(&"a", 0)));
        assert!(!l.allow(&"a", 0));
        assert!(l.allow(&"b", 0), "keys are independent");
        assert!(!l.allow(&"a", 50));
        assert!(l.allow(&"a", 100), "one token back after 100 ms at 10/s");
        assert!(!l.allow(&"a", 100));
        assert!(
            (0..10).all(|_| l.allow(&"a", 10_000)),
            "refills up to the burst"
        );
        assert!(!l.allow(&"a", 10_000));
    }

    #[test]
    fn unlimited_and_bounded() {
        let l = RateLimiter::new(0, 1);
        assert!((0..1000).all(|i| l.allow(&i, 0)));
        let l = RateLimiter::new(1, 2);
        assert!(l.allow(&1, 0));
        assert!(l.allow(&2, 0));
        assert!(
            !l.allow(&3, 0),
            "map full of busy keys: refuse, do not grow"
        );
        assert!(l.allow(&3, 5_000), "full buckets are dropped to make room");
    }
}

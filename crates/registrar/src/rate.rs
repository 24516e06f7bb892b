//! Token-bucket rate limits keyed by a value (a product, a source address), with the
//! time passed in.
//!
//! Each key has a bucket of `burst` tokens refilled at `rate` per second; an event takes
//! one token or is refused. The buckets are kept in a bounded cache (`quick_cache`,
//! CLOCK-PRO eviction: nothing ever scans the whole map): past `max_keys`, the coldest
//! buckets are forgotten, and a forgotten bucket starts full again. A flood of distinct
//! keys therefore cannot grow memory, and can reset a key's bucket only by outnumbering
//! the cache, at which point the flood's own keys are the ones limited.

use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use quick_cache::Equivalent;
use quick_cache::sync::Cache;

/// A bucket: tokens left, and when they were counted (ms).
type Bucket = Arc<Mutex<(f64, u64)>>;

/// A set of token buckets.
pub struct RateLimiter<K> {
    /// Tokens per second; 0 disables the limit.
    rate: f64,
    burst: f64,
    buckets: Cache<K, Bucket>,
}

impl<K: Hash + Eq> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("keys", &self.buckets.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` events per second per key, bursts of up to `rate` (at least 1), for about
    /// `max_keys` keys at once; `rate` 0 allows everything.
    pub fn new(rate: u32, max_keys: usize) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(rate.max(1)),
            buckets: Cache::new(max_keys.max(1)),
        }
    }

    /// Whether the limit is off.
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// Takes a token for `key` at `now_ms`; false when the key is over its rate. The key
    /// is borrowed (a `&str` for `String` keys): it is copied only when its bucket is
    /// made.
    pub fn allow<Q>(&self, key: &Q, now_ms: u64) -> bool
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        if self.is_unlimited() {
            return true;
        }
        // One bucket per key even when its first events race.
        let Ok(bucket) = self.buckets.get_or_insert_with(key, || {
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new((self.burst, now_ms))))
        });
        let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now_ms.saturating_sub(b.1) as f64 / 1000.0;
        let tokens = (b.0 + elapsed * self.rate).min(self.burst);
        if tokens < 1.0 {
            *b = (tokens, now_ms);
            return false;
        }
        *b = (tokens - 1.0, now_ms);
        true
    }

    /// How many keys have a bucket now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
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
        let l = RateLimiter::new(1, 100);
        for k in 0..100_000u32 {
            assert!(l.allow(&k, 0), "a new key starts with a full bucket");
        }
        assert!(l.keys() <= 200, "bounded: {} keys", l.keys());
        // A key in constant use keeps its bucket through the flood.
        let hot = RateLimiter::new(1, 100);
        assert!(hot.allow(&u32::MAX, 0));
        for k in 0..10_000u32 {
            hot.allow(&k, 0);
            assert!(
                !hot.allow(&u32::MAX, 0),
                "at {k}: the hot key stayed limited"
            );
        }
    }
}

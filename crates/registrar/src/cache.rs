//! The caches in front of any store: products ([`ProductCache`]) and, for products
//! that admit listed devices only, the expected devices ([`ExpectedCache`]), one
//! implementation ([`TtlCache`]).
//!
//! Every CONNECT and every registration looks its product up, so lookups are served
//! from memory:
//! - **bounded**: at most `capacity` products (unknown pids included, so that a flood of
//!   made-up pids cannot reach the database); eviction is `quick_cache`'s CLOCK-PRO,
//!   which never scans the whole map;
//! - **fresh within a TTL**: an entry older than the TTL is looked up again, so changes
//!   made by another process (the CLI, another instance) are seen within it;
//! - **at once for changes it is told of**: the store reports the pids it changes
//!   ([`crate::Store::on_product_change`]) and their entries are dropped;
//! - **one lookup per miss**: concurrent misses for one pid wait for the first one's
//!   lookup instead of each asking the store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::model::{ExpectedDevice, Product};
use crate::store::StoreError;

/// The most products kept by default.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How long a looked-up product is served from memory by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

struct Entry<V> {
    value: Option<Arc<V>>,
    /// Milliseconds since the cache's epoch after which the entry is stale.
    expires_ms: u64,
}

// Not derived: a derive would ask `V: Clone`, and only the `Arc` is cloned.
impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            expires_ms: self.expires_ms,
        }
    }
}

/// A bounded, TTL'd, single-flight cache of lookups by a text key, absent values
/// included.
pub struct TtlCache<V> {
    cache: Cache<String, Entry<V>>,
    ttl_ms: u64,
    epoch: Instant,
}

/// The product cache: by pid.
pub type ProductCache = TtlCache<Product>;

/// The expected-device cache: by [`ExpectedCache::key`] of pid and unique. Changes to
/// a product's list reach it through the store's product-change report, which clears
/// it ([`TtlCache::clear`]): lists change seldom, and a cleared cache costs one read per
/// device that connects next.
pub type ExpectedCache = TtlCache<ExpectedDevice>;

impl ExpectedCache {
    /// The key of device `unique` of product `pid` (`/` is in neither).
    pub fn key(pid: &str, unique: &str) -> String {
        format!("{pid}/{unique}")
    }
}

impl<V> std::fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.cache.len())
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl<V> TtlCache<V> {
    /// A cache of at most `capacity` entries, each served for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            cache: Cache::new(capacity.max(1)),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The value of `pid` (the key): from memory while fresh, else from `load` (called
    /// at most once per miss, however many callers miss together). A failed lookup is
    /// not cached: the callers waiting on it look up again.
    pub async fn get<F, Fut>(&self, pid: &str, load: F) -> Result<Option<Arc<V>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<V>>, StoreError>>,
    {
        let now = self.now_ms();
        let mut tried_stale = false;
        loop {
            match self.cache.get_value_or_guard_async(pid).await {
                Ok(e) if e.expires_ms > now => return Ok(e.value),
                Ok(stale) if !tried_stale => {
                    // Drop the stale entry (unless another caller refreshed it
                    // meanwhile) and take the loader's place, or wait for whoever did.
                    tried_stale = true;
                    self.cache
                        .remove_if(pid, |e| e.expires_ms == stale.expires_ms);
                }
                // Refreshed by another caller to something already stale again: the
                // TTL is shorter than a lookup; answer from the store directly.
                Ok(_) => return load().await,
                Err(guard) => {
                    let value = load().await?;
                    let _ = guard.insert(Entry {
                        value: value.clone(),
                        expires_ms: self.now_ms().saturating_add(self.ttl_ms),
                    });
                    return Ok(value);
                }
            }
        }
    }

    /// Forgets `pid` (its product changed).
    pub fn invalidate(&self, pid: &str) {
        self.cache.remove(pid);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceMode;
    use crate::conformance::product;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lookup_per_miss_a_ttl_and_invalidation() {
        let cache = Arc::new(ProductCache::new(10, Duration::from_millis(300)));
        let lookups = Arc::new(AtomicUsize::new(0));
        let load = |lookups: Arc<AtomicUsize>| async move {
            lookups.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Some(Arc::new(product("p", SourceMode::Pool))))
        };
        // 32 concurrent misses: one lookup.
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (cache, lookups) = (cache.clone(), lookups.clone());
            tasks.push(tokio::spawn(async move {
                cache.get("p", || load(lookups)).await.unwrap().unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().pid, "p");
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        // Fresh: from memory. Invalidated: looked up again.
        cache.get("p", || load(lookups.clone())).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        cache.invalidate("p");
        cache.get("p", || load(lookups.clone())).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        // Past the TTL: looked up again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        cache.get("p", || load(lookups.clone())).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
        // A failed lookup is not kept.
        let failed = cache
            .get("q", || async { Err(StoreError::unavailable("down")) })
            .await;
        assert!(failed.is_err());
        let found = cache.get("q", || async { Ok(None) }).await.unwrap();
        assert!(found.is_none());
    }

    #[tokio::test]
    async fn bounded() {
        let cache = ProductCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            let pid = format!("p{i}");
            cache.get(&pid, || async { Ok(None) }).await.unwrap();
        }
        assert!(cache.len() <= 200, "{} entries", cache.len());
    }
}

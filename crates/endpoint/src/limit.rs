//! Limits on what one source may hold: token-bucket rate limits keyed by a value (source
//! IP, pid) with time passed in, and [`PendingPerIp`], the cap on connections per source
//! address that have not yet authenticated.
//!
//! Each rate-limit key has a bucket of `burst` tokens refilled at `rate` per second; an event takes
//! one token or is refused. The map of buckets is bounded: when it reaches its limit,
//! buckets that have refilled completely (indistinguishable from absent ones) are
//! dropped, and if none has, the event is refused rather than the map grown, so a flood
//! of distinct keys cannot exhaust memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

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

/// Counts the connections per source address that have not yet authenticated, and
/// refuses more than `limit` of them: one address cannot hold the server's file
/// descriptors with connections that never send a valid CONNECT, however many it
/// opens. Authenticated connections do not count, so a factory line behind one NAT
/// registers at any concurrency up to the limit at once.
#[derive(Debug)]
pub struct PendingPerIp {
    limit: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// One unauthenticated connection's place in [`PendingPerIp`]; dropping it (when the
/// connection authenticates or ends) gives the place back.
#[derive(Debug)]
pub struct PendingSlot {
    owner: Arc<PendingPerIp>,
    ip: IpAddr,
}

impl PendingPerIp {
    /// At most `limit` unauthenticated connections per address; 0: no limit.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection from `ip`, or `None` when it holds `limit` already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        if self.limit > 0 {
            let mut counts = self.lock();
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.limit {
                return None;
            }
            *n += 1;
        }
        Some(PendingSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// How many unauthenticated connections `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        self.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if self.owner.limit == 0 {
            return;
        }
        let mut counts = self.owner.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Raises this process's open-file limit to at least `want` where allowed, and returns
/// the limit now in force (which may still be lower: the caller says so).
///
/// The soft limit is raised up to the hard limit, as any process may. When that is not
/// enough and the process is privileged (root or `CAP_SYS_RESOURCE`), the hard limit is
/// raised too, up to the kernel's per-process maximum (`fs.nr_open`); unprivileged, that
/// step fails quietly and the lower limit is returned.
pub fn raise_open_file_limit(want: u64) -> io::Result<u64> {
    let got = rlimit::increase_nofile_limit(want)?;
    if got >= want {
        return Ok(got);
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    let target = want.min(ceiling);
    if target > got && rlimit::setrlimit(rlimit::Resource::NOFILE, target, target).is_ok() {
        return Ok(target);
    }
    Ok(got)
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
    fn pending_connections_are_capped_per_address() {
        let p = PendingPerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = p.enter(a).unwrap();
        let s2 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        assert!(p.enter(b).is_some(), "addresses are independent");
        drop(s1);
        assert_eq!(p.held(a), 1);
        let _s3 = p.enter(a).unwrap();
        drop(s2);
        assert_eq!(p.held(a), 1);
        let off = PendingPerIp::new(0);
        let held: Vec<_> = (0..1000).map(|_| off.enter(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
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

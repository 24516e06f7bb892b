//! Limits on what one source may hold: [`PendingPerIp`], the cap on connections per
//! source address that have not yet authenticated (the per-address connection rate uses
//! the registrar's [`dynreg_registrar::rate::RateLimiter`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

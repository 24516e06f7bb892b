//! The failed-authentication ban, like EMQX's flapping detection: an address whose
//! CONNECTs are refused `failures` times within `window` is refused outright for
//! `duration`, without its credentials being checked.
//!
//! It replaces a per-address connection rate as the default defence: honest devices
//! behind one address (a factory line behind a NAT, a carrier-grade NAT) connect as
//! fast as they like, while an address that guesses secrets or replays credentials is
//! stopped after a handful of tries. Time is passed in (Unix seconds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// When an address is banned. `failures` 0 turns the ban off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanPolicy {
    /// Refused CONNECTs from one address that start a ban.
    pub failures: u32,
    /// The window those failures must fall in, in seconds.
    pub window_secs: u64,
    /// How long the ban lasts, in seconds.
    pub duration_secs: u64,
}

impl Default for BanPolicy {
    /// 30 failures within 60 s ban the address for 5 minutes. An honest device fails
    /// only when misconfigured (wrong secret, clock off) and then retries with backoff,
    /// a few times a minute; 30 in a minute from one address is a script.
    fn default() -> Self {
        Self {
            failures: 30,
            window_secs: 60,
            duration_secs: 300,
        }
    }
}

/// The most addresses tracked at once; past it, addresses whose window and ban are both
/// over are dropped, and if none is, new addresses are not tracked (they are not
/// banned either) rather than the map grown.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: u64,
    failures: u32,
    banned_until: u64,
}

/// Per-address failure counts and bans.
#[derive(Debug)]
pub struct Bans {
    policy: BanPolicy,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

/// What recording a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; no ban (yet).
    Counted,
    /// This failure started a ban lasting until this Unix second.
    BannedUntil(u64),
}

impl Bans {
    /// Bans under `policy`.
    pub fn new(policy: BanPolicy) -> Self {
        Self {
            policy,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> BanPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: u64) -> bool {
        if self.policy.failures == 0 {
            return false;
        }
        self.lock().get(&ip).is_some_and(|e| e.banned_until > now)
    }

    /// Counts a refused CONNECT from `ip` at `now`.
    pub fn record_failure(&self, ip: IpAddr, now: u64) -> Failure {
        let p = self.policy;
        if p.failures == 0 {
            return Failure::Counted;
        }
        let mut map = self.lock();
        if !map.contains_key(&ip) && map.len() >= MAX_TRACKED {
            map.retain(|_, e| e.banned_until > now || now < e.window_start + p.window_secs);
            if map.len() >= MAX_TRACKED {
                return Failure::Counted;
            }
        }
        let e = map.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            banned_until: 0,
        });
        if now >= e.window_start + p.window_secs {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= p.failures && e.banned_until <= now {
            e.banned_until = now + p.duration_secs;
            e.failures = 0;
            e.window_start = now;
            return Failure::BannedUntil(e.banned_until);
        }
        Failure::Counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn failures_within_the_window_ban_for_the_duration() {
        let b = Bans::new(BanPolicy {
            failures: 3,
            window_secs: 10,
            duration_secs: 60,
        });
        assert_eq!(b.record_failure(A, 100), Failure::Counted);
        assert_eq!(b.record_failure(A, 105), Failure::Counted);
        assert!(!b.is_banned(A, 105));
        assert_eq!(b.record_failure(A, 109), Failure::BannedUntil(169));
        assert!(b.is_banned(A, 109));
        assert!(b.is_banned(A, 168));
        assert!(!b.is_banned(B, 109), "addresses are independent");
        assert!(!b.is_banned(A, 169), "the ban ends");
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_ban() {
        let b = Bans::new(BanPolicy {
            failures: 3,
            window_secs: 10,
            duration_secs: 60,
        });
        for t in [0, 5, 10, 15, 20, 25, 30] {
            assert_eq!(b.record_failure(A, t), Failure::Counted, "at {t}");
        }
        assert!(!b.is_banned(A, 30));
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = Bans::new(BanPolicy {
            failures: 0,
            ..BanPolicy::default()
        });
        for _ in 0..1000 {
            assert_eq!(b.record_failure(A, 1), Failure::Counted);
        }
        assert!(!b.is_banned(A, 1));
    }
}

//! Pacing, written once for every part of dynreg: how long to wait before trying
//! again ([`Backoff`]), and how often to log a failure that repeats ([`LogThrottle`]).
//! Time is passed in, so both are tested without a clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Exponential backoff: 100 ms, doubling to 10 s. A broker worker reconnecting and the
/// outbox retrying a device's event both wait this way.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempts: u32,
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait: a destination that comes back is found within this.
    pub const CAP: Duration = Duration::from_secs(10);

    /// Starts at the first step.
    pub fn new() -> Self {
        Self { attempts: 0 }
    }

    /// The wait after `failures` failures in a row (the first failure waits
    /// [`Backoff::FIRST`]; none, nothing).
    pub fn after(failures: u32) -> Duration {
        match failures {
            0 => Duration::ZERO,
            n => Self::FIRST
                .saturating_mul(1 << (n - 1).min(20))
                .min(Self::CAP),
        }
    }

    /// Counts a failure and returns the wait before the next try.
    pub fn step(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        Self::after(self.attempts)
    }

    /// Back to the first step (after a try that worked).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// "Log once per burst, count the rest": a failure that repeats is logged at most once
/// per period, the line saying how many went unlogged since the previous one. A disk
/// that fills up under load, or a flood of connections, would otherwise write a line
/// per event. Lock-free; shared between tasks.
#[derive(Debug)]
pub struct LogThrottle {
    every_ms: u64,
    /// The millisecond of the last line, plus one (0: none yet).
    last_ms: AtomicU64,
    unlogged: AtomicU64,
    total: AtomicU64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Counts an event at `now_ms` (any monotonic milliseconds); `Some(n)` when it
    /// should be logged, `n` being the events not logged since the previous line.
    pub fn hit(&self, now_ms: u64) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let stamp = now_ms.saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == 0 || stamp >= last.saturating_add(self.every_ms))
            && self
                .last_ms
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Events counted since start, logged or not.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let steps: Vec<_> = (0..9).map(|_| b.step().as_millis()).collect();
        assert_eq!(
            steps,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
        assert_eq!(Backoff::after(0), Duration::ZERO);
        assert_eq!(Backoff::after(u32::MAX), Backoff::CAP);
    }

    #[test]
    fn a_burst_is_one_line_then_one_per_period() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.hit(0), Some(0));
        assert_eq!(t.hit(5), None);
        assert_eq!(t.hit(9_999), None);
        assert_eq!(t.hit(10_000), Some(2));
        assert_eq!(t.hit(10_001), None);
        assert_eq!(t.hit(25_000), Some(1));
        assert_eq!(t.total(), 6);
    }
}

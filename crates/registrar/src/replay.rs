//! The replay guard (PROTOCOL.md section 2): the signature covers the pid and ts but not
//! the unique, so a credential seen once on the wire would otherwise register any
//! unique for the whole ts window.
//!
//! Every accepted credential (pid, signMethod, ts, password) is remembered with the
//! unique it was accepted for, until the credential's ts leaves the window. The same
//! credential with the same unique is accepted again (a device reconnecting after a
//! lost reply); with another unique it is refused.
//!
//! [`ReplayGuard`] is the in-process implementation that a store embeds when one
//! process serves its database (SQLite, the in-memory store); a store shared by several
//! processes keeps the same facts in the database instead. Both are reached through
//! [`crate::Store::claim_credential`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dynreg_proto::credentials::SignMethod;

/// One accepted credential, as the guard sees it.
#[derive(Debug, Clone, Copy)]
pub struct CredentialUse<'a> {
    /// The pid of the username.
    pub pid: &'a str,
    /// The signMethod of the username.
    pub sign_method: SignMethod,
    /// The ts of the username.
    pub ts: u64,
    /// The password (hex; compared without regard to case, as it is verified).
    pub password: &'a [u8],
    /// The unique of the clientId.
    pub unique: &'a str,
    /// Unix second from which the credential is no longer valid (its ts has left the
    /// window), so need not be remembered.
    pub expires_at: u64,
}

impl CredentialUse<'_> {
    /// Feeds the credential's identity (pid, signMethod, ts, password without regard
    /// to case; not the unique) to `feed`, in a fixed order: the bytes a guard keys
    /// its memory with.
    pub fn identify(&self, mut feed: impl FnMut(&[u8])) {
        feed(self.pid.as_bytes());
        feed(&[
            0xff,
            match self.sign_method {
                SignMethod::HmacSha1 => 1,
                SignMethod::HmacSha256 => 2,
            },
        ]);
        feed(&self.ts.to_be_bytes());
        // Hex is verified without regard to case: `AB..` and `ab..` are one credential.
        for b in self.password {
            feed(&[b.to_ascii_lowercase()]);
        }
    }
}

/// What the guard says of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Never seen (within its validity): now remembered for this unique.
    First,
    /// Seen before with the same unique: a reconnect.
    Repeat,
    /// Seen before with another unique: a replay.
    Replayed {
        /// The unique the credential was first accepted for.
        first_unique: String,
    },
}

/// The default bound on remembered credentials. At an estimated 80 bytes each (key,
/// expiry, the boxed unique and the table's overhead; not measured) this is at most
/// ~80 MB, and it only fills when a million CONNECTs are accepted within one ts window
/// (30 minutes with the default ±15: about 550 per second, sustained).
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// An in-process, bounded, time-evicted memory of accepted credentials.
///
/// The key is a keyed 64-bit hash of the credential (the key is random per process,
/// so collisions cannot be aimed at); the value is the unique, kept for the log line
/// that names both uniques of a replay. Entries leave when their credential expires;
/// when the memory is full, the soonest-expiring entry is dropped early and counted
/// ([`ReplayGuard::evicted`]).
///
/// Expiry times are whole seconds within about twice the ts window of now, so entries
/// are kept in one bucket per second (a few thousand buckets at most): adding and
/// expiring an entry costs O(1) plus a lookup among the buckets. A binary heap of a
/// million entries cost 2.9 µs per claim here, in cache misses of its sift-down.
#[derive(Debug)]
pub struct ReplayGuard {
    hasher: RandomState,
    capacity: usize,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// credential hash -> (expires_at, unique). The key is already a keyed hash.
    map: HashMap<u64, (u64, Box<str>), BuildHasherDefault<PassThrough>>,
    /// expires_at -> the credential hashes that expire then.
    expiry: BTreeMap<u64, Vec<u64>>,
}

impl Inner {
    /// Forgets the entry `key` listed under `at`, if the map still holds it for `at`.
    fn forget(&mut self, key: u64, at: u64) {
        if self.map.get(&key).is_some_and(|(e, _)| *e == at) {
            self.map.remove(&key);
        }
    }
}

/// The identity hash for keys that are already keyed hashes.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` credentials (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            evicted: AtomicU64::new(0),
        }
    }

    fn key(&self, c: &CredentialUse<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        c.identify(|bytes| h.write(bytes));
        h.finish()
    }

    /// Records `c` at `now` (Unix seconds), or reports that it was seen before.
    pub fn claim(&self, c: &CredentialUse<'_>, now: u64) -> Claim {
        let key = self.key(c);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(bucket) = inner.expiry.first_entry() {
            if *bucket.key() > now {
                break;
            }
            let (at, keys) = bucket.remove_entry();
            for k in keys {
                inner.forget(k, at);
            }
        }
        if let Some((_, first)) = inner.map.get(&key) {
            return if **first == *c.unique {
                Claim::Repeat
            } else {
                Claim::Replayed {
                    first_unique: first.to_string(),
                }
            };
        }
        if c.expires_at <= now {
            return Claim::First;
        }
        while inner.map.len() >= self.capacity {
            let Some(mut bucket) = inner.expiry.first_entry() else {
                break;
            };
            let at = *bucket.key();
            let k = bucket.get_mut().pop();
            if bucket.get().is_empty() {
                bucket.remove();
            }
            if let Some(k) = k {
                let before = inner.map.len();
                inner.forget(k, at);
                if inner.map.len() < before {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        inner.map.insert(key, (c.expires_at, c.unique.into()));
        inner.expiry.entry(c.expires_at).or_default().push(key);
        Claim::First
    }

    /// How many credentials are remembered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many credentials were forgotten before they expired because the guard was
    /// full (each one could have been replayed afterwards: raise the capacity).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred<'a>(password: &'a [u8], unique: &'a str, ts: u64) -> CredentialUse<'a> {
        CredentialUse {
            pid: "p",
            sign_method: SignMethod::HmacSha256,
            ts,
            password,
            unique,
            expires_at: ts + 900,
        }
    }

    #[test]
    fn same_unique_repeats_other_unique_is_a_replay() {
        let g = ReplayGuard::default();
        assert_eq!(g.claim(&cred(b"ab01", "u1", 1000), 1000), Claim::First);
        assert_eq!(g.claim(&cred(b"ab01", "u1", 1000), 1001), Claim::Repeat);
        assert_eq!(
            g.claim(&cred(b"AB01", "u2", 1000), 1002),
            Claim::Replayed {
                first_unique: "u1".into()
            },
            "the password's case does not make another credential"
        );
        assert_eq!(g.claim(&cred(b"ab01", "u2", 1001), 1002), Claim::First);
        let other_method = CredentialUse {
            sign_method: SignMethod::HmacSha1,
            ..cred(b"ab01", "u3", 1000)
        };
        assert_eq!(g.claim(&other_method, 1002), Claim::First);
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn entries_leave_when_the_credential_expires() {
        let g = ReplayGuard::default();
        assert_eq!(g.claim(&cred(b"aa", "u1", 1000), 1000), Claim::First);
        assert_eq!(
            g.claim(&cred(b"aa", "u2", 1000), 1899),
            Claim::Replayed {
                first_unique: "u1".into()
            }
        );
        // At 1900 the credential is outside the window (refused by the ts check anyway)
        // and forgotten.
        assert_eq!(g.claim(&cred(b"bb", "u1", 1900), 1900), Claim::First);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_memory_is_bounded() {
        let g = ReplayGuard::with_capacity(100);
        for i in 0..1000u64 {
            let pw = i.to_string();
            assert_eq!(
                g.claim(&cred(pw.as_bytes(), "u", 1000 + i), 1000),
                Claim::First
            );
        }
        assert_eq!(g.len(), 100);
        assert_eq!(g.evicted(), 900);
        // The newest are kept: the soonest-expiring went first.
        assert_eq!(
            g.claim(&cred(b"999", "x", 1999), 1000),
            Claim::Replayed {
                first_unique: "u".into()
            }
        );
    }
}

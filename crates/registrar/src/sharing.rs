//! Shared credentials (PROTOCOL.md section 2): the seed's signature covers the pid and
//! ts but not the unique, so two honest devices of one product that sign in the same
//! second send the same credential. The server cannot tell that from a replay, so it
//! never refuses either; it records how many uniques presented each credential, so
//! that sharing is counted per product and an unusual amount of it is logged
//! ([`Registrar::authenticate`](crate::Registrar::authenticate)).
//!
//! Every accepted seed credential (pid, signMethod, ts, password) is remembered with
//! the uniques it was presented by, until its ts leaves the window. Device-bound
//! credentials (`hmacSha1u`, `hmacSha256u`) name their unique, cannot be shared and are
//! not recorded.
//!
//! [`SharedCredentials`] lives in the registrar, in each process's memory, whatever the
//! store: since it decides nothing, it needs no database round trip on the CONNECT
//! path. (Kept in PostgreSQL at first, one statement per CONNECT cost the database
//! 315.5 µs of CPU per registration, against 52.0 µs without it, when a second's
//! devices share a credential: see
//! docs/benchmarks.md.) With several instances each counts the uniques it saw: a
//! credential shared across instances is undercounted by at most one per instance.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dynreg_proto::credentials::SignMethod;

/// One accepted credential, as the record sees it.
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
    /// to case; not the unique) to `feed`, in a fixed order: the bytes a record keys
    /// its memory with.
    pub fn identify(&self, mut feed: impl FnMut(&[u8])) {
        feed(self.pid.as_bytes());
        let method = SignMethod::ALL
            .iter()
            .position(|m| *m == self.sign_method)
            .unwrap_or(0);
        feed(&[0xff, method as u8]);
        feed(&self.ts.to_be_bytes());
        // Hex is verified without regard to case: `AB..` and `ab..` are one credential.
        for b in self.password {
            feed(&[b.to_ascii_lowercase()]);
        }
    }
}

/// What the record says of a credential presented by a unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// No other unique presented it (within its validity): the unique is now
    /// remembered for it.
    Alone,
    /// This unique presented it before (a reconnect, e.g. after a lost reply).
    Repeat,
    /// This unique is the `uniques`-th to present it (2 or more).
    Shared {
        /// How many uniques have presented the credential, this one included.
        uniques: u32,
    },
}

/// From this many uniques on one seed credential, sharing is more than honest
/// collisions explain and is logged (then again each time the count doubles).
///
/// The arithmetic: a credential is one second of one product. A fast assembly line
/// finishes a unit every 1 to 3 seconds, and an end-of-line test station powers up to a
/// few dozen units at once; a factory that runs several lines of one product through
/// such stations puts at most a few dozen devices of it into one second. 64 leaves
/// room for that. What goes beyond it is a captured credential presented for many
/// uniques, a product secret used by a script, or a herd of devices of one product
/// that re-register together (a fleet power-cycled at once): each worth an operator's
/// look, none a reason to refuse anybody.
pub const SHARING_LOG_THRESHOLD: u32 = 64;

/// The most uniques remembered for one credential. Past it, new uniques are still
/// counted, but a unique beyond the first 1,024 that reconnects with the credential
/// is counted again (a repeat cannot be told from a newcomer there). Bounds the cost
/// of one presentation to a scan of 1,024 hashes.
pub const MAX_UNIQUES_PER_CREDENTIAL: usize = 1024;

/// The default bound on remembered presentations (credential and unique pairs). A
/// million credentials took 133 MB of resident memory (`cargo bench -p
/// dynreg-registrar --bench connect` prints it; docs/benchmarks.md), and the record
/// only fills when a million CONNECTs are accepted within one ts window (30 minutes
/// with the default ±15: about 550 per second, sustained).
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// An in-process, bounded, time-evicted record of accepted seed credentials and the
/// uniques that presented them.
///
/// Keys are keyed 64-bit hashes (the key is random per process, so collisions cannot
/// be aimed at): of the credential, and of each unique. Entries leave when their
/// credential expires; when the record is full, the soonest-expiring credentials are
/// dropped early and counted ([`SharedCredentials::evicted`]).
///
/// Expiry times are whole seconds within about twice the ts window of now, so entries
/// are kept in one bucket per second (a few thousand buckets at most): adding and
/// expiring an entry costs O(1) plus a lookup among the buckets.
#[derive(Debug)]
pub struct SharedCredentials {
    hasher: RandomState,
    capacity: usize,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
}

/// A remembered credential.
#[derive(Debug)]
struct Entry {
    expires_at: u64,
    /// How many uniques presented it.
    uniques: u32,
    /// The hash of the first unique, then of the others (at most
    /// [`MAX_UNIQUES_PER_CREDENTIAL`] in all). `more` stays unallocated while the
    /// credential is not shared, which is nearly always.
    first: u64,
    more: Vec<u64>,
}

impl Entry {
    fn remembered(&self) -> usize {
        1 + self.more.len()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// credential hash -> entry. The key is already a keyed hash.
    map: HashMap<u64, Entry, BuildHasherDefault<PassThrough>>,
    /// expires_at -> the credential hashes that expire then.
    expiry: BTreeMap<u64, Vec<u64>>,
    /// Unique hashes remembered, over all entries.
    remembered: usize,
}

impl Inner {
    /// Forgets the entry `key` listed under `at`, if the map still holds it for `at`;
    /// returns whether it did.
    fn forget(&mut self, key: u64, at: u64) -> bool {
        if self.map.get(&key).is_some_and(|e| e.expires_at == at) {
            if let Some(e) = self.map.remove(&key) {
                self.remembered -= e.remembered();
            }
            return true;
        }
        false
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

impl Default for SharedCredentials {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl SharedCredentials {
    /// A record remembering at most `capacity` presentations (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            evicted: AtomicU64::new(0),
        }
    }

    fn keys(&self, c: &CredentialUse<'_>) -> (u64, u64) {
        let mut h = self.hasher.build_hasher();
        c.identify(|bytes| h.write(bytes));
        let credential = h.finish();
        let mut h = self.hasher.build_hasher();
        h.write(c.unique.as_bytes());
        (credential, h.finish())
    }

    /// Records that `c.unique` presented `c` at `now` (Unix seconds), and says whether
    /// other uniques presented it before.
    pub fn record(&self, c: &CredentialUse<'_>, now: u64) -> Sharing {
        let (key, unique) = self.keys(c);
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
        let room = inner.remembered < self.capacity;
        if let Some(e) = inner.map.get_mut(&key) {
            if e.first == unique || e.more.contains(&unique) {
                return Sharing::Repeat;
            }
            e.uniques = e.uniques.saturating_add(1);
            let uniques = e.uniques;
            if room && e.remembered() < MAX_UNIQUES_PER_CREDENTIAL {
                e.more.push(unique);
                inner.remembered += 1;
            }
            return Sharing::Shared { uniques };
        }
        if c.expires_at <= now {
            return Sharing::Alone;
        }
        while inner.remembered >= self.capacity {
            let Some(mut bucket) = inner.expiry.first_entry() else {
                break;
            };
            let at = *bucket.key();
            let k = bucket.get_mut().pop();
            if bucket.get().is_empty() {
                bucket.remove();
            }
            if let Some(k) = k {
                if inner.forget(k, at) {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        inner.map.insert(
            key,
            Entry {
                expires_at: c.expires_at,
                uniques: 1,
                first: unique,
                more: Vec::new(),
            },
        );
        inner.remembered += 1;
        inner.expiry.entry(c.expires_at).or_default().push(key);
        Sharing::Alone
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

    /// How many credentials were forgotten before they expired because the record was
    /// full (sharing of those is undercounted afterwards: raise the capacity).
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
    fn uniques_are_counted_per_credential() {
        let g = SharedCredentials::default();
        assert_eq!(g.record(&cred(b"ab01", "u1", 1000), 1000), Sharing::Alone);
        assert_eq!(g.record(&cred(b"ab01", "u1", 1000), 1001), Sharing::Repeat);
        assert_eq!(
            g.record(&cred(b"AB01", "u2", 1000), 1002),
            Sharing::Shared { uniques: 2 },
            "the password's case does not make another credential"
        );
        assert_eq!(g.record(&cred(b"ab01", "u2", 1000), 1002), Sharing::Repeat);
        assert_eq!(
            g.record(&cred(b"ab01", "u3", 1000), 1003),
            Sharing::Shared { uniques: 3 }
        );
        assert_eq!(g.record(&cred(b"ab01", "u2", 1001), 1002), Sharing::Alone);
        let other_method = CredentialUse {
            sign_method: SignMethod::HmacSha1,
            ..cred(b"ab01", "u3", 1000)
        };
        assert_eq!(g.record(&other_method, 1002), Sharing::Alone);
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn entries_leave_when_the_credential_expires() {
        let g = SharedCredentials::default();
        assert_eq!(g.record(&cred(b"aa", "u1", 1000), 1000), Sharing::Alone);
        assert_eq!(
            g.record(&cred(b"aa", "u2", 1000), 1899),
            Sharing::Shared { uniques: 2 }
        );
        // At 1900 the credential is outside the window (refused by the ts check anyway)
        // and forgotten.
        assert_eq!(g.record(&cred(b"bb", "u1", 1900), 1900), Sharing::Alone);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_memory_is_bounded() {
        let g = SharedCredentials::with_capacity(100);
        for i in 0..1000u64 {
            let pw = i.to_string();
            assert_eq!(
                g.record(&cred(pw.as_bytes(), "u", 1000 + i), 1000),
                Sharing::Alone
            );
        }
        assert_eq!(g.len(), 100);
        assert_eq!(g.evicted(), 900);
        // The newest are kept: the soonest-expiring went first.
        assert_eq!(
            g.record(&cred(b"999", "x", 1999), 1000),
            Sharing::Shared { uniques: 2 }
        );
        // A credential shared by more uniques than it remembers still counts them.
        let g = SharedCredentials::default();
        let names: Vec<String> = (0..=MAX_UNIQUES_PER_CREDENTIAL + 10)
            .map(|i| format!("u{i}"))
            .collect();
        for (i, u) in names.iter().enumerate() {
            let want = if i == 0 {
                Sharing::Alone
            } else {
                Sharing::Shared {
                    uniques: i as u32 + 1,
                }
            };
            assert_eq!(g.record(&cred(b"cc", u, 1000), 1000), want);
        }
        assert_eq!(g.record(&cred(b"cc", "u5", 1000), 1000), Sharing::Repeat);
    }
}

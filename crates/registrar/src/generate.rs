//! Random identifiers and secrets, from the operating system's CSPRNG (read in blocks of
//! a kilobyte per thread).
//!
//! - Device and product secrets: 32 characters of `A-Z a-z 0-9` (about 190 bits).
//! - Generated device uuids: `d` followed by 17 characters of lowercase Crockford base32
//!   (`0-9 a-z` without `i l o u`, an alphabet in ASCII order), 18 characters in all, no
//!   underscore: 6 characters of seconds since 2024-01-01 (30 bits), 3 of a per-process
//!   sequence (15 bits, wrapping), 8 random (40 bits). Uuids made one after another sort
//!   one after another, so the store's uuid index grows at its end instead of touching a
//!   random page per registration (which doubled the WAL written per commit); the
//!   random part keeps them unguessable from one another and unique across processes.
//!   The store's unique index refuses the (astronomically unlikely) repeat, and the
//!   registrar then draws again. A uuid reveals the second it was made; it is not a
//!   secret.
//! - Generated pids: `p` followed by 9 characters of the same base32.

use std::sync::atomic::{AtomicU32, Ordering};

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;

use crate::model::{NewTriplet, Secret};

/// The length of generated secrets, in characters.
pub const SECRET_LEN: usize = 32;

const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Bytes taken from the OS CSPRNG per refill of a thread's pool.
const POOL_BYTES: usize = 1024;

/// A thread's store of bytes read from the OS CSPRNG, handed out in order; each byte is
/// zeroed once handed out, so the pool never holds bytes of a secret already made.
struct Pool {
    buf: [u8; POOL_BYTES],
    next: usize,
}

std::thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { buf: [0; POOL_BYTES], next: POOL_BYTES })
    };
}

/// Fills `out` with bytes from the OS CSPRNG, read a kilobyte at a time per thread (a
/// `getrandom` call per uuid and per secret showed in the server's profile: two system
/// calls per registration).
fn fill_random(out: &mut [u8]) {
    POOL.with_borrow_mut(|pool| {
        let mut filled = 0;
        while filled < out.len() {
            if pool.next == POOL_BYTES {
                OsRng.fill_bytes(&mut pool.buf);
                pool.next = 0;
            }
            let n = (out.len() - filled).min(POOL_BYTES - pool.next);
            let taken = &mut pool.buf[pool.next..pool.next + n];
            out[filled..filled + n].copy_from_slice(taken);
            taken.fill(0);
            pool.next += n;
            filled += n;
        }
    });
}

/// `len` characters drawn uniformly from `alphabet` (at most 256 symbols), by rejection
/// sampling so that no symbol is more likely than another.
fn random_chars(alphabet: &[u8], len: usize) -> String {
    let n = alphabet.len();
    let limit = 256 - 256 % n; // accept bytes below the largest multiple of n
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 16];
    while out.len() < len {
        fill_random(&mut buf);
        for &b in &buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % n]));
            }
        }
    }
    buf.fill(0);
    out
}

/// A new random secret of [`SECRET_LEN`] alphanumeric characters.
pub fn secret() -> Secret {
    Secret::new(random_chars(ALNUM, SECRET_LEN))
}

/// 2024-01-01T00:00:00Z, the origin of the time part of generated uuids.
const UUID_EPOCH: u64 = 1_704_067_200;
static UUID_SEQ: AtomicU32 = AtomicU32::new(0);

/// Appends the low `5 * n` bits of `v` as `n` base32 characters, most significant first.
fn push_base32(s: &mut String, v: u64, n: u32) {
    for i in (0..n).rev() {
        let digit = usize::try_from((v >> (5 * i)) & 31).unwrap_or(0);
        s.push(char::from(BASE32[digit]));
    }
}

/// A new device uuid made at `now` (Unix seconds): `d` + 17 base32 characters.
pub fn uuid(now: u64) -> String {
    let mut s = String::with_capacity(18);
    s.push('d');
    push_base32(&mut s, now.saturating_sub(UUID_EPOCH), 6);
    push_base32(
        &mut s,
        u64::from(UUID_SEQ.fetch_add(1, Ordering::Relaxed)),
        3,
    );
    s.push_str(&random_chars(BASE32, 8));
    s
}

/// A new random pid (`p` + 9 base32 characters).
pub fn pid() -> String {
    let mut s = String::from("p");
    s.push_str(&random_chars(BASE32, 9));
    s
}

/// A new triplet made at `now`: a new uuid and secret, the given MAC and barcode.
pub fn triplet(now: u64, mac: String, barcode: String) -> NewTriplet {
    NewTriplet {
        uuid: uuid(now),
        secret: secret(),
        mac,
        barcode,
    }
}

/// `N` random bytes (e.g. a master key or a nonce).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill_random(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shapes() {
        let s = secret();
        assert_eq!(s.expose().len(), 32);
        assert!(s.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        let u = uuid(1_800_000_000);
        assert_eq!(u.len(), 18);
        assert!(u.starts_with('d') && !u.contains('_'));
        assert!(crate::model::is_valid_pid(&pid()));
    }

    #[test]
    fn the_pool_forgets_what_it_handed_out_and_refills_across_its_end() {
        let mut seen = Vec::new();
        for _ in 0..(3 * POOL_BYTES / 7) {
            let mut b = [0u8; 7];
            fill_random(&mut b);
            seen.extend_from_slice(&b);
            POOL.with_borrow(|p| assert!(p.buf[..p.next].iter().all(|&x| x == 0)));
        }
        // Not a run of zeros or a repeated block: every byte value shows up, and no
        // 16-byte window repeats.
        let values: HashSet<u8> = seen.iter().copied().collect();
        assert!(values.len() > 250, "{}", values.len());
        let windows: HashSet<&[u8]> = seen.chunks(16).collect();
        assert_eq!(windows.len(), seen.len().div_ceil(16));
    }

    #[test]
    fn no_repeats_and_all_symbols_used() {
        let made: Vec<String> = (0..10_000).map(|_| uuid(1_800_000_000)).collect();
        let uuids: HashSet<&String> = made.iter().collect();
        assert_eq!(uuids.len(), 10_000);
        // Made one after another in one second, they sort one after another (until
        // the 15-bit sequence wraps).
        let sorted = made.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(sorted >= 9_990, "{sorted}");
        assert!(uuid(1_800_000_001) > uuid(1_800_000_000));
        let seen: HashSet<char> = (0..200)
            .flat_map(|_| secret().expose().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 62, "every alphanumeric appears in 6400 draws");
    }
}

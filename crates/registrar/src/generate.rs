//! Random identifiers and secrets, from the operating system's CSPRNG.
//!
//! - Device and product secrets: 32 characters of `A-Z a-z 0-9` (about 190 bits).
//! - Generated device uuids: `d` followed by 16 characters of lowercase Crockford base32
//!   (`0-9 a-z` without `i l o u`): 80 random bits, 17 characters, no underscore. The
//!   store's unique index refuses the (astronomically unlikely) repeat, and the registrar
//!   then draws again.
//! - Generated pids: `p` followed by 9 characters of the same base32.

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;

use crate::model::{NewTriplet, Secret};

/// The length of generated secrets, in characters.
pub const SECRET_LEN: usize = 32;

const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Fills `out` with characters drawn uniformly from `alphabet` (at most 256 symbols),
/// by rejection sampling so that no symbol is more likely than another.
fn random_chars(alphabet: &[u8], len: usize) -> String {
    let n = alphabet.len();
    let limit = 256 - 256 % n; // accept bytes below the largest multiple of n
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for &b in &buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % n]));
            }
        }
    }
    out
}

/// A new random secret of [`SECRET_LEN`] alphanumeric characters.
pub fn secret() -> Secret {
    Secret::new(random_chars(ALNUM, SECRET_LEN))
}

/// A new random device uuid (`d` + 16 base32 characters).
pub fn uuid() -> String {
    let mut s = String::from("d");
    s.push_str(&random_chars(BASE32, 16));
    s
}

/// A new random pid (`p` + 9 base32 characters).
pub fn pid() -> String {
    let mut s = String::from("p");
    s.push_str(&random_chars(BASE32, 9));
    s
}

/// A new triplet with a random uuid and secret, the given MAC and barcode.
pub fn triplet(mac: String, barcode: String) -> NewTriplet {
    NewTriplet {
        uuid: uuid(),
        secret: secret(),
        mac,
        barcode,
    }
}

/// `len` random bytes (e.g. a master key or a nonce).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
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
        let u = uuid();
        assert_eq!(u.len(), 17);
        assert!(u.starts_with('d') && !u.contains('_'));
        assert!(crate::model::is_valid_pid(&pid()));
    }

    #[test]
    fn no_repeats_and_all_symbols_used() {
        let uuids: HashSet<String> = (0..10_000).map(|_| uuid()).collect();
        assert_eq!(uuids.len(), 10_000);
        let seen: HashSet<char> = (0..200)
            .flat_map(|_| secret().expose().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 62, "every alphanumeric appears in 6400 draws");
    }
}

//! Secrets at rest: XChaCha20-Poly1305 under an operator-controlled master key.
//!
//! Every product and device secret is stored as `nonce (24 bytes) || ciphertext || tag`,
//! with a nonce that never repeats (a per-process random 128-bit prefix and a counter)
//! and the row's identity as associated data (`product:<pid>`,
//! `triplet:<uuid>`), so that a ciphertext copied onto another row does not decrypt.
//! A copy of the database file alone reveals no secret.
//!
//! The key (32 bytes, written as 64 hex digits) comes from, in order: the
//! `DYNREG_MASTER_KEY` variable, a key file named by the operator, or
//! `<data-dir>/master.key`, which is generated with mode 0600 on first use.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dynreg_registrar::generate;

use crate::Error;

/// The file name of the generated key inside the data dir.
pub const KEY_FILE_NAME: &str = "master.key";
const NONCE_LEN: usize = 24;

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The key itself, as 64 hex digits (e.g. from `DYNREG_MASTER_KEY`).
    Hex(String),
    /// A file holding the key as 64 hex digits; generated with mode 0600 when absent
    /// and the store is new, else it must exist.
    File(PathBuf),
    /// `<data-dir>/master.key`, generated with mode 0600 when absent.
    DataDir,
}

/// The master key that encrypts secrets at rest.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    /// Nonces are this random prefix (drawn when the key is loaded) followed by a
    /// 64-bit counter: unique within the process by construction and across processes
    /// with the probability of a 128-bit collision, without a system call per seal
    /// (a getrandom call per nonce showed in the writer's profile).
    nonce_prefix: [u8; 16],
    nonce_counter: AtomicU64,
    /// Where it came from, for error messages.
    origin: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(from {})", self.origin)
    }
}

fn parse_hex_key(text: &str, origin: &str) -> Result<[u8; 32], Error> {
    let t = text.trim();
    let bad = || {
        Error::Config(format!(
            "master key from {origin} is not 64 hex digits (32 bytes)"
        ))
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(t, &mut key).map_err(|_| bad())?;
    Ok(key)
}

impl MasterKey {
    /// Loads the key from `source`, generating the key file (`<data_dir>/master.key`, or
    /// the file `source` names) if it does not exist and `may_create` (the database is
    /// new). Returns the key and whether it was just created.
    pub fn load(
        source: &KeySource,
        data_dir: &Path,
        may_create: bool,
    ) -> Result<(Self, bool), Error> {
        match source {
            KeySource::Hex(hex) => Ok((
                Self::from_bytes(
                    &parse_hex_key(hex, "DYNREG_MASTER_KEY")?,
                    "DYNREG_MASTER_KEY",
                ),
                false,
            )),
            KeySource::File(_) | KeySource::DataDir => {
                let path = match source {
                    KeySource::File(p) => p.clone(),
                    _ => data_dir.join(KEY_FILE_NAME),
                };
                let origin = path.display().to_string();
                match fs::read_to_string(&path) {
                    Ok(text) => Ok((
                        Self::from_bytes(&parse_hex_key(&text, &origin)?, &origin),
                        false,
                    )),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !may_create => {
                        Err(Error::Config(format!(
                            "the database in {} exists but its master key {origin} is missing: restore the key file, or give the key with DYNREG_MASTER_KEY or a key file",
                            data_dir.display()
                        )))
                    }
                    // A new store: its key is made where the configuration says.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let key = generate::bytes::<32>();
                        write_key_file(&path, &key)?;
                        Ok((Self::from_bytes(&key, &origin), true))
                    }
                    Err(e) => Err(Error::Config(format!(
                        "cannot read master key file {origin}: {e}"
                    ))),
                }
            }
        }
    }

    fn from_bytes(key: &[u8; 32], origin: &str) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            nonce_prefix: generate::bytes::<16>(),
            nonce_counter: AtomicU64::new(0),
            origin: origin.to_owned(),
        }
    }

    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.nonce_prefix);
        let n = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        nonce[16..].copy_from_slice(&n.to_be_bytes());
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        // Encryption into a Vec only fails on absurd lengths (> 256 GiB).
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a value sealed with [`MasterKey::seal`] under the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(Error::WrongKey(self.origin.clone()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| Error::WrongKey(self.origin.clone()))
    }

    /// Decrypts a sealed UTF-8 secret.
    pub fn open_string(&self, aad: &[u8], sealed: &[u8]) -> Result<String, Error> {
        String::from_utf8(self.open(aad, sealed)?).map_err(|_| Error::WrongKey(self.origin.clone()))
    }
}

/// Writes a new key file with mode 0600, refusing to overwrite one.
fn write_key_file(path: &Path, key: &[u8; 32]) -> Result<(), Error> {
    let hex = hex::encode(key) + "\n";
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(path)?;
        f.write_all(hex.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| {
        Error::Config(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_aad_binding() {
        let dir = std::env::temp_dir().join(format!("dynreg-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _ = fs::remove_file(dir.join(KEY_FILE_NAME));
        let (k, created) = MasterKey::load(&KeySource::DataDir, &dir, true).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = MasterKey::load(&KeySource::DataDir, &dir, true).unwrap();
        assert!(!created);
        let sealed = k.seal(b"triplet:u1", b"s3cret");
        let again = k.seal(b"triplet:u1", b"s3cret");
        assert_ne!(sealed[..24], again[..24], "nonces never repeat");
        assert_ne!(sealed, again);
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(k2.open(b"triplet:u1", &sealed).unwrap(), b"s3cret");
        assert!(k2.open(b"triplet:u2", &sealed).is_err());
        let other = MasterKey::load(&KeySource::Hex("00".repeat(32)), &dir, true)
            .unwrap()
            .0;
        assert!(matches!(
            other.open(b"triplet:u1", &sealed),
            Err(Error::WrongKey(_))
        ));
        assert!(MasterKey::load(&KeySource::Hex("zz".repeat(32)), &dir, true).is_err());
        assert!(MasterKey::load(&KeySource::Hex("00".repeat(31)), &dir, true).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}

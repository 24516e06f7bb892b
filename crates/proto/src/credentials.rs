//! CONNECT credentials (PROTOCOL.md section 2): clientId, username, password.
//!
//! - clientId: `register_${pid}_${unique}`; parsed by stripping `register_` and splitting
//!   at the **last** `_`, so a pid may contain `_` and a unique never does.
//! - username: `${pid}|signMethod=${signMethod},ts=${ts}`; the pid is everything before
//!   the first `|`; after it come `key=value` pairs separated by `,`, in any order.
//!   Keys are matched exactly, unknown keys are ignored, `signMethod` and `ts` are
//!   required and may appear once each.
//! - password: lowercase hex of `HMAC(key = secret, message = content)`, where the content
//!   is `uuid=${pid},ts=${ts}` for the seed's methods (`hmacSha1`, `hmacSha256`) and
//!   `uuid=${pid},unique=${unique},ts=${ts}` for the device-bound ones (`hmacSha1u`,
//!   `hmacSha256u`, our extension: such a credential verifies for its own unique only);
//!   either case is accepted when verifying, and the comparison is constant time.
//!
//! The server's clock is never read here: [`Credentials::verify`] takes `now` and the
//! skew window as arguments.

use core::fmt;
use core::str::FromStr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::{MAX_ID_LEN, is_valid_id};

/// The fixed start of every registration clientId.
pub const CLIENT_ID_PREFIX: &str = "register_";

/// The default ts skew window, in seconds, on either side of the server clock.
pub const DEFAULT_TS_WINDOW: u64 = 15 * 60;

/// Why a set of CONNECT credentials was refused.
///
/// One variant per cause, so that the server can log the cause precisely while telling
/// the client nothing beyond the CONNACK code of [`CredentialError::refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The clientId does not start with `register_`.
    #[error("clientId does not start with `register_`")]
    ClientIdPrefix,
    /// The clientId has no `_` after the prefix, an empty pid or unique, or a pid or
    /// unique that is longer than 64 bytes or not usable as one topic level.
    #[error("clientId is not `register_<pid>_<unique>` with a valid pid and unique")]
    ClientIdFormat,
    /// The username has no `|`, an invalid pid, a parameter that is not `key=value`, a
    /// missing or repeated `signMethod` or `ts`.
    #[error("username is not `<pid>|signMethod=<method>,ts=<ts>`")]
    UsernameFormat,
    /// The username's `ts` is not a decimal number of seconds that fits in 64 bits.
    #[error("username ts is not a decimal number of seconds")]
    InvalidTs,
    /// The username's `signMethod` is none of `hmacSha1`, `hmacSha256`, `hmacSha1u`,
    /// `hmacSha256u`.
    #[error("unknown signMethod (expected hmacSha1, hmacSha256, hmacSha1u or hmacSha256u)")]
    UnknownSignMethod,
    /// The pid in the clientId differs from the pid in the username.
    #[error("pid in clientId differs from pid in username")]
    PidMismatch,
    /// `ts` lies further in the past than the skew window allows.
    #[error("ts {ts} is older than the window allows (server time {now})")]
    TsTooOld {
        /// The ts the client signed.
        ts: u64,
        /// The server time it was checked against.
        now: u64,
    },
    /// `ts` lies further in the future than the skew window allows.
    #[error("ts {ts} is further in the future than the window allows (server time {now})")]
    TsInFuture {
        /// The ts the client signed.
        ts: u64,
        /// The server time it was checked against.
        now: u64,
    },
    /// The password is not the hex HMAC of the content under the product secret.
    #[error("password is not the signature of the content under the product secret")]
    BadSignature,
}

impl CredentialError {
    /// The CONNACK refusal this error is answered with (PROTOCOL.md section 2).
    pub const fn refusal(self) -> Refusal {
        match self {
            Self::ClientIdPrefix | Self::ClientIdFormat => Refusal::ClientIdNotValid,
            _ => Refusal::BadCredentials,
        }
    }
}

/// A CONNECT refusal, as the contract maps it to MQTT 3.1.1 return codes and MQTT 5
/// reason codes. Nothing beyond this code is told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// Malformed credentials, bad signature, ts outside the window.
    BadCredentials,
    /// Well-formed credentials for a product that is unknown or disabled.
    NotAuthorized,
    /// The clientId is not a registration clientId.
    ClientIdNotValid,
    /// A rate limit refused the connection.
    QuotaExceeded,
    /// The service could not check the credentials now (storage unavailable).
    ServerUnavailable,
    /// The source address is banned for a while after too many failed CONNECTs.
    Banned,
}

impl Refusal {
    /// The MQTT 3.1.1 CONNACK return code: 4 (bad user name or password),
    /// 5 (not authorized), or 3 (server unavailable, when the credentials could not be
    /// checked at all). 3.1.1 has no quota code; rate limits answer 5.
    pub const fn v3_return_code(self) -> u8 {
        match self {
            Self::BadCredentials | Self::ClientIdNotValid => 4,
            Self::NotAuthorized | Self::QuotaExceeded | Self::Banned => 5,
            Self::ServerUnavailable => 3,
        }
    }

    /// The MQTT 5 CONNACK reason code: 0x86, 0x87, 0x85, 0x97, 0x88 (server
    /// unavailable) or 0x8A (banned).
    pub const fn v5_reason_code(self) -> u8 {
        match self {
            Self::BadCredentials => 0x86,
            Self::NotAuthorized => 0x87,
            Self::ClientIdNotValid => 0x85,
            Self::QuotaExceeded => 0x97,
            Self::ServerUnavailable => 0x88,
            Self::Banned => 0x8A,
        }
    }
}

/// The HMAC used to sign the password, and what it signs.
///
/// The seed's methods sign `uuid=${pid},ts=${ts}`, which does not name the device: two
/// devices of one product that sign in the same second send the same credential. The
/// device-bound methods (`...u`, our extension) sign `uuid=${pid},unique=${unique},ts=${ts}`,
/// so a credential verifies for the unique it was made for and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignMethod {
    /// `hmacSha1`: HMAC-SHA1 of the seed's content, 40 hex digits.
    HmacSha1,
    /// `hmacSha256`: HMAC-SHA256 of the seed's content, 64 hex digits.
    HmacSha256,
    /// `hmacSha1u`: HMAC-SHA1 of the device-bound content, 40 hex digits.
    HmacSha1Bound,
    /// `hmacSha256u`: HMAC-SHA256 of the device-bound content, 64 hex digits.
    HmacSha256Bound,
}

impl SignMethod {
    /// Every method, the seed's first.
    pub const ALL: [Self; 4] = [
        Self::HmacSha1,
        Self::HmacSha256,
        Self::HmacSha1Bound,
        Self::HmacSha256Bound,
    ];

    /// The canonical name, as written in the username (`hmacSha1`, `hmacSha256`,
    /// `hmacSha1u`, `hmacSha256u`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => "hmacSha1",
            Self::HmacSha256 => "hmacSha256",
            Self::HmacSha1Bound => "hmacSha1u",
            Self::HmacSha256Bound => "hmacSha256u",
        }
    }

    /// The length of the raw HMAC output in bytes (20 or 32).
    pub const fn mac_len(self) -> usize {
        match self {
            Self::HmacSha1 | Self::HmacSha1Bound => 20,
            Self::HmacSha256 | Self::HmacSha256Bound => 32,
        }
    }

    /// Whether the signed content names the unique (the device-bound methods).
    pub const fn is_bound(self) -> bool {
        matches!(self, Self::HmacSha1Bound | Self::HmacSha256Bound)
    }

    /// Parses a sign method name without regard to case.
    pub fn parse(s: &str) -> Result<Self, CredentialError> {
        Self::ALL
            .into_iter()
            .find(|m| s.eq_ignore_ascii_case(m.name()))
            .ok_or(CredentialError::UnknownSignMethod)
    }
}

impl FromStr for SignMethod {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed registration clientId, borrowing from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId<'a> {
    /// The product id.
    pub pid: &'a str,
    /// The device's own stable id (never contains `_`).
    pub unique: &'a str,
}

impl<'a> ClientId<'a> {
    /// Builds a clientId, checking that pid and unique are valid ids and that unique
    /// has no `_`.
    pub fn new(pid: &'a str, unique: &'a str) -> Result<Self, CredentialError> {
        if is_valid_id(pid) && crate::is_valid_unique(unique) {
            Ok(Self { pid, unique })
        } else {
            Err(CredentialError::ClientIdFormat)
        }
    }

    /// Parses `register_${pid}_${unique}`, splitting at the last `_`.
    pub fn parse(s: &'a str) -> Result<Self, CredentialError> {
        let rest = s
            .strip_prefix(CLIENT_ID_PREFIX)
            .ok_or(CredentialError::ClientIdPrefix)?;
        let (pid, unique) = rest
            .rsplit_once('_')
            .ok_or(CredentialError::ClientIdFormat)?;
        Self::new(pid, unique)
    }
}

impl fmt::Display for ClientId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CLIENT_ID_PREFIX}{}_{}", self.pid, self.unique)
    }
}

/// A parsed username, borrowing from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Username<'a> {
    /// The product id.
    pub pid: &'a str,
    /// The HMAC the password was signed with.
    pub sign_method: SignMethod,
    /// The signed Unix time, in seconds.
    pub ts: u64,
}

impl<'a> Username<'a> {
    /// Parses `${pid}|k=v,k=v...`; see the module documentation for the rules.
    pub fn parse(s: &'a str) -> Result<Self, CredentialError> {
        let (pid, params) = s.split_once('|').ok_or(CredentialError::UsernameFormat)?;
        if !is_valid_id(pid) {
            return Err(CredentialError::UsernameFormat);
        }
        let mut method = None;
        let mut ts = None;
        for param in params.split(',') {
            let (key, value) = param
                .split_once('=')
                .ok_or(CredentialError::UsernameFormat)?;
            let slot = match key {
                "signMethod" => &mut method,
                "ts" => &mut ts,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(CredentialError::UsernameFormat);
            }
        }
        let (Some(method), Some(ts)) = (method, ts) else {
            return Err(CredentialError::UsernameFormat);
        };
        Ok(Self {
            pid,
            sign_method: SignMethod::parse(method)?,
            ts: parse_ts(ts)?,
        })
    }
}

impl fmt::Display for Username<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|signMethod={},ts={}",
            self.pid, self.sign_method, self.ts
        )
    }
}

/// Parses a ts: 1 to 20 ASCII digits, no sign, no spaces, fitting in a `u64`.
fn parse_ts(s: &str) -> Result<u64, CredentialError> {
    if s.is_empty() || s.len() > 20 {
        return Err(CredentialError::InvalidTs);
    }
    s.bytes().try_fold(0u64, |acc, b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Err(CredentialError::InvalidTs);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(CredentialError::InvalidTs)
    })
}

/// The parsed CONNECT credentials of a registration connection: the clientId and the
/// username, checked to agree on the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credentials<'a> {
    /// The product id (the same in clientId and username).
    pub pid: &'a str,
    /// The device's unique, from the clientId.
    pub unique: &'a str,
    /// The HMAC the password was signed with.
    pub sign_method: SignMethod,
    /// The signed Unix time, in seconds.
    pub ts: u64,
}

impl<'a> Credentials<'a> {
    /// Parses the clientId and the username and checks that their pids agree.
    ///
    /// This needs no secret: the caller uses [`Credentials::pid`] to look up the
    /// product, then calls [`Credentials::verify`].
    pub fn parse(client_id: &'a str, username: &'a str) -> Result<Self, CredentialError> {
        let id = ClientId::parse(client_id)?;
        let user = Username::parse(username)?;
        if id.pid != user.pid {
            return Err(CredentialError::PidMismatch);
        }
        Ok(Self {
            pid: id.pid,
            unique: id.unique,
            sign_method: user.sign_method,
            ts: user.ts,
        })
    }

    /// The clientId these credentials were parsed from.
    pub fn client_id(&self) -> ClientId<'a> {
        ClientId {
            pid: self.pid,
            unique: self.unique,
        }
    }

    /// The username these credentials were parsed from, in canonical form.
    pub fn username(&self) -> Username<'a> {
        Username {
            pid: self.pid,
            sign_method: self.sign_method,
            ts: self.ts,
        }
    }

    /// Checks the ts against `now` ± `window` seconds, then the password against the
    /// product `secret` (constant-time comparison).
    pub fn verify(
        &self,
        secret: &[u8],
        password: &[u8],
        now: u64,
        window: u64,
    ) -> Result<(), CredentialError> {
        check_ts(self.ts, now, window)?;
        verify_password(
            self.sign_method,
            secret,
            self.pid,
            self.unique,
            self.ts,
            password,
        )
    }
}

/// Checks that `ts` lies within `now - window ..= now + window`.
pub fn check_ts(ts: u64, now: u64, window: u64) -> Result<(), CredentialError> {
    if ts.saturating_add(window) < now {
        Err(CredentialError::TsTooOld { ts, now })
    } else if ts > now.saturating_add(window) {
        Err(CredentialError::TsInFuture { ts, now })
    } else {
        Ok(())
    }
}

/// A password: the lowercase hex of an HMAC, held inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Password {
    buf: [u8; 64],
    len: u8,
}

impl Password {
    /// The password as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into `buf`.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The password as bytes, as sent in the CONNECT packet.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A password is a bearer credential for its ts window: never print it.
        f.write_str("Password(..)")
    }
}

/// Feeds the signed content into `mac` without allocating: `uuid=${pid},ts=${ts}`, or
/// `uuid=${pid},unique=${unique},ts=${ts}` when `unique` is given (the device-bound
/// methods).
fn feed_content<M: Mac>(mut mac: M, pid: &str, unique: Option<&str>, ts: u64) -> M {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = ts;
    loop {
        at -= 1;
        // `v % 10` is below 10, so the cast is exact.
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    mac.update(b"uuid=");
    mac.update(pid.as_bytes());
    if let Some(unique) = unique {
        mac.update(b",unique=");
        mac.update(unique.as_bytes());
    }
    mac.update(b",ts=");
    mac.update(&digits[at..]);
    mac
}

/// The HMAC of `method` over the content, keyed with `secret`, into `out` (20 or 32
/// bytes).
fn tag(method: SignMethod, secret: &[u8], pid: &str, unique: &str, ts: u64, out: &mut [u8]) {
    let unique = method.is_bound().then_some(unique);
    match method {
        SignMethod::HmacSha1 | SignMethod::HmacSha1Bound => out.copy_from_slice(
            &feed_content(keyed::<Hmac<Sha1>>(secret), pid, unique, ts)
                .finalize()
                .into_bytes(),
        ),
        SignMethod::HmacSha256 | SignMethod::HmacSha256Bound => out.copy_from_slice(
            &feed_content(keyed::<Hmac<Sha256>>(secret), pid, unique, ts)
                .finalize()
                .into_bytes(),
        ),
    }
}

fn keyed<M: hmac::digest::KeyInit>(secret: &[u8]) -> M {
    match M::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC is defined for keys of every length; RustCrypto never refuses one.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// Signs the content for `pid` and `ts` (and `unique`, under a device-bound method;
/// the seed's methods ignore it) with the product `secret`, giving the password a
/// device sends (lowercase hex).
pub fn sign(method: SignMethod, secret: &[u8], pid: &str, unique: &str, ts: u64) -> Password {
    let mut raw = [0u8; 32];
    let n = method.mac_len();
    tag(method, secret, pid, unique, ts, &mut raw[..n]);
    let mut out = Password {
        buf: [0; 64],
        len: 0,
    };
    // Twice the MAC's length, as given: cannot fail.
    let _ = hex::encode_to_slice(&raw[..n], &mut out.buf[..2 * n]);
    // 2 * 32 at most: fits a u8.
    out.len = (2 * n) as u8;
    out
}

/// Verifies a password (hex, either case) for `pid` and `ts` (and `unique`, under a
/// device-bound method) under the product `secret`. The HMAC comparison is constant
/// time.
pub fn verify_password(
    method: SignMethod,
    secret: &[u8],
    pid: &str,
    unique: &str,
    ts: u64,
    password: &[u8],
) -> Result<(), CredentialError> {
    let mut raw = [0u8; 32];
    let raw = &mut raw[..method.mac_len()];
    // The length and alphabet of the password are public; only its value is compared
    // in constant time, by `verify_slice`.
    hex::decode_to_slice(password, raw).map_err(|_| CredentialError::BadSignature)?;
    let unique = method.is_bound().then_some(unique);
    let ok = match method {
        SignMethod::HmacSha1 | SignMethod::HmacSha1Bound => {
            feed_content(keyed::<Hmac<Sha1>>(secret), pid, unique, ts).verify_slice(raw)
        }
        SignMethod::HmacSha256 | SignMethod::HmacSha256Bound => {
            feed_content(keyed::<Hmac<Sha256>>(secret), pid, unique, ts).verify_slice(raw)
        }
    };
    ok.map_err(|_| CredentialError::BadSignature)
}

/// Parses the clientId and username and verifies the password in one call: what a
/// server does at CONNECT once it knows the product's secret and skew window.
pub fn verify_connect<'a>(
    client_id: &'a str,
    username: &'a str,
    password: &[u8],
    secret: &[u8],
    now: u64,
    window: u64,
) -> Result<Credentials<'a>, CredentialError> {
    let creds = Credentials::parse(client_id, username)?;
    creds.verify(secret, password, now, window)?;
    Ok(creds)
}

// `MAX_ID_LEN` bounds the clientId: prefix + pid + `_` + unique.
/// The longest clientId that can be valid, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = CLIENT_ID_PREFIX.len() + 2 * MAX_ID_LEN + 1;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn client_id_splits_at_last_underscore() {
        let id = ClientId::parse("register_my_pid_u1").unwrap();
        assert_eq!((id.pid, id.unique), ("my_pid", "u1"));
        assert_eq!(id.to_string(), "register_my_pid_u1");
        assert_eq!(
            ClientId::parse("register_pid"),
            Err(CredentialError::ClientIdFormat)
        );
        assert_eq!(
            ClientId::parse("register__u"),
            Err(CredentialError::ClientIdFormat)
        );
        assert_eq!(
            ClientId::parse("registr_p_u"),
            Err(CredentialError::ClientIdPrefix)
        );
        assert_eq!(
            ClientId::parse("register_p/x_u"),
            Err(CredentialError::ClientIdFormat)
        );
        assert_eq!(
            ClientId::new("p", "a_b"),
            Err(CredentialError::ClientIdFormat)
        );
        let long = "u".repeat(65);
        assert_eq!(
            ClientId::new("p", &long),
            Err(CredentialError::ClientIdFormat)
        );
        assert!(ClientId::new("p", &long[..64]).is_ok());
    }

    #[test]
    fn username_params_any_order_unknown_ignored() {
        let u = Username::parse("p|x=1,ts=12,foo=,signMethod=HMACSHA1").unwrap();
        assert_eq!(u.pid, "p");
        assert_eq!(u.ts, 12);
        assert_eq!(u.sign_method, SignMethod::HmacSha1);
        assert_eq!(u.to_string(), "p|signMethod=hmacSha1,ts=12");
        for (name, m) in [
            ("HMACSHA1U", SignMethod::HmacSha1Bound),
            ("hmacsha256u", SignMethod::HmacSha256Bound),
        ] {
            assert_eq!(SignMethod::parse(name), Ok(m));
            assert_eq!(SignMethod::parse(m.name()), Ok(m));
        }
    }

    #[test]
    fn username_refusals() {
        use CredentialError::*;
        for (s, e) in [
            ("p", UsernameFormat),
            ("|signMethod=hmacSha1,ts=1", UsernameFormat),
            ("p|signMethod=hmacSha1", UsernameFormat),
            ("p|ts=1", UsernameFormat),
            ("p|signMethod=hmacSha1,ts=1,ts=2", UsernameFormat),
            ("p|signMethod=hmacSha1,ts", UsernameFormat),
            ("p|signMethod=md5,ts=1", UnknownSignMethod),
            ("p|signMethod=hmacSha1,ts=", InvalidTs),
            ("p|signMethod=hmacSha1,ts=-1", InvalidTs),
            ("p|signMethod=hmacSha1,ts=+1", InvalidTs),
            ("p|signMethod=hmacSha1,ts=18446744073709551616", InvalidTs),
        ] {
            assert_eq!(Username::parse(s), Err(e), "{s}");
        }
        assert_eq!(
            Username::parse("p|signMethod=hmacSha1,ts=18446744073709551615")
                .unwrap()
                .ts,
            u64::MAX
        );
    }

    #[test]
    fn ts_window_edges() {
        assert!(check_ts(100, 1000, 900).is_ok());
        assert!(check_ts(1900, 1000, 900).is_ok());
        assert_eq!(
            check_ts(99, 1000, 900),
            Err(CredentialError::TsTooOld { ts: 99, now: 1000 })
        );
        assert_eq!(
            check_ts(1901, 1000, 900),
            Err(CredentialError::TsInFuture {
                ts: 1901,
                now: 1000
            })
        );
        assert!(check_ts(u64::MAX, u64::MAX, 900).is_ok());
        assert!(check_ts(0, 0, 0).is_ok());
    }

    #[test]
    fn sign_verify_either_case() {
        for m in SignMethod::ALL {
            let pw = sign(m, b"secret", "pid", "u", 42);
            assert_eq!(pw.as_str().len(), m.mac_len() * 2);
            let ok = |secret: &[u8], pid, unique, ts, pw: &[u8]| {
                verify_password(m, secret, pid, unique, ts, pw).is_ok()
            };
            assert!(ok(b"secret", "pid", "u", 42, pw.as_bytes()));
            let upper = pw.as_str().to_ascii_uppercase();
            assert!(ok(b"secret", "pid", "u", 42, upper.as_bytes()));
            assert!(!ok(b"secreT", "pid", "u", 42, pw.as_bytes()));
            assert!(!ok(b"secret", "pid", "u", 43, pw.as_bytes()));
            assert!(!ok(b"secret", "pie", "u", 42, pw.as_bytes()));
            assert!(!ok(b"secret", "pid", "u", 42, &pw.as_bytes()[1..]));
            // Only the device-bound methods tie the credential to its unique.
            assert_eq!(ok(b"secret", "pid", "v", 42, pw.as_bytes()), !m.is_bound());
        }
        assert_eq!(
            alloc::format!("{:?}", sign(SignMethod::HmacSha1, b"s", "p", "u", 0)),
            "Password(..)"
        );
    }

    #[test]
    fn refusal_codes() {
        assert_eq!(CredentialError::BadSignature.refusal().v3_return_code(), 4);
        assert_eq!(
            CredentialError::BadSignature.refusal().v5_reason_code(),
            0x86
        );
        assert_eq!(
            CredentialError::ClientIdPrefix.refusal().v5_reason_code(),
            0x85
        );
        assert_eq!(Refusal::NotAuthorized.v5_reason_code(), 0x87);
        assert_eq!(Refusal::QuotaExceeded.v5_reason_code(), 0x97);
        assert_eq!(Refusal::QuotaExceeded.v3_return_code(), 5);
    }
}

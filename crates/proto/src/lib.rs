//! # dynreg-proto: the dynamic-registration wire contract
//!
//! Everything a device and the cloud must agree on, and nothing else: no IO, no clock,
//! no allocation that the contract does not need. The server (`dynreg serve`), the device
//! SDK and firmware written in Rust all depend on this crate, so the contract is written
//! once. The normative text is `PROTOCOL.md`; the project's decisions where it is silent
//! are documented on the items here and in `docs/`.
//!
//! ## Layout
//! - [`credentials`]: the CONNECT clientId, username and password: parse, format,
//!   [`sign`](credentials::sign) and [`verify`](credentials::Credentials::verify)
//!   (HMAC-SHA1 / HMAC-SHA256, hex, constant-time comparison, ts window).
//! - [`topic`]: the request and response topics of a device.
//! - [`message`] (feature `serde`): the register request and reply JSON messages.
//! - [`status`]: the `res` status-code table, with retry hints.
//!
//! ## Features
//! - `std` (default): `std::error::Error` for the error types.
//! - `serde` (default): the JSON messages, using `serde_json` with `alloc` only.
//!
//! Without default features the crate is `no_std` + `alloc` and fit for microcontrollers.
//!
//! ## Example
//! ```
//! use dynreg_proto::credentials::{sign, Credentials, SignMethod};
//!
//! let password = sign(SignMethod::HmacSha256, b"Zk3mQ8vR2tY6wP1n", "p7kq2x9d", "8f14e45fceea167a", 1626197189);
//! let creds = Credentials::parse(
//!     "register_p7kq2x9d_8f14e45fceea167a",
//!     "p7kq2x9d|signMethod=hmacSha256,ts=1626197189",
//! )
//! .unwrap();
//! assert_eq!(creds.unique, "8f14e45fceea167a");
//! creds
//!     .verify(b"Zk3mQ8vR2tY6wP1n", password.as_bytes(), 1626197189, 900)
//!     .unwrap();
//! ```
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod credentials;
#[cfg(feature = "serde")]
pub mod message;
pub mod status;
pub mod topic;

pub use credentials::{ClientId, CredentialError, Credentials, Refusal, SignMethod, Username};
#[cfg(feature = "serde")]
pub use message::{MessageError, RegisterReply, RegisterRequest, ReplyData, RequestData};
pub use status::Status;
pub use topic::{Topic, TopicError, TopicKind};

/// The current Unix second: the `ts` a device signs, and the `now` every decision of
/// dynreg's is given (the wire contract itself never reads a clock; with `std`, this is
/// the one place the rest of dynreg reads it). 0 before 1970.
#[cfg(feature = "std")]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest pid or unique accepted, in bytes (PROTOCOL.md section 2).
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` may be used as a pid or unique: non-empty, at most [`MAX_ID_LEN`]
/// bytes, and usable as one MQTT topic level (no `/`, `+`, `#`, no control characters
/// and no NUL).
///
/// Underscores are allowed here; the clientId rules forbid them in `unique`
/// ([`is_valid_unique`]).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| !matches!(c, '/' | '+' | '#') && !c.is_control())
}

/// Whether `s` may be a device's unique: a valid id ([`is_valid_id`]) without `_`
/// (the clientId splits at its last `_`).
pub fn is_valid_unique(s: &str) -> bool {
    is_valid_id(s) && !s.contains('_')
}

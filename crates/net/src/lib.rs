//! # dynreg-net: how dynreg reaches other systems
//!
//! What every client of dynreg's shares when it connects to something else (a broker,
//! the webhook, PostgreSQL), written once:
//! - [`tls`]: whom a TLS client trusts (the system's roots, a private CA, or both),
//!   and its rustls configuration;
//! - [`url`]: URLs that carry credentials, shown without their password.
//!
//! ## Layout
//! - `tls.rs`: [`tls::Roots`], [`tls::client_config`].
//! - `url.rs`: [`url::redact`], [`url::userinfo`].

pub mod tls;
pub mod url;

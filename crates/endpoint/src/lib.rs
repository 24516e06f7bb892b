//! # dynreg-endpoint: the embedded MQTT registration endpoint
//!
//! A purpose-built registration endpoint, not a general broker: it routes nothing
//! between clients, so no device can ever see another's messages.
//!
//! ## Layout
//! - [`wire`]: version-independent packets ([`wire::In`], [`wire::Out`]) and their
//!   translation from and to the `rmqtt-codec` MQTT 3.1.1 / 5 packets.
//! - [`session`]: the per-connection state machine, with no IO and no clock (its
//!   unit tests in `session/tests.rs`).
//! - [`server`]: the tokio accept loop and the IO task that drives a session.
//! - [`limit`]: the limit on connections per source address that have not sent their
//!   CONNECT yet (`PendingPerIp`).

pub mod limit;
pub mod server;
pub mod session;
pub mod wire;

pub use server::{Endpoint, EndpointConfig, Listeners, TlsSettings};
pub use session::{Action, CloseReason, Session, SessionConfig};

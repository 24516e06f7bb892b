//! Where device events go: the seam between the outbox's deliverer (`dynreg-http`'s
//! `outbox` module) and its destinations (the webhook; in attached mode, the broker,
//! in `dynreg-attach`).
//!
//! The deliverer reads events from the store's outbox, keeps each device's in order,
//! and hands every event to each [`Sink`] in turn; an event leaves the outbox when all
//! of them took it. A sink that fails makes the deliverer retry the event, on every
//! sink, with backoff: delivery is at least once, and the event's
//! [`Event::id`] lets a receiver drop what it already has.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// An event on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its id, the same at every delivery (the id of its audit line).
    pub id: u64,
    /// `device.registered`, `device.reregistered`, `device.revoked`, `device.reset` or
    /// `pool.low`.
    pub kind: String,
    /// The product.
    pub pid: String,
    /// The JSON document sent: `{"type", "id", "time", "data"}`.
    pub body: Vec<u8>,
}

/// Why a sink did not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    /// The destination cannot be reached at all (no connection, no answer in time):
    /// the deliverer does not try the other devices' events on this connection this
    /// round. Otherwise only this event (and its device's later ones) wait.
    pub unreachable: bool,
    /// What happened, for the log.
    pub message: String,
}

impl SinkError {
    /// The destination cannot be reached.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self {
            unreachable: true,
            message: message.into(),
        }
    }

    /// The destination refused this event.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            unreachable: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// The future of [`Sink::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination of events: one connection, sending one event at a time (the
/// deliverer keeps several, each with its share of the devices).
pub trait Sink: Send {
    /// Sends `event`, and answers once the destination has taken it (a 2xx, a
    /// publisher confirm, a PUBACK).
    fn send<'a>(&'a mut self, event: &'a Event) -> SendFuture<'a>;

    /// The destination, for logs (without credentials).
    fn describe(&self) -> String;

    /// `webhook`, `amqp` or `mqtt`: the `sink` label of the metrics.
    fn kind(&self) -> &'static str;
}

/// Makes one [`Sink`] per connection the deliverer keeps.
pub trait SinkFactory: Send + Sync {
    /// A new sink (it connects when first used).
    fn make(&self) -> Box<dyn Sink>;

    /// The destination, for logs (without credentials).
    fn describe(&self) -> String;
}

//! # dynreg-attach: register requests taken from a broker cluster
//!
//! In attached mode devices connect to the platform's broker, which asks dynreg's HTTP
//! hooks (`dynreg-http`) about every CONNECT and topic. The requests devices publish
//! are consumed here, through the broker's own load balancing, and answered through
//! it:
//! - [`amqp`]: RabbitMQ. A quorum queue bound to `amq.topic` with
//!   `register.v2.*.*.register`, consumed with a bounded prefetch; the reply is
//!   published to `amq.topic` with publisher confirms, then the request is acked.
//! - [`mqtt`]: MQTT 5 brokers (EMQX, HiveMQ, Mosquitto 2). A shared subscription
//!   `$share/dynreg/register/v2/+/+/register` at QoS 1 with clean start and no
//!   session; the reply goes out at QoS 1, then the request is acked.
//!
//! Each request is decided by [`Registrar::register_payload`], as at the embedded
//! endpoint, for the pid and unique of the topic it was published on: the broker's
//! authorization hook allowed the publisher only its own topic.
//!
//! Delivery is at least once: a request is acked only after its reply went out, so a
//! worker that dies first leaves it to be redelivered (registration is idempotent; the
//! device gets the same triplet). A lost broker connection is retried with backoff
//! ([`dynreg_registrar::pace::Backoff`]), and the queue or subscription is set up again on every connection.
//!
//! ## Layout
//! - [`amqp`], [`mqtt`]: the two kinds of worker; `lib.rs`: [`Target`] (the `--attach`
//!   URL, parsed with `dynreg_net::url`), [`WorkerConfig`], [`run`].
//! - [`events`]: the outbox's broker destination (`serve --broker-events`).

pub mod amqp;
pub mod events;
pub mod mqtt;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dynreg_net::url::{Url, redact};
use dynreg_registrar::{Device, Registrar, Store};
use tokio_util::sync::CancellationToken;

/// The queue the AMQP worker declares and consumes, shared by every instance.
pub const DEFAULT_QUEUE: &str = "dynreg.register";
/// The shared-subscription group of the MQTT worker.
pub const SHARE_GROUP: &str = "dynreg";
/// Requests in flight per worker by default (AMQP prefetch, MQTT receive maximum).
pub const DEFAULT_INFLIGHT: u16 = 64;

/// Where a worker attaches: parsed from an `--attach` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// `amqp://` or `amqps://` (RabbitMQ), the URL as lapin reads it (user, password,
    /// host, port, vhost, `heartbeat` and the like).
    Amqp(String),
    /// `mqtt://` or `mqtts://`.
    Mqtt(MqttTarget),
}

/// An MQTT broker address.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttTarget {
    /// Host name or address.
    pub host: String,
    /// Port (default 1883, or 8883 with TLS).
    pub port: u16,
    /// TLS with the system's roots.
    pub tls: bool,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Target {
    /// The URL without its password (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Amqp(url) => f.write_str(&redact(url)),
            Self::Mqtt(m) => {
                let scheme = if m.tls { "mqtts" } else { "mqtt" };
                match &m.username {
                    Some(u) => write!(f, "{scheme}://{u}@{}:{}", m.host, m.port),
                    None => write!(f, "{scheme}://{}:{}", m.host, m.port),
                }
            }
        }
    }
}

impl Target {
    /// Parses an `--attach` URL; the error names the URL (without its password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let shown = redact(url);
        let bad = |why: &dyn fmt::Display| format!("--attach {shown}: {why}");
        let parsed = Url::parse(url).map_err(|e| {
            bad(&format_args!(
                "not a URL (amqp://, amqps://, mqtt:// or mqtts://): {e}"
            ))
        })?;
        match parsed.scheme() {
            "amqp" | "amqps" => Ok(Self::Amqp(url.to_owned())),
            s @ ("mqtt" | "mqtts") => {
                let tls = s == "mqtts";
                let host = dynreg_net::url::host(&parsed).ok_or_else(|| bad(&"no host"))?;
                let (username, password) =
                    dynreg_net::url::userinfo(&parsed).map_err(|e| bad(&e))?;
                Ok(Self::Mqtt(MqttTarget {
                    host,
                    port: parsed.port().unwrap_or(if tls { 8883 } else { 1883 }),
                    tls,
                    username,
                    password,
                }))
            }
            other => Err(bad(&format_args!(
                "scheme \"{other}\" is not amqp, amqps, mqtt or mqtts"
            ))),
        }
    }
}

/// The kind of AMQP queue the workers declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A quorum queue (replicated with Raft): survives the loss of a minority of its
    /// members, so on three nodes or more any one node may go. On two nodes it stops
    /// while either is down.
    #[default]
    Quorum,
    /// A classic queue, on the node of the first worker that declares it: survives the
    /// loss of any other node, not of its own.
    Classic,
}

impl QueueType {
    /// Parses `quorum` or `classic`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(format!(
                "\"{other}\" is not a queue type: quorum or classic"
            )),
        }
    }

    /// The value of the queue's `x-queue-type` argument.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests in flight at once (AMQP prefetch, MQTT receive maximum).
    pub inflight: u16,
    /// The AMQP queue.
    pub queue: String,
    /// The AMQP queue's type.
    pub queue_type: QueueType,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            inflight: DEFAULT_INFLIGHT,
            queue: DEFAULT_QUEUE.to_owned(),
            queue_type: QueueType::default(),
        }
    }
}

/// What answers a register request taken from a broker: the registrar in service
/// (`impl Answer for Registrar<S>`), a canned reply when measuring the broker's own floor
/// (`dynreg bench responder --attach`).
pub trait Answer: Send + Sync + 'static {
    /// The reply to publish for `device`'s request `payload`, if any (`via` names the
    /// worker kind for the log).
    fn answer(
        &self,
        via: &'static str,
        device: Device<'_>,
        payload: &[u8],
    ) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send;
}

impl<S: Store> Answer for Registrar<S> {
    /// Decided by [`Registrar::register_payload`] and logged by `Handled::log`, as at
    /// the embedded endpoint.
    async fn answer(
        &self,
        via: &'static str,
        device: Device<'_>,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let handled = self
            .register_payload(dynreg_proto::unix_now(), device, payload)
            .await;
        handled.log(&via, device);
        handled.reply.map(|r| r.to_json())
    }
}

/// Runs a worker on `target` until `stop` is cancelled: consuming stops, the requests
/// in flight are finished and acked, and the connection is closed. Broker failures
/// are logged and retried; this returns only after `stop`.
pub async fn run<A: Answer>(
    target: Target,
    answer: Arc<A>,
    config: WorkerConfig,
    stop: CancellationToken,
) {
    match target {
        Target::Amqp(url) => amqp::run(&url, answer, &config, stop).await,
        Target::Mqtt(m) => mqtt::run(&m, answer, &config, stop).await,
    }
}

/// The rumqttc transport of an `mqtts://` broker: TLS trusting the system's roots.
fn tls_transport() -> Result<rumqttc::Transport, dynreg_net::tls::TlsError> {
    let config = dynreg_net::tls::client_config(dynreg_net::tls::Roots::System)?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ))
}

/// Sleeps `d` unless `stop` comes first; false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

/// A random suffix for client ids and consumer tags.
fn random_tag() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Target::parse("amqp://w:pw@127.0.0.1:5672/%2f").unwrap(),
            Target::Amqp("amqp://w:pw@127.0.0.1:5672/%2f".into())
        );
        assert_eq!(
            Target::parse("amqp://w:pw@h/v").unwrap().to_string(),
            "amqp://w:***@h/v"
        );
        let Target::Mqtt(m) = Target::parse("mqtts://dyn%40reg:p%3Aw@broker.example:8884").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                m.host.as_str(),
                m.port,
                m.tls,
                m.username.as_deref(),
                m.password.as_deref()
            ),
            ("broker.example", 8884, true, Some("dyn@reg"), Some("p:w"))
        );
        let Target::Mqtt(m) = Target::parse("mqtt://[::1]").unwrap() else {
            panic!()
        };
        assert_eq!((m.host.as_str(), m.port), ("::1", 1883));
        let e = Target::parse("http://u:secret@x").unwrap_err();
        assert!(e.contains("http") && !e.contains("secret"), "{e}");
        let e = Target::parse("mqtt://u:secret@x:port").unwrap_err();
        assert!(e.contains("port") && !e.contains("secret"), "{e}");
    }
}

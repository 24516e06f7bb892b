//! Device events published to the broker (attached mode, `serve --broker-events`).
//!
//! The outbox's deliverer (`dynreg-http`'s `outbox::run`) hands each event to
//! [`BrokerEvents`] as to the webhook: in order per device, at least once, retried
//! with backoff. Each event is published as its JSON document (the webhook's body) on
//! the topic `{prefix}/{pid}/{kind}` with the kind's `.` written as `/`, e.g.
//! `dynreg/events/P1/device/registered`:
//! - **AMQP** (RabbitMQ): to `amq.topic` with the routing key written the AMQP way
//!   (`dynreg.events.P1.device.registered`, which is what RabbitMQ's MQTT plugin
//!   delivers to MQTT subscribers of the topic), persistent, `mandatory`, with a
//!   publisher confirm. An event no queue takes is returned by the broker and tried
//!   again later: it waits in the outbox until a queue is bound.
//! - **MQTT** 5: at QoS 1, not retained, taken on its PUBACK. A PUBACK of "no matching
//!   subscribers" leaves the event in the outbox too.
//!
//! The events go to the first `--attach` broker; when it cannot be reached, the next
//! one is tried (all of them should be nodes of one cluster).

use std::time::Duration;

use dynreg_registrar::events::{Event, SendFuture, Sink, SinkError, SinkFactory};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};

use crate::{MqttTarget, Target, random_tag};

/// How long connecting, or one publish and its confirm, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a `--broker-events` topic prefix: segments of letters, digits, `-` and `_`
/// separated by `/` (so that it reads the same as an MQTT topic and an AMQP routing
/// key).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{prefix}\" is not a topic prefix: segments of letters, digits, `-` and `_` separated by `/`, e.g. dynreg/events"
        ))
    }
}

/// The MQTT topic of an event: `{prefix}/{pid}/{kind with / for .}`.
pub fn topic(prefix: &str, pid: &str, kind: &str) -> String {
    format!("{prefix}/{pid}/{}", kind.replace('.', "/"))
}

/// The AMQP routing key of an event: its topic with `.` for `/`.
pub fn routing_key(prefix: &str, pid: &str, kind: &str) -> String {
    format!("{}.{pid}.{kind}", prefix.replace('/', "."))
}

/// The brokers as a destination of events.
#[derive(Debug, Clone)]
pub struct BrokerEvents {
    targets: Vec<Target>,
    prefix: String,
}

impl BrokerEvents {
    /// Events to `targets` (tried in order) under `prefix` (see [`check_prefix`]).
    pub fn new(targets: Vec<Target>, prefix: &str) -> Result<Self, String> {
        check_prefix(prefix)?;
        if targets.is_empty() {
            return Err("no broker to publish events to (give --attach)".to_owned());
        }
        Ok(Self {
            targets,
            prefix: prefix.to_owned(),
        })
    }
}

impl SinkFactory for BrokerEvents {
    fn make(&self) -> Box<dyn Sink> {
        Box::new(Publisher {
            events: self.clone(),
            current: 0,
            conn: None,
        })
    }

    fn describe(&self) -> String {
        format!("{} ({}/…)", self.targets[0], self.prefix)
    }
}

/// A connection to a broker.
enum Conn {
    Amqp {
        connection: Box<Connection>,
        channel: Channel,
    },
    Mqtt {
        client: AsyncClient,
        events: Box<EventLoop>,
    },
}

/// One connection publishing events, made again (to the next broker) when it fails.
struct Publisher {
    events: BrokerEvents,
    /// The target in use.
    current: usize,
    conn: Option<Conn>,
}

impl Publisher {
    fn target(&self) -> &Target {
        &self.events.targets[self.current]
    }
}

/// Connects to `target` (an MQTT client connects when first polled).
async fn connect(target: &Target) -> Result<Conn, SinkError> {
    let shown = target.to_string();
    let fail = |e: &dyn std::fmt::Display| SinkError::unreachable(format!("{shown}: {e}"));
    match target {
        Target::Amqp(url) => {
            let connected = tokio::time::timeout(TIMEOUT, async {
                let connection = Connection::connect(
                    url,
                    ConnectionProperties::default().with_connection_name("dynreg-events".into()),
                )
                .await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok::<_, lapin::Error>(Conn::Amqp {
                    connection: Box::new(connection),
                    channel,
                })
            })
            .await;
            match connected {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(fail(&e)),
                Err(_) => Err(fail(&"no connection in time")),
            }
        }
        Target::Mqtt(m) => Ok(mqtt_connection(m).map_err(|e| fail(&e))?),
    }
}

impl Publisher {
    async fn publish(&mut self, event: &Event) -> Result<(), SinkError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let target = self.target().clone();
                connect(&target).await?
            }
        };
        let shown = self.target().to_string();
        let prefix = &self.events.prefix;
        let (conn, result) = match conn {
            Conn::Amqp {
                connection,
                channel,
            } => {
                let key = routing_key(prefix, &event.pid, &event.kind);
                let result = publish_amqp(&channel, &key, event).await;
                (
                    Conn::Amqp {
                        connection,
                        channel,
                    },
                    result,
                )
            }
            Conn::Mqtt { client, mut events } => {
                let topic = topic(prefix, &event.pid, &event.kind);
                let result = publish_mqtt(&client, &mut events, topic, event).await;
                (Conn::Mqtt { client, events }, result)
            }
        };
        match result {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) if !e.unreachable => {
                self.conn = Some(conn);
                Err(SinkError::refused(format!("{shown}: {e}")))
            }
            Err(e) => {
                // Drop the connection (and whatever it had queued); the next try goes
                // to the next broker.
                close(conn).await;
                self.current = (self.current + 1) % self.events.targets.len();
                Err(SinkError::unreachable(format!("{shown}: {e}")))
            }
        }
    }
}

impl Sink for Publisher {
    fn send<'a>(&'a mut self, event: &'a Event) -> SendFuture<'a> {
        Box::pin(self.publish(event))
    }

    fn describe(&self) -> String {
        self.target().to_string()
    }

    fn kind(&self) -> &'static str {
        match self.target() {
            Target::Amqp(_) => "amqp",
            Target::Mqtt(_) => "mqtt",
        }
    }
}

async fn close(conn: Conn) {
    match conn {
        Conn::Amqp { connection, .. } => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.close(200, "dynreg reconnecting".into()),
            )
            .await;
        }
        Conn::Mqtt { client, .. } => {
            let _ = client.try_disconnect();
        }
    }
}

/// Publishes to `amq.topic` (mandatory, persistent) and waits for the confirm.
async fn publish_amqp(channel: &Channel, key: &str, event: &Event) -> Result<(), SinkError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event.id.to_string().into())
        .with_type(event.kind.as_str().into());
    let confirmed = tokio::time::timeout(TIMEOUT, async {
        channel
            .basic_publish(
                crate::amqp::EXCHANGE.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties,
            )
            .await?
            .await
    })
    .await;
    match confirmed {
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(SinkError::refused(format!(
            "no queue is bound to {key} on {}: the event waits in the outbox",
            crate::amqp::EXCHANGE
        ))),
        Ok(Ok(Confirmation::Nack(_))) => Err(SinkError::refused("the broker refused the event")),
        Ok(Err(e)) => Err(SinkError::unreachable(e.to_string())),
        Err(_) => Err(SinkError::unreachable("no confirm in time")),
    }
}

/// A client for MQTT 5 events: clean start, no session; it connects when polled.
fn mqtt_connection(m: &MqttTarget) -> Result<Conn, String> {
    let mut options = MqttOptions::new(
        format!("dynreg-events-{}", random_tag()),
        m.host.clone(),
        m.port,
    );
    options
        .set_clean_start(true)
        .set_session_expiry_interval(None)
        .set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &m.username {
        options.set_credentials(user.clone(), m.password.clone().unwrap_or_default());
    }
    if m.tls {
        let transport = crate::tls_transport().map_err(|e| format!("TLS: {e}"))?;
        options.set_transport(transport);
    }
    let (client, events) = AsyncClient::new(options, 8);
    Ok(Conn::Mqtt {
        client,
        events: Box::new(events),
    })
}

/// Publishes at QoS 1 and polls the connection until the PUBACK.
async fn publish_mqtt(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: String,
    event: &Event,
) -> Result<(), SinkError> {
    let properties = PublishProperties {
        content_type: Some("application/json".to_owned()),
        user_properties: vec![("event-id".to_owned(), event.id.to_string())],
        ..PublishProperties::default()
    };
    client
        .try_publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            event.body.clone(),
            properties,
        )
        .map_err(|e| SinkError::unreachable(e.to_string()))?;
    let acked = tokio::time::timeout(TIMEOUT, async {
        // This connection publishes nothing else: the first PUBLISH out is this one.
        let mut pkid = None;
        loop {
            match events.poll().await {
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(id))) => pkid = Some(id),
                Ok(MqttEvent::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == pkid => {
                    return match ack.reason {
                        PubAckReason::Success => Ok(()),
                        PubAckReason::NoMatchingSubscribers => Err(SinkError::refused(
                            "no subscriber to the events' topic: the event waits in the outbox",
                        )),
                        other => Err(SinkError::refused(format!("the broker answered {other:?}"))),
                    };
                }
                Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                    return Err(SinkError::unreachable(format!(
                        "the broker disconnected: {:?}",
                        d.reason_code
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(SinkError::unreachable(e.to_string())),
            }
        }
    })
    .await;
    acked.unwrap_or_else(|_| Err(SinkError::unreachable("no PUBACK in time")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_keys() {
        assert_eq!(
            topic("dynreg/events", "P1", "device.registered"),
            "dynreg/events/P1/device/registered"
        );
        assert_eq!(
            routing_key("dynreg/events", "P1", "device.registered"),
            "dynreg.events.P1.device.registered"
        );
        assert_eq!(topic("ev", "P", "pool.low"), "ev/P/pool/low");
        assert!(check_prefix("dynreg/events").is_ok());
        for bad in ["", "/x", "x/", "a//b", "a.b", "a/+", "#", "é"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        assert!(BrokerEvents::new(Vec::new(), "x").is_err());
    }
}

//! The RabbitMQ worker (AMQP 0.9.1, lapin).
//!
//! On every connection: a channel in confirm mode; the queue
//! ([`crate::WorkerConfig::queue`], a quorum queue unless configured classic) declared and bound to `amq.topic` with
//! `register.v2.*.*.register` (RabbitMQ's MQTT plugin publishes a device's
//! `register/v2/{pid}/{unique}/register` there with `/` written as `.`); prefetch
//! [`crate::WorkerConfig::inflight`]. Each delivery is registered, its reply is
//! published to `amq.topic` as `register.v2.{pid}.{unique}.register_response`
//! (persistent) and confirmed by the broker, and only then is the delivery acked. A
//! reply the broker refuses, or a failure before the ack, leaves the request to be
//! redelivered.

use std::sync::Arc;

use dynreg_proto::topic::{REQUEST_SUFFIX, RESPONSE_SUFFIX};
use dynreg_registrar::Device;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Answer, WorkerConfig, pause, random_tag};
use dynreg_registrar::pace::Backoff;

/// The exchange RabbitMQ's MQTT plugin uses.
pub const EXCHANGE: &str = "amq.topic";
/// The binding of the request queue.
pub const BINDING: &str = "register.v2.*.*.register";

/// The pid and unique of a request's routing key `register.v2.{pid}.{unique}.register`.
pub fn parse_routing_key(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.split('.');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("register"), Some("v2"), Some(pid), Some(unique), Some(REQUEST_SUFFIX), None)
            if dynreg_proto::is_valid_id(pid) && dynreg_proto::is_valid_id(unique) =>
        {
            Some((pid, unique))
        }
        _ => None,
    }
}

/// The routing key of a device's reply.
pub fn reply_routing_key(pid: &str, unique: &str) -> String {
    format!("register.v2.{pid}.{unique}.{RESPONSE_SUFFIX}")
}

pub(crate) async fn run<A: Answer>(
    url: &str,
    answerer: Arc<A>,
    config: &WorkerConfig,
    stop: CancellationToken,
) {
    let shown = crate::redact(url);
    let mut backoff = Backoff::new();
    loop {
        match session(url, &shown, &answerer, config, &stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.step();
                warn!(broker = %shown, error = %e, retry_in_ms = delay.as_millis() as u64, "AMQP worker disconnected; reconnecting");
                if !pause(delay, &stop).await {
                    return;
                }
            }
        }
    }
}

/// One connection's life: set up, consume until `stop` (Ok) or a failure (Err).
async fn session<A: Answer>(
    url: &str,
    shown: &str,
    answerer: &Arc<A>,
    config: &WorkerConfig,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> lapin::Result<()> {
    let connection = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("dynreg-worker".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(config.queue_type.name().into()),
    );
    channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            config.queue.as_str().into(),
            EXCHANGE.into(),
            BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(config.inflight, BasicQosOptions::default())
        .await?;
    let tag = format!("dynreg-{}", random_tag());
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(broker = %shown, queue = %config.queue, queue_type = config.queue_type.name(), prefetch = config.inflight, "AMQP worker consuming register requests");
    backoff.reset();
    let mut inflight = JoinSet::new();
    let failure = loop {
        tokio::select! {
            () = stop.cancelled() => break None,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    inflight.spawn(reply_to(channel.clone(), answerer.clone(), delivery));
                }
                Some(Err(e)) => break Some(e),
                None => break Some(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                ))),
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    };
    if failure.is_none() {
        // Stop consuming, finish and ack what is in flight, then close.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    while inflight.join_next().await.is_some() {}
    match failure {
        None => {
            let _ = channel.close(200, "dynreg stopping".into()).await;
            let _ = connection.close(200, "dynreg stopping".into()).await;
            info!(broker = %shown, "AMQP worker stopped");
            Ok(())
        }
        Some(e) => {
            // Whatever is left of the connection goes before the next one is opened.
            let _ = connection.close(200, "dynreg reconnecting".into()).await;
            Err(e)
        }
    }
}

/// Registers one delivery, publishes its reply with a confirm, then acks.
async fn reply_to<A: Answer>(channel: Channel, answerer: Arc<A>, delivery: Delivery) {
    let key = delivery.routing_key.as_str().to_owned();
    let Some((pid, unique)) = parse_routing_key(&key) else {
        warn!(routing_key = %key, "a message that is not a register request dropped");
        let _ = delivery.ack(BasicAckOptions::default()).await;
        return;
    };
    let device = Device { pid, unique };
    let reply = answerer.answer("amqp", device, &delivery.data).await;
    if let Some(reply) = reply {
        let confirmed = async {
            channel
                .basic_publish(
                    EXCHANGE.into(),
                    reply_routing_key(pid, unique).into(),
                    BasicPublishOptions::default(),
                    &reply,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        }
        .await;
        match confirmed {
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => {}
            Ok(Confirmation::Nack(_)) => {
                warn!(
                    pid,
                    unique, "the broker refused the reply; the request goes back to the queue"
                );
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                return;
            }
            Err(e) => {
                warn!(pid, unique, error = %e, "the reply could not be published; the request will be redelivered");
                return;
            }
        }
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        warn!(pid, unique, error = %e, "the request could not be acked after its reply; it will be redelivered (the device gets the same triplet)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys() {
        assert_eq!(
            parse_routing_key("register.v2.p1.u1.register"),
            Some(("p1", "u1"))
        );
        for bad in [
            "register.v2.p1.u1.register_response",
            "register.v2.p1.register",
            "register.v2.p.1.u1.register",
            "register.v3.p1.u1.register",
            "register.v2..u1.register",
        ] {
            assert_eq!(parse_routing_key(bad), None, "{bad}");
        }
        assert_eq!(
            reply_routing_key("p1", "u1"),
            "register.v2.p1.u1.register_response"
        );
    }
}

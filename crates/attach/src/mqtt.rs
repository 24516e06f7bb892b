//! The MQTT 5 worker (rumqttc), for EMQX, HiveMQ and Mosquitto 2.
//!
//! Connects with clean start and no session (session expiry 0: a stale member of the
//! group would otherwise keep receiving its share, as measured on Mosquitto 2.0.11),
//! Receive Maximum [`crate::WorkerConfig::inflight`] and manual acks; on every CONNACK
//! subscribes to `$share/dynreg/register/v2/+/+/register` at QoS 1. Each request is
//! registered, its reply published at QoS 1 on the device's response topic, and then
//! the request's PUBACK is sent: on the one connection, the broker receives the reply
//! before the ack. Whether a request that a dead worker never acked goes to another
//! member is the broker's choice (see docs/integrations/); where it does not, the
//! device retries after its timeout.

use std::sync::Arc;
use std::time::Duration;

use dynreg_proto::{Topic, TopicKind};
use dynreg_registrar::Device;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Answer, MqttTarget, SHARE_GROUP, WorkerConfig, pause, random_tag};
use dynreg_registrar::pace::Backoff;

/// The shared subscription every worker joins.
pub fn share_filter() -> String {
    format!("$share/{SHARE_GROUP}/register/v2/+/+/register")
}

pub(crate) async fn run<A: Answer>(
    target: &MqttTarget,
    answerer: Arc<A>,
    config: &WorkerConfig,
    stop: CancellationToken,
) {
    let shown = crate::Target::Mqtt(target.clone()).to_string();
    let mut options = MqttOptions::new(
        format!("dynreg-worker-{}", random_tag()),
        target.host.clone(),
        target.port,
    );
    options
        .set_clean_start(true)
        .set_session_expiry_interval(None)
        .set_manual_acks(true)
        .set_receive_maximum(Some(config.inflight))
        .set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &target.username {
        options.set_credentials(user.clone(), target.password.clone().unwrap_or_default());
    }
    if target.tls {
        match crate::tls_transport() {
            Ok(t) => {
                options.set_transport(t);
            }
            Err(e) => {
                warn!(broker = %shown, error = %e, "MQTT worker cannot set up TLS; not started");
                return;
            }
        }
    }
    let (client, mut events) = AsyncClient::new(options, usize::from(config.inflight) * 2 + 16);
    let filter = share_filter();
    let mut backoff = Backoff::new();
    let mut inflight: JoinSet<()> = JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                // Stop taking requests; keep polling so that the replies and acks of
                // those in flight go out.
                let _ = client.try_unsubscribe(filter.clone());
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    if !stopping {
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            warn!(broker = %shown, error = %e, "MQTT worker cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))) {
                        info!(broker = %shown, filter = %filter, receive_maximum = config.inflight, "MQTT worker consuming register requests");
                    } else {
                        warn!(broker = %shown, codes = ?ack.return_codes, "the broker refused the worker's shared subscription (does it allow $share and this user?)");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    inflight.spawn(reply_to(client.clone(), answerer.clone(), p));
                }
                Ok(_) => {}
                Err(e) => {
                    if stopping {
                        break;
                    }
                    let delay = backoff.step();
                    warn!(broker = %shown, error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT worker disconnected; reconnecting");
                    if !pause(delay, &stop).await {
                        stopping = true;
                    }
                }
            },
        }
        if stopping && inflight.is_empty() {
            break;
        }
    }
    // Send the last replies and acks, then DISCONNECT.
    let _ = client.try_disconnect();
    let drain = async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    info!(broker = %shown, "MQTT worker stopped");
}

/// Registers one request, queues its reply, then its ack.
async fn reply_to<A: Answer>(client: AsyncClient, answerer: Arc<A>, p: Publish) {
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        let _ = client.ack(&p).await;
        return;
    };
    let Some(t) = Topic::parse(topic)
        .ok()
        .filter(|t| t.kind == TopicKind::Request)
    else {
        warn!(topic, "a message that is not a register request dropped");
        let _ = client.ack(&p).await;
        return;
    };
    let device = Device {
        pid: t.pid,
        unique: t.unique,
    };
    if let Some(reply) = answerer.answer("mqtt", device, &p.payload).await {
        let response = Topic::response(t.pid, t.unique).to_string();
        if let Err(e) = client
            .publish(response, QoS::AtLeastOnce, false, reply)
            .await
        {
            warn!(pid = t.pid, unique = t.unique, error = %e, "the reply could not be queued; the request is left unacked");
            return;
        }
    }
    if let Err(e) = client.ack(&p).await {
        warn!(pid = t.pid, unique = t.unique, error = %e, "the request could not be acked");
    }
}

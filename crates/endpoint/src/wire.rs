//! The packets a registration session deals in, independent of the MQTT version, and
//! their translation from and to the codec's MQTT 3.1.1 and 5 packets.
//!
//! The session ([`crate::session`]) only ever sees [`In`] and produces [`Out`]; the
//! version-specific details (CONNACK properties, reason codes that 3.1.1 lacks) live
//! here.

use std::num::NonZeroU16;

use bytes::Bytes;
use dynreg_proto::Refusal;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{MqttPacket, v3, v5};

/// The MQTT version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 / 3.1.1.
    V3,
    /// MQTT 5.0.
    V5,
}

/// A packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    /// CONNECT.
    Connect {
        /// The clientId.
        client_id: String,
        /// The username, if any.
        username: Option<String>,
        /// The password, if any.
        password: Option<Bytes>,
        /// Keepalive in seconds (0: none).
        keep_alive: u16,
        /// A Will with Will Retain set (MQTT 5 requires CONNACK 0x9A when retain is
        /// unavailable).
        will_retain: bool,
        /// The client's Receive Maximum (MQTT 5; `None`: 65,535).
        receive_max: Option<u16>,
        /// The client's Maximum Packet Size (MQTT 5; `None`: no limit).
        max_packet_size: Option<u32>,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: String,
        /// QoS 0, 1 or 2.
        qos: u8,
        /// Packet id (QoS > 0).
        packet_id: Option<u16>,
        /// Payload.
        payload: Bytes,
        /// The RETAIN flag.
        retain: bool,
        /// Whether a Topic Alias property was sent (MQTT 5).
        topic_alias: bool,
    },
    /// PUBACK of one of our QoS 1 replies.
    PubAck {
        /// The packet id acknowledged.
        packet_id: u16,
    },
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        packet_id: u16,
        /// Topic filters with their requested QoS.
        filters: Vec<(String, u8)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        packet_id: u16,
        /// Topic filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
    /// Anything a registration connection never sends (QoS 2 flow, AUTH, server packets).
    Unexpected(&'static str),
}

/// A packet to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// CONNACK: accepted (`None`) or refused.
    ConnAck(Option<Refusal>),
    /// CONNACK refusing with an MQTT 5 reason code that MQTT 3.1.1 has no equivalent
    /// for (0x9A retain not supported, 0x95 packet too large, 0x81 malformed); nothing
    /// is sent on 3.1.1, where the server simply closes the connection.
    ConnAckReason(u8),
    /// SUBACK: per filter, the granted QoS or a refusal.
    SubAck {
        /// Packet id.
        packet_id: u16,
        /// Per filter: `Some(qos)` granted, `None` refused.
        granted: Vec<Option<u8>>,
    },
    /// UNSUBACK: per filter, whether a subscription existed.
    UnsubAck {
        /// Packet id.
        packet_id: u16,
        /// Per filter: whether it was subscribed.
        existed: Vec<bool>,
    },
    /// PUBACK for a QoS 1 publish: accepted, or refused as not authorized (MQTT 5).
    PubAck {
        /// Packet id.
        packet_id: u16,
        /// Refused (0x87) rather than accepted.
        refused: bool,
    },
    /// PUBLISH of a reply.
    Publish {
        /// Topic name.
        topic: String,
        /// QoS 0 or 1.
        qos: u8,
        /// Packet id (QoS 1).
        packet_id: Option<u16>,
        /// Payload.
        payload: Bytes,
    },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT with an MQTT 5 reason code; nothing is sent on MQTT 3.1.1, where the
    /// server simply closes the connection.
    Disconnect(u8),
}

/// MQTT 5 DISCONNECT reason: QoS not supported.
pub const DISCONNECT_QOS_NOT_SUPPORTED: u8 = 0x9B;
/// MQTT 5 DISCONNECT reason: not authorized.
pub const DISCONNECT_NOT_AUTHORIZED: u8 = 0x87;
/// MQTT 5 DISCONNECT reason: keep alive timeout.
pub const DISCONNECT_KEEPALIVE: u8 = 0x8D;
/// MQTT 5 DISCONNECT reason: maximum connect time.
pub const DISCONNECT_MAX_CONNECT_TIME: u8 = 0xA0;
/// MQTT 5 DISCONNECT reason: protocol error.
pub const DISCONNECT_PROTOCOL_ERROR: u8 = 0x82;
/// MQTT 5 DISCONNECT reason: packet too large.
pub const DISCONNECT_PACKET_TOO_LARGE: u8 = 0x95;
/// MQTT 5 DISCONNECT reason: server shutting down.
pub const DISCONNECT_SHUTTING_DOWN: u8 = 0x8B;
/// MQTT 5 DISCONNECT reason: malformed packet.
pub const DISCONNECT_MALFORMED: u8 = 0x81;
/// MQTT 5 reason: retain not supported (CONNACK and DISCONNECT).
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
/// MQTT 5 DISCONNECT reason: topic alias invalid.
pub const DISCONNECT_TOPIC_ALIAS_INVALID: u8 = 0x94;
/// MQTT 5 DISCONNECT reason: quota exceeded.
pub const DISCONNECT_QUOTA_EXCEEDED: u8 = 0x97;

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn id(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap_or(NonZeroU16::MIN)
}

/// Translates a decoded packet. `Version` markers are handled by the caller.
pub fn inbound(packet: MqttPacket) -> In {
    match packet {
        MqttPacket::V3(p) => match p {
            v3::Packet::Connect(c) => In::Connect {
                client_id: c.client_id.to_string(),
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                keep_alive: c.keep_alive,
                will_retain: c.last_will.is_some_and(|w| w.retain),
                receive_max: None,
                max_packet_size: None,
            },
            v3::Packet::Publish(p) => In::Publish {
                topic: p.topic.to_string(),
                qos: u8::from(p.qos),
                packet_id: p.packet_id.map(NonZeroU16::get),
                payload: p.payload,
                retain: p.retain,
                topic_alias: false,
            },
            v3::Packet::PublishAck { packet_id } => In::PubAck {
                packet_id: packet_id.get(),
            },
            v3::Packet::Subscribe {
                packet_id,
                topic_filters,
            } => In::Subscribe {
                packet_id: packet_id.get(),
                filters: topic_filters
                    .into_iter()
                    .map(|(t, q)| (t.to_string(), u8::from(q)))
                    .collect(),
            },
            v3::Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => In::Unsubscribe {
                packet_id: packet_id.get(),
                filters: topic_filters.into_iter().map(|t| t.to_string()).collect(),
            },
            v3::Packet::PingRequest => In::PingReq,
            v3::Packet::Disconnect => In::Disconnect,
            v3::Packet::PublishReceived { .. }
            | v3::Packet::PublishRelease { .. }
            | v3::Packet::PublishComplete { .. } => In::Unexpected("QoS 2 flow"),
            _ => In::Unexpected("server packet"),
        },
        MqttPacket::V5(p) => match p {
            v5::Packet::Connect(c) => In::Connect {
                client_id: c.client_id.to_string(),
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                keep_alive: c.keep_alive,
                will_retain: c.last_will.as_ref().is_some_and(|w| w.retain),
                receive_max: c.receive_max.map(NonZeroU16::get),
                max_packet_size: c.max_packet_size.map(std::num::NonZeroU32::get),
            },
            v5::Packet::Publish(p) => In::Publish {
                topic: p.topic.to_string(),
                qos: u8::from(p.qos),
                packet_id: p.packet_id.map(NonZeroU16::get),
                payload: p.payload,
                retain: p.retain,
                topic_alias: p
                    .properties
                    .is_some_and(|props| props.topic_alias.is_some()),
            },
            v5::Packet::PublishAck(a) => In::PubAck {
                packet_id: a.packet_id.get(),
            },
            v5::Packet::Subscribe(s) => In::Subscribe {
                packet_id: s.packet_id.get(),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(t, o)| (t.to_string(), u8::from(o.qos)))
                    .collect(),
            },
            v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                packet_id: u.packet_id.get(),
                filters: u.topic_filters.into_iter().map(|t| t.to_string()).collect(),
            },
            v5::Packet::PingRequest => In::PingReq,
            v5::Packet::Disconnect(_) => In::Disconnect,
            v5::Packet::PublishReceived(_)
            | v5::Packet::PublishRelease(_)
            | v5::Packet::PublishComplete(_) => In::Unexpected("QoS 2 flow"),
            v5::Packet::Auth(_) => In::Unexpected("AUTH"),
            _ => In::Unexpected("server packet"),
        },
        MqttPacket::Version(_) => In::Unexpected("version marker"),
    }
}

/// What the server advertises in an MQTT 5 CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Advertised {
    /// Receive maximum.
    pub receive_max: u16,
    /// Maximum packet size in bytes.
    pub max_packet_size: u32,
}

/// Translates an outbound packet for `version`; `None` when the version has no such
/// packet (DISCONNECT on 3.1.1).
pub fn outbound(out: Out, version: Version, adv: Advertised) -> Option<MqttPacket> {
    Some(match version {
        Version::V3 => MqttPacket::V3(match out {
            Out::ConnAck(refusal) => v3::Packet::ConnectAck(v3::ConnectAck {
                session_present: false,
                return_code: match refusal.map(Refusal::v3_return_code) {
                    None => v3::ConnectAckReason::ConnectionAccepted,
                    Some(3) => v3::ConnectAckReason::ServiceUnavailable,
                    Some(4) => v3::ConnectAckReason::BadUserNameOrPassword,
                    Some(_) => v3::ConnectAckReason::NotAuthorized,
                },
            }),
            Out::SubAck { packet_id, granted } => v3::Packet::SubscribeAck {
                packet_id: id(packet_id),
                status: granted
                    .into_iter()
                    .map(|g| match g {
                        Some(q) => v3::SubscribeReturnCode::Success(qos_of(q)),
                        None => v3::SubscribeReturnCode::Failure,
                    })
                    .collect(),
            },
            Out::UnsubAck { packet_id, .. } => v3::Packet::UnsubscribeAck {
                packet_id: id(packet_id),
            },
            Out::PubAck { packet_id, .. } => v3::Packet::PublishAck {
                packet_id: id(packet_id),
            },
            Out::Publish {
                topic,
                qos,
                packet_id,
                payload,
            } => v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos: qos_of(qos),
                topic: topic.into(),
                packet_id: packet_id.and_then(NonZeroU16::new),
                payload,
                properties: None,
            })),
            Out::PingResp => v3::Packet::PingResponse,
            Out::Disconnect(_) | Out::ConnAckReason(_) => return None,
        }),
        Version::V5 => MqttPacket::V5(match out {
            Out::ConnAck(refusal) => v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                session_present: false,
                reason_code: match refusal {
                    None => v5::ConnectAckReason::Success,
                    Some(Refusal::BadCredentials) => v5::ConnectAckReason::BadUserNameOrPassword,
                    Some(Refusal::ClientIdNotValid) => {
                        v5::ConnectAckReason::ClientIdentifierNotValid
                    }
                    Some(Refusal::QuotaExceeded) => v5::ConnectAckReason::QuotaExceeded,
                    Some(Refusal::ServerUnavailable) => v5::ConnectAckReason::ServerUnavailable,
                    Some(Refusal::Banned) => v5::ConnectAckReason::Banned,
                    Some(_) => v5::ConnectAckReason::NotAuthorized,
                },
                // Nothing is kept after the connection: no session expiry.
                session_expiry_interval_secs: Some(0),
                receive_max: NonZeroU16::new(adv.receive_max).unwrap_or(NonZeroU16::MIN),
                max_qos: QoS::AtLeastOnce,
                max_packet_size: Some(adv.max_packet_size),
                topic_alias_max: 0,
                retain_available: false,
                wildcard_subscription_available: false,
                subscription_identifiers_available: false,
                shared_subscription_available: false,
                ..v5::ConnectAck::default()
            })),
            Out::SubAck { packet_id, granted } => v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id: id(packet_id),
                properties: Vec::new(),
                reason_string: None,
                status: granted
                    .into_iter()
                    .map(|g| match g {
                        Some(0) => v5::SubscribeAckReason::GrantedQos0,
                        Some(_) => v5::SubscribeAckReason::GrantedQos1,
                        None => v5::SubscribeAckReason::NotAuthorized,
                    })
                    .collect(),
            }),
            Out::UnsubAck { packet_id, existed } => {
                v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                    packet_id: id(packet_id),
                    properties: Vec::new(),
                    reason_string: None,
                    status: existed
                        .into_iter()
                        .map(|e| {
                            if e {
                                v5::UnsubscribeAckReason::Success
                            } else {
                                v5::UnsubscribeAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect(),
                })
            }
            Out::PubAck { packet_id, refused } => v5::Packet::PublishAck(v5::PublishAck {
                packet_id: id(packet_id),
                reason_code: if refused {
                    v5::PublishAckReason::NotAuthorized
                } else {
                    v5::PublishAckReason::Success
                },
                properties: Vec::new(),
                reason_string: None,
            }),
            Out::Publish {
                topic,
                qos,
                packet_id,
                payload,
            } => v5::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos: qos_of(qos),
                topic: topic.into(),
                packet_id: packet_id.and_then(NonZeroU16::new),
                payload,
                properties: Some(v5::PublishProperties::default()),
            })),
            Out::PingResp => v5::Packet::PingResponse,
            Out::ConnAckReason(code) => v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                session_present: false,
                reason_code: v5::ConnectAckReason::try_from(code)
                    .unwrap_or(v5::ConnectAckReason::UnspecifiedError),
                ..v5::ConnectAck::default()
            })),
            Out::Disconnect(code) => v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::try_from(code)
                    .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                ..v5::Disconnect::default()
            }),
        }),
    })
}

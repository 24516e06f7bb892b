//! The registration session: a state machine with no IO and no clock.
//!
//! Packets ([`In`]) and time (milliseconds of a monotonic clock) go in; [`Action`]s come
//! out: packets to send, a CONNECT to authenticate, a request to register, the
//! connection to close. Whether a CONNECT is allowed is not decided here but by the
//! registrar (`Registrar::authenticate`), which every front door shares; the session
//! keeps only the rules of an MQTT connection. Because a session knows only its own
//! device, it can never route anything to another client.
//!
//! ## Call order (the driver's duties)
//! 1. [`Session::on_packet`] for each decoded packet, [`Session::on_decode_error`] when
//!    the bytes do not decode, [`Session::on_tick`] at [`Session::deadline`].
//! 2. Carry out every returned [`Action`] in order: [`Action::Authenticate`] is answered
//!    with [`Session::on_authenticated`], [`Action::Register`] with
//!    [`Session::on_registered`]; their actions are carried out in turn.
//! 3. Encode [`Action::Send`] packets; never send one larger than
//!    [`Session::client_max_packet_size`] (drop it and log it).
//!
//! What a registration connection may do: CONNECT once with valid credentials;
//! SUBSCRIBE to its own response topic only (QoS granted = min(requested, 1));
//! UNSUBSCRIBE; PUBLISH at QoS 0 or 1 to its own request topic only; PINGREQ;
//! DISCONNECT. A publish anywhere else is refused (MQTT 5: PUBACK 0x87) and the
//! connection closed; QoS 2 is refused with DISCONNECT 0x9B; keepalive silence of
//! 1.5 x the keepalive and an idle connection (no packet but pings for `idle_timeout`)
//! close it.
//!
//! MQTT 5 rules the CONNACK advertises (retain unavailable, no topic aliases) are
//! enforced: a Will with Will Retain gets CONNACK 0x9A (MQTT-3.2.2-13), a retained
//! PUBLISH DISCONNECT 0x9A, a Topic Alias DISCONNECT 0x94. The client's Receive Maximum
//! bounds the QoS 1 replies awaiting its PUBACK (MQTT-3.3.4-9): further replies wait,
//! and a client that lets more than [`MAX_WAITING_REPLIES`] pile up is disconnected
//! (0x97). A packet that does not decode before the CONNACK is refused in the CONNACK
//! (0x95 or 0x81), never with a DISCONNECT (MQTT-3.14.0-1).

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use dynreg_proto::{Refusal, Topic, TopicKind};
use dynreg_registrar::{AuthError, Authenticated};

use crate::wire::{self, In, Out, Version};

/// Replies that may wait for the client's PUBACKs (its Receive Maximum) before the
/// connection is closed. A device sends one request at a time; this is generous.
pub const MAX_WAITING_REPLIES: usize = 16;

/// Limits and timeouts of a session, in milliseconds where they are times.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// CONNECT must arrive within this time of accept.
    pub connect_timeout_ms: u64,
    /// A connection with no packet other than PINGREQ for this long is closed.
    pub idle_timeout_ms: u64,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// CONNECT refused: the cause (for the log only; the client sees the code).
    Refused(RefusalCause),
    /// No packet within 1.5 x keepalive.
    KeepAlive,
    /// No registration activity within the idle timeout.
    Idle,
    /// The client disconnected.
    ClientDisconnect,
    /// A publish outside the connection's own request topic.
    ForbiddenPublish(String),
    /// QoS 2 is not supported.
    QoS2,
    /// The client broke the protocol.
    Protocol(&'static str),
    /// The client did not acknowledge replies (its Receive Maximum held them back) and
    /// more piled up than allowed.
    RepliesNotAcknowledged,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalCause {
    /// The registrar refused the credentials.
    Auth(AuthError),
    /// The source address opened connections faster than allowed.
    RateLimited,
    /// The server was at its connection limit.
    TooManyConnections,
    /// MQTT 5: a Will with Will Retain, while retain is unavailable.
    WillRetain,
    /// The CONNECT (or a packet right after it) did not decode.
    BadPacket(&'static str),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectTimeout => f.write_str("no CONNECT within the connect timeout"),
            Self::Refused(RefusalCause::Auth(e)) => write!(f, "CONNECT refused: {e}"),
            Self::Refused(RefusalCause::TooManyConnections) => {
                f.write_str("CONNECT refused: the server is at its connection limit")
            }
            Self::Refused(RefusalCause::RateLimited) => {
                f.write_str("CONNECT refused: too many new connections from this address")
            }
            Self::Refused(RefusalCause::WillRetain) => {
                f.write_str("CONNECT refused: Will Retain is not supported")
            }
            Self::Refused(RefusalCause::BadPacket(what)) => {
                write!(f, "CONNECT refused: {what}")
            }
            Self::KeepAlive => f.write_str("keepalive expired"),
            Self::Idle => f.write_str("idle timeout"),
            Self::ClientDisconnect => f.write_str("client disconnected"),
            Self::ForbiddenPublish(t) => write!(f, "publish to a topic not its own: {t}"),
            Self::QoS2 => f.write_str("QoS 2 publish (not supported)"),
            Self::Protocol(what) => write!(f, "protocol violation: {what}"),
            Self::RepliesNotAcknowledged => write!(
                f,
                "more than {MAX_WAITING_REPLIES} replies waiting for the client's PUBACKs"
            ),
        }
    }
}

/// What the IO task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a packet.
    Send(Out),
    /// Ask the registrar whether the CONNECT is allowed and call
    /// [`Session::on_authenticated`].
    Authenticate {
        /// The clientId.
        client_id: String,
        /// The username, if any.
        username: Option<String>,
        /// The password, if any.
        password: Option<Bytes>,
    },
    /// Register the request and call [`Session::on_registered`].
    Register {
        /// The PUBLISH packet id, for the PUBACK (QoS 1).
        packet_id: Option<u16>,
        /// The request payload.
        payload: Bytes,
    },
    /// Close the connection (after sending what was queued).
    Close(CloseReason),
}

/// A device identity, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The pid of the clientId.
    pub pid: String,
    /// The unique of the clientId.
    pub unique: String,
}

#[derive(Debug)]
enum State {
    AwaitConnect,
    /// CONNECT handed to the registrar, waiting for its answer.
    Authenticating {
        keep_alive: u16,
    },
    Connected {
        id: Identity,
        keep_alive_ms: u64,
        /// The QoS granted on the response topic, when subscribed.
        subscribed: Option<u8>,
    },
    Closed,
}

/// One registration connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    version: Version,
    state: State,
    accepted_at: u64,
    /// Last packet of any kind (keepalive).
    last_packet: u64,
    /// Last packet other than PINGREQ (idle timeout).
    last_activity: u64,
    next_packet_id: u16,
    /// Refuse the CONNECT with this (set when the connection was over a limit at
    /// accept).
    refuse_connect: Option<(Refusal, RefusalCause)>,
    /// The client's Receive Maximum: QoS 1 replies it takes before acknowledging.
    client_receive_max: u16,
    /// The client's Maximum Packet Size.
    client_max_packet: Option<u32>,
    /// QoS 1 replies sent and not yet acknowledged.
    in_flight: u16,
    /// Reply payloads held back by the client's Receive Maximum.
    waiting: VecDeque<Bytes>,
}

impl Session {
    /// A session for a connection accepted at `now_ms`.
    pub fn new(now_ms: u64, version: Version, config: SessionConfig) -> Self {
        Self {
            config,
            version,
            state: State::AwaitConnect,
            accepted_at: now_ms,
            last_packet: now_ms,
            last_activity: now_ms,
            next_packet_id: 1,
            refuse_connect: None,
            client_receive_max: u16::MAX,
            client_max_packet: None,
            in_flight: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Marks the connection as over a rate limit: its CONNECT will be refused with
    /// "quota exceeded" (MQTT 5 0x97; 3.1.1: 5).
    #[must_use]
    pub fn over_quota(mut self) -> Self {
        self.refuse_connect = Some((Refusal::QuotaExceeded, RefusalCause::RateLimited));
        self
    }

    /// Marks the connection as over the connection limit: its CONNECT will be refused
    /// with "server unavailable" (MQTT 5 0x88; 3.1.1: 3).
    #[must_use]
    pub fn over_capacity(mut self) -> Self {
        self.refuse_connect = Some((Refusal::ServerUnavailable, RefusalCause::TooManyConnections));
        self
    }

    /// The MQTT version of the connection.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The authenticated device, once CONNECT was accepted.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Connected { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether the client has not sent its CONNECT yet.
    pub fn awaits_connect(&self) -> bool {
        matches!(self.state, State::AwaitConnect)
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The largest packet the client accepts (MQTT 5 Maximum Packet Size), if it said.
    pub fn client_max_packet_size(&self) -> Option<u32> {
        self.client_max_packet
    }

    fn close(&mut self, out: &mut Vec<Action>, reason: CloseReason) {
        self.state = State::Closed;
        out.push(Action::Close(reason));
    }

    fn refuse(&mut self, out: &mut Vec<Action>, refusal: Refusal, cause: RefusalCause) {
        out.push(Action::Send(Out::ConnAck(Some(refusal))));
        self.close(out, CloseReason::Refused(cause));
    }

    fn disconnect(&mut self, out: &mut Vec<Action>, code: u8, reason: CloseReason) {
        out.push(Action::Send(Out::Disconnect(code)));
        self.close(out, reason);
    }

    /// When [`Session::on_tick`] must be called next, in ms.
    pub fn deadline(&self) -> Option<u64> {
        match &self.state {
            State::AwaitConnect | State::Authenticating { .. } => {
                Some(self.accepted_at + self.config.connect_timeout_ms)
            }
            State::Connected { keep_alive_ms, .. } => {
                let idle = self.last_activity + self.config.idle_timeout_ms;
                Some(if *keep_alive_ms > 0 {
                    idle.min(self.last_packet + keep_alive_ms * 3 / 2)
                } else {
                    idle
                })
            }
            State::Closed => None,
        }
    }

    /// Applies the timeouts at `now_ms`.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match &self.state {
            State::AwaitConnect | State::Authenticating { .. } => {
                if now_ms >= self.accepted_at + self.config.connect_timeout_ms {
                    self.close(&mut out, CloseReason::ConnectTimeout);
                }
            }
            State::Connected { keep_alive_ms, .. } => {
                let ka = *keep_alive_ms;
                if ka > 0 && now_ms >= self.last_packet + ka * 3 / 2 {
                    self.disconnect(&mut out, wire::DISCONNECT_KEEPALIVE, CloseReason::KeepAlive);
                } else if now_ms >= self.last_activity + self.config.idle_timeout_ms {
                    self.disconnect(
                        &mut out,
                        wire::DISCONNECT_MAX_CONNECT_TIME,
                        CloseReason::Idle,
                    );
                }
            }
            State::Closed => {}
        }
        out
    }

    /// The bytes from the client did not decode: `too_large` when a packet was over
    /// the maximum size, else malformed. Before the CONNACK the refusal is the CONNACK
    /// (MQTT 5: 0x95 or 0x81); after it, a DISCONNECT with the same code. MQTT 3.1.1
    /// has no code for either: the connection is closed.
    pub fn on_decode_error(&mut self, too_large: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let (code, what) = if too_large {
            (wire::DISCONNECT_PACKET_TOO_LARGE, "packet too large")
        } else {
            (wire::DISCONNECT_MALFORMED, "malformed packet")
        };
        match self.state {
            State::Closed => {}
            State::AwaitConnect | State::Authenticating { .. } => {
                out.push(Action::Send(Out::ConnAckReason(code)));
                self.close(
                    &mut out,
                    CloseReason::Refused(RefusalCause::BadPacket(what)),
                );
            }
            State::Connected { .. } => self.disconnect(&mut out, code, CloseReason::Protocol(what)),
        }
        out
    }

    /// Handles a packet from the client received at `now_ms`.
    pub fn on_packet(&mut self, now_ms: u64, packet: In) -> Vec<Action> {
        let mut out = Vec::new();
        self.last_packet = now_ms;
        if packet != In::PingReq {
            self.last_activity = now_ms;
        }
        let v5 = self.version == Version::V5;
        match &mut self.state {
            State::Closed => {}
            State::AwaitConnect => match packet {
                In::Connect { .. } if self.refuse_connect.is_some() => {
                    if let Some((refusal, cause)) = self.refuse_connect.take() {
                        self.refuse(&mut out, refusal, cause);
                    }
                }
                In::Connect {
                    will_retain: true, ..
                } if v5 => {
                    out.push(Action::Send(Out::ConnAckReason(wire::RETAIN_NOT_SUPPORTED)));
                    self.close(&mut out, CloseReason::Refused(RefusalCause::WillRetain));
                }
                In::Connect {
                    client_id,
                    username,
                    password,
                    keep_alive,
                    receive_max,
                    max_packet_size,
                    ..
                } => {
                    self.client_receive_max = receive_max.unwrap_or(u16::MAX).max(1);
                    self.client_max_packet = max_packet_size;
                    self.state = State::Authenticating { keep_alive };
                    out.push(Action::Authenticate {
                        client_id,
                        username,
                        password,
                    });
                }
                _ => self.close(
                    &mut out,
                    CloseReason::Protocol("first packet is not CONNECT"),
                ),
            },
            State::Authenticating { .. } => {
                self.close(&mut out, CloseReason::Protocol("packet before CONNACK"));
            }
            State::Connected { id, subscribed, .. } => match packet {
                In::Connect { .. } => self.close(&mut out, CloseReason::Protocol("second CONNECT")),
                In::Subscribe { packet_id, filters } => {
                    let mut granted = Vec::with_capacity(filters.len());
                    for (filter, qos) in filters {
                        let own = Topic::is_own(&filter, &id.pid, &id.unique, TopicKind::Response);
                        if own {
                            let q = qos.min(1);
                            *subscribed = Some(q);
                            granted.push(Some(q));
                        } else {
                            granted.push(None);
                        }
                    }
                    out.push(Action::Send(Out::SubAck { packet_id, granted }));
                }
                In::Unsubscribe { packet_id, filters } => {
                    let mut existed = Vec::with_capacity(filters.len());
                    for filter in filters {
                        let own = Topic::is_own(&filter, &id.pid, &id.unique, TopicKind::Response);
                        existed.push(own && subscribed.take().is_some());
                    }
                    out.push(Action::Send(Out::UnsubAck { packet_id, existed }));
                }
                In::Publish {
                    topic,
                    qos,
                    packet_id,
                    payload,
                    retain,
                    topic_alias,
                } => {
                    if qos > 1 {
                        self.disconnect(
                            &mut out,
                            wire::DISCONNECT_QOS_NOT_SUPPORTED,
                            CloseReason::QoS2,
                        );
                        return out;
                    }
                    if v5 && topic_alias {
                        // The CONNACK advertised Topic Alias Maximum 0.
                        self.disconnect(
                            &mut out,
                            wire::DISCONNECT_TOPIC_ALIAS_INVALID,
                            CloseReason::Protocol("topic alias (the maximum is 0)"),
                        );
                        return out;
                    }
                    if v5 && retain {
                        // The CONNACK advertised Retain Available 0.
                        self.disconnect(
                            &mut out,
                            wire::RETAIN_NOT_SUPPORTED,
                            CloseReason::Protocol("retained PUBLISH (retain is not available)"),
                        );
                        return out;
                    }
                    let own = Topic::is_own(&topic, &id.pid, &id.unique, TopicKind::Request);
                    if !own {
                        if let (Some(packet_id), true) = (packet_id, v5) {
                            out.push(Action::Send(Out::PubAck {
                                packet_id,
                                refused: true,
                            }));
                        }
                        self.disconnect(
                            &mut out,
                            wire::DISCONNECT_NOT_AUTHORIZED,
                            CloseReason::ForbiddenPublish(topic),
                        );
                        return out;
                    }
                    out.push(Action::Register { packet_id, payload });
                }
                In::PubAck { .. } => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if let Some(payload) = self.waiting.pop_front() {
                        self.send_reply(&mut out, payload);
                    }
                }
                In::PingReq => out.push(Action::Send(Out::PingResp)),
                In::Disconnect => self.close(&mut out, CloseReason::ClientDisconnect),
                In::Unexpected(what) => {
                    self.disconnect(
                        &mut out,
                        wire::DISCONNECT_PROTOCOL_ERROR,
                        CloseReason::Protocol(what),
                    );
                }
            },
        }
        out
    }

    /// The registrar's answer to [`Action::Authenticate`].
    pub fn on_authenticated(&mut self, result: Result<Authenticated, AuthError>) -> Vec<Action> {
        let mut out = Vec::new();
        let State::Authenticating { keep_alive } = self.state else {
            return out;
        };
        match result {
            Err(e) => self.refuse(&mut out, e.refusal(), RefusalCause::Auth(e)),
            Ok(a) => {
                self.state = State::Connected {
                    id: Identity {
                        pid: a.pid,
                        unique: a.unique,
                    },
                    keep_alive_ms: u64::from(keep_alive) * 1000,
                    subscribed: None,
                };
                out.push(Action::Send(Out::ConnAck(None)));
            }
        }
        out
    }

    /// Publishes `payload` on the response topic at the granted QoS, unless the
    /// client's Receive Maximum holds it back.
    fn send_reply(&mut self, out: &mut Vec<Action>, payload: Bytes) {
        let State::Connected { id, subscribed, .. } = &self.state else {
            return;
        };
        let Some(qos) = *subscribed else {
            return;
        };
        let topic = Topic::response(&id.pid, &id.unique).to_string();
        if qos == 1 && self.in_flight >= self.client_receive_max {
            if self.waiting.len() >= MAX_WAITING_REPLIES {
                self.disconnect(
                    out,
                    wire::DISCONNECT_QUOTA_EXCEEDED,
                    CloseReason::RepliesNotAcknowledged,
                );
            } else {
                self.waiting.push_back(payload);
            }
            return;
        }
        let packet_id = (qos == 1).then(|| {
            let id = self.next_packet_id;
            self.next_packet_id = id.checked_add(1).unwrap_or(1);
            self.in_flight += 1;
            id
        });
        out.push(Action::Send(Out::Publish {
            topic,
            qos,
            packet_id,
            payload,
        }));
    }

    /// The registrar's answer to the request of [`Action::Register`]: the reply to
    /// publish (`None` when the device asked for none).
    pub fn on_registered(&mut self, packet_id: Option<u16>, reply: Option<Vec<u8>>) -> Vec<Action> {
        let mut out = Vec::new();
        if !matches!(self.state, State::Connected { .. }) {
            return out;
        }
        if let Some(reply) = reply {
            self.send_reply(&mut out, Bytes::from(reply));
        }
        if let (Some(packet_id), false) = (packet_id, self.is_closed()) {
            out.push(Action::Send(Out::PubAck {
                packet_id,
                refused: false,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests;

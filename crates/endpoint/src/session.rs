//! The registration session: a state machine with no IO and no clock.
//!
//! Packets ([`In`]) and time (milliseconds of a monotonic clock, plus Unix seconds for
//! the ts window) go in; [`Action`]s come out: packets to send, a product to look up, a
//! request to register, the connection to close. The IO task ([`crate::server`])
//! carries the actions out and feeds the answers back ([`Session::on_product`],
//! [`Session::on_registered`]). Because a session knows only its own device, it can
//! never route anything to another client.
//!
//! What a registration connection may do: CONNECT once with valid credentials;
//! SUBSCRIBE to its own response topic only (QoS granted = min(requested, 1));
//! UNSUBSCRIBE; PUBLISH at QoS 0 or 1 to its own request topic only; PINGREQ;
//! DISCONNECT. A publish anywhere else is refused (MQTT 5: PUBACK 0x87) and the
//! connection closed; QoS 2 is refused with DISCONNECT 0x9B; keepalive silence of
//! 1.5 x the keepalive and an idle connection (no packet but pings for `idle_timeout`)
//! close it.

use std::fmt;

use bytes::Bytes;
use dynreg_proto::credentials::{CredentialError, Credentials, SignMethod};
use dynreg_proto::{Refusal, Topic, TopicKind};
use dynreg_registrar::Product;

use crate::wire::{self, In, Out, Version};

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
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalCause {
    /// The credentials are malformed, stale or badly signed.
    Credentials(CredentialError),
    /// No username or no password.
    MissingCredentials,
    /// The pid is not a known product.
    UnknownProduct,
    /// The product's registration is disabled.
    DisabledProduct,
    /// The product could not be looked up.
    StoreUnavailable,
    /// The source address opened connections faster than allowed.
    RateLimited,
    /// The server was at its connection limit.
    TooManyConnections,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectTimeout => f.write_str("no CONNECT within the connect timeout"),
            Self::Refused(RefusalCause::Credentials(e)) => write!(f, "CONNECT refused: {e}"),
            Self::Refused(RefusalCause::MissingCredentials) => {
                f.write_str("CONNECT refused: no username or password")
            }
            Self::Refused(RefusalCause::UnknownProduct) => {
                f.write_str("CONNECT refused: unknown product")
            }
            Self::Refused(RefusalCause::DisabledProduct) => {
                f.write_str("CONNECT refused: registration disabled for the product")
            }
            Self::Refused(RefusalCause::StoreUnavailable) => {
                f.write_str("CONNECT refused: product lookup failed")
            }
            Self::Refused(RefusalCause::TooManyConnections) => {
                f.write_str("CONNECT refused: the server is at its connection limit")
            }
            Self::Refused(RefusalCause::RateLimited) => {
                f.write_str("CONNECT refused: too many new connections from this address")
            }
            Self::KeepAlive => f.write_str("keepalive expired"),
            Self::Idle => f.write_str("idle timeout"),
            Self::ClientDisconnect => f.write_str("client disconnected"),
            Self::ForbiddenPublish(t) => write!(f, "publish to a topic not its own: {t}"),
            Self::QoS2 => f.write_str("QoS 2 publish (not supported)"),
            Self::Protocol(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

/// What the IO task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a packet.
    Send(Out),
    /// Look up the product and call [`Session::on_product`].
    LookupProduct(String),
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
    /// CONNECT parsed, waiting for the product to verify it against.
    Authenticating {
        id: Identity,
        sign_method: SignMethod,
        ts: u64,
        password: Bytes,
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

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    fn close(&mut self, out: &mut Vec<Action>, reason: CloseReason) {
        self.state = State::Closed;
        out.push(Action::Close(reason));
    }

    fn refuse(&mut self, out: &mut Vec<Action>, refusal: Refusal, cause: RefusalCause) {
        out.push(Action::Send(Out::ConnAck(Some(refusal))));
        self.close(out, CloseReason::Refused(cause));
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
                    out.push(Action::Send(Out::Disconnect(wire::DISCONNECT_KEEPALIVE)));
                    self.close(&mut out, CloseReason::KeepAlive);
                } else if now_ms >= self.last_activity + self.config.idle_timeout_ms {
                    out.push(Action::Send(Out::Disconnect(
                        wire::DISCONNECT_MAX_CONNECT_TIME,
                    )));
                    self.close(&mut out, CloseReason::Idle);
                }
            }
            State::Closed => {}
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
        match &mut self.state {
            State::Closed => {}
            State::AwaitConnect => match packet {
                In::Connect { .. } if self.refuse_connect.is_some() => {
                    if let Some((refusal, cause)) = self.refuse_connect.take() {
                        self.refuse(&mut out, refusal, cause);
                    }
                }
                In::Connect {
                    client_id,
                    username,
                    password,
                    keep_alive,
                } => {
                    let (Some(username), Some(password)) = (username, password) else {
                        self.refuse(
                            &mut out,
                            Refusal::BadCredentials,
                            RefusalCause::MissingCredentials,
                        );
                        return out;
                    };
                    match Credentials::parse(&client_id, &username) {
                        Err(e) => self.refuse(&mut out, e.refusal(), RefusalCause::Credentials(e)),
                        Ok(creds) => {
                            out.push(Action::LookupProduct(creds.pid.to_owned()));
                            self.state = State::Authenticating {
                                id: Identity {
                                    pid: creds.pid.to_owned(),
                                    unique: creds.unique.to_owned(),
                                },
                                sign_method: creds.sign_method,
                                ts: creds.ts,
                                password,
                                keep_alive,
                            };
                        }
                    }
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
                        let own = Topic::parse(&filter)
                            .is_ok_and(|t| t.is(&id.pid, &id.unique, TopicKind::Response));
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
                        let own = Topic::parse(&filter)
                            .is_ok_and(|t| t.is(&id.pid, &id.unique, TopicKind::Response));
                        existed.push(own && subscribed.take().is_some());
                    }
                    out.push(Action::Send(Out::UnsubAck { packet_id, existed }));
                }
                In::Publish {
                    topic,
                    qos,
                    packet_id,
                    payload,
                } => {
                    if qos > 1 {
                        out.push(Action::Send(Out::Disconnect(
                            wire::DISCONNECT_QOS_NOT_SUPPORTED,
                        )));
                        self.close(&mut out, CloseReason::QoS2);
                        return out;
                    }
                    let own = Topic::parse(&topic)
                        .is_ok_and(|t| t.is(&id.pid, &id.unique, TopicKind::Request));
                    if !own {
                        if let (Some(packet_id), Version::V5) = (packet_id, self.version) {
                            out.push(Action::Send(Out::PubAck {
                                packet_id,
                                refused: true,
                            }));
                        }
                        out.push(Action::Send(Out::Disconnect(
                            wire::DISCONNECT_NOT_AUTHORIZED,
                        )));
                        self.close(&mut out, CloseReason::ForbiddenPublish(topic));
                        return out;
                    }
                    out.push(Action::Register { packet_id, payload });
                }
                In::PubAck => {}
                In::PingReq => out.push(Action::Send(Out::PingResp)),
                In::Disconnect => self.close(&mut out, CloseReason::ClientDisconnect),
                In::Unexpected(what) => {
                    out.push(Action::Send(Out::Disconnect(
                        wire::DISCONNECT_PROTOCOL_ERROR,
                    )));
                    self.close(&mut out, CloseReason::Protocol(what));
                }
            },
        }
        out
    }

    /// The product for the pending CONNECT (`Err` when it could not be looked up),
    /// with the server's Unix time for the ts window.
    pub fn on_product(
        &mut self,
        unix_now: u64,
        product: Result<Option<&Product>, ()>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let State::Authenticating {
            id,
            sign_method,
            ts,
            password,
            keep_alive,
        } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return out;
        };
        let product = match product {
            Err(()) => {
                self.refuse(
                    &mut out,
                    Refusal::ServerUnavailable,
                    RefusalCause::StoreUnavailable,
                );
                return out;
            }
            Ok(None) => {
                self.refuse(
                    &mut out,
                    Refusal::NotAuthorized,
                    RefusalCause::UnknownProduct,
                );
                return out;
            }
            Ok(Some(p)) => p,
        };
        if !product.enabled {
            self.refuse(
                &mut out,
                Refusal::NotAuthorized,
                RefusalCause::DisabledProduct,
            );
            return out;
        }
        // Parsed once at CONNECT; only the signature and the ts window are checked here.
        let creds = Credentials {
            pid: &id.pid,
            unique: &id.unique,
            sign_method,
            ts,
        };
        let verified = creds
            .verify(
                product.secret.expose().as_bytes(),
                &password,
                unix_now,
                product.ts_window,
            )
            .map(|()| id);
        match verified {
            Err(e) => self.refuse(&mut out, e.refusal(), RefusalCause::Credentials(e)),
            Ok(id) => {
                self.state = State::Connected {
                    id,
                    keep_alive_ms: u64::from(keep_alive) * 1000,
                    subscribed: None,
                };
                out.push(Action::Send(Out::ConnAck(None)));
            }
        }
        out
    }

    /// The registrar's answer to the request of [`Action::Register`]: the reply to
    /// publish (`None` when the device asked for none).
    pub fn on_registered(&mut self, packet_id: Option<u16>, reply: Option<Vec<u8>>) -> Vec<Action> {
        let mut out = Vec::new();
        let next_id = self.next_packet_id;
        if let State::Connected { id, subscribed, .. } = &self.state {
            if let (Some(reply), Some(qos)) = (reply, *subscribed) {
                let reply_id = (qos == 1).then_some(next_id);
                out.push(Action::Send(Out::Publish {
                    topic: Topic::response(&id.pid, &id.unique).to_string(),
                    qos,
                    packet_id: reply_id,
                    payload: Bytes::from(reply),
                }));
                if reply_id.is_some() {
                    self.next_packet_id = next_id.checked_add(1).unwrap_or(1);
                }
            }
            if let Some(packet_id) = packet_id {
                out.push(Action::Send(Out::PubAck {
                    packet_id,
                    refused: false,
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynreg_proto::credentials::{SignMethod, sign};
    use dynreg_registrar::{Secret, SourceMode};

    const NOW: u64 = 1_700_000_000;
    const CFG: SessionConfig = SessionConfig {
        connect_timeout_ms: 10_000,
        idle_timeout_ms: 120_000,
    };

    fn product(enabled: bool) -> Product {
        Product {
            pid: "p1".into(),
            name: "n".into(),
            secret: Secret::new("sekret"),
            enabled,
            mode: SourceMode::Generate,
            mac_range: None,
            ts_window: 900,
            created_at: 0,
        }
    }

    fn connect(ts: u64, secret: &str) -> In {
        In::Connect {
            client_id: "register_p1_dev1".into(),
            username: Some(format!("p1|signMethod=hmacSha256,ts={ts}")),
            password: Some(Bytes::copy_from_slice(
                sign(SignMethod::HmacSha256, secret.as_bytes(), "p1", ts).as_bytes(),
            )),
            keep_alive: 30,
        }
    }

    fn connected(version: Version) -> Session {
        let mut s = Session::new(0, version, CFG);
        assert_eq!(
            s.on_packet(1, connect(NOW, "sekret")),
            vec![Action::LookupProduct("p1".into())]
        );
        assert_eq!(
            s.on_product(NOW, Ok(Some(&product(true)))),
            vec![Action::Send(Out::ConnAck(None))]
        );
        s
    }

    #[test]
    fn full_registration_flow() {
        let mut s = connected(Version::V5);
        let a = s.on_packet(
            2,
            In::Subscribe {
                packet_id: 7,
                filters: vec![
                    ("register/v2/p1/dev1/register_response".into(), 2),
                    ("#".into(), 0),
                ],
            },
        );
        assert_eq!(
            a,
            vec![Action::Send(Out::SubAck {
                packet_id: 7,
                granted: vec![Some(1), None]
            })]
        );
        let a = s.on_packet(
            3,
            In::Publish {
                topic: "register/v2/p1/dev1/register".into(),
                qos: 1,
                packet_id: Some(9),
                payload: Bytes::from_static(b"{}"),
            },
        );
        assert_eq!(
            a,
            vec![Action::Register {
                packet_id: Some(9),
                payload: Bytes::from_static(b"{}")
            }]
        );
        let a = s.on_registered(Some(9), Some(b"reply".to_vec()));
        assert_eq!(
            a,
            vec![
                Action::Send(Out::Publish {
                    topic: "register/v2/p1/dev1/register_response".into(),
                    qos: 1,
                    packet_id: Some(1),
                    payload: Bytes::from_static(b"reply"),
                }),
                Action::Send(Out::PubAck {
                    packet_id: 9,
                    refused: false
                }),
            ]
        );
        assert_eq!(
            s.on_packet(4, In::PingReq),
            vec![Action::Send(Out::PingResp)]
        );
        assert_eq!(
            s.on_packet(5, In::Disconnect),
            vec![Action::Close(CloseReason::ClientDisconnect)]
        );
        assert!(s.is_closed());
    }

    #[test]
    fn refusals_at_connect() {
        let mut s = Session::new(0, Version::V3, CFG);
        s.on_packet(1, connect(NOW, "wrong"));
        let a = s.on_product(NOW, Ok(Some(&product(true))));
        assert_eq!(
            a[0],
            Action::Send(Out::ConnAck(Some(Refusal::BadCredentials)))
        );
        assert!(matches!(
            &a[1],
            Action::Close(CloseReason::Refused(RefusalCause::Credentials(
                CredentialError::BadSignature
            )))
        ));

        let mut s = Session::new(0, Version::V3, CFG);
        s.on_packet(1, connect(NOW - 901, "sekret"));
        let a = s.on_product(NOW, Ok(Some(&product(true))));
        assert!(matches!(
            &a[1],
            Action::Close(CloseReason::Refused(RefusalCause::Credentials(
                CredentialError::TsTooOld { .. }
            )))
        ));
        assert!(a[1].clone() != Action::Close(CloseReason::KeepAlive));

        let mut s = Session::new(0, Version::V5, CFG);
        s.on_packet(1, connect(NOW, "sekret"));
        let a = s.on_product(NOW, Ok(Some(&product(false))));
        assert_eq!(
            a[0],
            Action::Send(Out::ConnAck(Some(Refusal::NotAuthorized)))
        );

        let mut s = Session::new(0, Version::V5, CFG);
        s.on_packet(1, connect(NOW, "sekret"));
        assert_eq!(
            s.on_product(NOW, Ok(None))[0],
            Action::Send(Out::ConnAck(Some(Refusal::NotAuthorized)))
        );

        let mut s = Session::new(0, Version::V5, CFG);
        let a = s.on_packet(
            1,
            In::Connect {
                client_id: "register_p1_a_b".into(),
                username: Some("other|signMethod=hmacSha256,ts=1".into()),
                password: Some(Bytes::new()),
                keep_alive: 0,
            },
        );
        assert_eq!(
            a[0],
            Action::Send(Out::ConnAck(Some(Refusal::BadCredentials))),
            "pid mismatch"
        );
        let mut s = Session::new(0, Version::V5, CFG);
        let a = s.on_packet(
            1,
            In::Connect {
                client_id: "x".into(),
                username: Some("p|ts=1,signMethod=hmacSha1".into()),
                password: Some(Bytes::new()),
                keep_alive: 0,
            },
        );
        assert_eq!(
            a[0],
            Action::Send(Out::ConnAck(Some(Refusal::ClientIdNotValid)))
        );
    }

    #[test]
    fn forbidden_publish_and_qos2() {
        let mut s = connected(Version::V5);
        let a = s.on_packet(
            2,
            In::Publish {
                topic: "register/v2/p1/other/register".into(),
                qos: 1,
                packet_id: Some(3),
                payload: Bytes::new(),
            },
        );
        assert_eq!(
            a[0],
            Action::Send(Out::PubAck {
                packet_id: 3,
                refused: true
            })
        );
        assert!(matches!(
            a.last(),
            Some(Action::Close(CloseReason::ForbiddenPublish(_)))
        ));
        let mut s = connected(Version::V3);
        let a = s.on_packet(
            2,
            In::Publish {
                topic: "register/v2/p1/dev1/register".into(),
                qos: 2,
                packet_id: Some(3),
                payload: Bytes::new(),
            },
        );
        assert_eq!(
            a,
            vec![
                Action::Send(Out::Disconnect(wire::DISCONNECT_QOS_NOT_SUPPORTED)),
                Action::Close(CloseReason::QoS2),
            ]
        );
    }

    #[test]
    fn no_reply_without_subscription_or_ack() {
        let mut s = connected(Version::V3);
        assert_eq!(s.on_registered(None, Some(b"r".to_vec())), vec![]);
        s.on_packet(
            2,
            In::Subscribe {
                packet_id: 1,
                filters: vec![("register/v2/p1/dev1/register_response".into(), 0)],
            },
        );
        assert_eq!(s.on_registered(None, None), vec![]);
        let a = s.on_registered(None, Some(b"r".to_vec()));
        assert!(matches!(
            &a[0],
            Action::Send(Out::Publish {
                qos: 0,
                packet_id: None,
                ..
            })
        ));
        let a = s.on_packet(
            3,
            In::Unsubscribe {
                packet_id: 2,
                filters: vec!["register/v2/p1/dev1/register_response".into()],
            },
        );
        assert_eq!(
            a,
            vec![Action::Send(Out::UnsubAck {
                packet_id: 2,
                existed: vec![true]
            })]
        );
        assert_eq!(s.on_registered(None, Some(b"r".to_vec())), vec![]);
    }

    #[test]
    fn timeouts() {
        let mut s = Session::new(0, Version::V5, CFG);
        assert_eq!(s.deadline(), Some(10_000));
        assert!(s.on_tick(9_999).is_empty());
        assert_eq!(
            s.on_tick(10_000),
            vec![Action::Close(CloseReason::ConnectTimeout)]
        );

        let mut s = connected(Version::V5); // keepalive 30 s
        assert_eq!(s.deadline(), Some(1 + 45_000));
        s.on_packet(40_000, In::PingReq);
        assert!(s.on_tick(60_000).is_empty());
        let a = s.on_tick(85_000);
        assert_eq!(a.last(), Some(&Action::Close(CloseReason::KeepAlive)));

        // Pings keep the keepalive but not the idle timer.
        let mut s = connected(Version::V5);
        let mut t = 1;
        while t < 120_000 {
            t += 20_000;
            s.on_packet(t, In::PingReq);
        }
        let a = s.on_tick(120_001);
        assert_eq!(a.last(), Some(&Action::Close(CloseReason::Idle)));
    }

    #[test]
    fn over_quota_is_refused_at_connect() {
        let mut s = Session::new(0, Version::V5, CFG).over_quota();
        let a = s.on_packet(1, connect(NOW, "sekret"));
        assert_eq!(
            a[0],
            Action::Send(Out::ConnAck(Some(Refusal::QuotaExceeded)))
        );
        assert_eq!(
            a[1],
            Action::Close(CloseReason::Refused(RefusalCause::RateLimited))
        );
    }

    #[test]
    fn protocol_violations() {
        let mut s = Session::new(0, Version::V3, CFG);
        assert!(matches!(
            s.on_packet(1, In::PingReq)[0],
            Action::Close(CloseReason::Protocol(_))
        ));
        let mut s = connected(Version::V3);
        assert!(matches!(
            s.on_packet(1, connect(NOW, "sekret"))[0],
            Action::Close(CloseReason::Protocol(_))
        ));
    }
}

//! The unit tests of `session`.

use super::*;
use dynreg_proto::credentials::CredentialError;

const CFG: SessionConfig = SessionConfig {
    connect_timeout_ms: 10_000,
    idle_timeout_ms: 120_000,
};

fn connect_with(will_retain: bool, receive_max: Option<u16>) -> In {
    In::Connect {
        client_id: "register_p1_dev1".into(),
        username: Some("p1|signMethod=hmacSha256,ts=1".into()),
        password: Some(Bytes::from_static(b"pw")),
        keep_alive: 30,
        will_retain,
        receive_max,
        max_packet_size: None,
    }
}

fn connect() -> In {
    connect_with(false, None)
}

fn authenticated() -> Authenticated {
    Authenticated {
        pid: "p1".into(),
        unique: "dev1".into(),
        sharing: dynreg_registrar::Sharing::Alone,
    }
}

fn connected_with(version: Version, receive_max: Option<u16>) -> Session {
    let mut s = Session::new(0, version, CFG);
    assert_eq!(
        s.on_packet(1, connect_with(false, receive_max)),
        vec![Action::Authenticate {
            client_id: "register_p1_dev1".into(),
            username: Some("p1|signMethod=hmacSha256,ts=1".into()),
            password: Some(Bytes::from_static(b"pw")),
        }]
    );
    assert_eq!(
        s.on_authenticated(Ok(authenticated())),
        vec![Action::Send(Out::ConnAck(None))]
    );
    s
}

fn connected(version: Version) -> Session {
    connected_with(version, None)
}

fn publish(topic: &str, qos: u8, packet_id: Option<u16>) -> In {
    publish_with(topic, qos, packet_id, false, false)
}

fn publish_with(
    topic: &str,
    qos: u8,
    packet_id: Option<u16>,
    retain: bool,
    topic_alias: bool,
) -> In {
    In::Publish {
        topic: topic.into(),
        qos,
        packet_id,
        payload: Bytes::from_static(b"{}"),
        retain,
        topic_alias,
    }
}

const REQ: &str = "register/v2/p1/dev1/register";
const RESP: &str = "register/v2/p1/dev1/register_response";

fn subscribe(s: &mut Session, qos: u8) {
    s.on_packet(
        2,
        In::Subscribe {
            packet_id: 1,
            filters: vec![(RESP.into(), qos)],
        },
    );
}

#[test]
fn full_registration_flow() {
    let mut s = connected(Version::V5);
    let a = s.on_packet(
        2,
        In::Subscribe {
            packet_id: 7,
            filters: vec![(RESP.into(), 2), ("#".into(), 0)],
        },
    );
    assert_eq!(
        a,
        vec![Action::Send(Out::SubAck {
            packet_id: 7,
            granted: vec![Some(1), None]
        })]
    );
    let a = s.on_packet(3, publish(REQ, 1, Some(9)));
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
                topic: RESP.into(),
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
fn refusals_at_connect_carry_the_registrars_cause() {
    for (version, e, refusal) in [
        (
            Version::V3,
            AuthError::Credentials(CredentialError::BadSignature),
            Refusal::BadCredentials,
        ),
        (
            Version::V5,
            AuthError::DisabledProduct,
            Refusal::NotAuthorized,
        ),
        (Version::V5, AuthError::Banned, Refusal::Banned),
        (
            Version::V5,
            AuthError::UnboundSignature {
                pid: "p".into(),
                method: "hmacSha256",
            },
            Refusal::BadCredentials,
        ),
    ] {
        let mut s = Session::new(0, version, CFG);
        s.on_packet(1, connect());
        let a = s.on_authenticated(Err(e.clone()));
        assert_eq!(
            a,
            vec![
                Action::Send(Out::ConnAck(Some(refusal))),
                Action::Close(CloseReason::Refused(RefusalCause::Auth(e)))
            ]
        );
        assert!(s.is_closed());
    }
}

#[test]
fn forbidden_publish_and_qos2() {
    let mut s = connected(Version::V5);
    let a = s.on_packet(2, publish("register/v2/p1/other/register", 1, Some(3)));
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
    let a = s.on_packet(2, publish(REQ, 2, Some(3)));
    assert_eq!(
        a,
        vec![
            Action::Send(Out::Disconnect(wire::DISCONNECT_QOS_NOT_SUPPORTED)),
            Action::Close(CloseReason::QoS2),
        ]
    );
}

#[test]
fn mqtt5_retain_and_topic_alias_are_refused_as_advertised() {
    // MQTT-3.2.2-13: Will Retain while retain is unavailable: CONNACK 0x9A.
    let mut s = Session::new(0, Version::V5, CFG);
    let a = s.on_packet(1, connect_with(true, None));
    assert_eq!(
        a,
        vec![
            Action::Send(Out::ConnAckReason(0x9A)),
            Action::Close(CloseReason::Refused(RefusalCause::WillRetain))
        ]
    );
    // MQTT 3.1.1 has no such code; the will is simply never published.
    let mut s = Session::new(0, Version::V3, CFG);
    assert!(matches!(
        s.on_packet(1, connect_with(true, None))[0],
        Action::Authenticate { .. }
    ));

    let mut s = connected(Version::V5);
    let retained = publish_with(REQ, 1, Some(3), true, false);
    let a = s.on_packet(2, retained.clone());
    assert_eq!(a[0], Action::Send(Out::Disconnect(0x9A)));
    assert!(s.is_closed());
    let mut s = connected(Version::V3);
    assert!(matches!(
        s.on_packet(2, retained)[0],
        Action::Register { .. }
    ));

    let mut s = connected(Version::V5);
    let aliased = publish_with(REQ, 0, None, false, true);
    assert_eq!(
        s.on_packet(2, aliased)[0],
        Action::Send(Out::Disconnect(0x94))
    );
    assert!(s.is_closed());
}

#[test]
fn the_clients_receive_maximum_holds_replies_back() {
    let mut s = connected_with(Version::V5, Some(1));
    subscribe(&mut s, 1);
    let sent = |a: &[Action]| {
        a.iter()
            .filter_map(|a| match a {
                Action::Send(Out::Publish { packet_id, .. }) => *packet_id,
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(sent(&s.on_registered(Some(1), Some(b"r1".to_vec()))), [1]);
    // Not yet acknowledged: the next replies wait, their PUBACKs to us do not.
    let a = s.on_registered(Some(2), Some(b"r2".to_vec()));
    assert_eq!(
        a,
        vec![Action::Send(Out::PubAck {
            packet_id: 2,
            refused: false
        })]
    );
    assert!(sent(&s.on_registered(Some(3), Some(b"r3".to_vec()))).is_empty());
    assert_eq!(sent(&s.on_packet(3, In::PubAck { packet_id: 1 })), [2]);
    assert_eq!(sent(&s.on_packet(4, In::PubAck { packet_id: 2 })), [3]);
    assert!(sent(&s.on_packet(5, In::PubAck { packet_id: 3 })).is_empty());
    // A client that never acknowledges is disconnected once too many pile up.
    for i in 0..=MAX_WAITING_REPLIES {
        assert!(!s.is_closed(), "after {i}");
        s.on_registered(None, Some(b"r".to_vec()));
    }
    let a = s.on_registered(None, Some(b"r".to_vec()));
    assert_eq!(
        a,
        vec![
            Action::Send(Out::Disconnect(0x97)),
            Action::Close(CloseReason::RepliesNotAcknowledged)
        ]
    );
    assert!(s.is_closed());

    // QoS 0 replies are not counted.
    let mut s = connected_with(Version::V5, Some(1));
    subscribe(&mut s, 0);
    for _ in 0..100 {
        assert_eq!(s.on_registered(None, Some(b"r".to_vec())).len(), 1);
    }
}

#[test]
fn decode_errors_before_connack_are_refused_in_the_connack() {
    let mut s = Session::new(0, Version::V5, CFG);
    assert_eq!(
        s.on_decode_error(true)[0],
        Action::Send(Out::ConnAckReason(0x95))
    );
    let mut s = Session::new(0, Version::V5, CFG);
    assert_eq!(
        s.on_decode_error(false)[0],
        Action::Send(Out::ConnAckReason(0x81))
    );
    let mut s = connected(Version::V5);
    assert_eq!(
        s.on_decode_error(true)[0],
        Action::Send(Out::Disconnect(0x95))
    );
    assert!(s.is_closed());
}

#[test]
fn no_reply_without_subscription_or_ack() {
    let mut s = connected(Version::V3);
    assert_eq!(s.on_registered(None, Some(b"r".to_vec())), vec![]);
    subscribe(&mut s, 0);
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
            filters: vec![RESP.into()],
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
    let a = s.on_packet(1, connect());
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
        s.on_packet(1, connect())[0],
        Action::Close(CloseReason::Protocol(_))
    ));
}

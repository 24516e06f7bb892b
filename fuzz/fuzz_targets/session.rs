#![no_main]
//! Drives the registration session with arbitrary bytes, as the server does: the
//! protocol level in CONNECT picks the codec, every decoded packet goes to the session,
//! and the session's requests are answered (authentication, registration) from the
//! input too; time advances by amounts the input chooses. The first byte picks the
//! answers' pattern. A session must never panic, and once closed it must stay silent.
use bytes::BytesMut;
use dynreg_endpoint::session::{Action, Session, SessionConfig};
use dynreg_endpoint::wire::{self, Version};
use dynreg_registrar::{AuthError, Authenticated, Sharing};
use libfuzzer_sys::fuzz_target;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, v3, v5};
use tokio_util::codec::Decoder;

const CONFIG: SessionConfig = SessionConfig {
    connect_timeout_ms: 10_000,
    idle_timeout_ms: 120_000,
};

fn answer(session: &mut Session, actions: Vec<Action>, choice: u8, depth: u8) {
    for a in actions {
        let more = match a {
            Action::Authenticate { .. } => session.on_authenticated(if choice & 1 == 0 {
                Ok(Authenticated {
                    pid: "p".into(),
                    unique: "u".into(),
                    sharing: if choice & 2 != 0 {
                        Sharing::Repeat
                    } else {
                        Sharing::Alone
                    },
                })
            } else {
                Err(AuthError::Banned)
            }),
            Action::Register { packet_id, .. } => {
                session.on_registered(packet_id, (choice & 4 == 0).then(|| b"{}".to_vec()))
            }
            Action::Send(_) | Action::Close(_) => Vec::new(),
        };
        if depth < 4 {
            answer(session, more, choice.rotate_left(1), depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(data);
    let version = match VersionCodec.decode(&mut buf) {
        Ok(Some(ProtocolVersion::MQTT3)) => Version::V3,
        Ok(Some(ProtocolVersion::MQTT5)) => Version::V5,
        _ => return,
    };
    let mut codec = match version {
        Version::V3 => MqttCodec::V3(v3::Codec::new(8192)),
        Version::V5 => MqttCodec::V5(v5::Codec::new(8192, 0)),
    };
    let mut session = Session::new(0, version, CONFIG);
    let mut now = 0u64;
    loop {
        let was_closed = session.is_closed();
        let actions = match codec.decode(&mut buf) {
            Ok(Some((packet, size))) => {
                now += u64::from(size % 97) * 1000;
                let mut a = session.on_tick(now);
                a.extend(session.on_packet(now, wire::inbound(packet)));
                a
            }
            Ok(None) => break,
            Err(e) => {
                let too_large = matches!(e, rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. });
                let a = session.on_decode_error(too_large);
                answer(&mut session, a, choice, 0);
                break;
            }
        };
        assert!(
            !was_closed || actions.is_empty(),
            "a closed session acted: {actions:?}"
        );
        answer(&mut session, actions, choice, 0);
    }
    let closed = session.is_closed();
    let late = session.on_tick(now + 1_000_000);
    assert!(!closed || late.is_empty());
});

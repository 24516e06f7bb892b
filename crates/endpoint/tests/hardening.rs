//! What an attacker or a careless client tries, over real sockets on port 0: captured
//! credentials, clients that never read, a burst from one address, failed-CONNECT
//! floods, and the MQTT 5 rules the CONNACK advertises. Packets are written and read
//! with the `rmqtt-codec` client side, so that every flag and property can be set.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use dynreg_endpoint::EndpointConfig;
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_proto::{RegisterReply, RegisterRequest, Topic};
use dynreg_registrar::{AuthPolicy, SourceMode};
use dynreg_testkit::{ServerOptions, TempStore, TestServer};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An endpoint on loopback port 0 with products `P0`..`P4` (generate mode), `B`
/// (generate mode, device-bound signatures only) and `L` (generate mode, admitting its
/// listed device `listed1` only), and the given limits and CONNECT policy.
async fn server(config: EndpointConfig, policy: AuthPolicy) -> TestServer {
    let store = TempStore::new();
    tokio::task::block_in_place(|| {
        for i in 0..5 {
            store.product(&format!("P{i}"), SourceMode::Generate);
        }
        let mut bound = dynreg_registrar::conformance::product("B", SourceMode::Generate);
        bound.signatures = dynreg_registrar::Signatures::Bound;
        store.put(&bound);
        store.listed("L", &["listed1"]);
    });
    TestServer::start(
        store,
        ServerOptions {
            endpoint: config,
            policy,
            ..ServerOptions::default()
        },
    )
}

/// A device's credentials, signed at `ts` with `method`.
struct Creds {
    client_id: String,
    username: String,
    password: String,
    pid: String,
    unique: String,
}

fn creds(pid: &str, unique: &str, ts: u64, method: SignMethod) -> Creds {
    Creds {
        client_id: format!("register_{pid}_{unique}"),
        username: format!("{pid}|signMethod={},ts={ts}", method.name()),
        password: sign(
            method,
            format!("secret-of-{pid}").as_bytes(),
            pid,
            unique,
            ts,
        )
        .to_string(),
        pid: pid.into(),
        unique: unique.into(),
    }
}

/// A raw MQTT 5 client.
struct V5 {
    stream: TcpStream,
    codec: v5::Codec,
    buf: BytesMut,
}

impl V5 {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            codec: v5::Codec::new(0, 0),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: v5::Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` when the connection closed or `wait` passed.
    async fn recv(&mut self, wait: Duration) -> Option<v5::Packet> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            match tokio::time::timeout_at(end, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    fn connect_packet(c: &Creds) -> v5::Connect {
        v5::Connect {
            clean_start: true,
            keep_alive: 30,
            client_id: c.client_id.clone().into(),
            username: Some(c.username.clone().into()),
            password: Some(c.password.clone().into()),
            ..v5::Connect::default()
        }
    }

    /// Connects with `connect`; the CONNACK's reason code.
    async fn connect(addr: SocketAddr, connect: v5::Connect) -> (Self, v5::ConnectAckReason) {
        let mut c = Self::open(addr).await;
        c.send(v5::Packet::Connect(Box::new(connect))).await;
        match c.recv(Duration::from_secs(5)).await {
            Some(v5::Packet::ConnectAck(ack)) => {
                let code = ack.reason_code;
                (c, code)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, c: &Creds, qos: QoS) {
        self.send(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![(
                Topic::response(&c.pid, &c.unique).to_string().into(),
                v5::SubscriptionOptions {
                    qos,
                    ..v5::SubscriptionOptions::default()
                },
            )],
        }))
        .await;
        assert!(matches!(
            self.recv(Duration::from_secs(5)).await,
            Some(v5::Packet::SubscribeAck(_))
        ));
    }

    fn request(c: &Creds, packet_id: u16, retain: bool, alias: Option<u16>) -> v5::Packet {
        v5::Packet::Publish(Box::new(Publish {
            dup: false,
            retain,
            qos: QoS::AtLeastOnce,
            topic: Topic::request(&c.pid, &c.unique).to_string().into(),
            packet_id: NonZeroU16::new(packet_id),
            payload: RegisterRequest::new(packet_id.to_string(), unix_now())
                .to_json()
                .into(),
            properties: Some(v5::PublishProperties {
                topic_alias: alias.and_then(NonZeroU16::new),
                ..v5::PublishProperties::default()
            }),
        }))
    }
}

/// CONNECT with MQTT 3.1.1; the CONNACK return code.
async fn v3_connect(addr: SocketAddr, c: &Creds) -> v3::ConnectAckReason {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut codec = v3::Codec::new(0);
    let mut out = BytesMut::new();
    codec
        .encode(
            v3::Packet::Connect(Box::new(v3::Connect {
                clean_session: true,
                keep_alive: 30,
                client_id: c.client_id.clone().into(),
                username: Some(c.username.clone().into()),
                password: Some(c.password.clone().into()),
                ..v3::Connect::default()
            })),
            &mut out,
        )
        .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some((p, _)) = codec.decode(&mut buf).unwrap() {
            match p {
                v3::Packet::ConnectAck(ack) => return ack.return_code,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
    }
}

/// Registers `device` over MQTT 5: its reply.
async fn register_v5(addr: SocketAddr, device: &Creds) -> RegisterReply {
    let (mut c, code) = V5::connect(addr, V5::connect_packet(device)).await;
    assert_eq!(code, v5::ConnectAckReason::Success, "{}", device.client_id);
    c.subscribe(device, QoS::AtLeastOnce).await;
    c.send(V5::request(device, 1, false, None)).await;
    loop {
        match c.recv(Duration::from_secs(5)).await {
            Some(v5::Packet::Publish(p)) => return RegisterReply::from_json(&p.payload).unwrap(),
            Some(_) => {}
            None => panic!("no reply"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_bound_credential_registers_no_other_device() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    for (pid, method) in [
        ("P0", SignMethod::HmacSha256Bound),
        ("B", SignMethod::HmacSha1Bound),
        ("B", SignMethod::HmacSha256Bound),
    ] {
        let device = creds(pid, "victim", ts, method);
        let triplet = register_v5(s.addr, &device).await;
        assert_eq!(triplet.res, 0);

        // Whoever saw that CONNECT tries its password for other uniques, over both
        // versions: refused as bad credentials (the signature names the unique).
        let mut stolen = creds(pid, "attacker", ts, method);
        stolen.password.clone_from(&device.password);
        let (_, code) = V5::connect(s.addr, V5::connect_packet(&stolen)).await;
        assert_eq!(code, v5::ConnectAckReason::BadUserNameOrPassword);
        stolen.client_id = format!("register_{pid}_other");
        stolen.unique = "other".into();
        assert_eq!(
            v3_connect(s.addr, &stolen).await,
            v3::ConnectAckReason::BadUserNameOrPassword
        );
        // The device itself may come back with the same credential (a lost reply).
        let again = register_v5(s.addr, &device).await;
        assert_eq!(again.data.uuid, triplet.data.uuid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_product_refuses_the_seed_methods_over_both_versions() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    for method in [SignMethod::HmacSha256, SignMethod::HmacSha1] {
        let seed = creds("B", "seed", ts, method);
        let (_, code) = V5::connect(s.addr, V5::connect_packet(&seed)).await;
        assert_eq!(code, v5::ConnectAckReason::BadUserNameOrPassword);
        assert_eq!(
            v3_connect(s.addr, &seed).await,
            v3::ConnectAckReason::BadUserNameOrPassword
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_product_refuses_unlisted_uniques_and_serves_listed_ones() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    let stranger = creds("L", "stranger", ts, SignMethod::HmacSha256);
    let (_, code) = V5::connect(s.addr, V5::connect_packet(&stranger)).await;
    assert_eq!(code, v5::ConnectAckReason::NotAuthorized);
    assert_eq!(
        v3_connect(s.addr, &stranger).await,
        v3::ConnectAckReason::NotAuthorized
    );
    let listed = creds("L", "listed1", ts, SignMethod::HmacSha256);
    let r = register_v5(s.addr, &listed).await;
    assert_eq!(r.res, 0);
    // Its triplet carries the barcode it was listed with.
    let stored = tokio::task::block_in_place(|| {
        dynreg_store::Operator::device(&s.store, "L", "listed1").unwrap()
    })
    .expect("registered");
    assert_eq!(Some(stored.triplet.uuid), r.data.uuid);
    assert_eq!(stored.triplet.barcode, "BC-listed1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_seed_credentials_are_served_for_every_unique() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    let mut uuids = std::collections::HashSet::new();
    for i in 0..20 {
        // Byte-identical credentials (the seed's content does not name the unique).
        let c = creds("P3", &format!("nat{i}"), ts, SignMethod::HmacSha256);
        let r = register_v5(s.addr, &c).await;
        assert_eq!(r.res, 0, "device {i}");
        assert!(uuids.insert(r.data.uuid.unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_answers_failing_connects_and_serves_valid_devices() {
    // At the defaults: 30 refusals within 60 s ban the address for 300 s.
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    // A few devices behind the factory's NAT were flashed with another environment's
    // secret, and keep trying: 60 bad CONNECTs from 127.0.0.1.
    for i in 0..60 {
        let mut c = creds("P1", &format!("wrong{i}"), ts, SignMethod::HmacSha256);
        c.password = sign(SignMethod::HmacSha256, b"test-environment", "P1", "x", ts).to_string();
        let (_, code) = V5::connect(s.addr, V5::connect_packet(&c)).await;
        let want = if i < 30 {
            v5::ConnectAckReason::BadUserNameOrPassword
        } else {
            v5::ConnectAckReason::Banned
        };
        assert_eq!(code, want, "bad CONNECT {i}");
    }
    let wrong = creds("P1", "wrong-v3", ts, SignMethod::HmacSha1);
    let mut wrong = wrong;
    wrong.password = "00".repeat(20);
    assert_eq!(
        v3_connect(s.addr, &wrong).await,
        v3::ConnectAckReason::NotAuthorized,
        "banned, over 3.1.1"
    );
    // 20 devices with the right secret from the same address are served, over both
    // versions.
    for i in 0..20 {
        let c = creds("P2", &format!("line{i}"), ts, SignMethod::HmacSha256);
        if i % 2 == 0 {
            assert_eq!(register_v5(s.addr, &c).await.res, 0, "device {i}");
        } else {
            assert_eq!(
                v3_connect(s.addr, &c).await,
                v3::ConnectAckReason::ConnectionAccepted,
                "device {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_takes_a_burst_of_5000_from_one_address() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..100 {
        let (next, addr) = (next.clone(), s.addr);
        workers.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 5000 {
                    return refused;
                }
                // Five products, a thousand devices each, signing the current second
                // as independent firmware does (many share a credential).
                let c = creds(
                    &format!("P{}", i % 5),
                    &format!("d{i}"),
                    unix_now(),
                    SignMethod::HmacSha256,
                );
                let (mut conn, code) = V5::connect(addr, V5::connect_packet(&c)).await;
                if code != v5::ConnectAckReason::Success {
                    refused.push(format!("{i}: {code:?}"));
                    continue;
                }
                conn.subscribe(&c, QoS::AtMostOnce).await;
                conn.send(V5::request(&c, 1, false, None)).await;
                loop {
                    match conn.recv(Duration::from_secs(10)).await {
                        Some(v5::Packet::Publish(p)) => {
                            let r = RegisterReply::from_json(&p.payload).unwrap();
                            if r.res != 0 {
                                refused.push(format!("{i}: res {}", r.res));
                            }
                            break;
                        }
                        Some(_) => {}
                        None => {
                            refused.push(format!("{i}: no reply"));
                            break;
                        }
                    }
                }
            }
        }));
    }
    let mut refused = Vec::new();
    for w in workers {
        refused.extend(w.await.unwrap());
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(10)]
    );
    eprintln!(
        "5000 registrations from 127.0.0.1 at concurrency 100 in {:?}",
        started.elapsed()
    );
}

const PINGS: [u8; 1024] = {
    let mut p = [0u8; 1024];
    let mut i = 0;
    while i < 1024 {
        p[i] = 0xC0;
        i += 2;
    }
    p
};

/// Floods PINGREQs without ever reading; true when the server reset the connection
/// within `limit`.
async fn flood_until_reset(stream: &mut TcpStream, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, stream.write_all(&PINGS)).await {
            Err(_) => return false,
            Ok(Err(_)) => return true,
            Ok(Ok(())) => {}
        }
    }
}

/// Floods PINGREQs without ever reading until the server stops taking them: a write
/// that waits 500 ms means the server's replies to us are stuck (it reads nothing more
/// while they wait). False when that did not happen within `limit`, or the connection
/// ended first.
async fn flood_until_stalled(stream: &mut TcpStream, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&PINGS)).await {
            Err(_) => return true,
            Ok(Err(_)) => return false,
            Ok(Ok(())) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_by_its_timers_and_by_shutdown() {
    let policy = AuthPolicy::default();
    let ts = unix_now();
    // A small receive buffer on our side, so that the server's replies back up soon.
    let connected = async |addr: SocketAddr, unique: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let c = creds("P0", unique, ts, SignMethod::HmacSha256);
        let mut conn = V5 {
            stream,
            codec: v5::Codec::new(0, 0),
            buf: BytesMut::new(),
        };
        conn.send(v5::Packet::Connect(Box::new(V5::connect_packet(&c))))
            .await;
        assert!(matches!(
            conn.recv(Duration::from_secs(5)).await,
            Some(v5::Packet::ConnectAck(a)) if a.reason_code == v5::ConnectAckReason::Success
        ));
        conn.stream
    };
    // The idle timeout (pings are not activity) applies while the server's write waits.
    let s = server(
        EndpointConfig {
            idle_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(600),
            ..EndpointConfig::default()
        },
        policy,
    )
    .await;
    let mut stream = connected(s.addr, "idle").await;
    assert!(
        flood_until_reset(&mut stream, Duration::from_secs(10)).await,
        "still connected 8 s past a 2 s idle timeout"
    );

    // A write that makes no progress for the write timeout closes the connection.
    let s = server(
        EndpointConfig {
            write_timeout: Duration::from_secs(2),
            ..EndpointConfig::default()
        },
        policy,
    )
    .await;
    let mut stream = connected(s.addr, "stall").await;
    assert!(
        flood_until_stalled(&mut stream, Duration::from_secs(60)).await,
        "the server kept reading a client that does not read"
    );
    // Generous: a loaded 2-core CI machine has been seen to need more than 8 s; without
    // the write timeout the connection would stay until the 120 s idle timeout.
    assert!(
        flood_until_reset(&mut stream, Duration::from_secs(30)).await,
        "still connected 28 s past a 2 s write timeout with its writes blocked"
    );

    // Shutdown does not wait for a client that does not read.
    let s = server(
        EndpointConfig {
            write_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            ..EndpointConfig::default()
        },
        policy,
    )
    .await;
    let mut stream = connected(s.addr, "shutdown").await;
    assert!(
        flood_until_stalled(&mut stream, Duration::from_secs(60)).await,
        "the server kept reading a client that does not read"
    );
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), s.stop())
        .await
        .expect("shutdown waited for a client that does not read")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_limits_of_the_connack_and_of_the_client_are_kept() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    let ts = unix_now();
    let c = creds("P0", "v5rules", ts, SignMethod::HmacSha256);
    let wait = Duration::from_secs(3);

    // MQTT-3.2.2-13: a Will with Will Retain while retain is unavailable.
    let mut with_will = V5::connect_packet(&c);
    with_will.last_will = Some(v5::LastWill {
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "will".into(),
        message: "bye".into(),
        will_delay_interval_sec: None,
        correlation_data: None,
        message_expiry_interval: None,
        content_type: None,
        user_properties: Vec::new(),
        is_utf8_payload: None,
        response_topic: None,
    });
    let (_, code) = V5::connect(s.addr, with_will).await;
    assert_eq!(code, v5::ConnectAckReason::RetainNotSupported);

    // A retained PUBLISH: DISCONNECT 0x9A. A Topic Alias: DISCONNECT 0x94.
    for (retain, alias, want) in [
        (true, None, v5::DisconnectReasonCode::RetainNotSupported),
        (false, Some(1), v5::DisconnectReasonCode::TopicAliasInvalid),
    ] {
        let (mut conn, code) = V5::connect(s.addr, V5::connect_packet(&c)).await;
        assert_eq!(code, v5::ConnectAckReason::Success);
        conn.subscribe(&c, QoS::AtLeastOnce).await;
        conn.send(V5::request(&c, 1, retain, alias)).await;
        match conn.recv(wait).await {
            Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, want),
            other => panic!("expected DISCONNECT {want:?}, got {other:?}"),
        }
        assert!(conn.recv(wait).await.is_none(), "closed");
    }

    // Receive Maximum 1: one QoS 1 reply in flight until the client acknowledges it.
    let mut rm1 = V5::connect_packet(&c);
    rm1.receive_max = NonZeroU16::new(1);
    let (mut conn, _) = V5::connect(s.addr, rm1).await;
    conn.subscribe(&c, QoS::AtLeastOnce).await;
    for id in 1..=3 {
        conn.send(V5::request(&c, id, false, None)).await;
    }
    let mut replies = Vec::new();
    while let Some(p) = conn.recv(Duration::from_millis(700)).await {
        if let v5::Packet::Publish(p) = p {
            replies.push(p.packet_id.unwrap());
        }
    }
    assert_eq!(replies.len(), 1, "only one reply before a PUBACK");
    for round in 0..2 {
        let id = *replies.last().unwrap();
        conn.send(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: id,
            reason_code: v5::PublishAckReason::Success,
            properties: Vec::new(),
            reason_string: None,
        }))
        .await;
        match conn.recv(wait).await {
            Some(v5::Packet::Publish(p)) => replies.push(p.packet_id.unwrap()),
            other => panic!("round {round}: expected the next reply, got {other:?}"),
        }
    }
    assert_eq!(replies.len(), 3);

    // Maximum Packet Size 64: the reply (about 270 bytes) is not sent; the
    // connection stays up.
    let mut small = V5::connect_packet(&c);
    small.max_packet_size = NonZeroU32::new(64);
    let (mut conn, _) = V5::connect(s.addr, small).await;
    conn.subscribe(&c, QoS::AtMostOnce).await;
    conn.send(V5::request(&c, 7, false, None)).await;
    match conn.recv(wait).await {
        Some(v5::Packet::PublishAck(a)) => assert_eq!(a.packet_id.get(), 7),
        other => panic!("expected only the PUBACK, got {other:?}"),
    }
    assert!(conn.recv(Duration::from_millis(700)).await.is_none());
    conn.send(v5::Packet::PingRequest).await;
    assert!(matches!(
        conn.recv(wait).await,
        Some(v5::Packet::PingResponse)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_before_the_connack_are_refused_in_a_connack() {
    let s = server(EndpointConfig::default(), AuthPolicy::default()).await;
    // A CONNECT larger than the maximum packet size: CONNACK 0x95, no DISCONNECT.
    let c = creds("P0", "big", unix_now(), SignMethod::HmacSha256);
    let mut big = V5::connect_packet(&c);
    big.password = Some(vec![b'a'; 9000].into());
    let (_, code) = V5::connect(s.addr, big).await;
    assert_eq!(code, v5::ConnectAckReason::PacketTooLarge);
    // A malformed CONNECT (a property that CONNECT may not carry): CONNACK 0x81.
    let mut conn = V5::open(s.addr).await;
    // CONNECT, protocol MQTT 5, flags clean start, keepalive 30, properties: 0x23
    // (topic alias: not a CONNECT property) = 1, clientId "x".
    let body = [
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1E, 0x03, 0x23, 0x00, 0x01, 0x00,
        0x01, b'x',
    ];
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    conn.stream.write_all(&packet).await.unwrap();
    match conn.recv(Duration::from_secs(3)).await {
        Some(v5::Packet::ConnectAck(a)) => {
            assert_eq!(a.reason_code, v5::ConnectAckReason::MalformedPacket);
        }
        other => panic!("expected CONNACK 0x81, got {other:?}"),
    }
}

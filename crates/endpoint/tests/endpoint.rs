//! The endpoint over real sockets on port 0, with rumqttc as the device (MQTT 3.1.1 and
//! 5), raw TCP for what no well-behaved client sends, and Mosquitto's `mosquitto_rr`
//! as an independent client when it is installed.

use dynreg_store::Operator;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dynreg_endpoint::{Endpoint, EndpointConfig};
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_proto::{RegisterReply, Topic};
use dynreg_registrar::conformance::{pool, product};
use dynreg_registrar::{Registrar, SourceMode};
use dynreg_testkit::{ServerOptions, TempStore, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Products G, Q (generate), P (pool of 5) and OFF (disabled).
fn standard_store() -> TempStore {
    let t = TempStore::new();
    tokio::task::block_in_place(|| {
        t.product("G", SourceMode::Generate)
            .product("P", SourceMode::Pool)
            .product("Q", SourceMode::Generate)
            .disabled("OFF", SourceMode::Generate)
            .pool("P", pool("P", 5));
    });
    t
}

async fn server(config: impl Into<ServerOptions>) -> TestServer {
    TestServer::start(standard_store(), config)
}

/// How a device connects.
#[derive(Clone)]
struct Dev {
    pid: String,
    unique: String,
    secret: String,
    method: SignMethod,
    ts: u64,
    v5: bool,
    /// The CA to trust when connecting over TLS.
    tls_ca: Option<Vec<u8>>,
    /// A different pid to put in the username (to test a mismatch).
    user_pid: Option<String>,
}

impl Dev {
    fn new(pid: &str, unique: &str, v5: bool) -> Self {
        // As independent firmware does: the current second, the seed's default method.
        Self {
            pid: pid.into(),
            unique: unique.into(),
            secret: format!("secret-of-{pid}"),
            method: SignMethod::HmacSha256,
            ts: unix_now(),
            v5,
            tls_ca: None,
            user_pid: None,
        }
    }
    fn client_id(&self) -> String {
        format!("register_{}_{}", self.pid, self.unique)
    }
    fn username(&self) -> String {
        let pid = self.user_pid.as_deref().unwrap_or(&self.pid);
        format!("{pid}|signMethod={},ts={}", self.method.name(), self.ts)
    }
    fn password(&self) -> String {
        sign(
            self.method,
            self.secret.as_bytes(),
            &self.pid,
            &self.unique,
            self.ts,
        )
        .to_string()
    }
    fn request_topic(&self) -> String {
        Topic::request(&self.pid, &self.unique).to_string()
    }
    fn response_topic(&self) -> String {
        Topic::response(&self.pid, &self.unique).to_string()
    }
}

fn request(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","ts":{},"code":"register","ack":1}}"#,
        unix_now()
    )
}

/// What happened to one exchange.
#[derive(Debug)]
enum Outcome {
    /// CONNECT refused with this return code (Debug form).
    Refused(String),
    /// Replies received on the response topic, in order.
    Replies(Vec<RegisterReply>),
    /// The connection ended (with this error) after these replies.
    Closed(Vec<RegisterReply>, #[allow(dead_code)] String),
}

/// Connects, optionally subscribes to `subscribe` (default: own response topic), then
/// publishes each `(topic, qos, payload)` and collects replies until `expect` replies
/// arrived or `wait` passed.
async fn exchange(
    addr: SocketAddr,
    dev: &Dev,
    subscribe: Option<(String, u8)>,
    publishes: Vec<(String, u8, String)>,
    expect: usize,
    wait: Duration,
) -> Outcome {
    let sub = subscribe.unwrap_or_else(|| (dev.response_topic(), 1));
    if dev.v5 {
        v5_exchange(addr, dev, sub, publishes, expect, wait).await
    } else {
        v4_exchange(addr, dev, sub, publishes, expect, wait).await
    }
}

/// One exchange with a rumqttc client; the MQTT 3.1.1 and 5 clients have the same
/// shape in different modules, so one body serves both.
macro_rules! rumqttc_exchange {
    ($name:ident, $client:path, $options:path, $event:path, $packet:path, $qos:path, $error:path, $before:expr, $after:expr) => {
        async fn $name(
            addr: SocketAddr,
            dev: &Dev,
            sub: (String, u8),
            publishes: Vec<(String, u8, String)>,
            expect: usize,
            wait: Duration,
        ) -> Outcome {
            use $client as Client;
            use $error as ConnectionError;
            use $event as Event;
            use $options as MqttOptions;
            use $packet as Packet;
            use $qos as QoS;
            let qos = |q: u8| match q {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            let mut opts = MqttOptions::new(dev.client_id(), addr.ip().to_string(), addr.port());
            opts.set_credentials(dev.username(), dev.password());
            opts.set_keep_alive(Duration::from_secs(30));
            if let Some(ca) = &dev.tls_ca {
                opts.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Simple {
                        ca: ca.clone(),
                        alpn: None,
                        client_auth: None,
                    },
                ));
            }
            #[allow(clippy::redundant_closure_call)]
            ($before)(&mut opts, wait);
            let (client, mut events) = Client::new(opts, 16);
            #[allow(clippy::redundant_closure_call)]
            ($after)(&mut events, wait);
            let mut replies = Vec::new();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let Ok(ev) = tokio::time::timeout_at(deadline, events.poll()).await else {
                    return Outcome::Replies(replies);
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.subscribe(sub.0.clone(), qos(sub.1)).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        for (t, q, p) in &publishes {
                            client
                                .publish(t.clone(), qos(*q), false, p.clone())
                                .await
                                .unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        replies.push(RegisterReply::from_json(&p.payload).unwrap());
                        if replies.len() >= expect {
                            return Outcome::Replies(replies);
                        }
                    }
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        return Outcome::Refused(format!("{code:?}"));
                    }
                    Err(e) => return Outcome::Closed(replies, e.to_string()),
                }
            }
        }
    };
}

rumqttc_exchange!(
    v4_exchange,
    rumqttc::AsyncClient,
    rumqttc::MqttOptions,
    rumqttc::Event,
    rumqttc::Packet,
    rumqttc::QoS,
    rumqttc::ConnectionError,
    |_: &mut rumqttc::MqttOptions, _: Duration| {},
    |events: &mut rumqttc::EventLoop, wait: Duration| {
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(wait.as_secs().max(1));
        events.set_network_options(network);
    }
);

rumqttc_exchange!(
    v5_exchange,
    rumqttc::v5::AsyncClient,
    rumqttc::v5::MqttOptions,
    rumqttc::v5::Event,
    rumqttc::v5::mqttbytes::v5::Packet,
    rumqttc::v5::mqttbytes::QoS,
    rumqttc::v5::ConnectionError,
    |opts: &mut rumqttc::v5::MqttOptions, wait: Duration| {
        opts.set_connection_timeout(wait.as_secs().max(1));
        // rumqttc's default (65,535) preallocates ~13 MB of inflight slots per client.
        opts.set_outgoing_inflight_upper_limit(16);
    },
    |_: &mut rumqttc::v5::EventLoop, _: Duration| {}
);

const WAIT: Duration = Duration::from_secs(5);

async fn register_ok(addr: SocketAddr, dev: &Dev) -> RegisterReply {
    let pubs = vec![(dev.request_topic(), 1, request("r1"))];
    match exchange(addr, dev, None, pubs, 1, WAIT).await {
        Outcome::Replies(mut r) if r.len() == 1 => r.remove(0),
        other => panic!("registration of {} failed: {other:?}", dev.unique),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_both_versions_and_sign_methods_idempotently() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        for method in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
            let mut dev = Dev::new("G", &format!("dev-{v5}-{}", method.name()), v5);
            dev.method = method;
            let first = register_ok(s.addr, &dev).await;
            assert_eq!(first.res, 0, "{first:?}");
            assert_eq!(first.id, "r1");
            assert_eq!(first.data.pid.as_deref(), Some("G"));
            let again = register_ok(s.addr, &dev).await;
            assert_eq!(again.data.uuid, first.data.uuid, "idempotent");
            assert_eq!(again.data.secret, first.data.secret);
        }
    }
    // Pool product: the reply carries a pool triplet.
    let r = register_ok(s.addr, &Dev::new("P", "pooldev", true)).await;
    assert_eq!(r.data.uuid.as_deref(), Some("P-u0"));
    assert_eq!(
        r.data.mac,
        Some(dynreg_registrar::conformance::pool_mac("P", 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        let refused = |o: Outcome| match o {
            Outcome::Refused(code) => code,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let go = |dev: Dev| {
            let addr = s.addr;
            async move { exchange(addr, &dev, None, vec![], 1, WAIT).await }
        };
        let mut bad = Dev::new("G", "a", v5);
        bad.secret = "wrong".into();
        assert_eq!(refused(go(bad).await), "BadUserNamePassword");
        assert_eq!(
            refused(go(Dev::new("NOPE", "a", v5)).await),
            "NotAuthorized"
        );
        assert_eq!(refused(go(Dev::new("OFF", "a", v5)).await), "NotAuthorized");
        let mut stale = Dev::new("G", "a", v5);
        stale.ts -= 3600;
        assert_eq!(refused(go(stale).await), "BadUserNamePassword");
        // An underscore in unique moves the split: pid `G_x` no longer matches `G`.
        assert_eq!(
            refused(go(Dev::new("G", "x_y", v5)).await),
            "BadUserNamePassword"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_of_others_are_refused() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        let dev = Dev::new("G", &format!("t{v5}"), v5);
        let other = Dev::new("G", "someone", v5);
        // Subscribing to another device's response topic or a wildcard is refused, so a
        // registration by that device is never seen.
        for filter in [
            other.response_topic(),
            "register/v2/G/+/register_response".into(),
            "#".into(),
        ] {
            let o = exchange(
                s.addr,
                &dev,
                Some((filter.clone(), 1)),
                vec![(dev.request_topic(), 1, request("x"))],
                1,
                Duration::from_millis(800),
            )
            .await;
            match o {
                Outcome::Replies(r) => assert!(r.is_empty(), "{filter}: got {r:?}"),
                other => panic!("{filter}: {other:?}"),
            }
        }
        // Publishing to another device's request topic closes the connection and
        // registers nothing.
        let o = exchange(
            s.addr,
            &dev,
            None,
            vec![(other.request_topic(), 1, request("x"))],
            1,
            WAIT,
        )
        .await;
        assert!(
            matches!(o, Outcome::Closed(ref r, _) if r.is_empty()),
            "{o:?}"
        );
        assert!(s.store.device("G", "someone").unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_variants() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        // ack = 0: no reply, but registered.
        let dev = Dev::new("G", &format!("ack0{v5}"), v5);
        let body = r#"{"id":"n","code":"register","ack":0}"#.to_string();
        let o = exchange(
            s.addr,
            &dev,
            None,
            vec![(dev.request_topic(), 1, body)],
            1,
            Duration::from_millis(800),
        )
        .await;
        assert!(
            matches!(o, Outcome::Replies(ref r) if r.is_empty()),
            "{o:?}"
        );
        assert!(s.store.device("G", &dev.unique).unwrap().is_some());

        // Malformed JSON, then a wrong event code, then a valid request, on one connection.
        let dev = Dev::new("G", &format!("mal{v5}"), v5);
        let pubs = vec![
            (dev.request_topic(), 1, "{not json".to_string()),
            (
                dev.request_topic(),
                0,
                r#"{"id":"w","code":"unregister"}"#.to_string(),
            ),
            (dev.request_topic(), 1, request("ok")),
        ];
        match exchange(s.addr, &dev, None, pubs, 3, WAIT).await {
            Outcome::Replies(r) => {
                assert_eq!(r.len(), 3, "{r:?}");
                assert_eq!(r[0].res, 4000);
                assert_eq!((r[1].res, r[1].code.as_str()), (4001, "unregister"));
                assert_eq!((r[2].res, r[2].id.as_str()), (0, "ok"));
            }
            other => panic!("{other:?}"),
        }

        // Barcode, and replacePid (right, wrong, missing secret).
        let dev = Dev::new("G", &format!("rp{v5}"), v5);
        let body = |extra: &str| format!(r#"{{"id":"b","code":"register","data":{{{extra}}}}}"#);
        let pubs = vec![
            (dev.request_topic(), 1, body(r#""replacePid":"Q""#)),
            (
                dev.request_topic(),
                1,
                body(r#""replacePid":"Q","secret":"nope""#),
            ),
            (
                dev.request_topic(),
                1,
                body(&format!(
                    r#""replacePid":"Q","secret":"secret-of-Q","barcode":"BC-{v5}""#
                )),
            ),
        ];
        match exchange(s.addr, &dev, None, pubs, 3, WAIT).await {
            Outcome::Replies(r) => {
                assert_eq!(r.len(), 3, "{r:?}");
                assert_eq!(r[0].res, 4010);
                assert_eq!(r[1].res, 4011);
                assert_eq!((r[2].res, r[2].data.pid.as_deref()), (0, Some("Q")));
            }
            other => panic!("{other:?}"),
        }
        let reg = s.store.device("G", &dev.unique).unwrap().unwrap();
        assert_eq!(
            (reg.pid.as_str(), reg.triplet.barcode.as_str()),
            ("Q", format!("BC-{v5}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_refused() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        let dev = Dev::new("G", &format!("q2{v5}"), v5);
        let o = exchange(
            s.addr,
            &dev,
            None,
            vec![(dev.request_topic(), 2, request("x"))],
            1,
            WAIT,
        )
        .await;
        assert!(
            matches!(o, Outcome::Closed(ref r, _) if r.is_empty()),
            "{o:?}"
        );
        assert!(s.store.device("G", &dev.unique).unwrap().is_none());
    }
}

/// The MQTT variable-length encoding of a remaining length.
fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = u8::try_from(len % 128).unwrap();
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            return out;
        }
    }
}

/// Reads until the server closes the connection or `limit` passes; true when closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_and_oversize_packets() {
    let s = server(EndpointConfig {
        connect_timeout: Duration::from_secs(1),
        ..EndpointConfig::default()
    })
    .await;
    // Silence after accept: closed after the connect timeout, not before.
    let mut silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    assert!(!closed_within(&mut silent, Duration::from_millis(500)).await);
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);

    // A CONNECT announcing 2 MiB is refused from its header: the server closes at once.
    let mut big = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut header = vec![0x10u8];
    header.extend_from_slice(&remaining_length(2 * 1024 * 1024));
    header.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30]);
    big.write_all(&header).await.unwrap();
    big.write_all(&vec![b'x'; 64 * 1024]).await.unwrap_or(());
    assert!(closed_within(&mut big, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_expiry_closes() {
    // A raw client that connects with keepalive 1 s and then stays silent.
    let s = server(EndpointConfig::default()).await;
    let dev = Dev::new("G", "ka", false);
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (cid, user, pass) = (dev.client_id(), dev.username(), dev.password());
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 1];
    for f in [cid.as_bytes(), user.as_bytes(), pass.as_bytes()] {
        body.extend_from_slice(&u16::try_from(f.len()).unwrap().to_be_bytes());
        body.extend_from_slice(f);
    }
    let mut packet = vec![0x10];
    packet.extend_from_slice(&remaining_length(body.len()));
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    assert!(!closed_within(&mut stream, Duration::from_millis(900)).await);
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "closed after 1.5 x keepalive"
    );
}

/// `n` devices of product G registering at once, every one signing second `ts` (so all
/// presenting one credential), half over MQTT 5: each one's triplet by unique.
async fn at_once(addr: SocketAddr, n: usize, ts: u64) -> std::collections::HashMap<String, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(async move {
            let mut dev = Dev::new("G", &format!("line{i}"), i % 2 == 0);
            dev.ts = ts;
            let pubs = vec![(dev.request_topic(), 1, request("m"))];
            match exchange(addr, &dev, None, pubs, 1, Duration::from_secs(60)).await {
                Outcome::Replies(r) if r.len() == 1 && r[0].res == 0 => {
                    (dev.unique, r[0].data.uuid.clone().unwrap())
                }
                other => panic!("device {i}: {other:?}"),
            }
        });
    }
    tasks.join_all().await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_signing_one_second_at_once_and_again() {
    // A factory line at the defaults: every device of one product signs the same
    // second, from one address, all at once; then the whole line re-registers at once.
    let s = server(EndpointConfig::default()).await;
    let started = std::time::Instant::now();
    let ts = unix_now();
    let first = at_once(s.addr, 1000, ts).await;
    let uuids: std::collections::HashSet<&String> = first.values().collect();
    assert_eq!((first.len(), uuids.len()), (1000, 1000), "one triplet each");
    eprintln!("1000 devices registered in {:?}", started.elapsed());
    let again = at_once(s.addr, 1000, ts).await;
    assert_eq!(again, first, "the same triplets again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto_rr,
    ignore = "mosquitto_rr is not installed (apt-get install mosquitto-clients; .ci/run installs it)"
)]
async fn mosquitto_rr_registers() {
    if std::process::Command::new("mosquitto_rr")
        .arg("--help")
        .output()
        .is_err()
    {
        // Installed after this test was built: the build script had not seen it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED mosquitto_rr_registers: mosquitto_rr cannot be run (apt-get install mosquitto-clients); .ci/run installs it"
        );
        return;
    }
    let s = server(EndpointConfig::default()).await;
    for (version, unique) in [("5", "rr5"), ("311", "rr3")] {
        let dev = Dev::new("G", unique, version == "5");
        let out = tokio::process::Command::new("mosquitto_rr")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &s.addr.port().to_string(),
                "-V",
                version,
                "-W",
                "5",
            ])
            .args([
                "-i",
                &dev.client_id(),
                "-u",
                &dev.username(),
                "-P",
                &dev.password(),
            ])
            .args([
                "-t",
                &dev.request_topic(),
                "-e",
                &dev.response_topic(),
                "-m",
                &request("rr"),
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "mosquitto_rr -V {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply =
            RegisterReply::from_json(String::from_utf8_lossy(&out.stdout).trim().as_bytes())
                .unwrap();
        assert_eq!((reply.res, reply.id.as_str()), (0, "rr"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_clearly() {
    // One new connection per second per source address.
    let s = server(EndpointConfig {
        connections_per_ip_per_sec: 1,
        ..EndpointConfig::default()
    })
    .await;
    let first = register_ok(s.addr, &Dev::new("G", "ip1", true)).await;
    assert_eq!(first.res, 0);
    match exchange(s.addr, &Dev::new("G", "ip2", true), None, vec![], 1, WAIT).await {
        Outcome::Refused(code) => assert_eq!(code, "QuotaExceeded"),
        other => panic!("{other:?}"),
    }
    match exchange(s.addr, &Dev::new("G", "ip3", false), None, vec![], 1, WAIT).await {
        Outcome::Refused(code) => assert_eq!(code, "NotAuthorized", "3.1.1 has no quota code"),
        other => panic!("{other:?}"),
    }

    // One registration per second per pid: the second request at once gets 4290.
    let s = server(ServerOptions {
        registrations_per_pid: 1,
        ..ServerOptions::default()
    })
    .await;
    let dev = Dev::new("G", "pid1", true);
    let pubs = vec![
        (dev.request_topic(), 1, request("a")),
        (dev.request_topic(), 1, request("b")),
    ];
    match exchange(s.addr, &dev, None, pubs, 2, WAIT).await {
        Outcome::Replies(r) => {
            assert_eq!((r[0].res, r[0].id.as_str()), (0, "a"));
            assert_eq!((r[1].res, r[1].id.as_str()), (4290, "b"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_certificate_made_here() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let tls =
        dynreg_endpoint::TlsSettings::load("127.0.0.1:0".parse().unwrap(), &cert, &key).unwrap();
    let s = server(EndpointConfig {
        tls: Some(tls),
        ..EndpointConfig::default()
    })
    .await;
    let tls_addr = s.tls_addr.unwrap();
    for v5 in [false, true] {
        let mut dev = Dev::new("G", &format!("tls{v5}"), v5);
        dev.tls_ca = Some(made.cert.pem().into_bytes());
        let r = register_ok(tls_addr, &dev).await;
        assert_eq!(r.res, 0);
        // The same device over plain TCP gets the same triplet.
        dev.tls_ca = None;
        assert_eq!(register_ok(s.addr, &dev).await.data.uuid, r.data.uuid);
    }
    // A client that does not trust the certificate gets nowhere.
    let mut dev = Dev::new("G", "untrusted", true);
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    dev.tls_ca = Some(other.cert.pem().into_bytes());
    let o = exchange(tls_addr, &dev, None, vec![], 1, WAIT).await;
    assert!(matches!(o, Outcome::Closed(..)), "{o:?}");
    // Plain MQTT on the TLS port fails the handshake.
    let plain = exchange(
        tls_addr,
        &Dev::new("G", "plain", false),
        None,
        vec![],
        1,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        !matches!(plain, Outcome::Replies(ref r) if !r.is_empty()),
        "{plain:?}"
    );
    // Bad files are refused with their name.
    let err =
        dynreg_endpoint::TlsSettings::load("127.0.0.1:0".parse().unwrap(), &key, &key).unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_mismatch_and_operator_changes_apply_at_once() {
    let s = server(EndpointConfig::default()).await;
    for v5 in [false, true] {
        let mut dev = Dev::new("G", &format!("mm{v5}"), v5);
        dev.user_pid = Some("Q".into());
        match exchange(s.addr, &dev, None, vec![], 1, WAIT).await {
            Outcome::Refused(code) => assert_eq!(code, "BadUserNamePassword"),
            other => panic!("{other:?}"),
        }
    }
    // Disabling the product while the server runs refuses new CONNECTs.
    register_ok(s.addr, &Dev::new("G", "before", true)).await;
    tokio::task::block_in_place(|| s.store.set_enabled("G", false).unwrap());
    match exchange(s.addr, &Dev::new("G", "after", true), None, vec![], 1, WAIT).await {
        Outcome::Refused(code) => assert_eq!(code, "NotAuthorized"),
        other => panic!("{other:?}"),
    }
    // A rotation with a grace period: both secrets register until the old one is
    // retired; then the old one is refused and the new one accepted.
    tokio::task::block_in_place(|| s.store.set_enabled("G", true).unwrap());
    let new_secret =
        tokio::task::block_in_place(|| s.store.rotate_secret("G", 3600, unix_now()).unwrap());
    let old = Dev::new("G", "old-in-grace", true);
    assert_eq!(
        register_ok(s.addr, &old).await.res,
        0,
        "old secret in grace"
    );
    let mut dev = Dev::new("G", "new-in-grace", true);
    dev.secret = new_secret.expose().to_owned();
    assert_eq!(
        register_ok(s.addr, &dev).await.res,
        0,
        "new secret in grace"
    );
    tokio::task::block_in_place(|| s.store.retire_secret("G", unix_now()).unwrap());
    // The server's product cache (2 s) may still hold the grace.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match exchange(s.addr, &Dev::new("G", "rot", true), None, vec![], 1, WAIT).await {
        Outcome::Refused(code) => assert_eq!(code, "BadUserNamePassword"),
        other => panic!("{other:?}"),
    }
    let mut dev = Dev::new("G", "rot", true);
    dev.secret = new_secret.expose().to_owned();
    assert_eq!(register_ok(s.addr, &dev).await.res, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_clearly() {
    let s = server(EndpointConfig {
        max_connections: 1,
        ..EndpointConfig::default()
    })
    .await;
    // One silent connection holds the only slot.
    let holder = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (v5, expected) in [(true, "ServerUnavailable"), (false, "ServiceUnavailable")] {
        match exchange(s.addr, &Dev::new("G", "full", v5), None, vec![], 1, WAIT).await {
            Outcome::Refused(code) => assert_eq!(code, expected),
            other => panic!("{other:?}"),
        }
    }
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        register_ok(s.addr, &Dev::new("G", "free", true)).await.res,
        0
    );
}

/// A store whose transactions never finish: a registration waits on it for ever.
struct Stuck(dynreg_registrar::memory::MemoryStore);

impl dynreg_registrar::Store for Stuck {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<
        Output = Result<Option<Arc<dynreg_registrar::Product>>, dynreg_registrar::StoreError>,
    > + Send {
        self.0.product(pid)
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<
        Output = Result<Option<dynreg_registrar::ExpectedDevice>, dynreg_registrar::StoreError>,
    > + Send {
        self.0.expected_device(pid, unique)
    }

    fn transact<T, F>(
        &self,
        _intent: Option<dynreg_registrar::Intent>,
        _work: F,
    ) -> impl Future<Output = Result<T, dynreg_registrar::StoreError>> + Send
    where
        F: FnMut(&mut dyn dynreg_registrar::Tx) -> Result<T, dynreg_registrar::StoreError>
            + Send
            + 'static,
        T: Send + 'static,
    {
        std::future::pending()
    }
}

/// A connected MQTT 5 device: waits for CONNACK and SUBACK, publishes its request when
/// `publish` is set, then reports every event until the connection ends: the DISCONNECT
/// reason code it was sent (if any) and whether a reply arrived.
async fn held_v5(addr: SocketAddr, dev: &Dev, publish: bool) -> (Option<String>, bool) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(dev.client_id(), addr.ip().to_string(), addr.port());
    opts.set_credentials(dev.username(), dev.password());
    opts.set_outgoing_inflight_upper_limit(16);
    let (client, mut events) = AsyncClient::new(opts, 16);
    let mut replied = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Err(_) => panic!("the server never closed the connection"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => client
                .subscribe(dev.response_topic(), QoS::AtLeastOnce)
                .await
                .unwrap(),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if publish => client
                .publish(dev.request_topic(), QoS::AtLeastOnce, false, request("r1"))
                .await
                .unwrap(),
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => replied = true,
            Ok(Ok(_)) => {}
            // rumqttc reports a DISCONNECT from the server as an error.
            Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            ))) => return (Some(format!("{reason_code:?}")), replied),
            Ok(Err(_)) => return (None, replied),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_devices_and_abandons_stuck_registrations_after_the_grace() {
    use dynreg_registrar::conformance::Fixture;
    let memory = dynreg_registrar::memory::MemoryStore::new();
    memory.put_product(product("G", SourceMode::Generate));
    let registrar = Arc::new(Registrar::new(Stuck(memory)));
    let grace = Duration::from_millis(500);
    let endpoint = Endpoint::bind(
        EndpointConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace: grace,
            ..EndpointConfig::default()
        },
        registrar,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(endpoint.run(async move {
        let _ = stopped.await;
    }));
    // One device connected and subscribed, between registrations; one whose
    // registration the store never finishes.
    let idle =
        tokio::spawn(async move { held_v5(addr, &Dev::new("G", "idle", true), false).await });
    let stuck =
        tokio::spawn(async move { held_v5(addr, &Dev::new("G", "stuck", true), true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = tokio::time::Instant::now();
    stop.send(()).unwrap();

    let (reason, replied) = idle.await.unwrap();
    assert_eq!(reason.as_deref(), Some("ServerShuttingDown"));
    assert!(!replied);
    assert!(
        asked.elapsed() < grace,
        "the idle device waited for the grace"
    );

    let (_, replied) = stuck.await.unwrap();
    assert!(
        !replied,
        "a registration the store never finished was answered"
    );
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run did not return after the grace")
        .unwrap()
        .unwrap();
    assert!(
        asked.elapsed() >= grace,
        "the stuck registration was not given the grace"
    );
}

//! The SDK against the endpoint in-process, on port 0.

use dynreg_store::Operator;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dynreg_client::{Error, MqttVersion, Registration, RetryPolicy, Tls};
use dynreg_endpoint::{EndpointConfig, TlsSettings};
use dynreg_proto::credentials::SignMethod;
use dynreg_registrar::{AuthPolicy, SourceMode};
use dynreg_testkit::{ServerOptions, TempStore, TestServer};

/// An endpoint at the default CONNECT policy. These tests register several devices of
/// one product in the same second, as a factory line does.
async fn server(config: impl Into<ServerOptions>) -> TestServer {
    TestServer::start(store(), config.into())
}

async fn server_with(config: EndpointConfig, policy: AuthPolicy) -> TestServer {
    TestServer::start(
        store(),
        ServerOptions {
            endpoint: config,
            policy,
            ..ServerOptions::default()
        },
    )
}

/// Products G and Q (generate mode) and OFF (disabled).
fn store() -> TempStore {
    let t = TempStore::new();
    tokio::task::block_in_place(|| {
        t.product("G", SourceMode::Generate)
            .product("Q", SourceMode::Generate)
            .disabled("OFF", SourceMode::Generate);
    });
    t
}

fn local() -> EndpointConfig {
    EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..EndpointConfig::default()
    }
}

fn reg(addr: SocketAddr, pid: &str) -> Registration {
    Registration::new("127.0.0.1", pid, format!("secret-of-{pid}"))
        .port(addr.port())
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy::none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_every_option() {
    let s = server(local()).await;
    for version in [MqttVersion::V311, MqttVersion::V5] {
        for method in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
            let r = reg(s.addr, "G").mqtt_version(version).sign_method(method);
            let t = r.register().await.unwrap();
            assert_eq!(t.pid, "G");
            assert_eq!(t.unique.len(), 36, "a UUID was generated and returned");
            assert!(!t.unique.contains('_'));
            let again = reg(s.addr, "G")
                .mqtt_version(version)
                .unique(&t.unique)
                .register()
                .await
                .unwrap();
            assert_eq!(again, t, "same unique, same triplet");
        }
    }
    let t = reg(s.addr, "G")
        .unique("bc1")
        .barcode("BAR-1")
        .register()
        .await
        .unwrap();
    let stored = s.store.device("G", "bc1").unwrap().unwrap();
    assert_eq!(
        (stored.triplet.uuid, stored.triplet.barcode.as_str()),
        (t.uuid, "BAR-1")
    );
    let moved = reg(s.addr, "G")
        .unique("mv")
        .replace_pid("Q", "secret-of-Q")
        .register()
        .await
        .unwrap();
    assert_eq!(moved.pid, "Q");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_product_registers_at_first_attempt() {
    let s = server_with(local(), AuthPolicy::default()).await;
    let retrying = RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    // Devices of one product that start in the same second sign the same credential;
    // every one is served at its first attempt, over both versions and both of the
    // seed's methods, and with a device-bound method.
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let method = [
                SignMethod::HmacSha256,
                SignMethod::HmacSha1,
                SignMethod::HmacSha256Bound,
            ][i % 3];
            let version = if i % 2 == 0 {
                MqttVersion::V5
            } else {
                MqttVersion::V311
            };
            let r = reg(s.addr, "G")
                .unique(format!("burst{i}"))
                .sign_method(method)
                .mqtt_version(version)
                .retry(retrying);
            tokio::spawn(async move { r.register_detailed().await })
        })
        .collect();
    let mut uuids = std::collections::HashSet::new();
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(out.attempts, 1, "{:?}", out.result);
        assert!(uuids.insert(out.result.unwrap().uuid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_which_step_and_are_not_retried_when_final() {
    let s = server(local()).await;
    let retrying = RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    let out = reg(s.addr, "G")
        .unique("w")
        .replace_pid("Q", "wrong")
        .retry(retrying)
        .register_detailed()
        .await;
    assert_eq!(out.attempts, 1, "a non-retryable status is not retried");
    assert!(
        matches!(out.result, Err(Error::Refused { res: 4011, .. })),
        "{:?}",
        out.result
    );
    let mut bad = reg(s.addr, "G").retry(retrying);
    bad = Registration::new("127.0.0.1", "G", "not-the-secret")
        .port(s.addr.port())
        .retry(retrying)
        .unique(bad.unique_value().unwrap_or("x"));
    let out = bad.register_detailed().await;
    assert_eq!(out.attempts, 1, "bad credentials are final");
    assert_eq!(
        out.result,
        Err(Error::ConnectRefused {
            server: format!("127.0.0.1:{}", s.addr.port()),
            code: "BadUserNamePassword".into()
        })
    );
    let out = Registration::new("127.0.0.1", "OFF", "secret-of-OFF")
        .port(s.addr.port())
        .retry(retrying)
        .register_detailed()
        .await;
    assert_eq!(out.attempts, 1, "other CONNECT refusals are not retried");
    assert_eq!(
        out.result,
        Err(Error::ConnectRefused {
            server: format!("127.0.0.1:{}", s.addr.port()),
            code: "NotAuthorized".into()
        })
    );
    let out = reg(s.addr, "G").unique("a_b").register_detailed().await;
    assert!(matches!(out.result, Err(Error::Invalid(_))));
    assert_eq!(out.attempts, 0);

    // A server that accepts TCP and never answers: a timeout, retried.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let out = Registration::new("127.0.0.1", "G", "s")
        .port(port)
        .timeout(Duration::from_millis(300))
        .retry(RetryPolicy {
            max_attempts: 2,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
        })
        .register_detailed()
        .await;
    assert_eq!(out.attempts, 2, "timeouts are retried");
    assert_eq!(out.result, Err(Error::Timeout(Duration::from_millis(300))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_comes_up_after_the_client_started() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let r = Registration::new("127.0.0.1", "G", "secret-of-G")
        .port(port)
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy {
            max_attempts: 20,
            initial: Duration::from_millis(200),
            max: Duration::from_millis(500),
        });
    let client = tokio::spawn(async move { r.register_detailed().await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _s = server(EndpointConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..EndpointConfig::default()
    })
    .await;
    let out = client.await.unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert!(
        out.attempts > 1,
        "it had to retry ({} attempts)",
        out.attempts
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_refusal_then_success() {
    // One registration per second per product: the second device is told 4290 (retry
    // after 5 s) and succeeds on its next attempt.
    let s = server(ServerOptions {
        endpoint: local(),
        registrations_per_pid: 1,
        ..ServerOptions::default()
    })
    .await;
    reg(s.addr, "G").unique("first").register().await.unwrap();
    let started = Instant::now();
    let out = reg(s.addr, "G")
        .unique("second")
        .retry(RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
        })
        .register_detailed()
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(out.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the 5 s hint was honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_the_blocking_api() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen_cert();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &made.0).unwrap();
    std::fs::write(&key, &made.1).unwrap();
    let tls = TlsSettings::load("127.0.0.1:0".parse().unwrap(), &cert, &key).unwrap();
    let s = server(EndpointConfig {
        tls: Some(tls),
        ..local()
    })
    .await;
    let tls_port = s.tls_addr.unwrap().port();
    let t = reg(s.addr, "G")
        .port(tls_port)
        .tls(Tls::CaFile(cert.clone()))
        .register()
        .await
        .unwrap();
    assert_eq!(t.pid, "G");
    let r = reg(s.addr, "G")
        .port(tls_port)
        .tls(Tls::CaPem(made.0.into_bytes()))
        .unique("blocking");
    let t = tokio::task::spawn_blocking(move || r.register_blocking())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.unique, "blocking");
}

fn rcgen_cert() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

//! The load generator against the endpoint in-process, and the responder against a real
//! Mosquitto when one is installed.

use dynreg_store::Operator;
use std::sync::Arc;
use std::time::Duration;

use dynreg_bench::{BenchConfig, Failure, responder, run};
use dynreg_endpoint::EndpointConfig;
use dynreg_proto::credentials::SignMethod;
use dynreg_registrar::{AuthPolicy, SourceMode};
use dynreg_testkit::{ServerOptions, TempStore, TestServer};

fn config(addr: String, secret: &str, v5: bool, qos: u8) -> BenchConfig {
    BenchConfig {
        addr,
        pid: "G".into(),
        secret: secret.into(),
        total: 200,
        concurrency: 20,
        v5,
        qos,
        sign_method: SignMethod::HmacSha256,
        timeout: Duration::from_secs(10),
        unique_prefix: format!("b{v5}{qos}-"),
        sign_ts: None,
        rate: None,
        duration: None,
        tls: None,
        spread_sources: true,
    }
}

/// A running endpoint on port 0 over a fresh store holding product G (generate mode).
struct Server {
    /// The plain TCP address (or the TLS one when TLS is configured).
    addr: String,
    server: TestServer,
}

/// Starts an endpoint with `config` on loopback port 0, at the default CONNECT policy;
/// `dir` holds the store (and whatever else the test put there). The simulated devices
/// of one run sign with the current second, so many share a credential, as a factory
/// line's do.
async fn endpoint(dir: tempfile::TempDir, config: EndpointConfig) -> Server {
    let store = TempStore::in_dir(dir);
    tokio::task::block_in_place(|| {
        store.product("G", SourceMode::Generate);
    });
    let server = TestServer::start(
        store,
        ServerOptions {
            endpoint: config,
            policy: AuthPolicy::default(),
            ..ServerOptions::default()
        },
    );
    Server {
        addr: server.tls_addr.unwrap_or(server.addr).to_string(),
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycles_against_the_endpoint() {
    let s = endpoint(
        tempfile::tempdir().unwrap(),
        EndpointConfig {
            connections_per_ip_per_sec: 0,
            ..EndpointConfig::default()
        },
    )
    .await;
    let (addr, store) = (s.addr.clone(), &s.server.store);
    for v5 in [false, true] {
        for qos in [0, 1] {
            let r = run(
                config(addr.clone(), "secret-of-G", v5, qos),
                Arc::new(|_| {}),
            )
            .await;
            assert_eq!(
                (r.completed, r.failed.len()),
                (200, 0),
                "v5={v5} qos={qos}: {:?}",
                r.failed
            );
            assert_eq!(r.latency_us.len(), 200);
            assert!(r.latency_us.value_at_quantile(0.99) > 0);
            assert!(r.throughput() > 0.0);
        }
    }
    assert_eq!(
        tokio::task::block_in_place(|| store.pool_stats("G").unwrap().devices),
        800
    );

    // Open loop: 100 cycles at 200/s take about half a second, not less.
    let mut paced = config(addr.clone(), "secret-of-G", true, 1);
    paced.total = 100;
    paced.rate = Some(200.0);
    paced.unique_prefix = "paced-".into();
    let r = run(paced, Arc::new(|_| {})).await;
    assert_eq!(r.completed, 100);
    assert!(r.elapsed >= Duration::from_millis(490), "{:?}", r.elapsed);

    // A duration bounds an unbounded run.
    let mut timed = config(addr.clone(), "secret-of-G", true, 0);
    timed.total = u64::MAX;
    timed.duration = Some(Duration::from_millis(300));
    timed.unique_prefix = "timed-".into();
    let r = run(timed, Arc::new(|_| {})).await;
    assert!(
        r.completed > 0 && r.elapsed < Duration::from_secs(5),
        "{} in {:?}",
        r.completed,
        r.elapsed
    );

    // Held connections stay open.
    let mut h = config(addr.clone(), "secret-of-G", false, 1);
    h.unique_prefix = "held-".into();
    let held = dynreg_bench::hold(&h, 50, &|_| {}).await.unwrap();
    assert_eq!(held.len(), 50);
    drop(held);
    let r = run(config(addr, "wrong", true, 1), Arc::new(|_| {})).await;
    assert_eq!(r.completed, 0);
    assert_eq!(r.failed.get(&Failure::ConnectRefused(0x86)), Some(&200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)"
)]
async fn responder_on_a_real_mosquitto() {
    if std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_err()
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED responder_on_a_real_mosquitto: mosquitto is not installed (apt-get install mosquitto); .ci/run installs it"
        );
        return;
    }
    let (mut broker, port) = dynreg_testkit::mosquitto().await;
    let addr = format!("127.0.0.1:{port}");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a = addr.clone();
    let resp = tokio::spawn(async move {
        responder(
            &a,
            false,
            1,
            move || {
                let _ = ready_tx.send(());
            },
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    ready_rx.await.unwrap();
    for v5 in [false, true] {
        let r = run(config(addr.clone(), "any", v5, 1), Arc::new(|_| {})).await;
        assert_eq!((r.completed, r.failed.len()), (200, 0), "{:?}", r.failed);
    }
    let _ = stop_tx.send(());
    assert_eq!(resp.await.unwrap().unwrap(), 400);
    let _ = broker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let tls =
        dynreg_endpoint::TlsSettings::load("127.0.0.1:0".parse().unwrap(), &cert, &key).unwrap();
    let s = endpoint(
        dir,
        EndpointConfig {
            tls: Some(tls),
            ..EndpointConfig::default()
        },
    )
    .await;
    let addr = s.addr.clone();
    let mut cfg = config(addr, "secret-of-G", true, 1);
    cfg.tls = Some(dynreg_bench::TlsClient::new(made.cert.pem().as_bytes(), "127.0.0.1").unwrap());
    let r = run(cfg, Arc::new(|_| {})).await;
    assert_eq!((r.completed, r.failed.len()), (200, 0), "{:?}", r.failed);
}

/// Each simulated device connects from its own loopback address: a server that allows
/// 20 new connections per second per source address takes 200 devices at once from
/// spread sources, and refuses most of them from one source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_from_their_own_loopback_addresses() {
    let s = endpoint(
        tempfile::tempdir().unwrap(),
        EndpointConfig {
            connections_per_ip_per_sec: 20,
            ..EndpointConfig::default()
        },
    )
    .await;
    let addr = s.addr.clone();

    let spread = run(
        config(addr.clone(), "secret-of-G", true, 1),
        Arc::new(|_| {}),
    )
    .await;
    assert_eq!(
        (spread.completed, spread.failed.len()),
        (200, 0),
        "{:?}",
        spread.failed
    );

    let mut one = config(addr, "secret-of-G", true, 1);
    one.spread_sources = false;
    one.unique_prefix = "single-".into();
    let single = run(one, Arc::new(|_| {})).await;
    let refused = single
        .failed
        .get(&Failure::ConnectRefused(0x97))
        .copied()
        .unwrap_or(0);
    assert!(refused >= 100, "from one address: {:?}", single.failed);
}

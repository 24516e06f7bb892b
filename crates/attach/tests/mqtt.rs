//! The MQTT worker on a real Mosquitto 2 (shared subscriptions, MQTT 5): devices
//! register through the broker with two workers in the group (which of them answers
//! is the broker's choice, not checked), again with the same triplet, and the workers
//! stop within a bound. Mosquitto lets anyone in here (its CONNECT and topics are
//! the hooks' business, tested in dynreg-http); this tests the workers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dynreg_attach::{MqttTarget, Target, WorkerConfig};
use dynreg_client::{MqttVersion, Registration, RetryPolicy};
use dynreg_registrar::{AuthPolicy, Registrar, SourceMode};
use dynreg_testkit::TempStore;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)"
)]
async fn two_workers_answer_the_requests_of_a_real_mosquitto() {
    let (mut broker, port) = dynreg_testkit::mosquitto().await;
    let store = TempStore::new();
    store.product("p1", SourceMode::Generate);
    let registrar = Arc::new(Registrar::with_policy(
        store.store.clone(),
        AuthPolicy::default(),
    ));
    let target = Target::Mqtt(MqttTarget {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        username: None,
        password: None,
    });
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(dynreg_attach::run(
                target.clone(),
                registrar.clone(),
                WorkerConfig::default(),
                stop.clone(),
            ))
        })
        .collect();
    // Let both join the group before the devices publish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let device = |unique: String| {
        Registration::new("127.0.0.1", "p1", "secret-of-p1")
            .port(port)
            .unique(unique)
            .mqtt_version(MqttVersion::V5)
            .timeout(Duration::from_secs(10))
            .retry(RetryPolicy {
                max_attempts: 3,
                initial: Duration::from_millis(200),
                max: Duration::from_secs(1),
            })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let d = device(format!("dev{i}"));
        tasks.spawn(async move { (i, d.register().await) });
    }
    let mut first = vec![String::new(); 60];
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.unwrap();
        first[i] = r.unwrap_or_else(|e| panic!("dev{i}: {e}")).uuid;
    }
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 60);
    // Registering again through the broker gives each device its triplet again.
    let again = device("dev7".into()).register().await.unwrap();
    assert_eq!(again.uuid, first[7]);
    assert_eq!(registrar.store_errors(), 0);

    stop.cancel();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a worker stops within 10 s")
            .unwrap();
    }
    let _ = broker.kill().await;
}

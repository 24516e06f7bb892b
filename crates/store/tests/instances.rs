//! Several dynreg instances on one PostgreSQL database: two stores (two sets of
//! connections, two writers' queues) and two registrars, as two `dynreg serve`
//! processes would have them, racing for the same pool, the same devices, the same MAC
//! range and the same barcodes. SKIPPED without a server (see `dynreg_testkit::pg`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{TempStore, pg_config};
use dynreg_proto::{RegisterRequest, Status};
use dynreg_registrar::conformance::{join_all, pool, product};
use dynreg_registrar::{Device, MacRange, Registered, Registrar, ReregPolicy, SourceMode, Store};
use dynreg_store::{Operator, PgStore};

const NOW: u64 = 1_700_000_000;

/// A store on a new database and a second one on the same database, with a registrar
/// each.
struct Two {
    first: TempStore<PgStore>,
    a: Registrar<PgStore>,
    b: Registrar<PgStore>,
}

fn two(test: &str, setup: impl FnOnce(&PgStore)) -> Option<Two> {
    tokio::task::block_in_place(|| {
        let first = TempStore::postgres(test)?;
        setup(&first.store);
        let second = PgStore::open(&pg_config(first.url(), &first.key_hex)).expect("second");
        Some(Two {
            a: Registrar::new(first.store.clone()),
            b: Registrar::new(second),
            first,
        })
    })
}

fn dev(pid: &str, unique: &str) -> Device<'static> {
    // Leaked: a few hundred short strings per test.
    Device {
        pid: Box::leak(pid.to_owned().into_boxed_str()),
        unique: Box::leak(unique.to_owned().into_boxed_str()),
    }
}

/// Registers every unique through `a` (even indexes) or `b` (odd), all at once, each
/// trying again after 5031 as a device would.
async fn through_both(t: &Two, pid: &str, uniques: &[String]) -> Vec<Result<Registered, Status>> {
    let req = RegisterRequest::new("1", NOW);
    join_all(uniques.iter().enumerate().map(|(i, u)| {
        let r = if i % 2 == 0 { &t.a } else { &t.b };
        let req = &req;
        async move { decide_retrying(r, dev(pid, u), req).await }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn two_instances_claim_one_pool_and_never_bind_a_triplet_twice() {
    let Some(t) = two("two_instances_claim_one_pool", |s| {
        s.insert_product(&product("P", SourceMode::Pool)).unwrap();
        s.import_pool("P", pool("P", 1_000), Arc::new(|_| {}))
            .unwrap();
    }) else {
        return;
    };
    // 1,200 devices for 1,000 triplets: every triplet is bound exactly once, and the
    // 200 left over are told the pool is exhausted.
    let uniques: Vec<String> = (0..1_200).map(|i| format!("d{i}")).collect();
    let results = through_both(&t, "P", &uniques).await;
    let bound: Vec<&Registered> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let exhausted = results
        .iter()
        .filter(|r| **r == Err(Status::PoolExhausted))
        .count();
    assert_eq!(
        (bound.len(), exhausted),
        (1_000, 200),
        "{:?}",
        results
            .iter()
            .find(|r| matches!(r, Err(s) if *s != Status::PoolExhausted))
    );
    let uuids: HashSet<&str> = bound.iter().map(|r| r.triplet.uuid.as_str()).collect();
    assert_eq!(uuids.len(), 1_000, "a triplet was bound twice");
    let stats = tokio::task::block_in_place(|| t.first.store.pool_stats("P").unwrap());
    assert_eq!((stats.free, stats.bound, stats.devices), (0, 1_000, 1_000));
}

/// `commit_registration`, tried again after "temporarily unavailable" (5031, which devices retry) a
/// few times, saying so on stderr. A loaded machine sees it: a pool whose free triplets
/// are all held by the other instance's registrations in flight answers 5031 (busy), not
/// 5030 (exhausted). What these tests guard is that no triplet is handed out twice.
async fn decide_retrying<S: Store>(
    r: &Registrar<S>,
    d: Device<'_>,
    req: &RegisterRequest,
) -> Result<Registered, Status> {
    let mut tries = 1;
    loop {
        match r.commit_registration(NOW, d, req).await {
            Err(Status::TemporarilyUnavailable) if tries < 5 => {
                eprintln!(
                    "{}/{}: temporarily unavailable (try {tries}); trying again as a device would",
                    d.pid, d.unique
                );
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn the_same_device_through_both_at_once_gets_one_triplet() {
    let Some(t) = two("the_same_device_through_both", |s| {
        s.insert_product(&product("P", SourceMode::Pool)).unwrap();
        s.import_pool("P", pool("P", 300), Arc::new(|_| {}))
            .unwrap();
        s.insert_product(&product("G", SourceMode::Generate))
            .unwrap();
    }) else {
        return;
    };
    let req = RegisterRequest::new("1", NOW);
    for pid in ["P", "G"] {
        // Each device arrives at both instances at the same instant, 200 devices at once.
        let outcomes = join_all((0..200).map(|i| {
            let (a, b, req) = (&t.a, &t.b, &req);
            async move {
                let d = dev(pid, &format!("same{i}"));
                join_all([decide_retrying(a, d, req), decide_retrying(b, d, req)]).await
            }
        }))
        .await;
        for (i, pair) in outcomes.iter().enumerate() {
            let (x, y) = (pair[0].as_ref().unwrap(), pair[1].as_ref().unwrap());
            assert_eq!(x.triplet.uuid, y.triplet.uuid, "{pid} device {i}");
            assert_eq!(x.triplet.secret, y.triplet.secret);
            assert!(x.fresh != y.fresh, "exactly one of the two registered it");
        }
        let stats = tokio::task::block_in_place(|| t.first.store.pool_stats(pid).unwrap());
        assert_eq!((stats.bound, stats.devices), (200, 200), "{pid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn one_mac_range_is_shared_without_duplicates() {
    let range: MacRange = "02:00:00:00:00:00-02:00:00:00:01:f3".parse().unwrap(); // 500
    let Some(t) = two("one_mac_range_is_shared", |s| {
        let mut p = product("M", SourceMode::Generate);
        p.mac_range = Some(range);
        s.insert_product(&p).unwrap();
    }) else {
        return;
    };
    let uniques: Vec<String> = (0..520).map(|i| format!("m{i}")).collect();
    let results = through_both(&t, "M", &uniques).await;
    let macs: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| MacRange::parse_mac(&r.triplet.mac).unwrap())
        .collect();
    assert_eq!(macs.len(), 500, "the range holds 500 addresses");
    assert_eq!(
        macs.iter().collect::<HashSet<_>>().len(),
        500,
        "a MAC was given twice"
    );
    assert!(macs.iter().all(|m| range.contains(*m)));
    let exhausted = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(exhausted, 20);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|s| *s == Status::PoolExhausted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn a_barcode_goes_to_one_device_only() {
    let Some(t) = two("a_barcode_goes_to_one_device_only", |s| {
        s.insert_product(&product("G", SourceMode::Generate))
            .unwrap();
    }) else {
        return;
    };
    for round in 0..50 {
        let mut req = RegisterRequest::new("1", NOW);
        req.data.barcode = format!("BC-{round}");
        let (a, b) = (
            dev("G", &format!("x{round}")),
            dev("G", &format!("y{round}")),
        );
        let both = join_all([
            t.a.commit_registration(NOW, a, &req),
            t.b.commit_registration(NOW, b, &req),
        ])
        .await;
        let won = both.iter().filter(|r| r.is_ok()).count();
        let taken = both
            .iter()
            .filter(|r| **r == Err(Status::BarcodeTaken))
            .count();
        assert_eq!((won, taken), (1, 1), "round {round}: {both:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn the_reregistration_policy_holds_across_instances() {
    let Some(t) = two("rereg_across_instances", |s| {
        let mut p = product("R", SourceMode::Generate);
        p.rereg = ReregPolicy::Never;
        s.insert_product(&p).unwrap();
    }) else {
        return;
    };
    // Registered through one instance, refused a re-registration by the other.
    let req = RegisterRequest::new("1", NOW);
    t.a.commit_registration(NOW, dev("R", "once"), &req)
        .await
        .unwrap();
    assert_eq!(
        t.b.commit_registration(NOW + 5, dev("R", "once"), &req)
            .await
            .err(),
        Some(Status::ReregistrationRefused)
    );
    let stats = tokio::task::block_in_place(|| t.first.store.pool_stats("R").unwrap());
    assert_eq!(stats.reregistrations_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
async fn a_product_change_on_one_instance_reaches_the_other_within_2_s() {
    let Some(t) = two("a_product_change_reaches_the_other", |s| {
        s.insert_product(&product("C", SourceMode::Generate))
            .unwrap();
    }) else {
        return;
    };
    let req = RegisterRequest::new("1", NOW);
    // The other instance has the product in its cache.
    t.b.commit_registration(NOW, dev("C", "before"), &req)
        .await
        .unwrap();
    let changed = std::time::Instant::now();
    tokio::task::block_in_place(|| t.first.store.set_enabled("C", false).unwrap());
    // Through the instance that made the change: at once.
    assert_eq!(
        t.a.commit_registration(NOW, dev("C", "a"), &req)
            .await
            .err(),
        Some(Status::RegistrationDisabled)
    );
    // Through the other: once its cached copy expires (2 s TTL; the bound checked here
    // is looser, so that a slow machine does not fail it).
    loop {
        match t.b.commit_registration(NOW, dev("C", "b"), &req).await {
            Err(Status::RegistrationDisabled) => break,
            Ok(_) => assert!(
                changed.elapsed() < std::time::Duration::from_secs(4),
                "the other instance still registers {:?} after the change",
                changed.elapsed()
            ),
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

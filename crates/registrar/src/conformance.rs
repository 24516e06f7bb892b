//! The registration rules as a test suite that runs against any [`Store`], so that
//! every backend is held to the same behaviour (the in-memory store here, SQLite and
//! PostgreSQL in their crates).
//!
//! A backend implements [`Fixture`] (the few operator operations the suite needs) and
//! calls [`conformance_tests!`](crate::conformance_tests) in a test file, which expands
//! to one `#[tokio::test]` per rule.

use std::collections::HashSet;
use std::sync::Arc;

use dynreg_proto::{RegisterRequest, Status};

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::{
    AuditEntry, Device, ExpectedDevice, MacRange, NewTriplet, Product, Registrar, Secret,
    SourceMode, Store, TripletState,
};

/// Polls all futures concurrently on the current task and collects their outputs in
/// order (a dependency-free `join_all`; fine for tests).
pub async fn join_all<T, Fut: Future<Output = T>>(
    futures: impl IntoIterator<Item = Fut>,
) -> Vec<T> {
    let mut futures: Vec<Pin<Box<Fut>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
        }
    })
    .await
}

/// What the suite needs from a backend besides [`Store`].
pub trait Fixture: Store + Sized {
    /// Adds a product exactly as given (secret included).
    fn put_product(&self, product: Product);
    /// Adds free triplets to a pool.
    fn add_pool(&self, pid: &str, triplets: Vec<NewTriplet>);
    /// Revokes a device.
    fn revoke(&self, key_pid: &str, unique: &str, now: u64);
    /// Resets a revoked device.
    fn reset(&self, key_pid: &str, unique: &str);
    /// (free, bound, revoked) triplet counts of a product.
    fn pool_counts(&self, pid: &str) -> (u64, u64, u64);
    /// (re-registrations served, re-registrations refused) of a product.
    fn reregistrations(&self, pid: &str) -> (u64, u64);
    /// The audit lines devices caused (actor `device`), oldest first.
    fn audit(&self) -> Vec<AuditEntry>;
    /// Lists devices in advance for a product (added, or replacing the same uniques).
    fn expect(&self, pid: &str, devices: Vec<ExpectedDevice>);
}

impl<F: Fixture> Fixture for Arc<F> {
    fn put_product(&self, product: Product) {
        (**self).put_product(product);
    }
    fn add_pool(&self, pid: &str, triplets: Vec<NewTriplet>) {
        (**self).add_pool(pid, triplets);
    }
    fn revoke(&self, key_pid: &str, unique: &str, now: u64) {
        (**self).revoke(key_pid, unique, now);
    }
    fn reset(&self, key_pid: &str, unique: &str) {
        (**self).reset(key_pid, unique);
    }
    fn pool_counts(&self, pid: &str) -> (u64, u64, u64) {
        (**self).pool_counts(pid)
    }
    fn reregistrations(&self, pid: &str) -> (u64, u64) {
        (**self).reregistrations(pid)
    }
    fn audit(&self) -> Vec<AuditEntry> {
        (**self).audit()
    }
    fn expect(&self, pid: &str, devices: Vec<ExpectedDevice>) {
        (**self).expect(pid, devices);
    }
}

const NOW: u64 = 1_700_000_000;

/// A product with secret `secret-of-<pid>`, enabled, window 900 s.
pub fn product(pid: &str, mode: SourceMode) -> Product {
    Product {
        pid: pid.into(),
        name: format!("product {pid}"),
        secret: Secret::new(format!("secret-of-{pid}")),
        enabled: true,
        mode,
        mac_range: None,
        ts_window: 900,
        rereg: crate::ReregPolicy::DEFAULT,
        signatures: crate::Signatures::Any,
        admission: crate::Admission::Open,
        quota: None,
        previous_secret: None,
        created_at: NOW,
    }
}

/// `n` triplets `<prefix>-u<i>` with secrets `<prefix>-s<i>`, macs and barcodes alike.
pub fn pool(prefix: &str, n: usize) -> Vec<NewTriplet> {
    (0..n)
        .map(|i| NewTriplet {
            uuid: format!("{prefix}-u{i}"),
            secret: Secret::new(format!("{prefix}-s{i}")),
            mac: pool_mac(prefix, i),
            barcode: format!("{prefix}-b{i}"),
        })
        .collect()
}

/// The MAC of triplet `i` of [`pool`]`(prefix, ..)`: `02:` (locally administered), two
/// bytes of a hash of the prefix, three of `i`; distinct across the prefixes tests use.
pub fn pool_mac(prefix: &str, i: usize) -> String {
    let h = prefix.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let i = u64::try_from(i).unwrap_or(u64::MAX) & 0xFF_FFFF;
    MacRange::format((0x02 << 40) | (u64::from(h & 0xFFFF) << 24) | i)
}

/// Product P with a pool of 3; the registrar and the fixture (to look at the store
/// the way an operator would).
fn setup<F: Fixture>(store: F) -> (Registrar<Arc<F>>, Arc<F>) {
    store.put_product(product("P", SourceMode::Pool));
    store.add_pool("P", pool("P", 3));
    registrar(store)
}

/// The registrar over `store`, and the fixture.
fn registrar<F: Fixture>(store: F) -> (Registrar<Arc<F>>, Arc<F>) {
    let store = Arc::new(store);
    (Registrar::new(store.clone()), store)
}

fn dev<'a>(unique: &'a str) -> Device<'a> {
    Device { pid: "P", unique }
}

fn req() -> RegisterRequest {
    RegisterRequest::new("m1", NOW)
}

fn with(f: impl FnOnce(&mut RegisterRequest)) -> RegisterRequest {
    let mut r = req();
    f(&mut r);
    r
}

/// Rule test.
pub async fn pool_binds_free_triplets_and_is_idempotent<F: Fixture>(store: F) {
    let (r, s) = setup(store);
    let a = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    assert!(a.fresh);
    assert_eq!(a.pid, "P");
    assert_eq!(a.triplet.uuid, "P-u0");
    assert_eq!(a.triplet.state, TripletState::Bound);
    let again = r
        .commit_registration(NOW + 5, dev("a"), &req())
        .await
        .unwrap();
    assert!(!again.fresh);
    assert_eq!(again.triplet.uuid, "P-u0");
    let b = r.commit_registration(NOW, dev("b"), &req()).await.unwrap();
    assert_eq!(b.triplet.uuid, "P-u1");
    assert_eq!(s.pool_counts("P"), (1, 2, 0));
}

/// Rule test.
pub async fn empty_pool_is_exhausted<F: Fixture>(store: F) {
    let (r, _) = setup(store);
    for u in ["a", "b", "c"] {
        r.commit_registration(NOW, dev(u), &req()).await.unwrap();
    }
    assert_eq!(
        r.commit_registration(NOW, dev("d"), &req()).await,
        Err(Status::PoolExhausted)
    );
    // A registered device still gets its triplet back.
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &req())
            .await
            .unwrap()
            .triplet
            .uuid,
        "P-u0"
    );
}

/// Rule test.
pub async fn reply_carries_triplet_and_echoes<F: Fixture>(store: F) {
    let (r, _) = setup(store);
    let reply = r.register(NOW, dev("a"), &req()).await;
    assert_eq!(reply.res, 0);
    assert_eq!(
        (reply.id.as_str(), reply.code.as_str(), reply.ts),
        ("m1", "register", NOW)
    );
    assert_eq!(reply.data.uuid.as_deref(), Some("P-u0"));
    assert_eq!(reply.data.secret.as_deref(), Some("P-s0"));
    assert_eq!(reply.data.mac, Some(pool_mac("P", 0)));
    assert_eq!(reply.data.pid.as_deref(), Some("P"));
    let bad = r
        .register(
            NOW,
            Device {
                pid: "nope",
                unique: "a",
            },
            &req(),
        )
        .await;
    assert_eq!(bad.res, Status::ProductUnknown.code());
    assert_eq!(bad.data, Default::default());
}

/// Rule test.
pub async fn payload_handling_ack_and_malformed<F: Fixture>(store: F) {
    let (r, s) = setup(store);
    let none = r
        .register_payload(NOW, dev("a"), br#"{"id":"1","code":"register","ack":0}"#)
        .await;
    assert!(none.reply.is_none(), "ack=0 gets no reply");
    assert_eq!(none.outcome, Ok(true));
    // ...but the registration happened.
    assert!(
        !r.commit_registration(NOW, dev("a"), &req())
            .await
            .unwrap()
            .fresh
    );
    let bad = r
        .register_payload(NOW, dev("b"), b"{not json")
        .await
        .reply
        .unwrap();
    assert_eq!(bad.res, Status::MalformedRequest.code());
    let bad = r
        .register_payload(NOW, dev("b"), br#"{"id":"9","code":"register","ack":"x"}"#)
        .await
        .reply
        .unwrap();
    assert_eq!(
        (bad.res, bad.id.as_str()),
        (Status::MalformedRequest.code(), "9")
    );
    let wrong = r
        .register_payload(NOW, dev("b"), br#"{"id":"9","code":"unregister"}"#)
        .await
        .reply
        .unwrap();
    assert_eq!(
        (wrong.res, wrong.code.as_str()),
        (Status::UnknownEventCode.code(), "unregister")
    );
    assert_eq!(s.pool_counts("P"), (2, 1, 0), "refusals bind nothing");
}

/// Rule test.
pub async fn generate_mode_with_and_without_mac_range<F: Fixture>(store: F) {
    store.put_product(product("G", SourceMode::Generate));
    let mut m = product("M", SourceMode::Generate);
    m.mac_range = Some(
        "02:00:00:00:00:fe-02:00:00:00:00:ff"
            .parse::<MacRange>()
            .unwrap(),
    );
    store.put_product(m);
    let (r, _) = registrar(store);
    let g = r
        .commit_registration(
            NOW,
            Device {
                pid: "G",
                unique: "x",
            },
            &req(),
        )
        .await
        .unwrap();
    assert_eq!(g.triplet.mac, "");
    assert_eq!(g.triplet.secret.expose().len(), 32);
    assert!(g.triplet.uuid.starts_with('d') && !g.triplet.uuid.contains('_'));
    let g2 = r
        .commit_registration(
            NOW,
            Device {
                pid: "G",
                unique: "y",
            },
            &req(),
        )
        .await
        .unwrap();
    assert_ne!(g.triplet.uuid, g2.triplet.uuid);
    assert_ne!(g.triplet.secret, g2.triplet.secret);
    let same = r
        .commit_registration(
            NOW,
            Device {
                pid: "G",
                unique: "x",
            },
            &req(),
        )
        .await
        .unwrap();
    assert_eq!(same.triplet, g.triplet);

    let m1 = r
        .commit_registration(
            NOW,
            Device {
                pid: "M",
                unique: "1",
            },
            &req(),
        )
        .await
        .unwrap();
    let m2 = r
        .commit_registration(
            NOW,
            Device {
                pid: "M",
                unique: "2",
            },
            &req(),
        )
        .await
        .unwrap();
    assert_eq!(
        (m1.triplet.mac.as_str(), m2.triplet.mac.as_str()),
        ("02:00:00:00:00:FE", "02:00:00:00:00:FF")
    );
    assert_eq!(
        r.commit_registration(
            NOW,
            Device {
                pid: "M",
                unique: "3"
            },
            &req()
        )
        .await,
        Err(Status::PoolExhausted),
        "a used-up MAC range stops generation"
    );
}

/// Rule test.
pub async fn pool_then_generate<F: Fixture>(store: F) {
    store.put_product(product("T", SourceMode::PoolThenGenerate));
    store.add_pool("T", pool("T", 1));
    let (r, s) = registrar(store);
    let a = r
        .commit_registration(
            NOW,
            Device {
                pid: "T",
                unique: "a",
            },
            &req(),
        )
        .await
        .unwrap();
    assert_eq!(a.triplet.uuid, "T-u0");
    let b = r
        .commit_registration(
            NOW,
            Device {
                pid: "T",
                unique: "b",
            },
            &req(),
        )
        .await
        .unwrap();
    assert!(b.triplet.uuid.starts_with('d'));
    assert_eq!(s.pool_counts("T"), (0, 2, 0));
}

/// Rule test.
pub async fn barcode_overwrites_moves_and_refuses<F: Fixture>(store: F) {
    let (r, s) = setup(store);
    // New device with a new barcode: the pool triplet's barcode is overwritten.
    let a = r
        .commit_registration(NOW, dev("a"), &with(|q| q.data.barcode = "BC-A".into()))
        .await
        .unwrap();
    assert_eq!(
        (a.triplet.uuid.as_str(), a.triplet.barcode.as_str()),
        ("P-u0", "BC-A")
    );
    // Re-registration applies a new barcode too.
    let a2 = r
        .commit_registration(NOW, dev("a"), &with(|q| q.data.barcode = "BC-A2".into()))
        .await
        .unwrap();
    assert_eq!(
        (a2.triplet.uuid.as_str(), a2.triplet.barcode.as_str()),
        ("P-u0", "BC-A2")
    );
    // A barcode bound to another device is refused, for new and for known devices.
    assert_eq!(
        r.commit_registration(NOW, dev("b"), &with(|q| q.data.barcode = "BC-A2".into()))
            .await,
        Err(Status::BarcodeTaken)
    );
    r.commit_registration(NOW, dev("b"), &req()).await.unwrap();
    assert_eq!(
        r.commit_registration(NOW, dev("b"), &with(|q| q.data.barcode = "BC-A2".into()))
            .await,
        Err(Status::BarcodeTaken)
    );
    // A barcode printed on a free pool triplet moves to the registering device's triplet.
    let c = r
        .commit_registration(NOW, dev("c"), &with(|q| q.data.barcode = "P-b2".into()))
        .await
        .unwrap();
    assert_eq!(c.triplet.barcode, "P-b2");
    // Same barcode again by the same device: fine.
    assert!(
        r.commit_registration(NOW, dev("c"), &with(|q| q.data.barcode = "P-b2".into()))
            .await
            .is_ok()
    );
    // The refused requests bound nothing.
    assert_eq!(s.pool_counts("P"), (0, 3, 0));
}

/// Rule test.
pub async fn replace_pid_rules<F: Fixture>(store: F) {
    store.put_product(product("P", SourceMode::Pool));
    store.put_product(product("Q", SourceMode::Generate));
    let mut off = product("OFF", SourceMode::Generate);
    off.enabled = false;
    store.put_product(off);
    let (r, s) = registrar(store);
    let rp = |pid: &str, secret: &str| {
        with(|q| {
            q.data.replace_pid = pid.into();
            q.data.secret = secret.into();
        })
    };
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &rp("Q", "")).await,
        Err(Status::ReplacePidSecretMissing)
    );
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &rp("Z", "x")).await,
        Err(Status::ReplacePidUnknown)
    );
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &rp("Q", "secret-of-P"))
            .await,
        Err(Status::ReplacePidSecretWrong)
    );
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &rp("Q", "secret-of-Q "))
            .await,
        Err(Status::ReplacePidSecretWrong)
    );
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &rp("OFF", "secret-of-OFF"))
            .await,
        Err(Status::ReplacePidDisabled)
    );
    let moved = r
        .commit_registration(NOW, dev("a"), &rp("Q", "secret-of-Q"))
        .await
        .unwrap();
    assert_eq!(moved.pid, "Q");
    assert_eq!(moved.triplet.pid, "Q");
    let reply = r.register(NOW, dev("a"), &rp("Q", "secret-of-Q")).await;
    assert_eq!(
        reply.data.pid.as_deref(),
        Some("Q"),
        "the reply carries the new pid"
    );
    assert_eq!(
        reply.data.uuid.as_deref(),
        Some(moved.triplet.uuid.as_str()),
        "idempotent"
    );
    // The record remembers where it came from.
    let reg = s
        .transact(None, |tx| tx.registration("P", "a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((reg.pid.as_str(), reg.from_pid()), ("Q", Some("P")));
    // A retry without replacePid still finds it (keyed by the authenticated identity).
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &req())
            .await
            .unwrap()
            .pid,
        "Q"
    );
}

/// Rule test.
pub async fn disabled_revoked_and_reset<F: Fixture>(store: F) {
    let mut p = product("P", SourceMode::Generate);
    store.put_product(p.clone());
    let (r, s) = registrar(store);
    let first = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    s.revoke("P", "a", NOW + 1);
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &req()).await,
        Err(Status::DeviceRevoked)
    );
    s.reset("P", "a");
    let fresh = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    assert!(fresh.fresh);
    assert_ne!(
        fresh.triplet.uuid, first.triplet.uuid,
        "a reset device gets a fresh triplet"
    );
    p.enabled = false;
    s.put_product(p);
    assert_eq!(
        r.commit_registration(NOW, dev("a"), &req()).await,
        Err(Status::RegistrationDisabled)
    );
    assert_eq!(
        r.commit_registration(NOW, dev("new"), &req()).await,
        Err(Status::RegistrationDisabled)
    );
}

/// Rule test.
pub async fn reset_pool_triplet_is_never_reused<F: Fixture>(store: F) {
    let (r, s) = setup(store);
    let a = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    s.revoke("P", "a", NOW);
    s.reset("P", "a");
    let again = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    assert_ne!(again.triplet.uuid, a.triplet.uuid);
    assert_eq!(s.pool_counts("P"), (1, 1, 1));
}

/// Rule test.
pub async fn many_devices_never_share_a_triplet<F: Fixture>(store: F) {
    store.put_product(product("P", SourceMode::PoolThenGenerate));
    store.add_pool("P", pool("P", 50));
    let (r, s) = registrar(store);
    let tasks = (0..100).map(|i| {
        let r = &r;
        async move {
            let u = format!("u{i}");
            let t = r
                .commit_registration(
                    NOW,
                    Device {
                        pid: "P",
                        unique: &u,
                    },
                    &req(),
                )
                .await
                .unwrap();
            let again = r
                .commit_registration(
                    NOW,
                    Device {
                        pid: "P",
                        unique: &u,
                    },
                    &req(),
                )
                .await
                .unwrap();
            assert_eq!(t.triplet, again.triplet);
            t.triplet.uuid
        }
    });
    let uuids: HashSet<String> = join_all(tasks).await.into_iter().collect();
    assert_eq!(uuids.len(), 100);
    assert_eq!(s.pool_counts("P"), (0, 100, 0));
}

/// Rule test.
pub async fn reregistration_policies<F: Fixture>(store: F) {
    use crate::ReregPolicy;
    let mut w = product("W", SourceMode::Generate);
    w.rereg = ReregPolicy::Window(100);
    store.put_product(w);
    let mut a = product("A", SourceMode::Generate);
    a.rereg = ReregPolicy::Always;
    store.put_product(a);
    let mut n = product("N", SourceMode::Generate);
    n.rereg = ReregPolicy::Never;
    store.put_product(n);
    let (r, s) = registrar(store);
    let at = |pid: &'static str| Device { pid, unique: "d" };

    let first = r.commit_registration(NOW, at("W"), &req()).await.unwrap();
    let again = r
        .commit_registration(NOW + 100, at("W"), &req())
        .await
        .unwrap();
    assert!(!again.fresh);
    assert_eq!(
        again.triplet, first.triplet,
        "within the window: the same triplet"
    );
    assert_eq!(
        r.commit_registration(NOW + 101, at("W"), &req()).await,
        Err(Status::ReregistrationRefused),
        "past the window: refused"
    );
    // The window runs from the first binding, not from the last visit.
    assert_eq!(
        r.commit_registration(NOW + 101, at("W"), &req()).await,
        Err(Status::ReregistrationRefused)
    );
    assert_eq!(s.reregistrations("W"), (1, 2));
    // An operator's reset lets the device register afresh.
    s.revoke("W", "d", NOW + 200);
    s.reset("W", "d");
    let fresh = r
        .commit_registration(NOW + 300, at("W"), &req())
        .await
        .unwrap();
    assert!(fresh.fresh);
    assert_ne!(fresh.triplet.uuid, first.triplet.uuid);

    r.commit_registration(NOW, at("A"), &req()).await.unwrap();
    assert!(
        !r.commit_registration(NOW + 10 * 365 * 86_400, at("A"), &req())
            .await
            .unwrap()
            .fresh
    );
    assert_eq!(s.reregistrations("A"), (1, 0));

    assert!(
        r.commit_registration(NOW, at("N"), &req())
            .await
            .unwrap()
            .fresh
    );
    assert_eq!(
        r.commit_registration(NOW, at("N"), &req()).await,
        Err(Status::ReregistrationRefused),
        "never: not even at once"
    );
    assert_eq!(s.reregistrations("N"), (0, 1));
    // A revoked device says so whatever the policy.
    s.revoke("N", "d", NOW);
    assert_eq!(
        r.commit_registration(NOW, at("N"), &req()).await,
        Err(Status::DeviceRevoked)
    );
}

/// Rule test.
pub async fn quota_limits_bound_devices<F: Fixture>(store: F) {
    let mut q = product("Q", SourceMode::Generate);
    q.quota = Some(2);
    store.put_product(q);
    let (r, s) = registrar(store);
    let d = |unique| Device { pid: "Q", unique };
    r.commit_registration(NOW, d("a"), &req()).await.unwrap();
    r.commit_registration(NOW, d("b"), &req()).await.unwrap();
    assert_eq!(
        r.commit_registration(NOW, d("c"), &req()).await,
        Err(Status::QuotaReached)
    );
    assert!(
        !r.commit_registration(NOW, d("a"), &req())
            .await
            .unwrap()
            .fresh,
        "devices already bound still get their triplet"
    );
    // A revoked device still holds its triplet; a reset one frees its place.
    s.revoke("Q", "a", NOW);
    assert_eq!(
        r.commit_registration(NOW, d("c"), &req()).await,
        Err(Status::QuotaReached)
    );
    s.reset("Q", "a");
    assert!(
        r.commit_registration(NOW, d("c"), &req())
            .await
            .unwrap()
            .fresh
    );
    assert_eq!(
        r.commit_registration(NOW, d("a"), &req()).await,
        Err(Status::QuotaReached)
    );
}

/// Rule test: every registration and re-registration leaves one audit line, written
/// with it; a refusal leaves none.
pub async fn registrations_are_audited<F: Fixture>(store: F) {
    store.put_product(product("Q", SourceMode::Generate));
    let (r, s) = setup(store);
    let a = r.commit_registration(NOW, dev("a"), &req()).await.unwrap();
    r.commit_registration(NOW + 5, dev("a"), &req())
        .await
        .unwrap();
    let moved = r
        .commit_registration(
            NOW + 6,
            dev("m"),
            &with(|q| {
                q.data.replace_pid = "Q".into();
                q.data.secret = "secret-of-Q".into();
            }),
        )
        .await
        .unwrap();
    s.revoke("P", "a", NOW + 7);
    assert_eq!(
        r.commit_registration(NOW + 8, dev("a"), &req()).await,
        Err(Status::DeviceRevoked)
    );
    let line = |at, action: &str, pid: &str, target: &str, uuid: &str, detail: &str| AuditEntry {
        at,
        actor: "device".into(),
        origin: String::new(),
        action: action.into(),
        pid: pid.into(),
        target: target.into(),
        uuid: uuid.into(),
        detail: detail.into(),
    };
    assert_eq!(
        s.audit(),
        [
            line(NOW, "device.registered", "P", "a", &a.triplet.uuid, ""),
            line(
                NOW + 5,
                "device.reregistered",
                "P",
                "a",
                &a.triplet.uuid,
                ""
            ),
            line(
                NOW + 6,
                "device.registered",
                "Q",
                "m",
                &moved.triplet.uuid,
                r#"{"key_pid":"P"}"#
            ),
        ]
    );
}

/// Rule test: a product that admits listed devices only (`admission = listed`) is
/// refused at CONNECT for other uniques, and a listed device's registration carries the
/// barcode and MAC it was listed with (a request's barcode still wins), in generate and
/// pool modes.
pub async fn listed_devices_bring_their_barcode_and_mac<F: Fixture>(store: F) {
    use dynreg_proto::credentials::{SignMethod, sign};
    let mut g = product("L", SourceMode::Generate);
    g.admission = crate::Admission::Listed;
    g.mac_range = Some("02:00:00:00:00:00-02:00:00:00:00:FF".parse().unwrap());
    store.put_product(g);
    let mut p = product("LP", SourceMode::Pool);
    p.admission = crate::Admission::Listed;
    store.put_product(p);
    store.add_pool("LP", pool("LP", 2));
    let listed = |unique: &str, barcode: &str, mac: &str| crate::ExpectedDevice {
        unique: unique.into(),
        barcode: barcode.into(),
        mac: mac.into(),
        added_at: NOW,
    };
    store.expect(
        "L",
        vec![
            listed("dev1", "BC-1", "0A:00:00:00:00:01"),
            listed("dev2", "", ""),
            listed("dev3", "BC-3", ""),
        ],
    );
    store.expect("LP", vec![listed("pooled", "BC-P", "0A:00:00:00:00:09")]);
    let (r, _) = registrar(store);
    let connect = async |pid: &str, unique: &str| {
        let password = sign(
            SignMethod::HmacSha256,
            format!("secret-of-{pid}").as_bytes(),
            pid,
            unique,
            NOW,
        )
        .to_string();
        let (cid, user) = (
            format!("register_{pid}_{unique}"),
            format!("{pid}|signMethod=hmacSha256,ts={NOW}"),
        );
        r.authenticate(
            NOW,
            crate::Connect {
                client_id: &cid,
                username: Some(&user),
                password: Some(password.as_bytes()),
                peer: None,
            },
        )
        .await
    };
    // An unlisted unique is refused at CONNECT (3.1.1: 5; MQTT 5: 0x87); a listed one
    // is served.
    let e = connect("L", "stranger").await.unwrap_err();
    assert_eq!(
        e,
        crate::AuthError::NotListed {
            pid: "L".into(),
            unique: "stranger".into()
        }
    );
    assert_eq!(e.refusal().v3_return_code(), 5);
    assert_eq!(e.refusal().v5_reason_code(), 0x87);
    assert!(connect("L", "dev1").await.is_ok());
    assert!(connect("LP", "pooled").await.is_ok());
    // The listed barcode and MAC, on a generated triplet (the range is not used).
    let d = |pid, unique| Device { pid, unique };
    let one = r
        .commit_registration(NOW, d("L", "dev1"), &req())
        .await
        .unwrap();
    assert_eq!(
        (one.triplet.barcode.as_str(), one.triplet.mac.as_str()),
        ("BC-1", "0A:00:00:00:00:01")
    );
    // Listed without either: the range's first address, no barcode.
    let two = r
        .commit_registration(NOW, d("L", "dev2"), &req())
        .await
        .unwrap();
    assert_eq!(
        (two.triplet.barcode.as_str(), two.triplet.mac.as_str()),
        ("", "02:00:00:00:00:00")
    );
    // The request's barcode wins over the listed one.
    let three = r
        .commit_registration(
            NOW,
            d("L", "dev3"),
            &with(|q| q.data.barcode = "FROM-DEVICE".into()),
        )
        .await
        .unwrap();
    assert_eq!(three.triplet.barcode, "FROM-DEVICE");
    // A pool triplet takes the listed barcode and MAC.
    let pooled = r
        .commit_registration(NOW, d("LP", "pooled"), &req())
        .await
        .unwrap();
    assert_eq!(
        (
            pooled.triplet.uuid.as_str(),
            pooled.triplet.barcode.as_str(),
            pooled.triplet.mac.as_str()
        ),
        ("LP-u0", "BC-P", "0A:00:00:00:00:09")
    );
    // Again: the same triplet, as stored.
    let again = r
        .commit_registration(NOW + 5, d("LP", "pooled"), &req())
        .await
        .unwrap();
    assert_eq!(again.triplet, pooled.triplet);
    let again = r
        .commit_registration(NOW + 5, d("L", "dev1"), &req())
        .await
        .unwrap();
    assert_eq!(again.triplet, one.triplet);
}

/// Expands to one `#[tokio::test]` per rule of the suite, each running against a fresh
/// store made by `$make` (an expression giving a [`Fixture`]).
///
/// `conformance_tests!(optional $make)` takes a function of the test's name that
/// gives an `Option` of a [`Fixture`]: a store that needs a server the machine may
/// lack, which says SKIPPED and gives `None` then.
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* optional $make:expr) => {
        $crate::conformance_tests!(@names optional [$(#[$attr])*] $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@names plain [] $make);
    };
    (@names $how:ident [$($attr:tt)*] $make:expr) => {
        $crate::conformance_tests!(@each $how [$($attr)*] $make;
            pool_binds_free_triplets_and_is_idempotent,
            empty_pool_is_exhausted,
            reply_carries_triplet_and_echoes,
            payload_handling_ack_and_malformed,
            generate_mode_with_and_without_mac_range,
            pool_then_generate,
            barcode_overwrites_moves_and_refuses,
            replace_pid_rules,
            disabled_revoked_and_reset,
            reset_pool_triplet_is_never_reused,
            many_devices_never_share_a_triplet,
            reregistration_policies,
            quota_limits_bound_devices,
            registrations_are_audited,
            listed_devices_bring_their_barcode_and_mac
        );
    };
    (@each plain [$($attr:tt)*] $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($make).await;
            }
        )*
    };
    (@each optional $attrs:tt $make:expr; $($name:ident),* $(,)?) => {
        $(
            $crate::conformance_tests!(@one $attrs $make; $name);
        )*
    };
    (@one [$($attr:tt)*] $make:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            // Making the store may block (connecting to its server).
            if let Some(store) = tokio::task::block_in_place(|| ($make)(stringify!($name))) {
                $crate::conformance::$name(store).await;
            }
        }
    };
}

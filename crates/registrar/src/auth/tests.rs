//! The unit tests of `auth`.

use super::*;
use crate::Registrar;
use crate::conformance::{Fixture, product};
use crate::memory::MemoryStore;
use crate::{ReregPolicy, SourceMode};
use dynreg_proto::credentials::{SignMethod, sign};

const NOW: u64 = 1_700_000_000;

#[test]
fn every_cause_is_listed() {
    use dynreg_proto::credentials::CredentialError as C;
    let each = [
        AuthError::Banned,
        AuthError::MissingCredentials,
        AuthError::Credentials(C::TsTooOld { ts: 1, now: 1000 }),
        AuthError::Credentials(C::BadSignature),
        AuthError::Credentials(C::ClientIdPrefix),
        AuthError::UnknownProduct,
        AuthError::DisabledProduct,
        AuthError::NotListed {
            pid: "p".into(),
            unique: "u".into(),
        },
        AuthError::UnboundSignature {
            pid: "p".into(),
            method: "hmacSha256",
        },
        AuthError::PreviousSecretExpired {
            pid: "p".into(),
            until: 1,
        },
        AuthError::Store(crate::StoreError::unavailable("down")),
    ];
    let causes: Vec<&str> = each.iter().map(AuthError::cause).collect();
    assert_eq!(
        causes,
        AuthError::CAUSES,
        "CAUSES lists every cause, in order"
    );
}

fn registrar(ban: BanPolicy) -> Registrar<MemoryStore> {
    let store = MemoryStore::new();
    let mut p = product("p", SourceMode::Generate);
    p.rereg = ReregPolicy::Always;
    store.put_product(p);
    let mut off = product("off", SourceMode::Generate);
    off.enabled = false;
    store.put_product(off);
    let mut b = product("b", SourceMode::Generate);
    b.signatures = crate::Signatures::Bound;
    store.put_product(b);
    Registrar::with_policy(store, AuthPolicy { ban })
}

struct Creds {
    client_id: String,
    username: String,
    password: String,
}

fn creds(pid: &str, unique: &str, ts: u64, secret: &str) -> Creds {
    creds_with(SignMethod::HmacSha256, pid, unique, ts, secret)
}

fn creds_with(m: SignMethod, pid: &str, unique: &str, ts: u64, secret: &str) -> Creds {
    Creds {
        client_id: format!("register_{pid}_{unique}"),
        username: format!("{pid}|signMethod={m},ts={ts}"),
        password: sign(m, secret.as_bytes(), pid, unique, ts).to_string(),
    }
}

fn connect<'a>(c: &'a Creds, peer: &str) -> Connect<'a> {
    Connect {
        client_id: &c.client_id,
        username: Some(&c.username),
        password: Some(c.password.as_bytes()),
        peer: Some(peer.parse().unwrap()),
    }
}

#[tokio::test]
async fn the_previous_secret_verifies_until_its_grace_ends_and_is_then_named() {
    let store = MemoryStore::new();
    let mut p = product("g", SourceMode::Generate);
    p.secret = crate::Secret::new("new-secret");
    p.previous_secret = Some(crate::PreviousSecret {
        secret: crate::Secret::new("old-secret"),
        until: NOW + 100,
    });
    store.put_product(p);
    let r = Registrar::new(store);
    let new = creds("g", "a", NOW, "new-secret");
    let old = creds("g", "b", NOW, "old-secret");
    r.authenticate(NOW, connect(&new, "10.0.0.1"))
        .await
        .unwrap();
    // Same second, other secret: another credential, not a replay.
    r.authenticate(NOW, connect(&old, "10.0.0.1"))
        .await
        .unwrap();
    let late_old = creds("g", "c", NOW + 100, "old-secret");
    assert_eq!(
        r.authenticate(NOW + 100, connect(&late_old, "10.0.0.1"))
            .await,
        Err(AuthError::PreviousSecretExpired {
            pid: "g".into(),
            until: NOW + 100
        })
    );
    assert_eq!(
        AuthError::PreviousSecretExpired {
            pid: "g".into(),
            until: 1
        }
        .refusal(),
        Refusal::BadCredentials
    );
    let wrong = creds("g", "d", NOW, "neither");
    assert_eq!(
        r.authenticate(NOW, connect(&wrong, "10.0.0.1")).await,
        Err(AuthError::Credentials(CredentialError::BadSignature))
    );
    let late_new = creds("g", "e", NOW + 100, "new-secret");
    r.authenticate(NOW + 100, connect(&late_new, "10.0.0.1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn same_second_devices_share_a_credential_and_are_all_served() {
    let r = registrar(BanPolicy::default());
    let first = creds("p", "dev1", NOW, "secret-of-p");
    let ok = r
        .authenticate(NOW, connect(&first, "10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(
        (ok.pid.as_str(), ok.unique.as_str(), ok.sharing),
        ("p", "dev1", Sharing::Alone)
    );
    // The device reconnects with the same credential (its reply was lost).
    let again = r
        .authenticate(NOW + 5, connect(&first, "10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(again.sharing, Sharing::Repeat);
    // 99 more devices of the product signed in the same second, behind one address,
    // in either case of hex: each is served, and counted as sharing.
    for i in 2..=100u32 {
        let mut same = creds("p", &format!("dev{i}"), NOW, "secret-of-p");
        if i % 2 == 0 {
            same.password = same.password.to_uppercase();
        }
        let ok = r
            .authenticate(NOW + 1, connect(&same, "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(ok.sharing, Sharing::Shared { uniques: i });
    }
    assert!(!r.is_banned("10.0.0.1".parse().unwrap(), NOW + 1));
    let m = r.metrics();
    let shared = m
        .shared_credentials
        .get(&crate::metrics::PidLabel { pid: "p".into() });
    assert_eq!(shared.map(|c| c.get()), Some(99));
    assert_eq!(m.refusals(), []);
}

#[tokio::test]
async fn device_bound_credentials_verify_for_their_own_unique_only() {
    let r = registrar(BanPolicy::default());
    for m in [SignMethod::HmacSha1Bound, SignMethod::HmacSha256Bound] {
        for pid in ["p", "b"] {
            let own = creds_with(m, pid, "dev1", NOW, &format!("secret-of-{pid}"));
            let ok = r
                .authenticate(NOW, connect(&own, "10.0.0.1"))
                .await
                .unwrap();
            assert_eq!(
                ok.sharing,
                Sharing::Alone,
                "bound credentials are not recorded"
            );
            // Replayed for another unique: a bad signature (4 / 0x86).
            let mut replay = creds_with(m, pid, "dev2", NOW, &format!("secret-of-{pid}"));
            replay.password = own.password.clone();
            let e = r
                .authenticate(NOW, connect(&replay, "10.0.0.9"))
                .await
                .unwrap_err();
            assert_eq!(e, AuthError::Credentials(CredentialError::BadSignature));
            assert_eq!(e.refusal().v5_reason_code(), 0x86);
            assert_eq!(e.refusal().v3_return_code(), 4);
        }
    }
}

#[tokio::test]
async fn a_bound_product_refuses_the_seed_methods() {
    let r = registrar(BanPolicy::default());
    for m in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
        let seed = creds_with(m, "b", "dev1", NOW, "secret-of-b");
        let e = r
            .authenticate(NOW, connect(&seed, "10.0.0.1"))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::UnboundSignature {
                pid: "b".into(),
                method: m.name()
            }
        );
        assert_eq!(e.refusal(), Refusal::BadCredentials);
        assert!(e.to_string().contains("device-bound"), "{e}");
    }
}

#[tokio::test]
async fn refusals_name_their_cause() {
    let r = registrar(BanPolicy::default());
    let cases = [
        (
            creds("p", "d", NOW, "wrong"),
            AuthError::Credentials(CredentialError::BadSignature),
        ),
        (creds("nope", "d", NOW, "x"), AuthError::UnknownProduct),
        (
            creds("off", "d", NOW, "secret-of-off"),
            AuthError::DisabledProduct,
        ),
        (
            creds("p", "d", NOW - 901, "secret-of-p"),
            AuthError::Credentials(CredentialError::TsTooOld {
                ts: NOW - 901,
                now: NOW,
            }),
        ),
    ];
    for (c, want) in cases {
        assert_eq!(
            r.authenticate(NOW, connect(&c, "10.0.0.1")).await,
            Err(want)
        );
    }
    let c = creds("p", "d", NOW, "secret-of-p");
    let missing = Connect {
        password: None,
        ..connect(&c, "10.0.0.1")
    };
    assert_eq!(
        r.authenticate(NOW, missing).await,
        Err(AuthError::MissingCredentials)
    );
}

#[tokio::test]
async fn a_ban_answers_failing_connects_and_serves_valid_ones() {
    let r = registrar(BanPolicy {
        failures: 5,
        window_secs: 60,
        duration_secs: 300,
    });
    let bad = creds("p", "d", NOW, "guess");
    for _ in 0..5 {
        assert!(matches!(
            r.authenticate(NOW, connect(&bad, "10.0.0.66")).await,
            Err(AuthError::Credentials(_))
        ));
    }
    assert!(r.is_banned("10.0.0.66".parse().unwrap(), NOW + 299));
    // Failing CONNECTs from the banned address are answered "banned"...
    for _ in 0..3 {
        let e = r
            .authenticate(NOW + 1, connect(&bad, "10.0.0.66"))
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::Banned);
        assert_eq!(e.refusal(), Refusal::Banned);
    }
    // ...and every device whose credentials verify is served, same second or not.
    for i in 0..20 {
        let good = creds("p", &format!("ok{i}"), NOW, "secret-of-p");
        assert!(
            r.authenticate(NOW + 1, connect(&good, "10.0.0.66"))
                .await
                .is_ok()
        );
    }
    let good = creds("p", "d", NOW, "secret-of-p");
    assert!(
        r.authenticate(NOW + 1, connect(&good, "10.0.0.7"))
            .await
            .is_ok()
    );
    assert!(!r.is_banned("10.0.0.66".parse().unwrap(), NOW + 301));
    let m = r.metrics();
    assert_eq!(m.bans.get(), 1);
    assert!(m.refusals().contains(&("banned", 3)), "{:?}", m.refusals());
}

//! The operator's operations, on both stores: each case runs on SQLite (module
//! `sqlite`) and on PostgreSQL (module `postgres`, SKIPPED without a server).
// Each case owns the store it is given (it lives as long as the case), and clones it
// as the registrar would.
#![allow(clippy::needless_pass_by_value, clippy::redundant_clone)]

use dynreg_store::Operator;
use std::sync::Arc;

use dynreg_registrar::{MacRange, NewTriplet, ReregPolicy, Secret, Signatures, SourceMode};
use dynreg_store::{DeviceFilter, Error, KeySource, NewProduct, SqliteConfig, SqliteStore};

mod common;
use common::{Backend, TempStore, operator};

fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(&SqliteConfig::new(dir)).unwrap()
}

fn new_product(pid: Option<&str>, mode: SourceMode, mac: Option<&str>) -> NewProduct {
    NewProduct {
        pid: pid.map(str::to_owned),
        name: "Lamp".into(),
        mode,
        mac_range: mac.map(|m| m.parse::<MacRange>().unwrap()),
        ts_window: 900,
        rereg: ReregPolicy::DEFAULT,
        signatures: Signatures::Any,
        admission: dynreg_registrar::Admission::Open,
        quota: None,
        low_water: None,
    }
}

fn none() -> dynreg_store::Progress {
    Arc::new(|_| {})
}

fn products_create_list_enable_rotate<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    let p = s
        .create_product(new_product(None, SourceMode::Generate, None), 10)
        .unwrap();
    assert!(p.pid.starts_with('p'));
    assert_eq!(p.secret.expose().len(), 32);
    let q = s
        .create_product(new_product(Some("lamp-1"), SourceMode::Pool, None), 11)
        .unwrap();
    assert!(matches!(
        s.create_product(new_product(Some("lamp-1"), SourceMode::Pool, None), 12),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.create_product(new_product(Some("bad|pid"), SourceMode::Pool, None), 12),
        Err(Error::Invalid(_))
    ));
    let list = s.list_products().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|x| x.pid == "lamp-1" && x.enabled));

    s.set_enabled("lamp-1", false).unwrap();
    assert!(
        !s.load_product("lamp-1").unwrap().unwrap().enabled,
        "visible at once through the same store"
    );
    assert!(matches!(
        s.set_enabled("nope", true),
        Err(Error::NotFound(_))
    ));

    let new_secret = s.rotate_secret("lamp-1", 0, 1_700_000_000).unwrap();
    assert_ne!(new_secret, q.secret);
    assert_eq!(
        s.load_product("lamp-1").unwrap().unwrap().secret,
        new_secret
    );
    assert_eq!(
        s.load_product("lamp-1").unwrap().unwrap().secret,
        new_secret
    );
}

fn pool_generate_with_mac_range_and_overflow<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    s.create_product(
        new_product(
            Some("m"),
            SourceMode::Pool,
            Some("02:00:00:00:00:00-02:00:00:00:00:09"),
        ),
        1,
    )
    .unwrap();
    let got = s
        .generate_pool("m", 4, "BC", 1_700_000_000, none())
        .unwrap();
    assert_eq!(s.free_triplets().unwrap(), [("m".to_owned(), 4)]);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].mac, "02:00:00:00:00:00");
    assert_eq!(got[3].mac, "02:00:00:00:00:03");
    assert!(
        got.iter()
            .all(|t| t.barcode.starts_with("BC") && t.barcode.len() == 14)
    );
    let err = s
        .generate_pool("m", 7, "BC", 1_700_000_000, none())
        .unwrap_err();
    assert!(err.to_string().contains("MAC range overflow"), "{err}");
    assert_eq!(
        s.pool_stats("m").unwrap().free,
        4,
        "a refused generation adds nothing"
    );
    assert_eq!(s.pool_stats("m").unwrap().mac_left, Some(6));
    assert!(
        s.generate_pool("m", 0, "", 1_700_000_000, none())
            .unwrap_err()
            .to_string()
            .contains("out of range")
    );
    assert!(matches!(
        s.generate_pool("zz", 1, "", 1_700_000_000, none()),
        Err(Error::NotFound(_))
    ));
}

fn import_is_all_or_nothing<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    s.create_product(new_product(Some("p"), SourceMode::Pool, None), 1)
        .unwrap();
    let t = |u: &str, b: &str| NewTriplet {
        uuid: u.into(),
        secret: Secret::new(format!("sec-{u}")),
        mac: String::new(),
        barcode: b.into(),
    };
    assert_eq!(
        s.import_pool("p", vec![t("a", "1"), t("b", "2")], none())
            .unwrap(),
        2
    );
    // The third item repeats a stored uuid: nothing of this file is imported.
    let err = s
        .import_pool("p", vec![t("c", "3"), t("d", "4"), t("a", "5")], none())
        .unwrap_err();
    assert!(matches!(err, Error::Item { index: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("item 2: uuid `a`"), "{err}");
    let err = s.import_pool("p", vec![t("e", "2")], none()).unwrap_err();
    assert!(err.to_string().contains("barcode `2`"), "{err}");
    let err = s
        .import_pool("p", vec![t("f", ""), t("g\n", "")], none())
        .unwrap_err();
    assert!(err.to_string().starts_with("item 1:"), "{err}");
    assert_eq!(s.pool_stats("p").unwrap().free, 2);
}

async fn devices_revoke_reset_and_listing<S: Backend>(t: TempStore<S>) {
    use dynreg_proto::RegisterRequest;
    use dynreg_registrar::{Device, Registrar};
    let s = t.store.clone();
    let p = tokio::task::block_in_place(|| {
        s.create_product(new_product(Some("g"), SourceMode::Generate, None), 1)
            .unwrap()
    });
    let r = Registrar::new(s.clone());
    for u in ["a", "b", "c"] {
        r.commit_registration(
            100,
            Device {
                pid: &p.pid,
                unique: u,
            },
            &RegisterRequest::new("1", 100),
        )
        .await
        .unwrap();
    }
    tokio::task::block_in_place(|| {
        assert_eq!(
            s.list_devices(&DeviceFilter {
                pid: Some("g".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
            3
        );
        let a = s.device("g", "a").unwrap().unwrap();
        assert_eq!(
            s.device_by_uuid(&a.triplet.uuid).unwrap().unwrap().unique,
            "a"
        );
        assert!(
            matches!(
                s.reset("g", "a", 1_700_000_000, &operator()),
                Err(Error::Conflict(_))
            ),
            "reset needs a revoked device"
        );
        s.revoke("g", "a", 200, &operator()).unwrap();
        assert!(matches!(
            s.revoke("g", "a", 200, &operator()),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.revoke("g", "zz", 200, &operator()),
            Err(Error::NotFound(_))
        ));
        let revoked = s
            .list_devices(&DeviceFilter {
                revoked_only: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].revoked_at, Some(200));
        s.reset("g", "a", 1_700_000_000, &operator()).unwrap();
        assert!(s.device("g", "a").unwrap().is_none());
        let stats = s.pool_stats("g").unwrap();
        assert_eq!((stats.bound, stats.revoked, stats.devices), (2, 1, 2));
        assert_eq!(
            s.list_devices(&DeviceFilter {
                limit: 1,
                ..Default::default()
            })
            .unwrap()
            .len(),
            1
        );
    });
}

#[test]
fn secrets_are_encrypted_at_rest_and_the_key_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let s = open(&data);
    let p = s
        .create_product(new_product(Some("p"), SourceMode::Pool, None), 1)
        .unwrap();
    let pool = s.generate_pool("p", 50, "", 1_700_000_000, none()).unwrap();
    s.close().unwrap();
    drop(s);
    let mut bytes = Vec::new();
    for f in std::fs::read_dir(&data).unwrap() {
        let f = f.unwrap().path();
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dynreg.sqlite3")
        {
            bytes.extend(std::fs::read(&f).unwrap());
        }
    }
    assert!(bytes.len() > 4096);
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(p.secret.expose()),
        "product secret in the database file"
    );
    for t in &pool {
        assert!(
            contains(&t.uuid),
            "uuids are stored in clear (sanity check of the scan)"
        );
        assert!(
            !contains(t.secret.expose()),
            "device secret in the database file"
        );
    }
    // Another key is refused before anything is served.
    let cfg = SqliteConfig {
        key: KeySource::Hex("11".repeat(32)),
        ..SqliteConfig::new(&data)
    };
    assert!(matches!(SqliteStore::open(&cfg), Err(Error::WrongKey(_))));
    // A lost key file is not silently replaced.
    std::fs::remove_file(data.join("master.key")).unwrap();
    let err = SqliteStore::open(&SqliteConfig::new(&data)).unwrap_err();
    assert!(
        err.to_string().contains("master key") && err.to_string().contains("is missing"),
        "{err}"
    );
    assert!(
        !data.join("master.key").exists(),
        "no new key was generated beside the old data"
    );
}

fn bulk_load_counts<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    s.create_product(new_product(Some("b"), SourceMode::Generate, None), 1)
        .unwrap();
    assert_eq!(s.bulk_load("b", 0, 1234, 5, &|_| {}).unwrap(), 1234);
    assert_eq!(s.pool_stats("b").unwrap().devices, 1234);
    assert!(s.device("b", "bulk-1233").unwrap().is_some());
}

async fn policy_and_quota_are_stored_changed_and_counted<S: Backend>(t: TempStore<S>) {
    use dynreg_proto::{RegisterRequest, Status};
    use dynreg_registrar::{Device, Registrar};
    use dynreg_store::ProductUpdate;
    let s = t.store.clone();
    let p = tokio::task::block_in_place(|| {
        s.create_product(new_product(Some("q"), SourceMode::Generate, None), 1000)
            .unwrap()
    });
    assert_eq!((p.rereg, p.quota), (ReregPolicy::Window(86_400), None));
    let r = Registrar::new(s.clone());
    let req = RegisterRequest::new("1", 1000);
    let dev = |unique| Device { pid: "q", unique };
    for u in ["a", "b", "c"] {
        assert_eq!(r.register(1000, dev(u), &req).await.res, 0);
    }
    assert_eq!(r.register(1001, dev("a"), &req).await.res, 0);
    // A quota set later counts the devices already registered.
    tokio::task::block_in_place(|| {
        s.update_product(
            "q",
            ProductUpdate {
                rereg: Some(ReregPolicy::Never),
                quota: Some(Some(3)),
                ..ProductUpdate::default()
            },
        )
        .unwrap();
    });
    assert_eq!(
        r.register(1002, dev("d"), &req).await.res,
        Status::QuotaReached.code()
    );
    assert_eq!(
        r.register(1002, dev("b"), &req).await.res,
        Status::ReregistrationRefused.code()
    );
    let summary = tokio::task::block_in_place(|| s.product_summary("q").unwrap());
    assert_eq!(
        (summary.rereg, summary.quota),
        (ReregPolicy::Never, Some(3))
    );
    assert_eq!(
        (
            summary.stats.reregistrations,
            summary.stats.reregistrations_refused
        ),
        (1, 1)
    );
    // Removing the quota lets new devices in again; the policy survives a reopen.
    tokio::task::block_in_place(|| {
        s.update_product(
            "q",
            ProductUpdate {
                quota: Some(None),
                ..ProductUpdate::default()
            },
        )
        .unwrap();
    });
    assert_eq!(r.register(1003, dev("d"), &req).await.res, 0);
    drop(r);
    let s = tokio::task::block_in_place(|| t.reopen());
    let p = tokio::task::block_in_place(|| s.load_product("q").unwrap().unwrap());
    assert_eq!((p.rereg, p.quota), (ReregPolicy::Never, None));
}

fn triplet(uuid: &str, mac: &str, barcode: &str) -> NewTriplet {
    NewTriplet {
        uuid: uuid.into(),
        secret: Secret::new(format!("s-{uuid}")),
        mac: mac.into(),
        barcode: barcode.into(),
    }
}

fn import_validates_normalises_and_deduplicates_macs<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    s.create_product(
        new_product(
            Some("r"),
            SourceMode::Pool,
            Some("02:1A:00:00:00:00-02:1A:00:00:00:FF"),
        ),
        1,
    )
    .unwrap();
    s.create_product(new_product(Some("free"), SourceMode::Pool, None), 1)
        .unwrap();
    let item = |r: Result<u64, Error>| match r {
        Err(Error::Item { index, message }) => (index, message),
        other => panic!("{other:?}"),
    };
    // Malformed.
    let (i, m) = item(s.import_pool("free", vec![triplet("a", "zz:zz", "")], none()));
    assert_eq!(i, 0);
    assert!(m.contains("`zz:zz` is not a MAC address"), "{m}");
    // Twice in one file, whatever the spelling.
    let (i, m) = item(s.import_pool(
        "free",
        vec![
            triplet("a", "aa-bb-cc-dd-ee-ff", ""),
            triplet("b", "AABBCCDDEEFF", ""),
        ],
        none(),
    ));
    assert_eq!(i, 1);
    assert!(m.contains("AA:BB:CC:DD:EE:FF appears twice"), "{m}");
    // Normalised to one canonical form.
    s.import_pool("free", vec![triplet("a", "aa-bb-cc-dd-ee-ff", "")], none())
        .unwrap();
    assert_eq!(s.triplet("a").unwrap().unwrap().mac, "AA:BB:CC:DD:EE:FF");
    // Already in the store (in another product too).
    let (_, m) = item(s.import_pool("free", vec![triplet("b", "aa:bb:cc:dd:ee:ff", "")], none()));
    assert!(
        m.contains("already in use by triplet `a` of product `free`"),
        "{m}"
    );
    // Outside the product's range.
    let (_, m) = item(s.import_pool("r", vec![triplet("c", "02:1B:00:00:00:00", "")], none()));
    assert!(m.contains("outside the MAC range"), "{m}");
    // Inside it: generation then never hands the address out again.
    s.import_pool("r", vec![triplet("c", "02:1a:00:00:00:01", "")], none())
        .unwrap();
    let generated = s.generate_pool("r", 2, "", 5, none()).unwrap();
    let macs: Vec<&str> = generated.iter().map(|t| t.mac.as_str()).collect();
    assert_eq!(macs, ["02:1A:00:00:00:02", "02:1A:00:00:00:03"]);
    assert_eq!(
        s.pool_stats("free").unwrap().free,
        1,
        "nothing of the refused imports"
    );
}

async fn update_delete_withdraw_lookups_and_history<S: Backend>(t: TempStore<S>) {
    use dynreg_proto::RegisterRequest;
    use dynreg_registrar::{Device, Registrar, TripletState};
    use dynreg_store::{ProductUpdate, TripletRef};
    let s = t.store.clone();
    let block = |f: &mut dyn FnMut()| tokio::task::block_in_place(f);
    block(&mut || {
        s.create_product(new_product(Some("u"), SourceMode::Pool, None), 1)
            .unwrap();
        s.import_pool(
            "u",
            (0..4)
                .map(|i| {
                    triplet(
                        &format!("t{i}"),
                        &format!("02:00:00:00:00:0{i}"),
                        &format!("B{i}"),
                    )
                })
                .collect(),
            none(),
        )
        .unwrap();
        // Every field of a product can change; bad values are refused by name.
        s.update_product(
            "u",
            ProductUpdate {
                name: Some("Bulb".into()),
                mode: Some(SourceMode::PoolThenGenerate),
                mac_range: Some(Some("02:00:00:00:01:00-02:00:00:00:01:FF".parse().unwrap())),
                ts_window: Some(60),
                rereg: Some(ReregPolicy::Always),
                signatures: Some(Signatures::Bound),
                admission: Some(dynreg_registrar::Admission::Listed),
                quota: None,
                low_water: Some(Some(3)),
            },
        )
        .unwrap();
        let e = s
            .update_product(
                "u",
                ProductUpdate {
                    ts_window: Some(0),
                    ..ProductUpdate::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("ts window 0"), "{e}");
    });
    let p = tokio::task::block_in_place(|| s.load_product("u").unwrap().unwrap());
    assert_eq!(
        (p.name.as_str(), p.mode, p.ts_window, p.rereg, p.signatures),
        (
            "Bulb",
            SourceMode::PoolThenGenerate,
            60,
            ReregPolicy::Always,
            Signatures::Bound
        )
    );
    assert_eq!(
        p.mac_range.unwrap().to_string(),
        "02:00:00:00:01:00-02:00:00:00:01:FF"
    );

    let r = Registrar::new(s.clone());
    let req = RegisterRequest::new("1", 1000);
    assert_eq!(
        r.register(
            1000,
            Device {
                pid: "u",
                unique: "d1"
            },
            &req
        )
        .await
        .res,
        0
    );
    let held = s.device("u", "d1").unwrap().unwrap();

    block(&mut || {
        // Withdraw: free triplets only, all or nothing.
        let e = s
            .withdrawal_candidates(
                "u",
                &[
                    TripletRef::Barcode("B1".into()),
                    TripletRef::Uuid(held.triplet.uuid.clone()),
                ],
            )
            .unwrap_err();
        assert!(
            matches!(&e, Error::Item { index: 1, message } if message.contains("bound to a device")),
            "{e}"
        );
        let e = s
            .withdrawal_candidates("u", &[TripletRef::Barcode("nope".into())])
            .unwrap_err();
        assert!(
            e.to_string().contains("no triplet with barcode `nope`"),
            "{e}"
        );
        let c = s
            .withdrawal_candidates(
                "u",
                &[
                    TripletRef::Barcode("B1".into()),
                    TripletRef::Uuid("t1".into()),
                ],
            )
            .unwrap();
        assert_eq!(c.len(), 1, "named twice, withdrawn once");
        assert_eq!(s.withdraw("u", vec!["t1".into()], 5).unwrap(), 1);
        assert!(
            s.withdraw("u", vec!["t1".into()], 5).is_err(),
            "no longer free"
        );
        let st = s.pool_stats("u").unwrap();
        assert_eq!((st.free, st.bound, st.revoked, st.withdrawn), (2, 1, 0, 1));
        assert_eq!(
            s.triplet("t1").unwrap().unwrap().state,
            TripletState::Revoked
        );

        // Lookups by barcode (with or without the pid) and by MAC in any spelling.
        let by_b = s
            .device_by_barcode(None, &held.triplet.barcode)
            .unwrap()
            .unwrap();
        assert_eq!(by_b.unique, "d1");
        assert!(
            s.device_by_barcode(Some("u"), "B3").unwrap().is_none(),
            "free triplet: no device"
        );
        let by_mac = s
            .devices_by_mac(&held.triplet.mac.to_lowercase().replace(':', "-"))
            .unwrap();
        assert_eq!(by_mac.len(), 1);
        assert_eq!(
            s.list_devices(&DeviceFilter {
                since: Some(1001),
                ..Default::default()
            })
            .unwrap()
            .len(),
            0
        );
        assert_eq!(
            s.list_devices(&DeviceFilter {
                since: Some(1000),
                ..Default::default()
            })
            .unwrap()
            .len(),
            1
        );

        // After revoke and reset, the old triplet's holder stays findable.
        s.revoke("u", "d1", 2000, &operator()).unwrap();
        s.reset("u", "d1", 3000, &operator()).unwrap();
        assert!(s.device_by_uuid(&held.triplet.uuid).unwrap().is_none());
        let h = s.triplet_history(&held.triplet.uuid).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (
                h[0].unique.as_str(),
                h[0].registered_at,
                h[0].revoked_at,
                h[0].reset_at
            ),
            ("d1", 1000, Some(2000), 3000)
        );
        assert_eq!(s.device_history("u", "d1").unwrap(), h);

        // Delete: refused while devices are registered, unless forced.
        s.create_product(new_product(Some("gone"), SourceMode::Generate, None), 1)
            .unwrap();
        s.import_pool("gone", vec![triplet("g0", "", "")], none())
            .unwrap();
    });
    assert_eq!(
        r.register(
            1000,
            Device {
                pid: "gone",
                unique: "x"
            },
            &req
        )
        .await
        .res,
        0
    );
    block(&mut || {
        let e = s.delete_product("gone", false).unwrap_err();
        assert!(e.to_string().contains("1 registered devices"), "{e}");
        let d = s.delete_product("gone", true).unwrap();
        assert_eq!(
            (d.devices, d.triplets),
            (1, 2),
            "the bound triplet and the free one"
        );
        assert!(s.load_product("gone").unwrap().is_none());
        assert!(
            s.triplet("g0").unwrap().is_none(),
            "its free triplets went too"
        );
        assert!(matches!(
            s.delete_product("gone", false),
            Err(Error::NotFound(_))
        ));
    });
}

fn rotation_keeps_the_previous_secret_for_its_grace<S: Backend>(t: TempStore<S>) {
    let s = t.store.clone();
    let p = s
        .create_product(new_product(Some("k"), SourceMode::Generate, None), 1)
        .unwrap();
    assert!(
        matches!(s.retire_secret("k", 100), Err(Error::Conflict(_))),
        "nothing to retire"
    );
    let new = s.rotate_secret("k", 3600, 100).unwrap();
    let q = s.load_product("k").unwrap().unwrap();
    assert_eq!(q.secret, new);
    let prev = q.previous_secret.unwrap();
    assert_eq!((prev.secret, prev.until), (p.secret, 3700));
    assert_eq!(
        s.product_summary("k").unwrap().previous_secret_until,
        Some(3700)
    );
    s.retire_secret("k", 200).unwrap();
    assert_eq!(
        s.load_product("k")
            .unwrap()
            .unwrap()
            .previous_secret
            .unwrap()
            .until,
        200
    );
    assert!(s.retire_secret("k", 300).is_err(), "already retired");
}

async fn deleting_a_product_leaves_the_devices_that_moved_to_another<S: Backend>(t: TempStore<S>) {
    use dynreg_proto::RegisterRequest;
    use dynreg_registrar::{Device, Registrar};
    let s = t.store.clone();
    let secret_b = tokio::task::block_in_place(|| {
        s.create_product(new_product(Some("a"), SourceMode::Generate, None), 1)
            .unwrap();
        s.create_product(new_product(Some("b"), SourceMode::Generate, None), 1)
            .unwrap()
            .secret
    });
    let r = Registrar::new(s.clone());
    let mut moved = RegisterRequest::new("1", 1000);
    moved.data.replace_pid = "b".into();
    moved.data.secret = secret_b.expose().to_owned();
    let reply = r
        .register(
            1000,
            Device {
                pid: "a",
                unique: "m",
            },
            &moved,
        )
        .await;
    assert_eq!(reply.res, 0, "{reply:?}");
    tokio::task::block_in_place(|| {
        // Registered under b: a has no devices and goes without --force.
        let d = s.delete_product("a", false).unwrap();
        assert_eq!((d.devices, d.triplets), (0, 0));
        let kept = s.device("a", "m").unwrap().expect("the moved device stays");
        assert_eq!(kept.pid, "b");
        assert_eq!(s.pool_stats("b").unwrap().devices, 1);
    });
}

fn tokens_are_hashed_scoped_and_revocable<S: Backend>(t: TempStore<S>) {
    use dynreg_store::Scope;
    use dynreg_store::admin::token_hash;
    let s = t.store.clone();
    let (info, token) = s
        .create_token("ops", Scope::Write, "cli:root", 100)
        .unwrap();
    assert!(
        token.starts_with("dynreg_") && token.len() == 7 + 64,
        "{token}"
    );
    assert_eq!((info.name.as_str(), info.scope), ("ops", Scope::Write));
    assert_eq!(
        s.token_by_hash(&token_hash(&token)).unwrap(),
        Some(info.clone())
    );
    assert_eq!(s.token_by_hash(&token_hash("dynreg_other")).unwrap(), None);
    assert!(matches!(
        s.create_token("ops", Scope::Read, "cli:root", 101),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.create_token(" ops", Scope::Read, "cli:root", 101),
        Err(Error::Invalid(_))
    ));
    assert!(matches!("owner".parse::<Scope>(), Err(Error::Invalid(_))));
    let revoked = s.revoke_token("ops", 200).unwrap();
    assert_eq!(revoked.revoked_at, Some(200));
    assert_eq!(s.token_by_hash(&token_hash(&token)).unwrap(), None);
    assert!(matches!(
        s.revoke_token("ops", 201),
        Err(Error::NotFound(_))
    ));
    // The name is free again; the old token stays listed, revoked.
    let (again, _) = s
        .create_token("ops", Scope::Admin, "cli:root", 300)
        .unwrap();
    assert_ne!(again.id, info.id);
    let names: Vec<(String, Option<u64>)> = s
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.revoked_at))
        .collect();
    assert_eq!(names, [("ops".into(), Some(200)), ("ops".into(), None)]);
    assert!(Scope::Admin.allows(Scope::Write) && !Scope::Read.allows(Scope::Write));
}

fn audit_lines_are_appended_and_filtered<S: Backend>(t: TempStore<S>) {
    use dynreg_registrar::AuditEntry;
    use dynreg_store::AuditFilter;
    let s = t.store.clone();
    let line = |at, actor: &str, action: &str, pid: &str, target: &str| AuditEntry {
        at,
        actor: actor.into(),
        origin: "host".into(),
        action: action.into(),
        pid: pid.into(),
        target: target.into(),
        uuid: String::new(),
        detail: String::new(),
    };
    let lines = [
        line(10, "cli:ann", "product.created", "p", ""),
        line(20, "device", "device.registered", "p", "d1"),
        line(30, "ops", "device.revoked", "p", "d1"),
        line(40, "device", "device.reregistered", "q", "d2"),
    ];
    let ids: Vec<u64> = lines.iter().map(|l| s.append_audit(l).unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let read =
        |f: AuditFilter| -> Vec<u64> { s.audit(&f).unwrap().iter().map(|r| r.entry.at).collect() };
    assert_eq!(read(AuditFilter::default()), [40, 30, 20, 10]);
    let device = AuditFilter {
        action: Some("device.".into()),
        ..Default::default()
    };
    assert_eq!(read(device.clone()), [40, 30, 20]);
    assert_eq!(
        read(AuditFilter {
            pid: Some("p".into()),
            target: Some("d1".into()),
            ..device.clone()
        }),
        [30, 20]
    );
    assert_eq!(
        read(AuditFilter {
            registrations_only: true,
            ..Default::default()
        }),
        [40, 20]
    );
    assert_eq!(
        read(AuditFilter {
            actor: Some("ops".into()),
            ..Default::default()
        }),
        [30]
    );
    assert_eq!(
        read(AuditFilter {
            since: Some(20),
            before: Some(ids[3]),
            limit: 1,
            ..Default::default()
        }),
        [30]
    );
    assert_eq!(
        read(AuditFilter {
            after: Some(ids[1]),
            oldest_first: true,
            ..Default::default()
        }),
        [30, 40]
    );
    assert!(matches!(
        s.audit(&AuditFilter {
            action: Some("device%".into()),
            ..Default::default()
        }),
        Err(Error::Invalid(_))
    ));
}

async fn the_outbox_keeps_device_events_while_on<S: Backend>(t: TempStore<S>) {
    use dynreg_proto::RegisterRequest;
    use dynreg_registrar::{Device, Registrar};
    use dynreg_store::admin::{DeviceAction, act_on_device};
    let s = t.store.clone();
    fn block<T>(f: impl FnOnce() -> T) -> T {
        tokio::task::block_in_place(f)
    }
    block(|| {
        s.create_product(new_product(Some("o"), SourceMode::Pool, None), 1)
            .unwrap();
        s.import_pool(
            "o",
            (0..4)
                .map(|i| {
                    triplet(
                        &format!("o-u{i}"),
                        &format!("02:00:00:00:00:0{i}"),
                        &format!("B{i}"),
                    )
                })
                .collect(),
            none(),
        )
        .unwrap();
    });
    let r = Registrar::new(s.clone());
    let register = |unique: &'static str| {
        let r = &r;
        async move {
            r.commit_registration(
                100,
                Device { pid: "o", unique },
                &RegisterRequest::new("1", 100),
            )
            .await
            .unwrap()
        }
    };
    // Off: nothing is kept.
    register("before").await;
    assert!(!block(|| s.outbox_on().unwrap()));
    assert_eq!(block(|| s.outbox_backlog().unwrap()), 0);
    block(|| s.set_outbox(true).unwrap());
    let a = register("a").await;
    register("a").await;
    register("b").await;
    block(|| {
        act_on_device(&s, &operator(), DeviceAction::Revoke, "o", "a", 200).unwrap();
        s.create_product(new_product(Some("other"), SourceMode::Pool, None), 2)
            .unwrap();
    });
    let events = block(|| s.outbox_events(10).unwrap());
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.unique.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("device.registered", "a"),
            ("device.reregistered", "a"),
            ("device.registered", "b"),
            ("device.revoked", "a"),
        ],
        "device events only, in the order they were made"
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let first = &events[0];
    assert_eq!(
        (
            first.pid.as_str(),
            first.uuid.as_str(),
            first.mac.as_str(),
            first.barcode.as_str()
        ),
        (
            "o",
            a.triplet.uuid.as_str(),
            a.triplet.mac.as_str(),
            a.triplet.barcode.as_str()
        )
    );
    assert_eq!(block(|| s.outbox_events(2).unwrap()), events[..2]);
    block(|| s.outbox_delivered(&[events[0].id, events[1].id]).unwrap());
    assert_eq!(block(|| s.outbox_backlog().unwrap()), 2);
    assert_eq!(block(|| s.outbox_events(10).unwrap()), events[2..]);
    // One deliverer at a time.
    assert!(block(|| s.outbox_lease("one", 1000, 15).unwrap()));
    assert!(!block(|| s.outbox_lease("two", 1010, 15).unwrap()));
    assert!(
        block(|| s.outbox_lease("one", 1010, 15).unwrap()),
        "renewed"
    );
    assert!(!block(|| s.outbox_lease("two", 1024, 15).unwrap()));
    assert!(
        block(|| s.outbox_lease("two", 1026, 15).unwrap()),
        "expired"
    );
    // pool.low: once when the free triplets fall below the mark, again only after a
    // refill to it. Three of the four are bound (before, a, b): 1 free.
    block(|| {
        s.update_product(
            "o",
            dynreg_store::ProductUpdate {
                low_water: Some(Some(3)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.pool_stats("o").unwrap().low_water, Some(3));
        assert_eq!(s.check_pools(300).unwrap(), ["o"]);
        assert_eq!(s.check_pools(301).unwrap(), Vec::<String>::new(), "once");
    });
    let low = block(|| s.outbox_events(10).unwrap()).pop().unwrap();
    assert_eq!((low.kind.as_str(), low.pid.as_str()), ("pool.low", "o"));
    assert_eq!(low.detail, r#"{"free":1,"low_water":3}"#);
    block(|| {
        s.import_pool("o", vec![triplet("o-u9", "", "")], none())
            .unwrap();
        assert!(
            s.check_pools(302).unwrap().is_empty(),
            "still low: not again"
        );
        s.import_pool("o", vec![triplet("o-u10", "", "")], none())
            .unwrap();
        assert!(
            s.check_pools(303).unwrap().is_empty(),
            "refilled to the mark"
        );
        s.withdraw("o", vec!["o-u9".into(), "o-u10".into()], 304)
            .unwrap();
        assert_eq!(
            s.check_pools(305).unwrap(),
            ["o"],
            "fires again after a refill"
        );
    });
    // Off again: what waited is dropped.
    assert_eq!(block(|| s.set_outbox(false).unwrap()), 4);
    register("c").await;
    assert_eq!(block(|| s.outbox_backlog().unwrap()), 0);
}

/// One test per store for each case: `sqlite::<case>` and `postgres::<case>`.
macro_rules! on_both_stores {
    (sync: $($name:ident),*; async: $($aname:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(super::TempStore::new());
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $aname() {
                    super::$aname(super::TempStore::new()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                #[cfg_attr(no_postgres, ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one")]
                fn $name() {
                    if let Some(t) = super::TempStore::postgres(stringify!($name)) {
                        super::$name(t);
                    }
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(no_postgres, ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one")]
                async fn $aname() {
                    let made = tokio::task::block_in_place(|| {
                        super::TempStore::postgres(stringify!($aname))
                    });
                    if let Some(t) = made {
                        super::$aname(t).await;
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    sync: products_create_list_enable_rotate, pool_generate_with_mac_range_and_overflow, import_is_all_or_nothing, bulk_load_counts, import_validates_normalises_and_deduplicates_macs, rotation_keeps_the_previous_secret_for_its_grace, tokens_are_hashed_scoped_and_revocable, audit_lines_are_appended_and_filtered;
    async: devices_revoke_reset_and_listing, policy_and_quota_are_stored_changed_and_counted, update_delete_withdraw_lookups_and_history, deleting_a_product_leaves_the_devices_that_moved_to_another, the_outbox_keeps_device_events_while_on
);

/// A pool larger than one generation transaction (50,000) comes back whole, each
/// triplet stored once, in order (SQLite: the PostgreSQL suite would spend a minute on
/// it for the same statements).
#[test]
fn a_large_generation_spans_several_transactions() {
    let t = TempStore::new();
    let s = t.store.clone();
    s.create_product(new_product(Some("big"), SourceMode::Pool, None), 1)
        .unwrap();
    let got = s
        .generate_pool("big", 100_001, "BG", 1_700_000_000, none())
        .unwrap();
    assert_eq!(got.len(), 100_001);
    let barcodes: std::collections::HashSet<&str> =
        got.iter().map(|t| t.barcode.as_str()).collect();
    assert_eq!(barcodes.len(), 100_001);
    assert!(got.windows(2).all(|w| w[0].barcode < w[1].barcode));
    assert_eq!(s.pool_stats("big").unwrap().free, 100_001);
    let last = s.triplet(&got[100_000].uuid).unwrap().unwrap();
    assert_eq!(last.secret.expose(), got[100_000].secret.expose());
}

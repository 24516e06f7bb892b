//! Many concurrent registrations against one pool: no triplet is handed out twice,
//! retries get the same triplet, and the pool's counts add up.

mod common;

use dynreg_store::Operator;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dynreg_proto::{RegisterRequest, Status};
use dynreg_registrar::conformance::{Fixture, pool, product};
use dynreg_registrar::{Device, Registrar, SourceMode};

const TASKS: usize = 64;
const PER_TASK: usize = 500;
const POOL: usize = 30_000;
const NOW: u64 = 1_700_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_one_pool() {
    let store = common::TempStore::new();
    store.put_product(product("P", SourceMode::Pool));
    store.add_pool("P", pool("P", POOL));
    let store = Arc::new(store);
    let registrar = Arc::new(Registrar::new(store.clone()));

    let mut handles = Vec::new();
    for task in 0..TASKS {
        let r = registrar.clone();
        handles.push(tokio::spawn(async move {
            let mut got: Vec<(String, Result<String, Status>)> = Vec::new();
            for i in 0..PER_TASK {
                let unique = format!("t{task}-{i}");
                let req = RegisterRequest::new(format!("{i}"), NOW);
                let dev = Device {
                    pid: "P",
                    unique: &unique,
                };
                let res = r
                    .commit_registration(NOW, dev, &req)
                    .await
                    .map(|x| x.triplet.uuid);
                // Every 7th device retries at once, as after a lost reply: same answer.
                if i % 7 == 0 {
                    let again = r
                        .commit_registration(NOW + 1, dev, &req)
                        .await
                        .map(|x| x.triplet.uuid);
                    if res.is_ok() {
                        assert_eq!(again, res, "a retry of {unique} got another answer");
                    }
                }
                got.push((unique, res));
            }
            got
        }));
    }
    let mut by_unique: HashMap<String, String> = HashMap::new();
    let mut uuids = HashSet::new();
    let mut exhausted = 0;
    for h in handles {
        for (unique, res) in h.await.unwrap() {
            match res {
                Ok(uuid) => {
                    assert!(uuids.insert(uuid.clone()), "uuid {uuid} handed out twice");
                    by_unique.insert(unique, uuid);
                }
                Err(Status::PoolExhausted) => exhausted += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(uuids.len(), POOL, "every pool triplet was handed out once");
    assert_eq!(exhausted, TASKS * PER_TASK - POOL);
    assert_eq!(store.pool_counts("P"), (0, POOL as u64, 0));
    let stats = store.store.pool_stats("P").unwrap();
    assert_eq!(stats.devices, POOL as u64);
    // What the store says matches what the callers were told.
    for (unique, uuid) in by_unique.iter().step_by(97) {
        let reg = store
            .store
            .device("P", unique)
            .unwrap()
            .expect("registered");
        assert_eq!(&reg.triplet.uuid, uuid);
    }
}

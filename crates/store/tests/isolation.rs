//! Jobs committed together stay isolated: a job that fails after writing leaves no
//! trace, while the jobs batched with it commit.

mod common;

use dynreg_store::Operator;
use std::sync::Arc;

use dynreg_registrar::conformance::{Fixture, join_all, product};
use dynreg_registrar::{NewTriplet, Secret, SourceMode, Store, StoreError, TripletState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_rolled_back_alone() {
    let store = Arc::new(common::TempStore::new());
    store.put_product(product("P", SourceMode::Pool));
    let jobs = (0..400).map(|i| {
        let store = store.clone();
        async move {
            let r = store
                .transact(None, move |tx| {
                    let t = NewTriplet {
                        uuid: format!("u{i}"),
                        secret: Secret::new("s"),
                        mac: String::new(),
                        barcode: String::new(),
                    };
                    tx.insert_triplet("P", &t, TripletState::Free)?;
                    if i % 10 == 3 {
                        // Fails after writing: the write must vanish.
                        return Err(StoreError::invalid(format!("job {i} gives up")));
                    }
                    Ok(i)
                })
                .await;
            (i, r)
        }
    });
    let results = join_all(jobs).await;
    for (i, r) in &results {
        if i % 10 == 3 {
            assert_eq!(r, &Err(StoreError::invalid(format!("job {i} gives up"))));
        } else {
            assert_eq!(r, &Ok(*i));
        }
    }
    let stats = store.store.pool_stats("P").unwrap();
    assert_eq!(
        stats.free, 360,
        "only the 360 successful jobs left triplets"
    );
    let w = store.store.writer_stats();
    assert!(w.jobs >= 400);
    assert!(w.batches < 400, "jobs were batched ({} batches)", w.batches);
    assert!(w.reruns > 0, "the failing jobs forced isolated re-runs");
}

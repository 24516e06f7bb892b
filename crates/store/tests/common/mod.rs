//! A SQLite store in a temporary data dir that is removed when the store is dropped.

#![allow(dead_code, unreachable_pub)]

use dynreg_store::Operator;
use std::future::Future;
use std::sync::Arc;

use dynreg_registrar::conformance::Fixture;
use dynreg_registrar::{Claim, CredentialUse, NewTriplet, Product, Store, StoreError, Tx};
use dynreg_store::{SqliteConfig, SqliteStore};

pub struct TempStore {
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open(&SqliteConfig::new(dir.path().join("data"))).expect("open store");
        Self { store, dir }
    }
}

impl Store for TempStore {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        self.store.product(pid)
    }

    fn on_product_change(&self, listener: dynreg_registrar::ProductListener) {
        self.store.on_product_change(listener);
    }

    fn transact<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store.transact(work)
    }

    fn claim_credential(
        &self,
        c: &CredentialUse<'_>,
        now: u64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        self.store.claim_credential(c, now)
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    // The store's operator calls block on the writer; inside a multi-threaded tokio
    // runtime that is allowed through block_in_place.
    tokio::task::block_in_place(f)
}

impl Fixture for TempStore {
    fn put_product(&self, product: Product) {
        blocking(|| match self.store.insert_product(&product) {
            Ok(()) => {}
            Err(dynreg_store::Error::Conflict(_)) => {
                // Replace: the suite re-puts a product to change `enabled`.
                self.store
                    .set_enabled(&product.pid, product.enabled)
                    .unwrap();
            }
            Err(e) => panic!("{e}"),
        });
    }

    fn add_pool(&self, pid: &str, triplets: Vec<NewTriplet>) {
        blocking(|| {
            self.store
                .import_pool(pid, triplets, Arc::new(|_| {}))
                .unwrap()
        });
    }

    fn revoke(&self, key_pid: &str, unique: &str, now: u64) {
        blocking(|| self.store.revoke(key_pid, unique, now).unwrap());
    }

    fn reset(&self, key_pid: &str, unique: &str) {
        blocking(|| self.store.reset(key_pid, unique, 1_700_000_000).unwrap());
    }

    fn pool_counts(&self, pid: &str) -> (u64, u64, u64) {
        let s = self.store.pool_stats(pid).unwrap();
        (s.free, s.bound, s.revoked)
    }

    fn reregistrations(&self, pid: &str) -> (u64, u64) {
        let s = self.store.pool_stats(pid).unwrap();
        (s.reregistrations, s.reregistrations_refused)
    }
}

//! A store for one test: SQLite in a temporary data dir, or PostgreSQL in a database of
//! its own; removed when the store is dropped.

#![allow(dead_code, unreachable_pub)]

use dynreg_store::Operator;
use std::future::Future;
use std::sync::Arc;

use dynreg_registrar::conformance::Fixture;
use dynreg_registrar::{NewTriplet, Product, Store, StoreError, Tx};
use dynreg_store::{KeySource, PgConfig, PgStore, SqliteConfig, SqliteStore};

pub use dynreg_testkit::pg as pgtest;

/// What must outlive the store: its directory or its database.
pub enum Keep {
    Dir(tempfile::TempDir),
    Db(pgtest::TestDb),
}

pub struct TempStore<S = SqliteStore> {
    pub store: S,
    pub keep: Keep,
    /// The master key of a PostgreSQL store (a SQLite store keeps its own).
    pub key_hex: String,
}

/// A store the shared operator tests run on.
pub trait Backend: Store + Operator + Clone + Sync + Sized {
    /// Closes `t`'s store and opens it again.
    fn reopen(t: &TempStore<Self>) -> Self;
}

impl Backend for SqliteStore {
    fn reopen(t: &TempStore<Self>) -> Self {
        t.store.close().unwrap();
        SqliteStore::open(&SqliteConfig::new(t.store.path().parent().unwrap())).unwrap()
    }
}

impl Backend for PgStore {
    fn reopen(t: &TempStore<Self>) -> Self {
        t.store.close().unwrap();
        PgStore::open(&pg_config(t.url(), &t.key_hex)).unwrap()
    }
}

impl<S: Backend> TempStore<S> {
    /// The store closed and opened again.
    pub fn reopen(&self) -> S {
        S::reopen(self)
    }
}

impl TempStore<SqliteStore> {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open(&SqliteConfig::new(dir.path().join("data"))).expect("open store");
        Self {
            store,
            keep: Keep::Dir(dir),
            key_hex: String::new(),
        }
    }
}

impl TempStore<PgStore> {
    /// A PostgreSQL store in a new database, or `None` (SKIPPED) without a server.
    pub fn postgres(test: &str) -> Option<Self> {
        let db = pgtest::TestDb::create(test)?;
        let key_hex = pgtest::random_key();
        let store = PgStore::open(&pg_config(&db.url, &key_hex)).expect("open store");
        Some(Self {
            store,
            keep: Keep::Db(db),
            key_hex,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        match &self.keep {
            Keep::Db(db) => &db.url,
            Keep::Dir(_) => unreachable!("a PostgreSQL store keeps a database"),
        }
    }
}

/// The configuration tests open a PostgreSQL store with: two writers.
pub fn pg_config(url: &str, key_hex: &str) -> PgConfig {
    let mut config = PgConfig::new(url, KeySource::Hex(key_hex.to_owned()));
    config.writers = 2;
    config
}

impl<S: Store + Operator + Sync> Store for TempStore<S> {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        self.store.product(pid)
    }

    fn on_product_change(&self, listener: dynreg_registrar::ProductListener) {
        self.store.on_product_change(listener);
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<dynreg_registrar::ExpectedDevice>, StoreError>> + Send
    {
        self.store.expected_device(pid, unique)
    }

    fn transact<T, F>(
        &self,
        intent: Option<dynreg_registrar::Intent>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.store.transact(intent, work)
    }
}

/// The operator the tests act as.
pub fn operator() -> dynreg_store::Actor {
    dynreg_store::Actor {
        name: "test".into(),
        origin: String::new(),
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    // The store's operator calls block; inside a multi-threaded tokio runtime that is
    // allowed through block_in_place.
    tokio::task::block_in_place(f)
}

impl<S: Store + Operator + Sync> Fixture for TempStore<S> {
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

    fn expect(&self, pid: &str, devices: Vec<dynreg_registrar::ExpectedDevice>) {
        blocking(|| {
            self.store
                .expect_devices(pid, devices, Arc::new(|_| {}))
                .unwrap()
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
        blocking(|| {
            self.store
                .revoke(key_pid, unique, now, &operator())
                .unwrap();
        });
    }

    fn reset(&self, key_pid: &str, unique: &str) {
        blocking(|| {
            self.store
                .reset(key_pid, unique, 1_700_000_000, &operator())
                .unwrap();
        });
    }

    fn pool_counts(&self, pid: &str) -> (u64, u64, u64) {
        let s = blocking(|| self.store.pool_stats(pid).unwrap());
        (s.free, s.bound, s.revoked)
    }

    fn reregistrations(&self, pid: &str) -> (u64, u64) {
        let s = blocking(|| self.store.pool_stats(pid).unwrap());
        (s.reregistrations, s.reregistrations_refused)
    }

    fn audit(&self) -> Vec<dynreg_registrar::AuditEntry> {
        let filter = dynreg_store::AuditFilter {
            actor: Some("device".into()),
            ..Default::default()
        };
        let mut lines = blocking(|| self.store.audit(&filter).unwrap());
        lines.reverse();
        lines.into_iter().map(|r| r.entry).collect()
    }
}

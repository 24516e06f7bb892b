//! The store the configuration names: one variant per backend, so that every command
//! works against whichever it is (the SQLite data dir, or PostgreSQL).

use std::sync::Arc;

use dynreg_registrar::{ExpectedDevice, Intent, Product, ProductListener, Store, StoreError, Tx};
use dynreg_store::{Operator, PgStore, SqliteStore};

/// An open store.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The embedded SQLite store in a data dir.
    Sqlite(SqliteStore),
    /// A PostgreSQL database, possibly shared with other instances.
    Postgres(PgStore),
}

impl Backend {
    /// The backend as the admin API takes it.
    pub(crate) fn ops(&self) -> dynreg_http::api::Ops {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
}

/// Every operator operation goes to the backend behind the enum.
impl std::ops::Deref for Backend {
    type Target = dyn Operator;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Sqlite(s) => s,
            Self::Postgres(s) => s,
        }
    }
}

impl Store for Backend {
    async fn product(&self, pid: &str) -> Result<Option<Arc<Product>>, StoreError> {
        match self {
            Self::Sqlite(s) => s.product(pid).await,
            Self::Postgres(s) => s.product(pid).await,
        }
    }

    async fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> Result<Option<ExpectedDevice>, StoreError> {
        match self {
            Self::Sqlite(s) => s.expected_device(pid, unique).await,
            Self::Postgres(s) => s.expected_device(pid, unique).await,
        }
    }

    fn on_product_change(&self, listener: ProductListener) {
        match self {
            Self::Sqlite(s) => s.on_product_change(listener),
            Self::Postgres(s) => s.on_product_change(listener),
        }
    }

    async fn transact<T, F>(&self, intent: Option<Intent>, work: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Self::Sqlite(s) => s.transact(intent, work).await,
            Self::Postgres(s) => s.transact(intent, work).await,
        }
    }
}

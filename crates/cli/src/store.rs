//! The store the configuration names: one variant per backend, so that every command
//! works against whichever it is (the SQLite data dir today; PostgreSQL is next).

use std::future::Future;
use std::sync::Arc;

use dynreg_registrar::{Claim, CredentialUse, Product, ProductListener, Store, StoreError, Tx};
use dynreg_store::{Operator, SqliteStore};

/// An open store.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The embedded SQLite store in a data dir.
    Sqlite(SqliteStore),
}

/// Every operator operation goes to the backend behind the enum.
impl std::ops::Deref for Backend {
    type Target = dyn Operator;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Sqlite(s) => s,
        }
    }
}

impl Store for Backend {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        match self {
            Self::Sqlite(s) => s.product(pid),
        }
    }

    fn on_product_change(&self, listener: ProductListener) {
        match self {
            Self::Sqlite(s) => s.on_product_change(listener),
        }
    }

    fn transact<T, F>(&self, work: F) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Self::Sqlite(s) => s.transact(work),
        }
    }

    fn claim_credential(
        &self,
        credential: &CredentialUse<'_>,
        now: u64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        match self {
            Self::Sqlite(s) => s.claim_credential(credential, now),
        }
    }
}

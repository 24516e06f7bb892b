//! The store the configuration names: one variant per backend, so that every command
//! works against whichever it is (the SQLite data dir today; PostgreSQL is next).

use std::future::Future;
use std::sync::Arc;

use dynreg_registrar::{
    Claim, CredentialUse, NewTriplet, Product, ProductListener, Registration, Secret, Store,
    StoreError, Triplet, TripletState, Tx,
};
use dynreg_store::{
    Deleted, DeviceFilter, Error, HistoryEntry, Operator, PoolStats, ProductUpdate, Progress,
    SqliteStore, TripletRef, Withdrawal,
};

/// An open store.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The embedded SQLite store in a data dir.
    Sqlite(SqliteStore),
}

impl Operator for Backend {
    fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => s.location(),
        }
    }

    fn close(&self) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.close(),
        }
    }

    fn load_product(&self, pid: &str) -> Result<Option<Product>, Error> {
        match self {
            Self::Sqlite(s) => s.load_product(pid),
        }
    }

    fn product_pids(&self) -> Result<Vec<String>, Error> {
        match self {
            Self::Sqlite(s) => s.product_pids(),
        }
    }

    fn insert_product(&self, product: &Product) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.insert_product(product),
        }
    }

    fn update_product(&self, pid: &str, update: ProductUpdate) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.update_product(pid, update),
        }
    }

    fn delete_product(&self, pid: &str, force: bool) -> Result<Deleted, Error> {
        match self {
            Self::Sqlite(s) => s.delete_product(pid, force),
        }
    }

    fn set_enabled(&self, pid: &str, enabled: bool) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.set_enabled(pid, enabled),
        }
    }

    fn rotate_secret(&self, pid: &str, grace_secs: u64, now: u64) -> Result<Secret, Error> {
        match self {
            Self::Sqlite(s) => s.rotate_secret(pid, grace_secs, now),
        }
    }

    fn retire_secret(&self, pid: &str, now: u64) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.retire_secret(pid, now),
        }
    }

    fn pool_stats(&self, pid: &str) -> Result<PoolStats, Error> {
        match self {
            Self::Sqlite(s) => s.pool_stats(pid),
        }
    }

    fn generate_pool(
        &self,
        pid: &str,
        count: u64,
        barcode_prefix: &str,
        now: u64,
        progress: Progress,
    ) -> Result<Vec<NewTriplet>, Error> {
        match self {
            Self::Sqlite(s) => s.generate_pool(pid, count, barcode_prefix, now, progress),
        }
    }

    fn import_pool(
        &self,
        pid: &str,
        triplets: Vec<NewTriplet>,
        progress: Progress,
    ) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.import_pool(pid, triplets, progress),
        }
    }

    fn for_each_triplet(
        &self,
        pid: &str,
        state: Option<TripletState>,
        f: impl FnMut(Triplet) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.for_each_triplet(pid, state, f),
        }
    }

    fn for_each_device(
        &self,
        filter: &DeviceFilter,
        f: impl FnMut(Registration) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.for_each_device(filter, f),
        }
    }

    fn device(&self, key_pid: &str, unique: &str) -> Result<Option<Registration>, Error> {
        match self {
            Self::Sqlite(s) => s.device(key_pid, unique),
        }
    }

    fn device_by_uuid(&self, uuid: &str) -> Result<Option<Registration>, Error> {
        match self {
            Self::Sqlite(s) => s.device_by_uuid(uuid),
        }
    }

    fn device_by_barcode(
        &self,
        pid: Option<&str>,
        barcode: &str,
    ) -> Result<Option<Registration>, Error> {
        match self {
            Self::Sqlite(s) => s.device_by_barcode(pid, barcode),
        }
    }

    fn devices_by_mac(&self, mac: &str) -> Result<Vec<Registration>, Error> {
        match self {
            Self::Sqlite(s) => s.devices_by_mac(mac),
        }
    }

    fn triplet(&self, uuid: &str) -> Result<Option<Triplet>, Error> {
        match self {
            Self::Sqlite(s) => s.triplet(uuid),
        }
    }

    fn triplet_history(&self, uuid: &str) -> Result<Vec<HistoryEntry>, Error> {
        match self {
            Self::Sqlite(s) => s.triplet_history(uuid),
        }
    }

    fn device_history(&self, key_pid: &str, unique: &str) -> Result<Vec<HistoryEntry>, Error> {
        match self {
            Self::Sqlite(s) => s.device_history(key_pid, unique),
        }
    }

    fn withdrawal_candidates(
        &self,
        pid: &str,
        refs: &[TripletRef],
    ) -> Result<Vec<Withdrawal>, Error> {
        match self {
            Self::Sqlite(s) => s.withdrawal_candidates(pid, refs),
        }
    }

    fn withdraw(&self, pid: &str, uuids: Vec<String>, now: u64) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.withdraw(pid, uuids, now),
        }
    }

    fn revoke(&self, key_pid: &str, unique: &str, now: u64) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.revoke(key_pid, unique, now),
        }
    }

    fn reset(&self, key_pid: &str, unique: &str, now: u64) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.reset(key_pid, unique, now),
        }
    }

    fn bulk_load(
        &self,
        pid: &str,
        start: u64,
        count: u64,
        now: u64,
        progress: &dyn Fn(u64),
    ) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.bulk_load(pid, start, count, now, progress),
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

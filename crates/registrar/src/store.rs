//! The storage boundary: what the registrar needs from a store, and nothing more.
//!
//! A [`Store`] serves product lookups (which may be cached for a few seconds) and runs
//! registration work in [`Store::transact`]: the closure gets a [`Tx`] whose operations
//! are all part of one atomic unit, and the returned future resolves only after that
//! unit is durably committed. A closure that returns `Err` leaves no trace. Stores may
//! run several closures in one physical transaction (group commit) so that concurrent
//! registrations share an fsync; to keep that cheap, a store may run a closure more
//! than once (rolling back its writes in between), so a closure must have no effect
//! outside the [`Tx`] it is given.

use std::future::Future;
use std::sync::Arc;

use crate::model::{
    AuditEntry, ExpectedDevice, NewTriplet, Product, Registration, Triplet, TripletId, TripletState,
};

/// What kind of failure a store reports: what a caller decides on (refuse, retry,
/// report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A uniqueness rule refused the write (duplicate uuid, barcode, pid...).
    Conflict,
    /// A named record does not exist.
    NotFound,
    /// The input is not acceptable to the store (the message says which and why).
    Invalid,
    /// The store cannot serve now (shutting down, database busy or unreachable); the
    /// caller may retry.
    Unavailable,
    /// Stored data could not be read back: corruption or the wrong master key.
    Corrupt,
    /// Any other failure of the storage backend.
    Backend,
}

impl StoreErrorKind {
    const fn prefix(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::NotFound => "not found",
            Self::Invalid => "invalid",
            Self::Unavailable => "storage unavailable",
            Self::Corrupt => "stored data unreadable",
            Self::Backend => "storage error",
        }
    }
}

/// A storage failure: its kind, what happened, and the backend's own error when there
/// is one ([`std::error::Error::source`]). Cheap to clone (a failed group commit is
/// reported to every job of the batch).
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure of `kind`, described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A uniqueness rule refused the write.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Conflict, message)
    }

    /// A named record does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::NotFound, message)
    }

    /// The input is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Invalid, message)
    }

    /// The store cannot serve now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// Stored data could not be read back.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, message)
    }

    /// Any other backend failure.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Backend, message)
    }

    /// The same failure, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// What happened.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.prefix(), self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two failures are equal when their kind and message are (the source is detail).
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for StoreError {}

/// The operations of one registration transaction.
///
/// Every method is part of the same atomic unit; nothing is visible to others, nor
/// durable, until the unit commits.
pub trait Tx {
    /// The registration keyed by the identity a device authenticates with.
    fn registration(
        &mut self,
        key_pid: &str,
        unique: &str,
    ) -> Result<Option<Registration>, StoreError>;

    /// The oldest free triplet of `pid`'s pool, if any. It stays free until
    /// [`Tx::insert_registration`] binds it.
    fn free_triplet(&mut self, pid: &str) -> Result<Option<Triplet>, StoreError>;

    /// Allocates the next MAC address of `pid`'s MAC range (formatted), or `None` when
    /// the range is used up. Only called for products that have a range.
    fn next_mac(&mut self, pid: &str) -> Result<Option<String>, StoreError>;

    /// Stores a new triplet for `pid` in `state`. A uuid that exists anywhere in the store
    /// gives a [`StoreErrorKind::Conflict`] error.
    fn insert_triplet(
        &mut self,
        pid: &str,
        triplet: &NewTriplet,
        state: TripletState,
    ) -> Result<Triplet, StoreError>;

    /// The triplet of `pid` that carries `barcode`, if any: its id and state.
    fn barcode_holder(
        &mut self,
        pid: &str,
        barcode: &str,
    ) -> Result<Option<(TripletId, TripletState)>, StoreError>;

    /// Sets a triplet's barcode; the empty string clears it.
    fn set_barcode(&mut self, triplet: TripletId, barcode: &str) -> Result<(), StoreError>;

    /// Sets a triplet's MAC (normalised, `AA:BB:CC:DD:EE:FF`): the MAC a listed device
    /// brings to its registration ([`crate::ExpectedDevice::mac`]).
    fn set_mac(&mut self, triplet: TripletId, mac: &str) -> Result<(), StoreError>;

    /// Binds `triplet` to the device (`key_pid`, `unique`), registered under `pid`, at
    /// `now`. `triplet` is one this transaction got from [`Tx::free_triplet`] (it then
    /// becomes [`TripletState::Bound`]) or stored with [`Tx::insert_triplet`] as bound.
    /// A triplet held by another device, or revoked, gives a [`StoreErrorKind::Conflict`] error.
    fn insert_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        pid: &str,
        triplet: &Triplet,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Records that the device came back at `now` and got its triplet again (a
    /// re-registration, counted in its product's statistics).
    fn touch_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Counts a re-registration of a device of `key_pid` that its product's policy
    /// refused.
    fn count_refused_reregistration(&mut self, key_pid: &str) -> Result<(), StoreError>;

    /// How many devices are registered under `pid` (revoked ones included: they hold
    /// their triplet). Only called for products that have a quota, so a store may keep
    /// the count for those products only (see [`Tx::count_bound_device`]).
    fn bound_devices(&mut self, pid: &str) -> Result<u64, StoreError>;

    /// Counts a device just registered under `pid` towards its quota. Called after
    /// [`Tx::insert_registration`] for products that have a quota only.
    fn count_bound_device(&mut self, pid: &str) -> Result<(), StoreError>;

    /// Appends `entry` to the audit log, in this transaction (a registration and its
    /// audit line are committed together, or neither is).
    fn record(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
}

/// What a registration transaction is about, told to the store before it runs
/// ([`Store::transact`]). A store that runs many transactions together (group
/// commit) can then read what a whole group needs in one statement instead of one per
/// device. Only a hint: the work still reads everything it decides on through its
/// [`Tx`], and a store may ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// The pid the device authenticates with ([`Tx::registration`]'s `key_pid`).
    pub key_pid: String,
    /// The device's unique.
    pub unique: String,
    /// The product whose pool a new device would take a triplet from
    /// ([`Tx::free_triplet`]), if its mode uses a pool.
    pub pool: Option<String>,
}

/// Called with the pid of a product that changed (see [`Store::on_product_change`]).
pub type ProductListener = Arc<dyn Fn(&str) + Send + Sync>;

/// A durable store of products, triplets and registrations.
pub trait Store: Send + Sync + 'static {
    /// The product `pid`, if it exists, read from the store (the registrar keeps the
    /// cache, [`crate::cache::ProductCache`]).
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send;

    /// The device `unique` listed in advance for product `pid`
    /// ([`crate::Admission::Listed`]), if it is: one indexed read (the registrar caches
    /// it like products).
    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send;

    /// Registers `listener`, to be called with the pid of every product this store
    /// changes (its expected devices included) (and, for a database shared by several instances, that another instance
    /// changes, where the backend can tell). Caches use it to drop the product at once;
    /// changes nobody reports are seen within the cache's TTL. The default reports
    /// nothing.
    fn on_product_change(&self, listener: ProductListener) {
        let _ = listener;
    }

    /// Records the store's own measures (its group commits' sizes and durations) into
    /// `metrics`, the registrar's ([`crate::Registrar::metrics`]); the first registrar
    /// over a store gives them. By default a store records nothing.
    fn record_into(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = metrics;
    }

    /// Runs `work` as one atomic unit and resolves once it is durably committed (or
    /// rolled back, when `work` returns `Err`). `work` may be called more than once,
    /// its writes rolled back in between; the result of the last call is returned.
    /// `intent`, when given, says in advance what a registration's work is about (a
    /// hint a store may ignore, see [`Intent`]).
    fn transact<T, F>(
        &self,
        intent: Option<Intent>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static;
}

impl<S: Store> Store for Arc<S> {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        (**self).product(pid)
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send {
        (**self).expected_device(pid, unique)
    }

    fn on_product_change(&self, listener: ProductListener) {
        (**self).on_product_change(listener);
    }

    fn record_into(&self, metrics: Arc<crate::metrics::Metrics>) {
        (**self).record_into(metrics);
    }

    fn transact<T, F>(
        &self,
        intent: Option<Intent>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        (**self).transact(intent, work)
    }
}

//! # dynreg-store: durable storage for dynreg
//!
//! Two stores behind the registrar's [`dynreg_registrar::Store`] and the operator's
//! [`Operator`]:
//! - [`SqliteStore`], the embedded default: one SQLite database file in the data dir, in
//!   WAL mode with `synchronous = FULL` (a commit is on disk before it returns), one
//!   writer thread;
//! - [`PgStore`]: PostgreSQL, for several instances on one database: writer threads
//!   sharing one queue, pool triplets taken with `FOR UPDATE SKIP LOCKED`, a record
//!   of shared credentials every instance sees, migrations under an advisory lock.
//!
//! Both run the same statements (a private SQL layer over a small connection
//! interface) with group commit: concurrent registrations run in one transaction and
//! are committed together so that they share one fsync (a registration that fails makes
//! its batch run again, each registration in its own savepoint, so that only its writes
//! are undone). Product and device secrets are encrypted at rest ([`crypto`]) with the
//! row's identity as associated data, the same in both stores.
//!
//! ## Layout
//! - [`admin`]: the operator's operations independent of the backend: what they take,
//!   what they answer, the validation every backend applies, and the [`Operator`]
//!   trait (implemented once, in SQL, for both stores).
//! - [`crypto`]: the master key and the sealing of secrets.
//! - [`factory_csv`]: reading the factory CSV of triplets that `pool import` takes.
//! - [`expected_csv`]: reading the CSV of expected devices, and the one upload of it
//!   that every front door calls.
//! - `sql/`: the SQL both backends run: the registration transaction (`tx.rs`), group
//!   commit (`batch.rs`), the set-based batch (`deferred.rs`, [`SqliteStore`] and
//!   [`PgStore`] alike), the operator's operations (`admin.rs`, `expected.rs`) and
//!   `store copy` (`copy.rs`).
//! - [`sqlite`]: [`SqliteStore`] (its writer thread and schema).
//! - [`postgres`]: [`PgStore`]: `config.rs` (URL, TLS parameters), `tls.rs`,
//!   `error.rs` (errors in words and kinds), `conn.rs` (a thread's connection),
//!   `bulk.rs` (the set-based statements), `schema.rs` (migrations).

pub mod admin;
pub mod crypto;
pub mod expected_csv;
pub mod factory_csv;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use admin::{
    Actor, AuditFilter, AuditRecord, Deleted, DeviceCursor, DeviceFilter, Expected, ExpectedFilter,
    HistoryEntry, NewProduct, Operator, OutboxEvent, PoolStats, ProductDefinition, ProductSummary,
    ProductUpdate, Progress, Scope, TokenInfo, TripletRef, Withdrawal, audited,
};
pub use crypto::{KeySource, MasterKey};
pub use postgres::{DEFAULT_WRITERS, PgConfig, PgStore};
pub use sqlite::{SqliteConfig, SqliteStore, WriterStats};

use dynreg_registrar::{StoreError, StoreErrorKind};

/// An error of the store's operator-facing operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data dir or master key cannot be used (the message names which and why).
    #[error("{0}")]
    Config(String),
    /// A PostgreSQL store was given no master key ([`KeySource::DataDir`]): it has no
    /// data dir to keep a key file in, and every instance on the database needs the
    /// same key. The one statement of that rule; a front end adds how to give one.
    #[error(
        "a PostgreSQL store needs its master key given (a key file, or the key itself): it has no data dir to keep one in, and every instance on the database needs the same key"
    )]
    KeyNeeded,
    /// Stored secrets do not decrypt: the master key is not the one they were sealed with.
    #[error(
        "stored secrets do not decrypt with the master key from {0}: wrong key, or corrupt data"
    )]
    WrongKey(String),
    /// A named record does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The input is not acceptable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// A uniqueness rule refused the write (the message names the value).
    #[error("{0}")]
    Conflict(String),
    /// One item of a multi-item operation (an import) was refused; nothing was written.
    #[error("item {index}: {message}")]
    Item {
        /// The 0-based position of the item.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The store is shutting down or the database stayed locked.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Any other PostgreSQL failure.
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
}

impl From<dynreg_registrar::model::InvalidValue> for Error {
    fn from(e: dynreg_registrar::model::InvalidValue) -> Self {
        Self::Invalid(e.0)
    }
}

impl Error {
    /// What kind of failure this is, as the registrar sees it: what a caller decides
    /// on (a database that cannot answer now is [`StoreErrorKind::Unavailable`]).
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Conflict(_) => StoreErrorKind::Conflict,
            Self::NotFound(_) => StoreErrorKind::NotFound,
            Self::Invalid(_) | Self::Config(_) | Self::KeyNeeded | Self::Item { .. } => {
                StoreErrorKind::Invalid
            }
            Self::Unavailable(_) => StoreErrorKind::Unavailable,
            Self::WrongKey(_) => StoreErrorKind::Corrupt,
            Self::Sqlite(e) => sqlite::kind_of(e),
            Self::Postgres(e) => postgres::kind_of(e),
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        match e {
            Error::Sqlite(e) => sqlite::classify(e),
            Error::Postgres(e) => postgres::classify(e),
            Error::Conflict(m)
            | Error::NotFound(m)
            | Error::Invalid(m)
            | Error::Config(m)
            | Error::Unavailable(m) => StoreError::new(kind, m),
            other => StoreError::new(kind, other.to_string()),
        }
    }
}

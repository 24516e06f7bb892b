//! The SQL both backends speak: one implementation of every statement and decision,
//! over a small connection interface ([`Conn`]) that SQLite and PostgreSQL implement.
//!
//! Statements are written once, in the subset of SQL the two databases share, with
//! SQLite's numbered parameters (`?1`); the PostgreSQL connection rewrites them to `$1`
//! when it prepares a statement. Every integer column is a 64-bit integer in both
//! schemas, so that one [`Value`] binds to either. Where the dialects differ (how a
//! write transaction begins, how row ids are reserved) the connection decides.
//!
//! - [`tx`]: the statements of a registration ([`dynreg_registrar::Tx`]);
//! - [`admin`]: the operator's operations ([`crate::Operator`]) for any backend that
//!   implements [`SqlBackend`];
//! - [`batch`]: group commit: many registrations in one transaction, committed once;
//! - [`deferred`]: set-based group commit for a server database (reads ahead for a
//!   batch, writes its rows in one statement).

pub(crate) mod admin;
pub(crate) mod batch;
pub(crate) mod copy;
pub(crate) mod deferred;
pub(crate) mod expected;
pub(crate) mod tx;

use crate::Error;
use crate::crypto::MasterKey;

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Self::Text(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Self::Text(s)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(b: &'a [u8]) -> Self {
        Self::Bytes(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// Binds a list of parameters: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($v)),*]
    };
}
pub(crate) use params;

/// One row of a result, read by column position.
pub(crate) trait Row {
    fn int(&self, i: usize) -> Result<i64, Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Error>;
    fn text(&self, i: usize) -> Result<String, Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Error>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, Error>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, Error>;
    fn bool(&self, i: usize) -> Result<bool, Error>;
}

/// Implements [`Row`] for a driver's row type whose getter (`$get`) takes a column
/// index and returns the value or an error that converts into [`Error`].
macro_rules! impl_row {
    ($row:ty, $get:ident) => {
        impl $crate::sql::Row for $row {
            fn int(&self, i: usize) -> Result<i64, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn text(&self, i: usize) -> Result<String, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn bytes(&self, i: usize) -> Result<Vec<u8>, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, $crate::Error> {
                Ok(self.$get(i)?)
            }
            fn bool(&self, i: usize) -> Result<bool, $crate::Error> {
                Ok(self.$get(i)?)
            }
        }
    };
}
pub(crate) use impl_row;

/// A database connection, as the shared statements use it. Statements are prepared
/// once per connection and cached by their text.
pub(crate) trait Conn {
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, Error>;
    /// Runs a query and calls `each` with every row, in order, without holding all of
    /// them in memory.
    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error>;
    /// Runs an `INSERT` (without `RETURNING`) into a table with an integer `id` and
    /// returns the new row's id, or `None` when it inserted nothing (`ON CONFLICT DO
    /// NOTHING`). SQLite reads its last rowid (a `RETURNING` clause cost its writer
    /// more); PostgreSQL adds `RETURNING id`.
    fn insert_id(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<i64>, Error>;
    /// Runs a statement without parameters (transaction control).
    fn control(&mut self, sql: &str) -> Result<(), Error>;
    /// Begins a write transaction.
    fn begin(&mut self) -> Result<(), Error>;
    /// Whether a transaction is open (possibly failed, waiting for its rollback).
    fn in_transaction(&self) -> bool;
    /// Finds a free triplet of `pid`'s pool (the [`tx::TRIPLET_COLUMNS`]) for this
    /// transaction and calls `read` with it; false when the pool has none. SQLite takes
    /// the oldest (one writer). PostgreSQL locks the one it takes and skips triplets that
    /// concurrent transactions hold; when those are all it finds, it waits a little for
    /// them to come free (a rolled-back batch hands its claims back) before it counts
    /// them as taken and answers false.
    fn free_triplet(
        &mut self,
        pid: &str,
        read: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<bool, Error>;
    /// `n` new triplet ids, ascending, that no other writer will use (pool generation
    /// puts them in the barcodes).
    fn reserve_triplet_ids(&mut self, n: usize) -> Result<Vec<i64>, Error>;
    /// The set-based statements of [`deferred`], where a statement is a round trip
    /// worth saving (PostgreSQL). `None` (SQLite, in process) runs every statement of a
    /// registration as it comes.
    fn bulk(&mut self) -> Option<&mut dyn deferred::Bulk> {
        None
    }
}

impl dyn Conn + '_ {
    /// The first row, read by `read`, if there is one.
    pub(crate) fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        mut read: impl FnMut(&dyn Row) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        let mut out = None;
        self.query(sql, params, &mut |r| {
            if out.is_none() {
                out = Some(read(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every row, read by `read`.
    pub(crate) fn query_vec<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        mut read: impl FnMut(&dyn Row) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        self.query(sql, params, &mut |r| {
            out.push(read(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether the query returns a row.
    pub(crate) fn exists(&mut self, sql: &str, params: &[Value<'_>]) -> Result<bool, Error> {
        Ok(self.query_opt(sql, params, |_| Ok(()))?.is_some())
    }
}

/// A store whose operator operations are the shared SQL ([`admin`]): it says where
/// statements run.
pub(crate) trait SqlBackend {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Closes the store (see [`crate::Operator::close`]).
    fn close(&self) -> Result<(), Error>;
    /// The master key.
    fn key(&self) -> &MasterKey;
    /// Runs `read` on a connection that sees every committed write.
    fn read<T>(&self, read: impl FnOnce(&mut dyn Conn) -> Result<T, Error>) -> Result<T, Error>;
    /// Runs `work` in a write transaction of its own and commits it (rolls it back when
    /// `work` fails). Blocks until then.
    fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
        T: Send + 'static;
    /// The database's schema version.
    fn schema_version(&self) -> Result<u64, Error>;
    /// Tells the product caches that `pid` changed.
    fn invalidate(&self, pid: &str);
}

/// Whom a store tells of the products it changes (the registrar's product cache).
#[derive(Default)]
pub(crate) struct Listeners(std::sync::Mutex<Vec<dynreg_registrar::ProductListener>>);

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<dynreg_registrar::ProductListener>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a listener.
    pub(crate) fn add(&self, listener: dynreg_registrar::ProductListener) {
        self.lock().push(listener);
    }

    /// Tells every listener that `pid` changed.
    pub(crate) fn notify(&self, pid: &str) {
        for l in self.lock().iter() {
            l(pid);
        }
    }
}

/// The associated data that binds a product secret to its row.
pub(crate) fn product_aad(pid: &str) -> Vec<u8> {
    [b"product:".as_slice(), pid.as_bytes()].concat()
}

/// The associated data that binds a product's previous secret to its row.
pub(crate) fn previous_aad(pid: &str) -> Vec<u8> {
    [b"product-previous:".as_slice(), pid.as_bytes()].concat()
}

/// The associated data that binds a device secret to its row.
pub(crate) fn triplet_aad(uuid: &str) -> Vec<u8> {
    [b"triplet:".as_slice(), uuid.as_bytes()].concat()
}

/// `t`'s secret sealed for its row (bound to its uuid).
pub(crate) fn seal_triplet_secret(key: &MasterKey, t: &dynreg_registrar::NewTriplet) -> Vec<u8> {
    key.seal(&triplet_aad(&t.uuid), t.secret.expose().as_bytes())
}

/// A stored time or counter (stored integers are signed; ours are never negative).
pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A time or counter to store (saturating at `i64::MAX`, far beyond any real value).
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The value sealed under `meta.key_check`: a wrong master key is told apart from
/// corruption before any secret is needed, and a fresh key is never paired with an
/// existing database.
pub(crate) const KEY_CHECK: &[u8] = b"dynreg master key check";

/// Checks the master key against the database (or records it in a new one).
pub(crate) fn check_key(conn: &mut dyn Conn, key: &MasterKey) -> Result<(), Error> {
    let check = conn.query_opt("SELECT value FROM meta WHERE key = 'key_check'", &[], |r| {
        r.bytes(0)
    })?;
    match check {
        Some(sealed) => key.open(b"meta:key_check", &sealed).map(drop),
        None => {
            let sealed = key.seal(b"meta:key_check", KEY_CHECK);
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                params![&sealed],
            )
            .map(drop)
        }
    }
}

//! The SQLite store: one database file, WAL, group commit, secrets sealed at rest.
//!
//! - Writes (registrations and operator changes) go through one writer thread that owns
//!   the write connection (module `writer`). It takes every job waiting in its queue,
//!   runs them in one transaction, commits once, and only then answers the jobs:
//!   durable before reply, one fsync per batch. A job that fails makes the batch run
//!   again with each job in its own savepoint, so that only the failing job's writes
//!   are undone.
//! - Reads (product lookups, listings) use a separate read connection; WAL lets them
//!   run while the writer commits.
//! - Product lookups read the database; the registrar caches them
//!   ([`dynreg_registrar::cache::ProductCache`]), and this store tells it of every
//!   product it changes ([`Store::on_product_change`]), so changes made through this
//!   store are seen at once and changes by another process (the CLI while `dynreg
//!   serve` runs) within the cache's TTL.

mod schema;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use dynreg_registrar::{
    ExpectedDevice, Intent, Product, ProductListener, Store, StoreError, StoreErrorKind, Tx,
};
use rusqlite::{Connection, OpenFlags};

use crate::Error;
use crate::crypto::{KeySource, MasterKey};
use crate::sql::batch::{OnceJob, TxJob};
use crate::sql::{Conn, Row, SqlBackend, Value};
use writer::Writer;

/// The database file name inside the data dir.
pub const DB_FILE_NAME: &str = "dynreg.sqlite3";

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The data dir; created (mode 0700) when missing.
    pub data_dir: PathBuf,
    /// Where the master key comes from.
    pub key: KeySource,
    /// The most jobs committed together in one transaction.
    pub max_batch: usize,
    /// Create the data dir, master key and database when they are missing. When
    /// `false`, a missing data dir or database is an error that names the path
    /// (commands that only read or change an existing store must not create an empty
    /// one at a mistyped path).
    pub create: bool,
}

impl SqliteConfig {
    /// The defaults for `data_dir`: key in the data dir, batches of up to 512 jobs.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            key: KeySource::DataDir,
            max_batch: 512,
            create: true,
        }
    }
}

/// Counters of the group-commit writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions (each one fsync).
    pub batches: u64,
    /// Jobs run in them.
    pub jobs: u64,
    /// Batches run a second time, job by job in savepoints, because one job failed.
    pub reruns: u64,
}

pub(crate) struct Inner {
    key: Arc<MasterKey>,
    reader: Mutex<Connection>,
    writer: Writer,
    /// Told of every product this store changes (the registrar's cache).
    listeners: crate::sql::Listeners,
    path: PathBuf,
}

/// The embedded SQLite store. Cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Maps a SQLite error to the registrar's view of it (kind and message), keeping it as
/// the source.
pub(crate) fn classify(e: rusqlite::Error) -> StoreError {
    StoreError::new(kind_of(&e), e.to_string()).with_source(e)
}

/// What kind of failure a SQLite error is.
pub(crate) fn kind_of(e: &rusqlite::Error) -> StoreErrorKind {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreErrorKind::Conflict,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Backend,
    }
}

fn create_data_dir(dir: &Path, create: bool) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(Error::Config(format!(
            "data dir {} is a file, not a directory",
            dir.display()
        )));
    }
    if !create {
        return Err(Error::Config(format!(
            "data dir {} does not exist: check --data-dir (or data_dir in the config file), or create a store there with `dynreg init`",
            dir.display()
        )));
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", dir.display())))
}

fn db_display(config: &SqliteConfig) -> String {
    config.data_dir.join(DB_FILE_NAME).display().to_string()
}

/// Creates an empty database file readable by its owner only; SQLite gives the WAL and
/// shared-memory files the same mode.
fn create_private_file(path: &Path) -> Result<(), Error> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map(drop)
        .map_err(|e| Error::Config(format!("cannot create database {}: {e}", path.display())))
}

fn open_connection(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Config(format!("cannot open database {}: {e}", path.display())))?;
    schema::configure(&conn)
        .map_err(|e| Error::Config(format!("database {}: {e}", path.display())))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `config.data_dir`: creates the dir, loads
    /// or generates the master key, applies migrations, checks that the key is the one
    /// the database was written with, and starts the writer thread.
    pub fn open(config: &SqliteConfig) -> Result<Self, Error> {
        create_data_dir(&config.data_dir, config.create)?;
        let path = config.data_dir.join(DB_FILE_NAME);
        let existed = path.exists();
        if !existed {
            if !config.create {
                return Err(Error::Config(format!(
                    "{} holds no dynreg database ({DB_FILE_NAME}): check --data-dir (or data_dir in the config file), or create a store there with `dynreg init`",
                    config.data_dir.display()
                )));
            }
            create_private_file(&path)?;
        }
        // Every failure from here on names the database file.
        Self::open_file(config, path, existed).map_err(|e| match e {
            Error::Sqlite(e) => Error::Config(format!("database {}: {e}", db_display(config))),
            other => other,
        })
    }

    fn open_file(config: &SqliteConfig, path: PathBuf, existed: bool) -> Result<Self, Error> {
        let (key, _) = MasterKey::load(&config.key, &config.data_dir, !existed)?;
        let mut write_conn = open_connection(&path)?;
        // SQLite opens a file it may not write read-only without a word, and the first
        // write (or the checkpoint at close) fails far from here: find out now.
        let read_only = write_conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        let writable = if read_only {
            Err("the file is read-only for this user".to_owned())
        } else {
            write_conn
                .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                .map_err(|e| e.to_string())
        };
        if let Err(why) = writable {
            return Err(Error::Config(format!(
                "database {} cannot be written ({why}): dynreg needs write access to it and to its directory, even to read",
                path.display()
            )));
        }
        schema::migrate(&mut write_conn)?;

        crate::sql::check_key(&mut write_conn, &key)?;
        let reader = open_connection(&path)?;
        let key = Arc::new(key);
        let writer = Writer::start(
            write_conn,
            open_connection(&path)?,
            key.clone(),
            config.max_batch.max(1),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                reader: Mutex::new(reader),
                writer,
                listeners: crate::sql::Listeners::default(),
                path,
            }),
        })
    }

    /// How many write transactions the writer has committed and how many jobs
    /// (registrations, operator changes) they held: their ratio is the group-commit
    /// batch size.
    pub fn writer_stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.inner.writer.counters();
        WriterStats {
            batches: c.batches.load(Relaxed),
            jobs: c.jobs.load(Relaxed),
            reruns: c.reruns.load(Relaxed),
        }
    }

    /// How many rows each table that `store copy` copies holds (products, triplets,
    /// registrations, device_history).
    pub fn table_counts(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        crate::sql::copy::counts(&mut *self.reader())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stops the writer after the jobs already queued, checkpoints the WAL into the
    /// database file, and waits for both. Later writes fail with `Unavailable`.
    pub fn close(&self) -> Result<(), Error> {
        self.inner.writer.close()?;
        self.checkpoint()
    }

    /// Copies every committed WAL frame into the database file and truncates the WAL,
    /// waiting for readers to move on if it must. Useful after a large import, so that
    /// the background checkpointer does not spend the next minutes catching up.
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.reader()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| {
                Error::Config(format!(
                    "database {}: checkpoint failed: {e}",
                    self.inner.path.display()
                ))
            })
    }

    pub(crate) fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` once on the writer thread, in a transaction of its own (operator
    /// changes cannot be re-run like registrations), and waits (blocking) until it is
    /// committed. For operator operations; do not call from
    /// an async task.
    pub(crate) fn write_blocking<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.writer.submit(Box::new(OnceJob {
            work: Some(work),
            result: None,
            reply: tx,
        }))?;
        rx.recv()
            .map_err(|_| Error::Unavailable("the writer stopped".into()))?
    }

    /// Tells the listeners that `pid` changed (after a change made through this store).
    pub(crate) fn invalidate(&self, pid: &str) {
        self.inner.listeners.notify(pid);
    }
}

impl Error {
    /// The operator-facing form of a storage error.
    pub(crate) fn from_store(e: &StoreError) -> Self {
        let m = e.message().to_owned();
        match e.kind() {
            StoreErrorKind::Conflict => Self::Conflict(m),
            StoreErrorKind::NotFound => Self::NotFound(m),
            StoreErrorKind::Invalid => Self::Invalid(m),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

impl Store for SqliteStore {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        // A read of the read connection: quick, and reached only on a cache miss.
        std::future::ready(
            crate::Operator::load_product(self, pid)
                .map(|p| p.map(Arc::new))
                .map_err(StoreError::from),
        )
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send {
        // A read of the read connection, like a product's.
        std::future::ready(
            crate::sql::SqlBackend::read(self, |conn| {
                crate::sql::expected::read(conn, pid, unique)
            })
            .map_err(StoreError::from),
        )
    }

    fn on_product_change(&self, listener: ProductListener) {
        self.inner.listeners.add(listener);
    }

    fn record_into(&self, metrics: Arc<dynreg_registrar::metrics::Metrics>) {
        let _ = self.inner.writer.counters().metrics.set(metrics);
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self.inner.writer.submit(Box::new(TxJob {
            intent,
            work,
            result: None,
            reply: tx,
        }));
        async move {
            submitted.map_err(StoreError::from)?;
            rx.await
                .map_err(|_| StoreError::unavailable("the store's writer stopped"))?
        }
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(v),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
            Value::Bool(b) => ValueRef::Integer(i64::from(b)),
        }))
    }
}

crate::sql::impl_row!(rusqlite::Row<'_>, get);

/// The statements run from the connection's statement cache (parsing them anew for
/// every job showed in profiles).
impl Conn for Connection {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, Error> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(n as u64)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }

    fn insert_id(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<i64>, Error> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok((n == 1).then(|| self.last_insert_rowid()))
    }

    fn control(&mut self, sql: &str) -> Result<(), Error> {
        self.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    fn begin(&mut self) -> Result<(), Error> {
        // Takes the write lock at once: a batch never fails half-way on a lock.
        self.control("BEGIN IMMEDIATE")
    }

    fn in_transaction(&self) -> bool {
        !self.is_autocommit()
    }

    fn free_triplet(
        &mut self,
        pid: &str,
        read: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let mut found = false;
        self.query(
            "SELECT t.id, t.pid, t.uuid, t.secret_enc, t.mac, t.barcode, t.state FROM triplets t WHERE t.pid = ?1 AND t.state = 0 ORDER BY t.id LIMIT 1",
            &[Value::Text(pid)],
            &mut |r| {
                found = true;
                read(r)
            },
        )?;
        Ok(found)
    }

    fn reserve_triplet_ids(&mut self, n: usize) -> Result<Vec<i64>, Error> {
        // One writer: the ids after the highest are free until this transaction ends.
        let first = self.query_row("SELECT coalesce(max(id), 0) + 1 FROM triplets", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok((0..i64::try_from(n).unwrap_or(i64::MAX))
            .map(|i| first + i)
            .collect())
    }
}

impl SqlBackend for SqliteStore {
    fn location(&self) -> String {
        self.path().display().to_string()
    }

    fn close(&self) -> Result<(), Error> {
        SqliteStore::close(self)
    }

    fn key(&self) -> &MasterKey {
        &self.inner.key
    }

    fn read<T>(&self, read: impl FnOnce(&mut dyn Conn) -> Result<T, Error>) -> Result<T, Error> {
        read(&mut *self.reader())
    }

    fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        self.write_blocking(work)
    }

    fn schema_version(&self) -> Result<u64, Error> {
        let v: i64 = self
            .reader()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(crate::sql::u64_of(v))
    }

    fn invalidate(&self, pid: &str) {
        SqliteStore::invalidate(self, pid);
    }
}

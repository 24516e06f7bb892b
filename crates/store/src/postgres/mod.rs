//! The PostgreSQL store: several dynreg instances on one database.
//!
//! - **Registrations** run on writer threads ([`DEFAULT_WRITERS`] by default), each
//!   owning one connection and taking jobs from one shared queue. A writer runs the job
//!   that waits and every job already queued behind it in one transaction and commits
//!   once (group commit, `sql/batch.rs`): the database's fsync per commit is shared by
//!   the batch, and nothing is answered before its commit. The batch reads ahead and
//!   writes its rows set-based (`sql/deferred.rs`: BEGIN, one read, one write,
//!   COMMIT); what that does not cover runs the statements SQLite runs (`sql/`). A
//!   free pool triplet is taken with `FOR UPDATE
//!   SKIP LOCKED`, so that writers of several instances never wait for, nor take, the
//!   same triplet, and a device registered by another instance an instant earlier is
//!   found when the batch runs again (the insert of its registration says `ON CONFLICT
//!   DO NOTHING`).
//! - **Product and expected-device lookups** run on two reader threads.
//! - **Operator operations** run on the caller's thread over a connection of their own.
//! - **Product changes** made through this store reach its cache at once; changes by
//!   another instance are seen when the registrar's product cache expires its entry
//!   (2 s).
//! - **Outages**: a connection that breaks is opened again when next needed, at most
//!   every 250 ms per thread; meanwhile work fails with
//!   [`dynreg_registrar::StoreErrorKind::Unavailable`], which devices see as the retryable status.

mod bulk;
mod config;
mod conn;
mod error;
mod schema;
mod tls;

use config::Settings;
pub use config::{DEFAULT_WRITERS, PgConfig, redact};
use conn::PgConn;
use error::connection_lost;
pub use error::describe;
pub(crate) use error::{classify, kind_of};

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use dynreg_registrar::{ExpectedDevice, Intent, Product, ProductListener, Store, StoreError, Tx};

use crate::Error;
use crate::crypto::{KeySource, MasterKey};
use crate::sql::batch::{Batcher, Counters, Job, TxJob};
use crate::sql::{Conn, SqlBackend};

/// Work for a reader thread.
type ReadJob = Box<dyn FnOnce(&mut PgConn, &MasterKey) + Send>;

/// Counters of the writers (see [`crate::WriterStats`]).
struct Threads {
    writers: RwLock<Option<Sender<Box<dyn Job>>>>,
    readers: RwLock<Option<Sender<ReadJob>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    key: Arc<MasterKey>,
    settings: Arc<Settings>,
    admin: Mutex<PgConn>,
    threads: Threads,
    counters: Arc<Counters>,
    listeners: crate::sql::Listeners,
}

/// The PostgreSQL store. Cheap to clone (clones share the threads and connections).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.settings.display)
            .finish_non_exhaustive()
    }
}

/// The number of reader threads (product and expected-device lookups).
const READERS: usize = 2;

impl PgStore {
    /// Connects, applies the missing migrations (under the migration lock), checks the
    /// master key against the database (recording it in a new one), and starts the
    /// writer and reader threads.
    ///
    /// Blocking, like every operator operation of the store; it may be called from an
    /// async task all the same (it runs on a thread of its own, outside the runtime).
    pub fn open(config: &PgConfig) -> Result<Self, Error> {
        if config.key == KeySource::DataDir {
            return Err(Error::KeyNeeded);
        }
        std::thread::scope(|s| {
            s.spawn(|| Self::open_here(config))
                .join()
                .unwrap_or_else(|_| Err(Error::Unavailable("opening the store panicked".into())))
        })
    }

    fn open_here(config: &PgConfig) -> Result<Self, Error> {
        let settings = Arc::new(Settings::new(config)?);
        let cannot = |e: &postgres::Error| {
            Error::Config(format!(
                "cannot connect to PostgreSQL at {}: {}",
                settings.display,
                describe(e)
            ))
        };
        let client = settings.connect().map_err(|e| cannot(&e))?;
        let mut admin = PgConn::new(settings.clone(), Some(client));
        let key = Self::prepare(&mut admin, config, &settings.display)?;
        let key = Arc::new(key);

        let counters = Arc::new(Counters::default());
        let (writer_tx, writer_rx) = channel::<Box<dyn Job>>();
        let writer_rx = Arc::new(Mutex::new(writer_rx));
        let (reader_tx, reader_rx) = channel::<ReadJob>();
        let reader_rx = Arc::new(Mutex::new(reader_rx));
        let mut handles = Vec::new();
        let cursors: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        for i in 0..config.writers.max(1) {
            let mut session = settings
                .connect()
                .and_then(|c| PgConn::hot(settings.clone(), c))
                .map_err(|e| cannot(&e))?;
            session.cursors = cursors.clone();
            let (jobs, key, counters) = (writer_rx.clone(), key.clone(), counters.clone());
            let max_batch = config.max_batch.max(1);
            handles.push(spawn(&format!("dynreg-pg-writer-{i}"), move || {
                Batcher {
                    conn: &mut session,
                    key: &key,
                    max_batch,
                    counters: &counters,
                }
                .run(&*jobs);
            })?);
        }
        for i in 0..READERS {
            let mut session = settings
                .connect()
                .and_then(|c| PgConn::hot(settings.clone(), c))
                .map_err(|e| cannot(&e))?;
            let (jobs, key) = (reader_rx.clone(), key.clone());
            handles.push(spawn(&format!("dynreg-pg-reader-{i}"), move || {
                serve_reads(&jobs, &mut session, &key);
            })?);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                settings,
                admin: Mutex::new(admin),
                threads: Threads {
                    writers: RwLock::new(Some(writer_tx)),
                    readers: RwLock::new(Some(reader_tx)),
                    handles: Mutex::new(handles),
                },
                counters,
                listeners: crate::sql::Listeners::default(),
            }),
        })
    }

    /// Migrates and checks the key, in one transaction under the migration lock.
    fn prepare(admin: &mut PgConn, config: &PgConfig, display: &str) -> Result<MasterKey, Error> {
        let named = |e: Error| match e {
            Error::Postgres(e) => Error::Config(format!("database {display}: {}", describe(&e))),
            other => other,
        };
        admin.begin().map_err(named)?;
        let result = (|| {
            let migrated = schema::migrate(admin, config.create, display)?;
            let fresh = migrated.from == 0
                && !(admin as &mut dyn Conn)
                    .exists("SELECT 1 FROM meta WHERE key = 'key_check'", &[])?;
            let (key, _) = MasterKey::load(&config.key, Path::new("."), fresh && config.create)?;
            crate::sql::check_key(admin, &key)?;
            Ok(key)
        })();
        match result {
            Ok(key) => {
                admin.control("COMMIT").map_err(named)?;
                Ok(key)
            }
            Err(e) => {
                let _ = admin.control("ROLLBACK");
                Err(named(e))
            }
        }
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, PgConn> {
        self.inner
            .admin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the planner's statistics of dynreg's tables (`ANALYZE`): useful after a
    /// bulk load, before autovacuum gets to it.
    pub fn analyze(&self) -> Result<(), Error> {
        self.read(|conn| conn.control("ANALYZE products, triplets, registrations"))
    }

    /// Asks the server for a checkpoint now (needs a superuser or the `pg_checkpoint`
    /// role): after a bulk load, so that writing the load's WAL back does not fall in
    /// what is measured next (the benchmarks' setup; SQLite's
    /// [`crate::SqliteStore::checkpoint`]).
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.read(|conn| conn.control("CHECKPOINT"))
    }

    /// Copies every product, pool triplet, device and device history entry of `from`
    /// (a SQLite store opened with the same master key) into this store, in one
    /// transaction: sealed secrets as they are, ids kept. Refuses a store that holds
    /// anything; checks, before it commits, that each table holds as many rows as in
    /// `from`. Returns the rows copied per table. `progress(table, rows)` is called as
    /// rows go.
    pub fn copy_from(
        &self,
        from: &crate::SqliteStore,
        progress: &dyn Fn(&str, u64),
    ) -> Result<Vec<(&'static str, u64)>, Error> {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            let to: &mut dyn Conn = &mut *admin;
            to.begin()?;
            let result = (|| {
                // Nothing else may write meanwhile: the check and the copy are one.
                to.control("LOCK TABLE products, triplets, registrations, device_history IN EXCLUSIVE MODE")?;
                let present: Vec<String> = crate::sql::copy::counts(to)?
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(t, n)| format!("{n} {t}"))
                    .collect();
                if !present.is_empty() {
                    return Err(Error::Conflict(format!(
                        "{} is not empty ({}): store copy only fills an empty store",
                        self.inner.settings.display,
                        present.join(", ")
                    )));
                }
                let expected = SqlBackend::read(from, |src| {
                    let expected = crate::sql::copy::counts(src)?;
                    crate::sql::copy::copy(src, to, progress)?;
                    Ok(expected)
                })?;
                let copied = crate::sql::copy::counts(to)?;
                if copied != expected {
                    return Err(Error::Invalid(format!(
                        "the copy does not match its source (copied {copied:?}, source {expected:?}); nothing was written"
                    )));
                }
                // Later inserts take ids after the copied ones.
                to.control("SELECT setval(pg_get_serial_sequence('triplets', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM triplets), false)")?;
                to.control("SELECT setval(pg_get_serial_sequence('device_history', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM device_history), false)")?;
                Ok(copied)
            })();
            match result {
                Ok(copied) => {
                    to.control("COMMIT")?;
                    Ok(copied)
                }
                Err(e) => {
                    if to.in_transaction() {
                        let _ = to.control("ROLLBACK");
                    }
                    Err(e)
                }
            }
        })
    }

    /// The database, without its password.
    pub fn url(&self) -> &str {
        &self.inner.settings.display
    }

    /// How many write transactions the writers have committed and how many
    /// registrations they held.
    pub fn writer_stats(&self) -> crate::WriterStats {
        let c = &self.inner.counters;
        crate::WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            reruns: c.reruns.load(Ordering::Relaxed),
        }
    }

    /// Stops the threads after the work already queued and closes the connections.
    pub fn close(&self) -> Result<(), Error> {
        let t = &self.inner.threads;
        drop(
            t.writers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            t.readers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handles: Vec<_> = t
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Error::Unavailable("a store thread panicked".into()))?;
        }
        Ok(())
    }

    fn read_job<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConn, &MasterKey) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .inner
            .threads
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| {
                s.send(Box::new(move |session: &mut PgConn, key: &MasterKey| {
                    let _ = tx.send(work(session, key));
                }))
                .is_ok()
            })
            .unwrap_or(false);
        async move {
            if !sent {
                return Err(StoreError::unavailable("the store is closed"));
            }
            rx.await
                .map_err(|_| StoreError::unavailable("the store's reader stopped"))?
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.threads.writers.get_mut().map(Option::take));
        drop(self.threads.readers.get_mut().map(Option::take));
        if let Ok(handles) = self.threads.handles.get_mut() {
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| Error::Config(format!("cannot start thread {name}: {e}")))
}

/// Runs blocking database work: on a worker of a multi-threaded tokio runtime, through
/// `block_in_place` (the driver's blocking client cannot run on a thread that drives
/// async tasks); elsewhere, as it is.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn serve_reads(jobs: &Mutex<Receiver<ReadJob>>, session: &mut PgConn, key: &MasterKey) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(session, key),
            Err(_) => return,
        }
    }
}

impl Store for PgStore {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        let pid = pid.to_owned();
        self.read_job(move |session, key| {
            crate::sql::admin::read_product(session, key, &pid)
                .map(|p| p.map(Arc::new))
                .map_err(StoreError::from)
        })
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send {
        let (pid, unique) = (pid.to_owned(), unique.to_owned());
        self.read_job(move |session, _| {
            crate::sql::expected::read(session, &pid, &unique).map_err(StoreError::from)
        })
    }

    fn on_product_change(&self, listener: ProductListener) {
        self.inner.listeners.add(listener);
    }

    fn record_into(&self, metrics: Arc<dynreg_registrar::metrics::Metrics>) {
        let _ = self.inner.counters.metrics.set(metrics);
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
        let submitted = self
            .inner
            .threads
            .writers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| {
                s.send(Box::new(TxJob {
                    intent,
                    work,
                    result: None,
                    reply: tx,
                }))
                .is_ok()
            })
            .unwrap_or(false);
        async move {
            if !submitted {
                return Err(StoreError::unavailable("the store is closed"));
            }
            rx.await
                .map_err(|_| StoreError::unavailable("the store's writer stopped"))?
        }
    }
}

impl SqlBackend for PgStore {
    fn location(&self) -> String {
        self.inner.settings.display.clone()
    }

    fn close(&self) -> Result<(), Error> {
        PgStore::close(self)
    }

    fn key(&self) -> &MasterKey {
        &self.inner.key
    }

    fn read<T>(&self, read: impl FnOnce(&mut dyn Conn) -> Result<T, Error>) -> Result<T, Error> {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            read(&mut *admin)
        })
    }

    fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            let conn: &mut dyn Conn = &mut *admin;
            conn.begin()?;
            match work(conn, &self.inner.key) {
                Ok(v) => {
                    conn.control("COMMIT")?;
                    Ok(v)
                }
                Err(e) => {
                    if conn.in_transaction() {
                        let _ = conn.control("ROLLBACK");
                    }
                    Err(e)
                }
            }
        })
    }

    fn schema_version(&self) -> Result<u64, Error> {
        self.read(|conn| {
            conn.query_opt("SELECT version FROM dynreg_schema", &[], |r| r.int(0))
                .map(|v| crate::sql::u64_of(v.unwrap_or(0)))
        })
    }

    fn invalidate(&self, pid: &str) {
        self.inner.listeners.notify(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::split_tls_params;
    use conn::dollar_params;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://dynreg:s3cret@db.example:5432/dynreg?sslmode=require"),
            "postgres://dynreg:***@db.example:5432/dynreg?sslmode=require"
        );
        assert_eq!(redact("postgres://dynreg@db/x"), "postgres://dynreg@db/x");
        assert_eq!(
            redact("host=db user=dynreg password=s3cret dbname=x"),
            "host=db user=dynreg password=*** dbname=x"
        );
    }

    #[test]
    fn verify_modes_and_root_certs_are_read_by_dynreg() {
        let (url, w) = split_tls_params(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3",
        );
        assert_eq!(url, "postgres://u@db/x?sslmode=require&connect_timeout=3");
        assert!(w.verify);
        assert_eq!(w.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (url, w) = split_tls_params("host=db sslmode=require user=u");
        assert_eq!(url, "host=db sslmode=require user=u");
        assert!(!w.verify);
        let (url, _) = split_tls_params("postgres://u@db/x?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://u@db/x");
    }

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }
}

//! The group-commit writer: one thread that owns the write connection.
//!
//! It blocks for the first job, opens a transaction, runs that job and every job that
//! is already waiting (up to the batch limit), each in its own savepoint so that a job
//! that fails is rolled back alone, commits once (one WAL fsync with
//! `synchronous = FULL`), and then calls every job's completion with the commit's
//! result. A job's caller therefore learns of success only once the job is durable.
//! While one batch is being synced, the next one queues up, so the batch size follows
//! the load by itself: no timer, no added latency when idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use dynreg_registrar::StoreError;
use rusqlite::Connection;

use crate::Error;
use crate::crypto::MasterKey;

/// Told the commit's failure (`Some`) or success (`None`).
pub(crate) type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// A unit of work: returns whether it succeeded (else its savepoint is rolled back) and
/// what to call once the batch is committed. It gets `None` when no transaction could
/// be opened: it must then not touch the database, only hand back its completion.
pub(crate) type Job =
    Box<dyn FnOnce(Option<(&Connection, &MasterKey)>) -> (bool, Completion) + Send>;

pub(crate) struct Writer {
    queue: RwLock<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Counters>,
    checkpointer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// What the writer has done so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions committed (or attempted).
    pub(crate) batches: AtomicU64,
    /// Jobs run.
    pub(crate) jobs: AtomicU64,
}

impl Writer {
    /// Starts the writer on `conn` and a checkpointer on `checkpoint_conn`.
    ///
    /// SQLite's automatic checkpoint would run inside the writer's commits; it is turned
    /// off on the write connection and done by a second thread instead, so that the
    /// writer only ever appends to the WAL (a profile showed the inline checkpoint at 7%
    /// of the writer's time).
    pub(crate) fn start(
        conn: Connection,
        checkpoint_conn: Connection,
        key: Arc<MasterKey>,
        max_batch: usize,
    ) -> Result<Self, Error> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop, stopped) = channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("dynreg-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    // PASSIVE never blocks the writer; a busy database just waits for
                    // the next round.
                    let _ = checkpoint_conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = channel();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("dynreg-sqlite-writer".into())
            .spawn(move || run(&conn, &key, &rx, max_batch, &counters))
            .map_err(|e| Error::Config(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            queue: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
            checkpointer: Mutex::new(Some((stop, checkpointer))),
        })
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.stats
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), Error> {
        let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
        let sender = queue
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the store is closed".into()))?;
        sender
            .send(job)
            .map_err(|_| Error::Unavailable("the store's writer stopped".into()))
    }

    /// Lets the writer finish the queued jobs, then stops it.
    pub(crate) fn close(&self) -> Result<(), Error> {
        drop(
            self.queue
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            h.join()
                .map_err(|_| Error::Unavailable("the writer thread panicked".into()))?;
        }
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, h)) = checkpointer {
            drop(stop);
            h.join()
                .map_err(|_| Error::Unavailable("the checkpoint thread panicked".into()))?;
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn sql_error(e: &rusqlite::Error) -> StoreError {
    super::classify(e)
}

/// Runs one job in its own savepoint; a failed job is rolled back alone.
fn run_job(
    conn: &Connection,
    key: &MasterKey,
    job: Job,
    done: &mut Vec<Completion>,
) -> Result<(), rusqlite::Error> {
    exec(conn, "SAVEPOINT job")?;
    let (ok, completion) = job(Some((conn, key)));
    done.push(completion);
    if !ok {
        exec(conn, "ROLLBACK TO job")?;
    }
    exec(conn, "RELEASE job")
}

/// Runs a parameterless statement from the connection's statement cache (parsing
/// `SAVEPOINT` and friends anew for every job showed in profiles).
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn run(
    conn: &Connection,
    key: &MasterKey,
    rx: &Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
) {
    let mut done: Vec<Completion> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            // Could not even start (database locked by another process for longer than
            // the busy timeout): this job fails, the next batch tries again.
            let err = sql_error(&e);
            let (_, completion) = first(None);
            completion(Some(&err));
            continue;
        }
        let mut failed = run_job(conn, key, first, &mut done).err();
        while failed.is_none() && done.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => failed = run_job(conn, key, job, &mut done).err(),
                Err(_) => break,
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .jobs
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        let outcome = match failed {
            Some(e) => Err(e),
            None => exec(conn, "COMMIT"),
        };
        match outcome {
            Ok(()) => done.drain(..).for_each(|c| c(None)),
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                let err = sql_error(&e);
                done.drain(..).for_each(|c| c(Some(&err)));
            }
        }
    }
}

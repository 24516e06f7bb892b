//! The group-commit writer: one thread that owns the write connection.
//!
//! It blocks for the first job, opens a transaction, runs that job and every job that
//! is already waiting (up to the batch limit), commits once (one WAL fsync with
//! `synchronous = FULL`), and then tells every job the commit's result. A job's caller
//! therefore learns of success only once its job is durable. While one batch is being
//! synced, the next one queues up, so the batch size follows the load by itself: no
//! timer, no added latency when idle.
//!
//! Isolation between the jobs of a batch, without paying for it on the fast path:
//! registration jobs are *repeatable* (their work may run again after a rollback), so
//! they run one after another with no savepoint. If one of them fails, the whole
//! transaction is rolled back and the batch runs again, this time each job in its own
//! savepoint, so that the failing job is rolled back alone. (Savepoints on every job
//! cost a quarter of the throughput: each one journals every page it touches.) Jobs
//! that cannot run twice (operator changes) run alone in their own transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use dynreg_registrar::StoreError;
use rusqlite::Connection;

use crate::Error;
use crate::crypto::MasterKey;

/// A unit of work for the writer.
pub(crate) trait Job: Send {
    /// Runs the work in the current transaction; false when it failed (its writes must
    /// then be rolled back).
    fn run(&mut self, conn: &Connection, key: &MasterKey) -> bool;
    /// Whether `run` may be called again after its writes were rolled back.
    fn repeatable(&self) -> bool;
    /// Reports the outcome: `None` once the transaction holding the job committed,
    /// `Some(error)` when it could not.
    fn complete(self: Box<Self>, commit: Option<&StoreError>);
}

pub(crate) struct Writer {
    queue: RwLock<Option<Sender<Box<dyn Job>>>>,
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
    /// Batches that had to run again with savepoints because a job failed.
    pub(crate) reruns: AtomicU64,
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
            .spawn(move || {
                Batcher {
                    conn: &conn,
                    key: &key,
                    max_batch,
                    counters: &counters,
                }
                .run(&rx);
            })
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

    pub(crate) fn submit(&self, job: Box<dyn Job>) -> Result<(), Error> {
        let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
        let sender = queue
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the store is closed".into()))?;
        sender
            .send(job)
            .map_err(|_| Error::Unavailable("the store's writer stopped".into()))
    }

    /// Lets the writer finish the queued jobs, then stops it and the checkpointer.
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

/// Runs a parameterless statement from the connection's statement cache (parsing
/// `SAVEPOINT` and friends anew for every job showed in profiles).
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

struct Batcher<'a> {
    conn: &'a Connection,
    key: &'a MasterKey,
    max_batch: usize,
    counters: &'a Counters,
}

impl Batcher<'_> {
    fn run(&self, rx: &Receiver<Box<dyn Job>>) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        let mut next: Option<Box<dyn Job>> = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            if !first.repeatable() {
                self.alone(first);
                continue;
            }
            if let Err(e) = exec(self.conn, "BEGIN IMMEDIATE") {
                // Could not even start (database locked by another process for longer
                // than the busy timeout): this job fails, the next batch tries again.
                first.complete(Some(&super::classify(e)));
                continue;
            }
            batch.push(first);
            let mut ok = batch[0].run(self.conn, self.key);
            // Take what is already waiting; stop early at the first failure.
            while ok && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) if job.repeatable() => {
                        batch.push(job);
                        ok = batch.last_mut().is_some_and(|j| j.run(self.conn, self.key));
                    }
                    Ok(job) => {
                        next = Some(job);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let outcome = if ok {
                exec(self.conn, "COMMIT")
            } else {
                // A job failed: undo everything and run the batch again, each job
                // isolated by its own savepoint.
                self.counters.reruns.fetch_add(1, Ordering::Relaxed);
                let _ = exec(self.conn, "ROLLBACK");
                self.isolated(&mut batch)
            };
            self.finish(&mut batch, outcome);
        }
    }

    /// Runs every job of `batch` again in one transaction, each in its own savepoint.
    fn isolated(&self, batch: &mut [Box<dyn Job>]) -> Result<(), rusqlite::Error> {
        exec(self.conn, "BEGIN IMMEDIATE")?;
        for job in batch.iter_mut() {
            exec(self.conn, "SAVEPOINT job")?;
            if !job.run(self.conn, self.key) {
                exec(self.conn, "ROLLBACK TO job")?;
            }
            exec(self.conn, "RELEASE job")?;
        }
        exec(self.conn, "COMMIT")
    }

    /// Runs a job that cannot run twice in a transaction of its own.
    fn alone(&self, mut job: Box<dyn Job>) {
        let outcome = exec(self.conn, "BEGIN IMMEDIATE").and_then(|()| {
            if job.run(self.conn, self.key) {
                exec(self.conn, "COMMIT")
            } else {
                exec(self.conn, "ROLLBACK")
            }
        });
        let mut one = vec![job];
        self.finish(&mut one, outcome);
    }

    /// Counts the batch and tells its jobs how the transaction ended.
    fn finish(&self, batch: &mut Vec<Box<dyn Job>>, outcome: Result<(), rusqlite::Error>) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok(()) => batch.drain(..).for_each(|j| j.complete(None)),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = exec(self.conn, "ROLLBACK");
                }
                let err = super::classify(e);
                batch.drain(..).for_each(|j| j.complete(Some(&err)));
            }
        }
    }
}

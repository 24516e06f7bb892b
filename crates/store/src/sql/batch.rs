//! Group commit: a writer takes the first job that waits, every job already waiting
//! behind it (up to the batch limit), runs them in one transaction and commits once;
//! only then does it tell every job the commit's result. A job's caller therefore
//! learns of success only once its job is durable. While one batch commits, the next
//! queues up, so the batch size follows the load by itself: no timer, no added latency
//! when idle.
//!
//! Isolation between the jobs of a batch, without paying for it on the fast path:
//! registration jobs are *repeatable* (their work may run again after a rollback), so
//! they run one after another with no savepoint. If one of them fails, the whole
//! transaction is rolled back and the batch runs again, this time each job in its own
//! savepoint, so that the failing job is rolled back alone. (Savepoints on every job
//! cost SQLite a quarter of its throughput: each one journals every page it touches.)
//! Jobs that cannot run twice (operator changes) run alone in their own transaction.
//!
//! SQLite runs one writer; PostgreSQL runs several on one shared queue
//! ([`JobSource`]), each with its own connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, PoisonError, TryLockError};
use std::time::Instant;

use dynreg_registrar::{Intent, StoreError, Tx};

use super::Conn;
use super::deferred::SetBatch;
use super::tx::SqlTx;
use crate::Error;
use crate::crypto::MasterKey;

/// A unit of work for a writer.
pub(crate) trait Job: Send {
    /// Runs a repeatable job's work in the current transaction through `tx`; false
    /// when it failed (its writes must then be rolled back).
    fn run(&mut self, tx: &mut dyn Tx) -> bool;
    /// Runs a job that is not repeatable in its own transaction; false when it failed.
    fn run_alone(&mut self, conn: &mut dyn Conn, key: &MasterKey) -> bool;
    /// Whether the job may run again after its writes were rolled back (then it runs
    /// through [`Job::run`], batched with others).
    fn repeatable(&self) -> bool;
    /// What a registration job is about, to read ahead for its batch.
    fn intent(&self) -> Option<&Intent> {
        None
    }
    /// After a failed `run`: whether the failure was a conflict with a concurrent
    /// writer, which running the job again resolves (another instance registered the
    /// same device an instant earlier: the job finds that registration the next time).
    fn conflicted(&self) -> bool {
        false
    }
    /// Reports the outcome: `None` once the transaction holding the job committed,
    /// `Some(error)` when it could not.
    fn complete(self: Box<Self>, commit: Option<&StoreError>);
}

/// Where a writer takes its jobs from.
pub(crate) trait JobSource {
    /// The next job, waiting for one; `None` once the queue is closed and empty.
    fn next(&self) -> Option<Box<dyn Job>>;
    /// A job that is already waiting, if any.
    fn waiting(&self) -> Option<Box<dyn Job>>;
}

/// One writer's own queue.
impl JobSource for Receiver<Box<dyn Job>> {
    fn next(&self) -> Option<Box<dyn Job>> {
        self.recv().ok()
    }
    fn waiting(&self) -> Option<Box<dyn Job>> {
        self.try_recv().ok()
    }
}

/// A queue shared by several writers: one waits for the next job at a time.
impl JobSource for Mutex<Receiver<Box<dyn Job>>> {
    fn next(&self) -> Option<Box<dyn Job>> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv()
            .ok()
    }
    fn waiting(&self) -> Option<Box<dyn Job>> {
        // Never wait here: a writer in the middle of a batch must not block on the
        // lock that an idle writer holds while it waits for work (the queue is empty
        // then anyway).
        let queue = match self.try_lock() {
            Ok(q) => q,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        queue.try_recv().ok()
    }
}

/// Orders jobs by the device they register (pid, unique; jobs without one first, in
/// their order), so that instances running overlapping batches on one database take
/// their row locks in one order and wait for each other instead of deadlocking (which
/// PostgreSQL breaks only after `deadlock_timeout`, failing one side's jobs).
fn in_lock_order(jobs: &mut [Box<dyn Job>]) {
    fn device(j: &dyn Job) -> Option<(&str, &str)> {
        j.intent().map(|i| (i.key_pid.as_str(), i.unique.as_str()))
    }
    jobs.sort_by(|a, b| device(a.as_ref()).cmp(&device(b.as_ref())));
}

/// How many times a job that conflicts with concurrent writers is run in a batch's
/// second pass.
const CONFLICT_ATTEMPTS: u32 = 6;

/// The wait before a job's second attempt in the second pass; it doubles with each
/// further attempt (2, 4, 8, 16, then 32 ms after the first: 62 ms at most per job).
const CONFLICT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);

/// What the writers have done so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions committed (or attempted).
    pub(crate) batches: AtomicU64,
    /// Jobs run.
    pub(crate) jobs: AtomicU64,
    /// Batches that had to run again with savepoints because a job failed.
    pub(crate) reruns: AtomicU64,
    /// Where each batch's size and duration are recorded: the first registrar's
    /// metrics ([`dynreg_registrar::Store::record_into`]).
    pub(crate) metrics: std::sync::OnceLock<std::sync::Arc<dynreg_registrar::metrics::Metrics>>,
}

/// Runs batches from a job source on one connection.
pub(crate) struct Batcher<'a> {
    pub(crate) conn: &'a mut dyn Conn,
    pub(crate) key: &'a MasterKey,
    pub(crate) max_batch: usize,
    pub(crate) counters: &'a Counters,
}

impl Batcher<'_> {
    /// Serves `jobs` until the source closes.
    pub(crate) fn run(&mut self, jobs: &dyn JobSource) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        let mut next: Option<Box<dyn Job>> = None;
        // Set-based reads and writes where the connection offers them (see
        // [`super::deferred`]).
        let mut deferred = self.conn.bulk().is_some().then(SetBatch::default);
        loop {
            let Some(first) = next.take().or_else(|| jobs.next()) else {
                return;
            };
            if !first.repeatable() {
                self.alone(first);
                continue;
            }
            let started = Instant::now();
            if let Err(e) = self.conn.begin() {
                // Could not even start (database locked or unreachable): this job
                // fails, the next batch tries again.
                first.complete(Some(&StoreError::from(e)));
                continue;
            }
            batch.push(first);
            let mut ran = 0;
            let mut ok = true;
            // Run what is waiting, then what arrived meanwhile, until the batch is
            // full or nothing waits; stop early at the first failure.
            while ok && ran < batch.len() {
                while next.is_none() && batch.len() < self.max_batch {
                    match jobs.waiting() {
                        Some(job) if job.repeatable() => batch.push(job),
                        Some(job) => next = Some(job),
                        None => break,
                    }
                }
                // Only stores with concurrent writers (the set-based path is
                // PostgreSQL's) need one lock order; SQLite's one writer skips the sort.
                if deferred.is_some() {
                    in_lock_order(&mut batch[ran..]);
                }
                ok = self.run_jobs(&mut batch[ran..], deferred.as_mut());
                ran = batch.len();
            }
            if let Some(d) = deferred.as_mut() {
                if ok {
                    ok = d.flush(self.conn).is_ok();
                }
                d.clear(self.conn);
            }
            let outcome = if ok {
                self.conn.control("COMMIT")
            } else {
                // A job failed: undo everything and run the batch again, each job
                // isolated by its own savepoint.
                self.counters.reruns.fetch_add(1, Ordering::Relaxed);
                let _ = self.conn.control("ROLLBACK");
                self.isolated(&mut batch, deferred.is_some())
            };
            if let Some(d) = deferred.as_mut() {
                d.end_batch(ok && outcome.is_ok());
            }
            if let Some(m) = self.counters.metrics.get() {
                m.batch(batch.len(), started.elapsed());
            }
            self.finish(&mut batch, outcome);
        }
    }

    /// Runs jobs one after another in the open transaction, after reading ahead what
    /// they need where the connection can; false at the first that fails.
    fn run_jobs(&mut self, jobs: &mut [Box<dyn Job>], deferred: Option<&mut SetBatch>) -> bool {
        let Some(d) = deferred else {
            return jobs
                .iter_mut()
                .all(|j| j.run(&mut SqlTx::new(self.conn, self.key)));
        };
        let intents: Vec<&Intent> = jobs.iter().filter_map(|j| j.intent()).collect();
        if d.prepare(self.conn, self.key, &intents).is_err() {
            return false;
        }
        jobs.iter_mut()
            .all(|j| j.run(&mut d.tx(self.conn, self.key)))
    }

    /// Runs every job of `batch` again in one transaction, each in its own savepoint.
    /// A job that conflicts with a concurrent writer runs again (a few times at most).
    /// `concurrent`: other writers may hold the same rows (run the jobs in lock order).
    fn isolated(&mut self, batch: &mut [Box<dyn Job>], concurrent: bool) -> Result<(), Error> {
        if concurrent {
            in_lock_order(batch);
        }
        self.conn.begin()?;
        for job in batch.iter_mut() {
            for attempt in 0..CONFLICT_ATTEMPTS {
                if attempt > 0 {
                    // Give the concurrent writer time to commit or roll back.
                    std::thread::sleep(CONFLICT_BACKOFF * (1 << attempt));
                }
                self.conn.control("SAVEPOINT job")?;
                let ok = job.run(&mut SqlTx::new(self.conn, self.key));
                if !ok {
                    self.conn.control("ROLLBACK TO job")?;
                }
                self.conn.control("RELEASE job")?;
                if ok || !job.conflicted() {
                    break;
                }
            }
        }
        self.conn.control("COMMIT")
    }

    /// Runs a job that cannot run twice in a transaction of its own.
    fn alone(&mut self, mut job: Box<dyn Job>) {
        let outcome = self.conn.begin().and_then(|()| {
            if job.run_alone(self.conn, self.key) {
                self.conn.control("COMMIT")
            } else {
                self.conn.control("ROLLBACK")
            }
        });
        let mut one = vec![job];
        self.finish(&mut one, outcome);
    }

    /// Counts the batch and tells its jobs how the transaction ended.
    fn finish(&mut self, batch: &mut Vec<Box<dyn Job>>, outcome: Result<(), Error>) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .jobs
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok(()) => batch.drain(..).for_each(|j| j.complete(None)),
            Err(e) => {
                if self.conn.in_transaction() {
                    let _ = self.conn.control("ROLLBACK");
                }
                let err = StoreError::from(e);
                batch.drain(..).for_each(|j| j.complete(Some(&err)));
            }
        }
    }
}

/// A registration transaction: repeatable, answered through a oneshot channel.
pub(crate) struct TxJob<F, T> {
    pub(crate) intent: Option<Intent>,
    pub(crate) work: F,
    pub(crate) result: Option<Result<T, StoreError>>,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for TxJob<F, T>
where
    F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    fn run(&mut self, tx: &mut dyn Tx) -> bool {
        let r = (self.work)(tx);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn run_alone(&mut self, conn: &mut dyn Conn, key: &MasterKey) -> bool {
        self.run(&mut SqlTx::new(conn, key))
    }

    fn repeatable(&self) -> bool {
        true
    }

    fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref()
    }

    fn conflicted(&self) -> bool {
        matches!(&self.result, Some(Err(e)) if e.kind() == dynreg_registrar::StoreErrorKind::Conflict)
    }

    fn complete(self: Box<Self>, commit: Option<&StoreError>) {
        let out = match (commit, self.result) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::unavailable("the job did not run")),
        };
        let _ = self.reply.send(out);
    }
}

/// An operator change: runs once, alone in its transaction, answered to a blocked
/// thread.
pub(crate) struct OnceJob<F, T> {
    pub(crate) work: Option<F>,
    pub(crate) result: Option<Result<T, Error>>,
    pub(crate) reply: std::sync::mpsc::SyncSender<Result<T, Error>>,
}

impl<F, T> Job for OnceJob<F, T>
where
    F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    fn run(&mut self, _tx: &mut dyn Tx) -> bool {
        self.result = Some(Err(Error::Unavailable(
            "an operator change cannot run in a batch".into(),
        )));
        false
    }

    fn run_alone(&mut self, conn: &mut dyn Conn, key: &MasterKey) -> bool {
        let r = match self.work.take() {
            Some(work) => work(conn, key),
            None => Err(Error::Unavailable("the job ran twice".into())),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn repeatable(&self) -> bool {
        false
    }

    fn complete(self: Box<Self>, commit: Option<&StoreError>) {
        let out = match (commit, self.result) {
            (Some(e), _) => Err(Error::from_store(e)),
            (None, Some(r)) => r,
            (None, None) => Err(Error::Unavailable("the job did not run".into())),
        };
        let _ = self.reply.send(out);
    }
}

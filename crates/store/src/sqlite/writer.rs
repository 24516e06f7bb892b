//! The SQLite writer: one thread that owns the write connection and runs the group
//! commit of [`crate::sql::batch`] on it, and a checkpointer beside it.

use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::Error;
use crate::crypto::MasterKey;
use crate::sql::batch::{Batcher, Counters, Job};

pub(crate) struct Writer {
    queue: RwLock<Option<Sender<Box<dyn Job>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Counters>,
    checkpointer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

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
                let mut conn = conn;
                Batcher {
                    conn: &mut conn,
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

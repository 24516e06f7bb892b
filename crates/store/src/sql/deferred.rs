//! Set-based group commit, for a backend where every statement is a round trip to a
//! server (PostgreSQL): the registrations of a batch read what they need in one
//! statement, and their new rows are written in one statement when the batch commits,
//! instead of three or four statements per registration.
//!
//! The decisions stay in the registrar's transaction body, which runs unchanged against
//! [`SetBatchTx`]. That `Tx` answers from what was read ahead where it can and keeps
//! the registration path's writes until [`SetBatch::flush`]:
//! - [`Tx::registration`] is read ahead for the batch's devices ([`Intent`]s), and
//!   [`Tx::free_triplet`] takes from triplets claimed (locked) ahead for each pool;
//! - [`Tx::insert_triplet`], the binding of a pool triplet,
//!   [`Tx::insert_registration`] and the audit lines are kept, and written at the flush
//!   in one statement ([`Bulk::write`]: `ON CONFLICT DO NOTHING`, rows counted);
//! - every other operation (barcodes, re-registrations, counters, MAC allocation) runs
//!   at once, as in [`SqlTx`], after the kept writes are flushed when it could see them.
//!
//! A read-ahead answer is exactly what the statement would have returned at the start
//! of the batch. What could make it stale is handled: a device that this batch
//! registered is looked up again, and any immediate write to triplets or registrations
//! drops everything read ahead. A concurrent writer (another thread or instance) that
//! stores the same device or triplet first shows at the flush, as a row count short of
//! what was kept: a conflict, which sends the batch to its second pass, where each job
//! runs alone with immediate statements ([`super::batch`]).

use std::collections::{HashMap, HashSet, VecDeque};

use dynreg_registrar::{
    AuditEntry, Intent, NewTriplet, Registration, StoreError, Triplet, TripletId, TripletState, Tx,
};

use super::tx::{SealedRegistration, SealedTriplet, SqlTx, needs_binding, state_code};
use super::{Conn, Row, i64_of, seal_triplet_secret};
use crate::Error;
use crate::crypto::MasterKey;

/// A triplet row kept for the flush, its secret sealed.
pub(crate) struct TripletRow {
    pub(crate) id: i64,
    pub(crate) pid: String,
    pub(crate) uuid: String,
    pub(crate) secret_enc: Vec<u8>,
    pub(crate) mac: String,
    pub(crate) barcode: String,
    pub(crate) state: i64,
}

/// A registration row kept for the flush.
pub(crate) struct RegistrationRow {
    pub(crate) key_pid: String,
    pub(crate) unique: String,
    pub(crate) pid: String,
    pub(crate) triplet_id: i64,
    pub(crate) now: i64,
}

/// The rows a batch keeps until its flush.
#[derive(Default)]
pub(crate) struct Kept {
    /// Generated triplets to insert.
    pub(crate) triplets: Vec<TripletRow>,
    /// Free pool triplets to mark bound.
    pub(crate) bound: Vec<i64>,
    /// Registrations to insert.
    pub(crate) registrations: Vec<RegistrationRow>,
    /// Audit lines to append, in order.
    pub(crate) audit: Vec<AuditEntry>,
}

impl Kept {
    fn is_empty(&self) -> bool {
        self.triplets.is_empty()
            && self.bound.is_empty()
            && self.registrations.is_empty()
            && self.audit.is_empty()
    }

    fn clear(&mut self) {
        self.triplets.clear();
        self.bound.clear();
        self.registrations.clear();
        self.audit.clear();
    }
}

/// How many rows of each kind [`Bulk::write`] wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// Triplets inserted (one whose uuid or barcode is taken is skipped).
    pub(crate) triplets: u64,
    /// Triplets marked bound that were free.
    pub(crate) bound: u64,
    /// Registrations inserted (a device already registered is skipped).
    pub(crate) registrations: u64,
}

/// The set-based statements a backend offers for [`SetBatch`].
pub(crate) trait Bulk {
    /// The registrations of these devices (`(key_pid, unique)`), as
    /// [`super::tx::registration_select`] columns.
    fn registrations(
        &mut self,
        keys: &[(&str, &str)],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error>;
    /// Up to `n` free triplets of `pid`'s pool, locked for this transaction as
    /// [`Conn::free_triplet`] locks one. True when fewer than `n` were read and
    /// concurrent transactions hold free triplets of the pool.
    fn free_triplets(
        &mut self,
        pid: &str,
        n: usize,
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<bool, Error>;
    /// Says that triplets of `pid`'s pool claimed by [`Bulk::free_triplets`] from
    /// `first` on were not all used: the next claims look from there again.
    fn unclaimed(&mut self, pid: &str, first: TripletId);
    /// Writes the kept rows in one statement (one round trip): inserts the triplets,
    /// skipping any whose uuid or barcode is taken; marks the bound ones bound where
    /// they are still free; inserts the registrations, skipping devices already
    /// registered; appends the audit lines in order. Says how many of each it wrote.
    fn write(&mut self, rows: &Kept) -> Result<Written, Error>;
}

/// Triplet ids reserved at once when a batch needs some ([`Conn::reserve_triplet_ids`]),
/// at least. Ids left over stay with the writer for its next batches, so that most
/// batches need no round trip for them, but only once the batch that drew them has
/// committed ([`SetBatch::end_batch`]): a sequence's advance is made durable by the commit
/// of a transaction that drew from it, and a server that crashes before any such commit
/// hands the same values out again after its restart.
const RESERVE_IDS: usize = 64;

/// What a batch read ahead and the writes it keeps (one per writer, cleared between
/// batches, except the triplet ids drawn ahead: see [`RESERVE_IDS`]).
#[derive(Default)]
pub(crate) struct SetBatch {
    /// Registrations read ahead, by device; `None`: the device has none.
    registrations: HashMap<(String, String), Option<Registration>>,
    /// Free triplets claimed ahead, by pool.
    free: HashMap<String, VecDeque<Triplet>>,
    /// Pools that had fewer free triplets than were asked for.
    dry: HashSet<String>,
    /// Pools of which concurrent transactions held free triplets when fewer than were
    /// asked for could be claimed.
    held: HashSet<String>,
    /// Per pool, the first triplet claimed ahead that no job took.
    unused: HashMap<String, TripletId>,
    /// Devices this batch registered.
    written: HashSet<(String, String)>,
    /// Triplet ids reserved for generated triplets (kept from a committed batch to the
    /// next, see [`RESERVE_IDS`]).
    ids: VecDeque<i64>,
    /// Jobs of the batch that have not run yet (how many ids to reserve at once).
    to_run: usize,
    /// The writes kept for the flush.
    kept: Kept,
}

fn sql(e: Error) -> StoreError {
    StoreError::from(e)
}

/// The connection's set-based statements ([`SetBatch`] is made only for a connection
/// that has them).
fn bulk(conn: &mut dyn Conn) -> Result<&mut dyn Bulk, StoreError> {
    conn.bulk()
        .ok_or_else(|| StoreError::backend("set-based batches on a store without them"))
}

impl SetBatch {
    /// Reads ahead what the jobs about to run will ask for.
    pub(crate) fn prepare(
        &mut self,
        conn: &mut dyn Conn,
        key: &MasterKey,
        intents: &[&Intent],
    ) -> Result<(), StoreError> {
        self.to_run += intents.len();
        let bulk = bulk(conn)?;
        let mut keys: Vec<(&str, &str)> = intents
            .iter()
            .map(|i| (i.key_pid.as_str(), i.unique.as_str()))
            .filter(|k| !self.written.contains(&(k.0.to_owned(), k.1.to_owned())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if !keys.is_empty() {
            let mut found = Vec::new();
            bulk.registrations(&keys, &mut |r| {
                found.push(SealedRegistration::read(r)?);
                Ok(())
            })
            .map_err(sql)?;
            for (k, u) in &keys {
                self.registrations
                    .insert(((*k).to_owned(), (*u).to_owned()), None);
            }
            for reg in found {
                let reg = reg.open(key).map_err(sql)?;
                self.registrations
                    .insert((reg.key_pid.clone(), reg.unique.clone()), Some(reg));
            }
        }
        // Triplets for the devices that have none yet.
        let mut pools: HashMap<&str, usize> = HashMap::new();
        for i in intents {
            let Some(pid) = i.pool.as_deref() else {
                continue;
            };
            let device = (i.key_pid.clone(), i.unique.clone());
            if matches!(self.registrations.get(&device), Some(Some(_))) {
                continue;
            }
            *pools.entry(pid).or_default() += 1;
        }
        for (pid, wanted) in pools {
            let queue = self.free.entry(pid.to_owned()).or_default();
            let want = wanted.saturating_sub(queue.len());
            if want == 0 || self.dry.contains(pid) {
                continue;
            }
            let claimed = bulk.free_triplets(pid, want, &mut |r| {
                queue.push_back(SealedTriplet::read(r, 0)?.open(key)?);
                Ok(())
            });
            if claimed.map_err(sql)? {
                // Others hold the rest: a job that finds the queue empty conflicts, and
                // the batch runs again without the triplets claimed ahead.
                self.held.insert(pid.to_owned());
            } else if queue.len() < wanted {
                self.dry.insert(pid.to_owned());
            }
        }
        Ok(())
    }

    /// A [`Tx`] for the next job of the batch.
    pub(crate) fn tx<'a>(
        &'a mut self,
        conn: &'a mut dyn Conn,
        key: &'a MasterKey,
    ) -> SetBatchTx<'a> {
        self.to_run = self.to_run.saturating_sub(1);
        SetBatchTx { conn, key, d: self }
    }

    /// Writes the kept rows. A row that could not be written (taken by a concurrent
    /// writer) is a conflict.
    pub(crate) fn flush(&mut self, conn: &mut dyn Conn) -> Result<(), StoreError> {
        if self.kept.is_empty() {
            return Ok(());
        }
        let written = bulk(conn)?.write(&self.kept).map_err(sql)?;
        let count = |rows: usize| u64::try_from(rows).unwrap_or(u64::MAX);
        // A short count means a concurrent writer took the row first; the caller
        // rolls the transaction back, so nothing of this write stays.
        if written.triplets != count(self.kept.triplets.len()) {
            return Err(StoreError::conflict("a generated uuid is taken"));
        }
        if written.bound != count(self.kept.bound.len()) {
            return Err(StoreError::conflict("a pool triplet is no longer free"));
        }
        if written.registrations != count(self.kept.registrations.len()) {
            return Err(StoreError::conflict("a device was registered concurrently"));
        }
        self.kept.clear();
        Ok(())
    }

    /// Forgets what was read ahead (a write made it possibly stale); the claimed
    /// triplets stay locked until the transaction ends, and are found again by a
    /// search if they are still free.
    fn forget(&mut self) {
        self.registrations.clear();
        for (pid, queue) in self.free.drain() {
            if let Some(first) = queue.iter().map(|t| t.id).min() {
                let unused = self.unused.entry(pid).or_insert(first);
                *unused = (*unused).min(first);
            }
        }
        self.dry.clear();
        self.held.clear();
    }

    /// After the batch's transaction ended: the triplet ids left over are kept for the
    /// next batches only if it committed (see [`RESERVE_IDS`]).
    pub(crate) fn end_batch(&mut self, committed: bool) {
        if !committed {
            self.ids.clear();
        }
    }

    /// Empties the state for the next batch. Triplets claimed ahead that no job took
    /// are handed back, so that the pool's next claims start with them again.
    pub(crate) fn clear(&mut self, conn: &mut dyn Conn) {
        self.forget();
        for (pid, first) in self.unused.drain() {
            if let Some(bulk) = conn.bulk() {
                bulk.unclaimed(&pid, first);
            }
        }
        self.written.clear();
        self.to_run = 0;
        self.kept.clear();
    }
}

/// The [`Tx`] of one job of a batch (see the module's docs).
pub(crate) struct SetBatchTx<'a> {
    conn: &'a mut dyn Conn,
    key: &'a MasterKey,
    d: &'a mut SetBatch,
}

impl SetBatchTx<'_> {
    /// The kept writes written, for an operation that reads or writes what they touch.
    fn flushed(&mut self) -> Result<SqlTx<'_>, StoreError> {
        self.d.flush(self.conn)?;
        Ok(SqlTx::new(self.conn, self.key))
    }

    /// As [`Self::flushed`], for an operation that writes triplets or registrations:
    /// what was read ahead is forgotten.
    fn writing(&mut self) -> Result<SqlTx<'_>, StoreError> {
        self.d.forget();
        self.flushed()
    }

    /// For an operation that touches only the products table: nothing kept can matter.
    fn immediate(&mut self) -> SqlTx<'_> {
        SqlTx::new(self.conn, self.key)
    }
}

impl Tx for SetBatchTx<'_> {
    fn registration(
        &mut self,
        key_pid: &str,
        unique: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let device = (key_pid.to_owned(), unique.to_owned());
        if !self.d.written.contains(&device) {
            if let Some(known) = self.d.registrations.get(&device) {
                return Ok(known.clone());
            }
        }
        self.flushed()?.registration(key_pid, unique)
    }

    fn free_triplet(&mut self, pid: &str) -> Result<Option<Triplet>, StoreError> {
        if let Some(t) = self.d.free.get_mut(pid).and_then(VecDeque::pop_front) {
            return Ok(Some(t));
        }
        if self.d.dry.contains(pid) {
            return Ok(None);
        }
        if self.d.held.contains(pid) {
            return Err(StoreError::conflict(format!(
                "the free triplets of pool {pid} are held by concurrent transactions"
            )));
        }
        self.flushed()?.free_triplet(pid)
    }

    fn next_mac(&mut self, pid: &str) -> Result<Option<String>, StoreError> {
        self.immediate().next_mac(pid)
    }

    fn insert_triplet(
        &mut self,
        pid: &str,
        t: &NewTriplet,
        state: TripletState,
    ) -> Result<Triplet, StoreError> {
        if !t.barcode.is_empty() {
            return self.writing()?.insert_triplet(pid, t, state);
        }
        if self.d.ids.is_empty() {
            let n = (self.d.to_run + 1).max(RESERVE_IDS);
            self.d.ids = self.conn.reserve_triplet_ids(n).map_err(sql)?.into();
        }
        let id = self
            .d
            .ids
            .pop_front()
            .ok_or_else(|| StoreError::backend("no triplet id reserved"))?;
        self.d.kept.triplets.push(TripletRow {
            id,
            pid: pid.to_owned(),
            uuid: t.uuid.clone(),
            secret_enc: seal_triplet_secret(self.key, t),
            mac: t.mac.clone(),
            barcode: String::new(),
            state: state_code(state),
        });
        Ok(t.stored(id, pid, state))
    }

    fn barcode_holder(
        &mut self,
        pid: &str,
        barcode: &str,
    ) -> Result<Option<(TripletId, TripletState)>, StoreError> {
        self.flushed()?.barcode_holder(pid, barcode)
    }

    fn set_barcode(&mut self, triplet: TripletId, barcode: &str) -> Result<(), StoreError> {
        self.writing()?.set_barcode(triplet, barcode)
    }

    fn set_mac(&mut self, triplet: TripletId, mac: &str) -> Result<(), StoreError> {
        self.writing()?.set_mac(triplet, mac)
    }

    fn insert_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        pid: &str,
        triplet: &Triplet,
        now: u64,
    ) -> Result<(), StoreError> {
        let device = (key_pid.to_owned(), unique.to_owned());
        if self.d.written.contains(&device) {
            return self
                .writing()?
                .insert_registration(key_pid, unique, pid, triplet, now);
        }
        if needs_binding(triplet)? {
            self.d.kept.bound.push(triplet.id);
        }
        self.d.kept.registrations.push(RegistrationRow {
            key_pid: key_pid.to_owned(),
            unique: unique.to_owned(),
            pid: pid.to_owned(),
            triplet_id: triplet.id,
            now: i64_of(now),
        });
        self.d.written.insert(device);
        Ok(())
    }

    fn touch_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.writing()?.touch_registration(key_pid, unique, now)
    }

    fn count_refused_reregistration(&mut self, key_pid: &str) -> Result<(), StoreError> {
        self.immediate().count_refused_reregistration(key_pid)
    }

    fn count_bound_device(&mut self, pid: &str) -> Result<(), StoreError> {
        self.immediate().count_bound_device(pid)
    }

    fn bound_devices(&mut self, pid: &str) -> Result<u64, StoreError> {
        self.immediate().bound_devices(pid)
    }

    fn record(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.d.kept.audit.push(entry.clone());
        Ok(())
    }
}

//! [`Tx`] over the writer's connection: the statements of one registration.
//!
//! Every statement is prepared once per connection (`prepare_cached`) and every lookup
//! is an index seek, so the cost per registration does not grow with the number of
//! devices stored.

use dynreg_registrar::{
    MacRange, NewTriplet, Registration, Secret, StoreError, Triplet, TripletId, TripletState, Tx,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{classify, i64_of, triplet_aad, u64_of};
use crate::crypto::MasterKey;

pub(crate) struct SqliteTx<'a> {
    conn: &'a Connection,
    key: &'a MasterKey,
}

impl<'a> SqliteTx<'a> {
    pub(crate) fn new(conn: &'a Connection, key: &'a MasterKey) -> Self {
        Self { conn, key }
    }
}

/// The columns [`read_triplet`] expects, in order, from table alias `t`.
pub(crate) const TRIPLET_COLUMNS: &str =
    "t.id, t.pid, t.uuid, t.secret_enc, t.mac, t.barcode, t.state";

pub(crate) fn state_from(code: i64) -> TripletState {
    match code {
        0 => TripletState::Free,
        1 => TripletState::Bound,
        _ => TripletState::Revoked,
    }
}

pub(crate) fn state_code(state: TripletState) -> i64 {
    match state {
        TripletState::Free => 0,
        TripletState::Bound => 1,
        TripletState::Revoked => 2,
    }
}

/// A triplet row as read, with its secret still sealed.
pub(crate) struct SealedTriplet {
    pub(crate) id: TripletId,
    pub(crate) pid: String,
    pub(crate) uuid: String,
    pub(crate) secret_enc: Vec<u8>,
    pub(crate) mac: String,
    pub(crate) barcode: String,
    pub(crate) state: TripletState,
}

impl SealedTriplet {
    /// Reads the [`TRIPLET_COLUMNS`] starting at column `at`.
    pub(crate) fn read(row: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(at)?,
            pid: row.get(at + 1)?,
            uuid: row.get(at + 2)?,
            secret_enc: row.get(at + 3)?,
            mac: row.get(at + 4)?,
            barcode: row.get::<_, Option<String>>(at + 5)?.unwrap_or_default(),
            state: state_from(row.get(at + 6)?),
        })
    }

    pub(crate) fn open(self, key: &MasterKey) -> Result<Triplet, crate::Error> {
        let secret = key.open_string(&triplet_aad(&self.uuid), &self.secret_enc)?;
        Ok(Triplet {
            id: self.id,
            pid: self.pid,
            uuid: self.uuid,
            secret: Secret::new(secret),
            mac: self.mac,
            barcode: self.barcode,
            state: self.state,
        })
    }
}

/// Reads a registration row joined with its triplet (see [`REGISTRATION_SELECT`]).
pub(crate) struct SealedRegistration {
    pub(crate) key_pid: String,
    pub(crate) unique: String,
    pub(crate) pid: String,
    pub(crate) registered_at: u64,
    pub(crate) last_seen_at: u64,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) triplet: SealedTriplet,
}

/// Selects registrations with their triplets, for [`SealedRegistration::read`].
pub(crate) const REGISTRATION_SELECT: &str = "SELECT r.key_pid, r.unique_id, r.pid, r.registered_at, r.last_seen_at, r.revoked_at, t.id, t.pid, t.uuid, t.secret_enc, t.mac, t.barcode, t.state FROM registrations r JOIN triplets t ON t.id = r.triplet_id";

impl SealedRegistration {
    pub(crate) fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            key_pid: row.get(0)?,
            unique: row.get(1)?,
            pid: row.get(2)?,
            registered_at: u64_of(row.get(3)?),
            last_seen_at: u64_of(row.get(4)?),
            revoked_at: row.get::<_, Option<i64>>(5)?.map(u64_of),
            triplet: SealedTriplet::read(row, 6)?,
        })
    }

    pub(crate) fn open(self, key: &MasterKey) -> Result<Registration, crate::Error> {
        Ok(Registration {
            key_pid: self.key_pid,
            unique: self.unique,
            pid: self.pid,
            triplet: self.triplet.open(key)?,
            registered_at: self.registered_at,
            last_seen_at: self.last_seen_at,
            revoked_at: self.revoked_at,
        })
    }
}

/// Inserts a triplet with its secret sealed; a duplicate uuid or barcode is a conflict.
pub(crate) fn insert_triplet(
    conn: &Connection,
    key: &MasterKey,
    pid: &str,
    t: &NewTriplet,
    state: TripletState,
) -> rusqlite::Result<TripletId> {
    let sealed = key.seal(&triplet_aad(&t.uuid), t.secret.expose().as_bytes());
    let mut stmt = conn.prepare_cached(
        "INSERT INTO triplets (pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6)",
    )?;
    stmt.execute(params![
        pid,
        t.uuid,
        sealed,
        t.mac,
        t.barcode,
        state_code(state)
    ])?;
    Ok(conn.last_insert_rowid())
}

fn sql(e: rusqlite::Error) -> StoreError {
    classify(e)
}

impl Tx for SqliteTx<'_> {
    fn registration(
        &mut self,
        key_pid: &str,
        unique: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{REGISTRATION_SELECT} WHERE r.key_pid = ?1 AND r.unique_id = ?2"
            ))
            .map_err(sql)?;
        let sealed = stmt
            .query_row(params![key_pid, unique], SealedRegistration::read)
            .optional()
            .map_err(sql)?;
        sealed
            .map(|s| s.open(self.key).map_err(StoreError::from))
            .transpose()
    }

    fn free_triplet(&mut self, pid: &str) -> Result<Option<Triplet>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {TRIPLET_COLUMNS} FROM triplets t WHERE t.pid = ?1 AND t.state = 0 ORDER BY t.id LIMIT 1"
            ))
            .map_err(sql)?;
        let sealed = stmt
            .query_row(params![pid], |r| SealedTriplet::read(r, 0))
            .optional()
            .map_err(sql)?;
        sealed
            .map(|s| s.open(self.key).map_err(StoreError::from))
            .transpose()
    }

    fn next_mac(&mut self, pid: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE products SET mac_next = mac_next + 1 WHERE pid = ?1 AND mac_next IS NOT NULL AND mac_next <= mac_end RETURNING mac_next - 1",
            )
            .map_err(sql)?;
        let mac: Option<i64> = stmt
            .query_row(params![pid], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        Ok(mac.map(|m| MacRange::format(u64::try_from(m).unwrap_or(0))))
    }

    fn insert_triplet(
        &mut self,
        pid: &str,
        t: &NewTriplet,
        state: TripletState,
    ) -> Result<Triplet, StoreError> {
        let id = insert_triplet(self.conn, self.key, pid, t, state).map_err(sql)?;
        Ok(Triplet {
            id,
            pid: pid.to_owned(),
            uuid: t.uuid.clone(),
            secret: t.secret.clone(),
            mac: t.mac.clone(),
            barcode: t.barcode.clone(),
            state,
        })
    }

    fn barcode_holder(
        &mut self,
        pid: &str,
        barcode: &str,
    ) -> Result<Option<(TripletId, TripletState)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM triplets WHERE pid = ?1 AND barcode = ?2")
            .map_err(sql)?;
        stmt.query_row(params![pid, barcode], |r| {
            Ok((r.get(0)?, state_from(r.get(1)?)))
        })
        .optional()
        .map_err(sql)
    }

    fn set_barcode(&mut self, triplet: TripletId, barcode: &str) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE triplets SET barcode = NULLIF(?2, '') WHERE id = ?1")
            .map_err(sql)?;
        stmt.execute(params![triplet, barcode]).map_err(sql)?;
        Ok(())
    }

    fn insert_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        pid: &str,
        triplet: &Triplet,
        now: u64,
    ) -> Result<(), StoreError> {
        // A pool triplet goes from free to bound here; one this transaction generated
        // is bound already (rewriting it would only churn the state indexes). A
        // revoked triplet is never bound again, and the UNIQUE triplet_id column
        // refuses a second holder whatever happens.
        match triplet.state {
            TripletState::Free => {
                let mut bind = self
                    .conn
                    .prepare_cached("UPDATE triplets SET state = 1 WHERE id = ?1 AND state = 0")
                    .map_err(sql)?;
                if bind.execute(params![triplet.id]).map_err(sql)? != 1 {
                    return Err(StoreError::conflict(format!(
                        "triplet {} is no longer free",
                        triplet.uuid
                    )));
                }
            }
            TripletState::Bound => {}
            TripletState::Revoked => {
                return Err(StoreError::conflict(format!(
                    "triplet {} is revoked",
                    triplet.uuid
                )));
            }
        }
        let triplet = triplet.id;
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO registrations (key_pid, unique_id, pid, triplet_id, registered_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .map_err(sql)?;
        stmt.execute(params![key_pid, unique, pid, triplet, i64_of(now)])
            .map_err(sql)?;
        Ok(())
    }

    fn touch_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE registrations SET last_seen_at = ?3 WHERE key_pid = ?1 AND unique_id = ?2",
            )
            .map_err(sql)?;
        stmt.execute(params![key_pid, unique, i64_of(now)])
            .map_err(sql)?;
        self.conn
            .prepare_cached(
                "UPDATE products SET reregistrations = reregistrations + 1 WHERE pid = ?1",
            )
            .map_err(sql)?
            .execute([key_pid])
            .map_err(sql)?;
        Ok(())
    }

    fn count_refused_reregistration(&mut self, key_pid: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE products SET reregistrations_refused = reregistrations_refused + 1 WHERE pid = ?1",
            )
            .map_err(sql)?
            .execute([key_pid])
            .map_err(sql)?;
        Ok(())
    }

    fn count_bound_device(&mut self, pid: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE products SET bound = bound + 1 WHERE pid = ?1")
            .map_err(sql)?
            .execute([pid])
            .map_err(sql)?;
        Ok(())
    }

    fn bound_devices(&mut self, pid: &str) -> Result<u64, StoreError> {
        // Kept for products with a quota only (schema migration 3).
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT bound FROM products WHERE pid = ?1")
            .map_err(sql)?
            .query_row([pid], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        Ok(u64_of(n.unwrap_or(0)))
    }
}

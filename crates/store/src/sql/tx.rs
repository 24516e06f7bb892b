//! [`Tx`] over a writer's connection: the statements of one registration.
//!
//! Every statement is prepared once per connection and every lookup is an index seek,
//! so the cost per registration does not grow with the number of devices stored.
//!
//! No statement of a registration raises a constraint error on a conflict it can
//! expect (a uuid or a device that another writer stored first): the inserts say
//! `ON CONFLICT DO NOTHING` and a missing row becomes a [`StoreErrorKind::Conflict`]
//! error. PostgreSQL aborts a whole transaction on any error, and the batch that holds
//! it would have to run again for one taken uuid.
//!
//! [`StoreErrorKind::Conflict`]: dynreg_registrar::StoreErrorKind::Conflict

use dynreg_registrar::{
    AuditEntry, MacRange, NewTriplet, Registration, Secret, StoreError, Triplet, TripletId,
    TripletState, Tx,
};

use super::{Conn, Row, i64_of, params, seal_triplet_secret, triplet_aad, u64_of};
use crate::Error;
use crate::crypto::MasterKey;

pub(crate) struct SqlTx<'a> {
    conn: &'a mut dyn Conn,
    key: &'a MasterKey,
}

impl<'a> SqlTx<'a> {
    pub(crate) fn new(conn: &'a mut dyn Conn, key: &'a MasterKey) -> Self {
        Self { conn, key }
    }
}

/// The columns [`SealedTriplet::read`] expects, in order, from table alias `t`.
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
    pub(crate) fn read(row: &dyn Row, at: usize) -> Result<Self, Error> {
        Ok(Self {
            id: row.int(at)?,
            pid: row.text(at + 1)?,
            uuid: row.text(at + 2)?,
            secret_enc: row.bytes(at + 3)?,
            mac: row.text(at + 4)?,
            barcode: row.opt_text(at + 5)?.unwrap_or_default(),
            state: state_from(row.int(at + 6)?),
        })
    }

    pub(crate) fn open(self, key: &MasterKey) -> Result<Triplet, Error> {
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

/// Reads a registration row joined with its triplet (see [`registration_select`]).
pub(crate) struct SealedRegistration {
    pub(crate) key_pid: String,
    pub(crate) unique: String,
    pub(crate) pid: String,
    pub(crate) registered_at: u64,
    pub(crate) last_seen_at: u64,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) triplet: SealedTriplet,
}

/// Selects registrations with their triplets, for [`SealedRegistration::read`]: a
/// literal, so that statements are built with `concat!` at compile time.
macro_rules! registration_select {
    () => {
        "SELECT r.key_pid, r.unique_id, r.pid, r.registered_at, r.last_seen_at, r.revoked_at, t.id, t.pid, t.uuid, t.secret_enc, t.mac, t.barcode, t.state FROM registrations r JOIN triplets t ON t.id = r.triplet_id"
    };
}
pub(crate) use registration_select;

impl SealedRegistration {
    pub(crate) fn read(row: &dyn Row) -> Result<Self, Error> {
        Ok(Self {
            key_pid: row.text(0)?,
            unique: row.text(1)?,
            pid: row.text(2)?,
            registered_at: u64_of(row.int(3)?),
            last_seen_at: u64_of(row.int(4)?),
            revoked_at: row.opt_int(5)?.map(u64_of),
            triplet: SealedTriplet::read(row, 6)?,
        })
    }

    pub(crate) fn open(self, key: &MasterKey) -> Result<Registration, Error> {
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

    /// Reads and opens a row of [`REGISTRATION_SELECT`].
    pub(crate) fn load(row: &dyn Row, key: &MasterKey) -> Result<Registration, Error> {
        Self::read(row)?.open(key)
    }
}

/// Whether registering a device with `triplet` binds it: a pool triplet goes from free
/// to bound; one the transaction generated is bound already (rewriting it would only
/// churn the state indexes). A revoked triplet is never bound again (a conflict), and
/// the UNIQUE triplet_id column refuses a second holder whatever happens.
pub(crate) fn needs_binding(triplet: &Triplet) -> Result<bool, StoreError> {
    match triplet.state {
        TripletState::Free => Ok(true),
        TripletState::Bound => Ok(false),
        TripletState::Revoked => Err(StoreError::conflict(format!(
            "triplet {} is revoked",
            triplet.uuid
        ))),
    }
}

/// Inserts a triplet with its secret sealed. `None` when its uuid, or its barcode in
/// its product, is taken (nothing is written then).
pub(crate) fn insert_triplet(
    conn: &mut dyn Conn,
    key: &MasterKey,
    pid: &str,
    t: &NewTriplet,
    state: TripletState,
) -> Result<Option<TripletId>, Error> {
    let sealed = seal_triplet_secret(key, t);
    conn.insert_id(
        "INSERT INTO triplets (pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6) ON CONFLICT DO NOTHING",
        params![pid, &t.uuid, &sealed, &t.mac, &t.barcode, state_code(state)],
    )
}

fn sql(e: Error) -> StoreError {
    StoreError::from(e)
}

impl Tx for SqlTx<'_> {
    fn registration(
        &mut self,
        key_pid: &str,
        unique: &str,
    ) -> Result<Option<Registration>, StoreError> {
        let key = self.key;
        self.conn
            .query_opt(
                concat!(
                    registration_select!(),
                    " WHERE r.key_pid = ?1 AND r.unique_id = ?2"
                ),
                params![key_pid, unique],
                |r| SealedRegistration::load(r, key),
            )
            .map_err(sql)
    }

    fn free_triplet(&mut self, pid: &str) -> Result<Option<Triplet>, StoreError> {
        let key = self.key;
        let mut found = None;
        self.conn
            .free_triplet(pid, &mut |r| {
                found = Some(SealedTriplet::read(r, 0)?.open(key)?);
                Ok(())
            })
            .map_err(sql)?;
        Ok(found)
    }

    fn next_mac(&mut self, pid: &str) -> Result<Option<String>, StoreError> {
        let mac = self
            .conn
            .query_opt(
                "UPDATE products SET mac_next = mac_next + 1 WHERE pid = ?1 AND mac_next IS NOT NULL AND mac_next <= mac_end RETURNING mac_next - 1",
                params![pid],
                |r| r.int(0),
            )
            .map_err(sql)?;
        Ok(mac.map(|m| MacRange::format(u64_of(m))))
    }

    fn insert_triplet(
        &mut self,
        pid: &str,
        t: &NewTriplet,
        state: TripletState,
    ) -> Result<Triplet, StoreError> {
        let id = insert_triplet(self.conn, self.key, pid, t, state)
            .map_err(sql)?
            .ok_or_else(|| {
                StoreError::conflict(format!(
                    "uuid `{}` or barcode `{}` is taken",
                    t.uuid, t.barcode
                ))
            })?;
        Ok(t.stored(id, pid, state))
    }

    fn barcode_holder(
        &mut self,
        pid: &str,
        barcode: &str,
    ) -> Result<Option<(TripletId, TripletState)>, StoreError> {
        self.conn
            .query_opt(
                "SELECT id, state FROM triplets WHERE pid = ?1 AND barcode = ?2",
                params![pid, barcode],
                |r| Ok((r.int(0)?, state_from(r.int(1)?))),
            )
            .map_err(sql)
    }

    fn set_mac(&mut self, triplet: TripletId, mac: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE triplets SET mac = ?2 WHERE id = ?1",
                params![triplet, mac],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn set_barcode(&mut self, triplet: TripletId, barcode: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE triplets SET barcode = NULLIF(?2, '') WHERE id = ?1",
                params![triplet, barcode],
            )
            .map_err(sql)?;
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
        if needs_binding(triplet)? {
            let bound = self
                .conn
                .execute(
                    "UPDATE triplets SET state = 1 WHERE id = ?1 AND state = 0",
                    params![triplet.id],
                )
                .map_err(sql)?;
            if bound != 1 {
                return Err(StoreError::conflict(format!(
                    "triplet {} is no longer free",
                    triplet.uuid
                )));
            }
        }
        // Another writer may have registered the same device an instant ago (several
        // instances on one database): nothing is written, and the conflict makes the
        // batch run again, when this device's lookup finds that registration.
        let inserted = self
            .conn
            .execute(
                "INSERT INTO registrations (key_pid, unique_id, pid, triplet_id, registered_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
                params![key_pid, unique, pid, triplet.id, i64_of(now)],
            )
            .map_err(sql)?;
        if inserted != 1 {
            return Err(StoreError::conflict(format!(
                "device `{unique}` of pid `{key_pid}` was registered concurrently"
            )));
        }
        Ok(())
    }

    fn touch_registration(
        &mut self,
        key_pid: &str,
        unique: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE registrations SET last_seen_at = ?3 WHERE key_pid = ?1 AND unique_id = ?2",
                params![key_pid, unique, i64_of(now)],
            )
            .map_err(sql)?;
        self.conn
            .execute(
                "UPDATE products SET reregistrations = reregistrations + 1 WHERE pid = ?1",
                params![key_pid],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn count_refused_reregistration(&mut self, key_pid: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE products SET reregistrations_refused = reregistrations_refused + 1 WHERE pid = ?1",
                params![key_pid],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn count_bound_device(&mut self, pid: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE products SET bound = bound + 1 WHERE pid = ?1",
                params![pid],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn bound_devices(&mut self, pid: &str) -> Result<u64, StoreError> {
        // Kept for products with a quota only (SQLite schema migration 3).
        let n = self
            .conn
            .query_opt(
                "SELECT bound FROM products WHERE pid = ?1",
                params![pid],
                |r| r.int(0),
            )
            .map_err(sql)?;
        Ok(u64_of(n.unwrap_or(0)))
    }

    fn record(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        insert_audit(self.conn, entry).map(drop).map_err(sql)
    }
}

/// Appends an audit line; returns its id.
pub(crate) fn insert_audit(conn: &mut dyn Conn, e: &AuditEntry) -> Result<i64, Error> {
    conn.insert_id(
        "INSERT INTO audit (at, actor, origin, action, pid, target, uuid, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            i64_of(e.at),
            &e.actor,
            &e.origin,
            &e.action,
            &e.pid,
            &e.target,
            &e.uuid,
            &e.detail
        ],
    )?
    .ok_or_else(|| Error::Unavailable("the audit line was not written".into()))
}

//! The set-based reads and writes of a batch ([`Bulk`], `sql/deferred.rs`) on
//! PostgreSQL.

use std::sync::PoisonError;

use dynreg_registrar::AuditEntry;
use postgres::types::ToSql;

use crate::Error;
use crate::sql::deferred::{Bulk, Kept, Written};
use crate::sql::tx::registration_select;
use crate::sql::{Row, i64_of, u64_of};

use super::*;

/// The set-based statements: arrays bound as parameters and unnested.
impl Bulk for PgConn {
    fn registrations(
        &mut self,
        keys: &[(&str, &str)],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let pids: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let uniques: Vec<&str> = keys.iter().map(|k| k.1).collect();
        self.query_arrays(
            concat!(
                registration_select!(),
                " WHERE (r.key_pid, r.unique_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
            ),
            &[&pids, &uniques],
            each,
        )
    }

    fn free_triplets(
        &mut self,
        pid: &str,
        n: usize,
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        self.claim_free(pid, n, each).map(|c| c.held)
    }

    fn unclaimed(&mut self, pid: &str, first: i64) {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cursors.get_mut(pid) {
            *c = (*c).min(first);
        }
    }

    fn write(&mut self, kept: &Kept) -> Result<Written, Error> {
        let triplets = &kept.triplets;
        let t_ids: Vec<i64> = triplets.iter().map(|r| r.id).collect();
        let t_pids: Vec<&str> = triplets.iter().map(|r| r.pid.as_str()).collect();
        let t_uuids: Vec<&str> = triplets.iter().map(|r| r.uuid.as_str()).collect();
        let t_secrets: Vec<&[u8]> = triplets.iter().map(|r| r.secret_enc.as_slice()).collect();
        let t_macs: Vec<&str> = triplets.iter().map(|r| r.mac.as_str()).collect();
        let t_barcodes: Vec<&str> = triplets.iter().map(|r| r.barcode.as_str()).collect();
        let t_states: Vec<i64> = triplets.iter().map(|r| r.state).collect();
        let regs = &kept.registrations;
        let r_pids: Vec<&str> = regs.iter().map(|r| r.key_pid.as_str()).collect();
        let r_uniques: Vec<&str> = regs.iter().map(|r| r.unique.as_str()).collect();
        let r_targets: Vec<&str> = regs.iter().map(|r| r.pid.as_str()).collect();
        let r_triplets: Vec<i64> = regs.iter().map(|r| r.triplet_id).collect();
        let r_times: Vec<i64> = regs.iter().map(|r| r.now).collect();
        let audit = &kept.audit;
        let column = |f: fn(&AuditEntry) -> &str| audit.iter().map(f).collect::<Vec<&str>>();
        let a_at: Vec<i64> = audit.iter().map(|r| i64_of(r.at)).collect();
        let (a_actor, a_origin, a_action) = (
            column(|r| &r.actor),
            column(|r| &r.origin),
            column(|r| &r.action),
        );
        let (a_pid, a_target, a_uuid, a_detail) = (
            column(|r| &r.pid),
            column(|r| &r.target),
            column(|r| &r.uuid),
            column(|r| &r.detail),
        );
        let stmt = self.statement(KEPT_WRITE)?;
        let row = self.client()?.query_one(
            &stmt,
            &[
                &t_ids,
                &t_pids,
                &t_uuids,
                &t_secrets,
                &t_macs,
                &t_barcodes,
                &t_states,
                &kept.bound,
                &r_pids,
                &r_uniques,
                &r_targets,
                &r_triplets,
                &r_times,
                &a_at,
                &a_actor,
                &a_origin,
                &a_action,
                &a_pid,
                &a_target,
                &a_uuid,
                &a_detail,
            ],
        );
        let row = self.check(row)?;
        let count = |i: usize| -> Result<u64, Error> { Ok(u64_of(row.int(i)?)) };
        Ok(Written {
            triplets: count(0)?,
            bound: count(1)?,
            registrations: count(2)?,
        })
    }
}

/// [`Bulk::write`]'s one statement. Its parts see one snapshot and touch different
/// rows (the triplets it binds are pool triplets stored before, never the ones it
/// inserts); the foreign keys and the audit trigger are checked at its end, when every
/// part has run. The audit lines are numbered by their order in the batch.
pub(super) const KEPT_WRITE: &str = "WITH t AS (
    INSERT INTO triplets (id, pid, uuid, secret_enc, mac, barcode, state)
    SELECT i, p, u, s, m, NULLIF(b, ''), st
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::bigint[]) AS x (i, p, u, s, m, b, st)
    ON CONFLICT DO NOTHING RETURNING 1
), b AS (
    UPDATE triplets SET state = 1 WHERE id = ANY($8::bigint[]) AND state = 0 RETURNING 1
), r AS (
    INSERT INTO registrations (key_pid, unique_id, pid, triplet_id, registered_at, last_seen_at)
    SELECT k, u, p, t, n, n
    FROM unnest($9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[]) AS x (k, u, p, t, n)
    ON CONFLICT DO NOTHING RETURNING 1
), a AS (
    INSERT INTO audit (at, actor, origin, action, pid, target, uuid, detail)
    SELECT at, actor, origin, action, pid, target, uuid, detail
    FROM unnest($14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
        WITH ORDINALITY AS x (at, actor, origin, action, pid, target, uuid, detail, n)
    ORDER BY n
)
SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM b), (SELECT count(*) FROM r)";

impl PgConn {
    /// Runs a query with array parameters and calls `each` with every row.
    pub(super) fn query_arrays(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let stmt = self.statement(sql)?;
        let rows = self.client()?.query(&stmt, params);
        for row in self.check(rows)? {
            each(&row)?;
        }
        Ok(())
    }
}

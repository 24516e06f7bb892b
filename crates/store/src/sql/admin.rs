//! The operator's operations in SQL, for every backend that implements
//! [`SqlBackend`]: products, pools, devices (what they take and answer, and their
//! validation, are backend-neutral: [`crate::admin`]).
//!
//! Writes run through [`SqlBackend::write`], one transaction each: all or nothing (a
//! pool generation or import is one transaction). Reads run through
//! [`SqlBackend::read`].

use dynreg_registrar::model::PreviousSecret;
use dynreg_registrar::model::is_valid_pid;
use dynreg_registrar::{
    AuditEntry, ExpectedDevice, MacRange, NewTriplet, Product, Registration, Secret, SourceMode,
    Triplet, TripletState, generate,
};

use super::tx::{
    SealedRegistration, SealedTriplet, TRIPLET_COLUMNS, insert_audit, insert_triplet,
    registration_select, state_code,
};
use super::{
    Conn, Row, SqlBackend, Value, i64_of, params, previous_aad, product_aad, seal_triplet_secret,
    u64_of,
};
use crate::Error;
use crate::admin::{
    Actor, AuditFilter, AuditRecord, Deleted, DeviceFilter, Expected, ExpectedFilter, HistoryEntry,
    MAX_POOL_BATCH, Operator, OutboxEvent, PoolStats, ProductUpdate, Progress, Scope, TokenInfo,
    TripletRef, Withdrawal, validate_import_batch, validate_name, validate_token_name,
    validate_ts_window,
};
use crate::crypto::MasterKey;

fn mode_from(s: &str) -> Result<SourceMode, Error> {
    s.parse().map_err(Error::from)
}

/// Reads a product with its secret opened.
pub(crate) fn read_product(
    conn: &mut dyn Conn,
    key: &MasterKey,
    pid: &str,
) -> Result<Option<Product>, Error> {
    conn.query_opt(
        "SELECT pid, name, secret_enc, enabled, mode, mac_start, mac_end, ts_window, created_at, rereg, quota, previous_secret_enc, previous_secret_until, signatures, admission FROM products WHERE pid = ?1",
        params![pid],
        |r| product_of(r, key),
    )
}

fn product_of(r: &dyn Row, key: &MasterKey) -> Result<Product, Error> {
    let pid = r.text(0)?;
    let secret = key.open_string(&product_aad(&pid), &r.bytes(2)?)?;
    let previous_secret = match (r.opt_bytes(11)?, r.opt_int(12)?) {
        (Some(enc), Some(until)) => Some(PreviousSecret {
            secret: Secret::new(key.open_string(&previous_aad(&pid), &enc)?),
            until: u64_of(until),
        }),
        _ => None,
    };
    Ok(Product {
        name: r.text(1)?,
        secret: Secret::new(secret),
        enabled: r.bool(3)?,
        mode: mode_from(&r.text(4)?)?,
        mac_range: match (r.opt_int(5)?, r.opt_int(6)?) {
            (Some(s), Some(e)) => Some(MacRange {
                start: u64_of(s),
                end: u64_of(e),
            }),
            _ => None,
        },
        ts_window: u64_of(r.int(7)?),
        created_at: u64_of(r.int(8)?),
        rereg: r.text(9)?.parse().map_err(Error::from)?,
        signatures: r.text(13)?.parse().map_err(Error::from)?,
        admission: r.text(14)?.parse().map_err(Error::from)?,
        quota: r.opt_int(10)?.map(u64_of),
        previous_secret,
        pid,
    })
}

/// The audit query's columns and conditions; its parameters are bound in
/// `Operator::audit`.
macro_rules! audit_select {
    () => {
        "SELECT id, at, actor, origin, action, pid, target, uuid, detail FROM audit WHERE (CAST(?1 AS TEXT) IS NULL OR pid = ?1) AND (CAST(?2 AS TEXT) IS NULL OR target = ?2) AND (CAST(?3 AS TEXT) IS NULL OR uuid = ?3) AND (CAST(?4 AS TEXT) IS NULL OR actor = ?4) AND (CAST(?5 AS TEXT) IS NULL OR action LIKE ?5) AND at >= ?6 AND id < ?7 AND id > ?10 AND (CAST(?9 AS BIGINT) = 0 OR action IN ('device.registered', 'device.reregistered'))"
    };
}
/// The audit query, newest first.
const AUDIT_SELECT: &str = concat!(audit_select!(), " ORDER BY id DESC LIMIT ?8");
/// The same, oldest first.
const AUDIT_SELECT_OLDEST_FIRST: &str = concat!(audit_select!(), " ORDER BY id LIMIT ?8");

/// Triplets per transaction of a pool generation.
const GENERATE_CHUNK: usize = 50_000;

fn token_of(r: &dyn Row) -> Result<TokenInfo, Error> {
    Ok(TokenInfo {
        id: u64_of(r.int(0)?),
        name: r.text(1)?,
        scope: r.text(2)?.parse()?,
        created_at: u64_of(r.int(3)?),
        created_by: r.text(4)?,
        revoked_at: r.opt_int(5)?.map(u64_of),
    })
}

pub(super) fn require_product(conn: &mut dyn Conn, pid: &str) -> Result<(), Error> {
    if conn.exists("SELECT 1 FROM products WHERE pid = ?1", params![pid])? {
        Ok(())
    } else {
        Err(Error::NotFound(format!("unknown pid `{pid}`")))
    }
}

fn pool_stats(conn: &mut dyn Conn, pid: &str) -> Result<PoolStats, Error> {
    let mut stats = PoolStats::default();
    conn.query(
        "SELECT state, withdrawn_at IS NOT NULL, count(*) FROM triplets WHERE pid = ?1 GROUP BY 1, 2",
        params![pid],
        &mut |r| {
            let n = u64_of(r.int(2)?);
            match (r.int(0)?, r.bool(1)?) {
                (0, _) => stats.free += n,
                (1, _) => stats.bound += n,
                (_, true) => stats.withdrawn += n,
                (_, false) => stats.revoked += n,
            }
            Ok(())
        },
    )?;
    stats.devices = u64_of(
        conn.query_opt(
            "SELECT count(*) FROM registrations WHERE pid = ?1",
            params![pid],
            |r| r.int(0),
        )?
        .unwrap_or(0),
    );
    let counters = conn.query_opt(
        "SELECT mac_next, mac_end, reregistrations, reregistrations_refused, low_water FROM products WHERE pid = ?1",
        params![pid],
        |r| Ok((r.opt_int(0)?, r.opt_int(1)?, r.int(2)?, r.int(3)?, r.opt_int(4)?)),
    )?;
    if let Some((next, end, served, refused, low_water)) = counters {
        stats.low_water = low_water.map(u64_of);
        if let (Some(next), Some(end)) = (next, end) {
            stats.mac_left = Some(u64_of((end - next + 1).max(0)));
        }
        stats.reregistrations = u64_of(served);
        stats.reregistrations_refused = u64_of(refused);
    }
    (stats.expected, stats.expected_waiting) = super::expected::counts(conn, pid)?;
    stats.low = stats.is_low();
    Ok(stats)
}

/// The refusal of `wanted` addresses from `pid`'s MAC range, saying how many are left.
fn mac_overflow(conn: &mut dyn Conn, pid: &str, wanted: u64) -> Result<Error, Error> {
    let (next, end) = conn
        .query_opt(
            "SELECT mac_next, mac_end FROM products WHERE pid = ?1",
            params![pid],
            |r| Ok((r.int(0)?, r.int(1)?)),
        )?
        .unwrap_or_default();
    Ok(Error::Invalid(format!(
        "MAC range overflow: {wanted} addresses needed, {} left in the range of `{pid}` (next {}, last {})",
        (end - next + 1).max(0),
        MacRange::format(u64_of(next)),
        MacRange::format(u64_of(end))
    )))
}

/// Assigns MAC addresses from `pid`'s range to `triplets` that have none, advancing the
/// range; refuses when the range is too small.
fn assign_macs(
    conn: &mut dyn Conn,
    pid: &str,
    triplets: &mut [(NewTriplet, Vec<u8>)],
) -> Result<(), Error> {
    // FOR UPDATE where the dialect has it would be tidier; the UPDATE below takes the
    // row's lock, and the range check is repeated there.
    let range = conn.query_opt(
        "SELECT mac_next, mac_end FROM products WHERE pid = ?1",
        params![pid],
        |r| Ok((r.opt_int(0)?, r.opt_int(1)?)),
    )?;
    let Some((Some(_), Some(_))) = range else {
        return Ok(());
    };
    let wanted = i64::try_from(triplets.len()).unwrap_or(i64::MAX);
    // Taking the addresses and checking that they fit is one statement, so that two
    // writers (two instances on one database) never get the same addresses.
    let taken = conn.query_opt(
        "UPDATE products SET mac_next = mac_next + ?2 WHERE pid = ?1 AND mac_end - mac_next + 1 >= ?2 RETURNING mac_next - ?2",
        params![pid, wanted],
        |r| r.int(0),
    )?;
    let Some(first) = taken else {
        return Err(mac_overflow(conn, pid, u64_of(wanted))?);
    };
    for (i, (t, _)) in triplets.iter_mut().enumerate() {
        t.mac = MacRange::format(u64_of(first) + i as u64);
    }
    Ok(())
}

fn history(
    conn: &mut dyn Conn,
    filter: &str,
    args: &[Value<'_>],
) -> Result<Vec<HistoryEntry>, Error> {
    conn.query_vec(
        &format!(
            "SELECT uuid, pid, key_pid, unique_id, registered_at, revoked_at, reset_at FROM device_history WHERE {filter} ORDER BY id"
        ),
        args,
        |r| {
            Ok(HistoryEntry {
                uuid: r.text(0)?,
                pid: r.text(1)?,
                key_pid: r.text(2)?,
                unique: r.text(3)?,
                registered_at: u64_of(r.int(4)?),
                revoked_at: r.opt_int(5)?.map(u64_of),
                reset_at: u64_of(r.int(6)?),
            })
        },
    )
}

fn taken_at(i: usize, t: &NewTriplet) -> Error {
    Error::Item {
        index: i,
        message: format!(
            "uuid `{}` or barcode `{}` appears twice (in the file or the store)",
            t.uuid, t.barcode
        ),
    }
}

impl<B: SqlBackend> Operator for B {
    fn location(&self) -> String {
        SqlBackend::location(self)
    }

    fn close(&self) -> Result<(), Error> {
        SqlBackend::close(self)
    }

    fn schema_version(&self) -> Result<u64, Error> {
        SqlBackend::schema_version(self)
    }

    fn load_product(&self, pid: &str) -> Result<Option<Product>, Error> {
        self.read(|conn| read_product(conn, self.key(), pid))
    }

    fn product_pids(&self) -> Result<Vec<String>, Error> {
        self.read(|conn| {
            conn.query_vec("SELECT pid FROM products ORDER BY pid", &[], |r| r.text(0))
        })
    }

    fn insert_product(&self, product: &Product) -> Result<(), Error> {
        if !is_valid_pid(&product.pid) {
            return Err(Error::Invalid(format!(
                "pid `{}` is not valid",
                product.pid
            )));
        }
        let p = product.clone();
        self.write(move |conn, key| {
            let sealed = key.seal(&product_aad(&p.pid), p.secret.expose().as_bytes());
            let (start, end) = match p.mac_range {
                Some(r) => (Some(i64_of(r.start)), Some(i64_of(r.end))),
                None => (None, None),
            };
            let (previous, until) = match &p.previous_secret {
                Some(prev) => (
                    Some(key.seal(&previous_aad(&p.pid), prev.secret.expose().as_bytes())),
                    Some(i64_of(prev.until)),
                ),
                None => (None, None),
            };
            let rereg = p.rereg.to_string();
            let n = conn.execute(
                "INSERT INTO products (pid, name, secret_enc, enabled, mode, mac_start, mac_end, mac_next, ts_window, created_at, rereg, quota, previous_secret_enc, previous_secret_until, signatures, admission) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) ON CONFLICT (pid) DO NOTHING",
                params![&p.pid, &p.name, &sealed, p.enabled, p.mode.name(), start, end, i64_of(p.ts_window), i64_of(p.created_at), &rereg, p.quota.map(i64_of), previous.as_ref(), until, p.signatures.name(), p.admission.name()],
            )?;
            if n == 0 {
                return Err(Error::Conflict(format!("a product with pid `{}` exists", p.pid)));
            }
            Ok(())
        })?;
        self.invalidate(&product.pid);
        Ok(())
    }

    fn update_product(&self, pid: &str, update: ProductUpdate) -> Result<(), Error> {
        let ProductUpdate {
            name,
            mode,
            mac_range,
            ts_window,
            rereg,
            signatures,
            admission,
            quota,
            low_water,
        } = update;
        let name = name.as_deref().map(validate_name).transpose()?;
        if let Some(w) = ts_window {
            validate_ts_window(w)?;
        }
        let p = pid.to_owned();
        self.write(move |conn, _| {
            require_product(conn, &p)?;
            if let Some(name) = &name {
                conn.execute("UPDATE products SET name = ?2 WHERE pid = ?1", params![&p, name])?;
            }
            if let Some(mode) = mode {
                conn.execute("UPDATE products SET mode = ?2 WHERE pid = ?1", params![&p, mode.name()])?;
            }
            if let Some(w) = ts_window {
                conn.execute("UPDATE products SET ts_window = ?2 WHERE pid = ?1", params![&p, i64_of(w)])?;
            }
            if let Some(range) = mac_range {
                let (old_start, old_next) = conn
                    .query_opt(
                        "SELECT mac_start, mac_next FROM products WHERE pid = ?1",
                        params![&p],
                        |r| Ok((r.opt_int(0)?, r.opt_int(1)?)),
                    )?
                    .unwrap_or_default();
                let (start, end, next) = match range {
                    None => (None, None, None),
                    Some(r) => {
                        let (start, end) = (i64_of(r.start), i64_of(r.end));
                        // Addresses old_start..old_next were handed out: skip those
                        // that lie in the new range.
                        let next = match (old_start, old_next) {
                            (Some(os), Some(on)) if on > start && os <= end => on.max(start),
                            _ => start,
                        };
                        (Some(start), Some(end), Some(next))
                    }
                };
                conn.execute(
                    "UPDATE products SET mac_start = ?2, mac_end = ?3, mac_next = ?4 WHERE pid = ?1",
                    params![&p, start, end, next],
                )?;
            }
            if let Some(rereg) = rereg {
                let rereg = rereg.to_string();
                conn.execute("UPDATE products SET rereg = ?2 WHERE pid = ?1", params![&p, &rereg])?;
            }
            if let Some(signatures) = signatures {
                conn.execute(
                    "UPDATE products SET signatures = ?2 WHERE pid = ?1",
                    params![&p, signatures.name()],
                )?;
            }
            if let Some(admission) = admission {
                conn.execute(
                    "UPDATE products SET admission = ?2 WHERE pid = ?1",
                    params![&p, admission.name()],
                )?;
            }
            if let Some(low_water) = low_water {
                conn.execute(
                    "UPDATE products SET low_water = ?2, low_fired = 0 WHERE pid = ?1",
                    params![&p, low_water.map(i64_of)],
                )?;
            }
            if let Some(quota) = quota {
                // The count is kept only while a quota is set: recount when one is set.
                conn.execute(
                    "UPDATE products SET quota = ?2, bound = (SELECT count(*) FROM registrations WHERE pid = ?1) WHERE pid = ?1",
                    params![&p, quota.map(i64_of)],
                )?;
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn delete_product(&self, pid: &str, force: bool) -> Result<Deleted, Error> {
        let p = pid.to_owned();
        let deleted = self.write(move |conn, _| {
            require_product(conn, &p)?;
            let devices = conn
                .query_opt(
                    "SELECT count(*) FROM registrations WHERE pid = ?1",
                    params![&p],
                    |r| r.int(0),
                )?
                .unwrap_or(0);
            if devices > 0 && !force {
                return Err(Error::Conflict(format!(
                    "product `{p}` has {devices} registered devices: revoke or move them, or delete with --force (which forgets them too)"
                )));
            }
            // A registration's pid is the product of its triplet: these are exactly the
            // devices holding the product's triplets. Devices that authenticate with
            // its pid but moved to another product (replacePid) hold that product's
            // triplets and stay with it.
            let devices = conn.execute("DELETE FROM registrations WHERE pid = ?1", params![&p])?;
            let triplets = conn.execute("DELETE FROM triplets WHERE pid = ?1", params![&p])?;
            conn.execute("DELETE FROM expected_devices WHERE pid = ?1", params![&p])?;
            conn.execute("DELETE FROM products WHERE pid = ?1", params![&p])?;
            Ok(Deleted { devices, triplets })
        })?;
        self.invalidate(pid);
        Ok(deleted)
    }

    fn set_enabled(&self, pid: &str, enabled: bool) -> Result<(), Error> {
        let p = pid.to_owned();
        self.write(move |conn, _| {
            let n = conn.execute(
                "UPDATE products SET enabled = ?2 WHERE pid = ?1",
                params![&p, enabled],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("unknown pid `{p}`")));
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn rotate_secret(&self, pid: &str, grace_secs: u64, now: u64) -> Result<Secret, Error> {
        let secret = generate::secret();
        let (p, s) = (pid.to_owned(), secret.clone());
        self.write(move |conn, key| {
            let old = read_product(conn, key, &p)?
                .ok_or_else(|| Error::NotFound(format!("unknown pid `{p}`")))?;
            let sealed = key.seal(&product_aad(&p), s.expose().as_bytes());
            let previous = key.seal(&previous_aad(&p), old.secret.expose().as_bytes());
            conn.execute(
                "UPDATE products SET secret_enc = ?2, previous_secret_enc = ?3, previous_secret_until = ?4 WHERE pid = ?1",
                params![&p, &sealed, &previous, i64_of(now.saturating_add(grace_secs))],
            )?;
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(secret)
    }

    fn retire_secret(&self, pid: &str, now: u64) -> Result<(), Error> {
        let p = pid.to_owned();
        self.write(move |conn, _| {
            require_product(conn, &p)?;
            let n = conn.execute(
                "UPDATE products SET previous_secret_until = ?2 WHERE pid = ?1 AND previous_secret_until > ?2",
                params![&p, i64_of(now)],
            )?;
            if n == 0 {
                return Err(Error::Conflict(format!(
                    "product `{p}` has no previous secret in a grace period (nothing to retire)"
                )));
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn pool_stats(&self, pid: &str) -> Result<PoolStats, Error> {
        self.read(|conn| {
            require_product(conn, pid)?;
            pool_stats(conn, pid)
        })
    }

    fn check_pools(&self, now: u64) -> Result<Vec<String>, Error> {
        self.write(move |conn, _| {
            let marked = conn.query_vec(
                "SELECT p.pid, p.low_water, p.low_fired, (SELECT count(*) FROM triplets t WHERE t.pid = p.pid AND t.state = 0) FROM products p WHERE p.low_water IS NOT NULL ORDER BY p.pid",
                &[],
                |r| Ok((r.text(0)?, u64_of(r.int(1)?), r.int(2)? != 0, u64_of(r.int(3)?))),
            )?;
            let mut fired = Vec::new();
            for (pid, low_water, was_fired, free) in marked {
                let low = crate::admin::below_low_water(free, Some(low_water));
                // Marked fired first, and only where it was not: instances checking at
                // once fire it once (the second waits for the first's row and finds it
                // marked).
                if low
                    && !was_fired
                    && conn.execute(
                        "UPDATE products SET low_fired = 1 WHERE pid = ?1 AND low_fired = 0",
                        params![&pid],
                    )? == 1
                {
                    let entry = AuditEntry {
                        at: now,
                        actor: "dynreg".into(),
                        action: "pool.low".into(),
                        pid: pid.clone(),
                        detail: serde_json::json!({"free": free, "low_water": low_water}).to_string(),
                        ..AuditEntry::default()
                    };
                    insert_audit(conn, &entry)?;
                    fired.push(pid);
                } else if !low && was_fired {
                    conn.execute("UPDATE products SET low_fired = 0 WHERE pid = ?1", params![&pid])?;
                }
            }
            Ok(fired)
        })
    }

    fn free_triplets(&self) -> Result<Vec<(String, u64)>, Error> {
        self.read(|conn| {
            conn.query_vec(
                "SELECT p.pid, (SELECT count(*) FROM triplets t WHERE t.pid = p.pid AND t.state = 0) FROM products p ORDER BY p.pid",
                &[],
                |r| Ok((r.text(0)?, u64_of(r.int(1)?))),
            )
        })
    }

    fn generate_pool(
        &self,
        pid: &str,
        count: u64,
        barcode_prefix: &str,
        now: u64,
        progress: Progress,
    ) -> Result<Vec<NewTriplet>, Error> {
        if count == 0 || count > MAX_POOL_BATCH {
            return Err(Error::Invalid(format!(
                "count {count} is out of range: use 1 to {MAX_POOL_BATCH}"
            )));
        }
        if barcode_prefix.len() > 32 || barcode_prefix.chars().any(|c| c.is_control() || c == ',') {
            return Err(Error::Invalid(
                "barcode prefix must be at most 32 printable characters without commas".into(),
            ));
        }
        self.read(|conn| require_product(conn, pid))?;
        let key = self.key();
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let t = generate::triplet(now, String::new(), String::new());
            let sealed = seal_triplet_secret(key, &t);
            items.push((t, sealed));
            if i % 4096 == 0 {
                progress(i as u64 / 2);
            }
        }
        // A range too small is refused before anything is written.
        let mac_left = self.read(|conn| pool_stats(conn, pid))?.mac_left;
        if mac_left.is_some_and(|left| left < count) {
            return Err(self.read(|conn| mac_overflow(conn, pid, count))?);
        }
        // Transactions of GENERATE_CHUNK triplets: the store's one writer serves the
        // registrations waiting between two, instead of after the whole pool.
        let half = count / 2;
        let mut out = Vec::with_capacity(n);
        let mut chunks = Vec::new();
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(GENERATE_CHUNK));
            chunks.push(std::mem::replace(&mut items, rest));
        }
        for mut chunk in chunks {
            let (owner, prefix, progress) =
                (pid.to_owned(), barcode_prefix.to_owned(), progress.clone());
            let done = out.len();
            let written = self.write(move |conn, _| {
                let pid = owner;
                require_product(conn, &pid)?;
                assign_macs(conn, &pid, &mut chunk)?;
                let ids = conn.reserve_triplet_ids(chunk.len())?;
                for (i, ((t, sealed), id)) in chunk.iter_mut().zip(ids).enumerate() {
                    t.barcode = format!("{prefix}{id:012}");
                    let inserted = conn.execute(
                        "INSERT INTO triplets (id, pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0) ON CONFLICT DO NOTHING",
                        params![id, &pid, &t.uuid, &*sealed, &t.mac, &t.barcode],
                    )?;
                    if inserted != 1 {
                        return Err(Error::Conflict(format!(
                            "barcode `{}` or uuid `{}` already exists in the store",
                            t.barcode, t.uuid
                        )));
                    }
                    if i % 4096 == 0 {
                        progress(half + (done + i) as u64 / 2);
                    }
                }
                Ok(chunk.into_iter().map(|(t, _)| t).collect::<Vec<_>>())
            });
            match written {
                Ok(triplets) => out.extend(triplets),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    let note = format!(
                        "; {} of the {count} triplets were committed before this: `dynreg pool export --pid {pid} --state free` writes their CSV",
                        out.len()
                    );
                    return Err(match e {
                        Error::Conflict(m) => Error::Conflict(m + &note),
                        Error::Invalid(m) => Error::Invalid(m + &note),
                        other => Error::Unavailable(format!("{other}{note}")),
                    });
                }
            }
        }
        Ok(out)
    }

    fn expect_devices(
        &self,
        pid: &str,
        devices: Vec<ExpectedDevice>,
        progress: Progress,
    ) -> Result<u64, Error> {
        super::expected::expect(self, pid, devices, &progress)
    }

    fn list_expected(&self, pid: &str, filter: &ExpectedFilter) -> Result<Vec<Expected>, Error> {
        self.read(|conn| super::expected::list(conn, pid, filter))
    }

    fn remove_expected(&self, pid: &str, uniques: &[String]) -> Result<u64, Error> {
        super::expected::remove(self, pid, uniques)
    }

    fn import_pool(
        &self,
        pid: &str,
        triplets: Vec<NewTriplet>,
        progress: Progress,
    ) -> Result<u64, Error> {
        let count = triplets.len() as u64;
        let mut triplets = triplets;
        validate_import_batch(&mut triplets)?;
        self.read(|conn| require_product(conn, pid))?;
        let pid = pid.to_owned();
        self.write(move |conn, key| {
            require_product(conn, &pid)?;
            let range = conn
                .query_opt(
                    "SELECT mac_start, mac_end, mac_next FROM products WHERE pid = ?1",
                    params![&pid],
                    |r| Ok((r.opt_int(0)?, r.opt_int(1)?, r.opt_int(2)?)),
                )?
                .unwrap_or_default();
            let range = match range {
                (Some(s), Some(e), next) => {
                    Some((MacRange { start: u64_of(s), end: u64_of(e) }, next))
                }
                _ => None,
            };
            // Imported MACs in the range at or past its next address would be handed
            // out again by generation: the range moves past the highest of them.
            let mut next_after: Option<u64> = None;
            let mut without_mac: Vec<(NewTriplet, Vec<u8>)> = Vec::new();
            let mut without_mac_at: Vec<usize> = Vec::new();
            for (i, t) in triplets.into_iter().enumerate() {
                if conn.exists("SELECT 1 FROM triplets WHERE uuid = ?1", params![&t.uuid])? {
                    return Err(Error::Item {
                        index: i,
                        message: format!("uuid `{}` already exists in the store", t.uuid),
                    });
                }
                if !t.barcode.is_empty()
                    && conn.exists(
                        "SELECT 1 FROM triplets WHERE pid = ?1 AND barcode = ?2",
                        params![&pid, &t.barcode],
                    )?
                {
                    return Err(Error::Item {
                        index: i,
                        message: format!(
                            "barcode `{}` already exists in product `{pid}`",
                            t.barcode
                        ),
                    });
                }
                if t.mac.is_empty() {
                    without_mac.push((t, Vec::new()));
                    without_mac_at.push(i);
                    continue;
                }
                if let Some((holder_pid, holder)) = conn.query_opt(
                    "SELECT pid, uuid FROM triplets WHERE mac = ?1 LIMIT 1",
                    params![&t.mac],
                    |r| Ok((r.text(0)?, r.text(1)?)),
                )? {
                    return Err(Error::Item {
                        index: i,
                        message: format!(
                            "MAC {} is already in use by triplet `{holder}` of product `{holder_pid}`",
                            t.mac
                        ),
                    });
                }
                if let Some((r, next)) = &range {
                    let value = MacRange::parse_mac(&t.mac).map_err(Error::from)?;
                    if !r.contains(value) {
                        return Err(Error::Item {
                            index: i,
                            message: format!("MAC {} is outside the MAC range of `{pid}` ({r})", t.mac),
                        });
                    }
                    if next.is_some_and(|n| value >= u64_of(n)) {
                        next_after = Some(next_after.map_or(value + 1, |m| m.max(value + 1)));
                    }
                }
                if insert_triplet(conn, key, &pid, &t, TripletState::Free)?.is_none() {
                    return Err(taken_at(i, &t));
                }
                if i % 4096 == 0 {
                    progress(i as u64);
                }
            }
            if let Some(next) = next_after {
                conn.execute(
                    "UPDATE products SET mac_next = ?2 WHERE pid = ?1 AND mac_next < ?2",
                    params![&pid, i64_of(next)],
                )?;
            }
            assign_macs(conn, &pid, &mut without_mac)?;
            for ((t, _), i) in without_mac.iter().zip(without_mac_at) {
                if insert_triplet(conn, key, &pid, t, TripletState::Free)?.is_none() {
                    return Err(taken_at(i, t));
                }
            }
            Ok(count)
        })
    }

    fn for_each_triplet(
        &self,
        pid: &str,
        state: Option<TripletState>,
        f: &mut dyn FnMut(Triplet) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let key = self.key();
        self.read(|conn| {
            require_product(conn, pid)?;
            conn.query(
                &format!(
                    "SELECT {TRIPLET_COLUMNS} FROM triplets t WHERE t.pid = ?1 AND (CAST(?2 AS BIGINT) IS NULL OR t.state = ?2) ORDER BY t.id"
                ),
                params![pid, state.map(state_code)],
                &mut |r| f(SealedTriplet::read(r, 0)?.open(key)?),
            )
        })
    }

    fn for_each_device(
        &self,
        filter: &DeviceFilter,
        f: &mut dyn FnMut(Registration) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let key = self.key();
        self.read(|conn| {
            if let Some(pid) = &filter.pid {
                require_product(conn, pid)?;
            }
            let limit = if filter.limit == 0 {
                i64::MAX
            } else {
                i64::try_from(filter.limit).unwrap_or(i64::MAX)
            };
            let since = i64_of(filter.since.unwrap_or(0));
            let after = filter.after.as_ref();
            conn.query(
                concat!(
                    registration_select!(),
                    " WHERE (CAST(?1 AS TEXT) IS NULL OR r.pid = ?1) AND (CAST(?2 AS BIGINT) = 0 OR r.revoked_at IS NOT NULL) AND (CAST(?5 AS BIGINT) = 0 OR r.revoked_at IS NULL) AND (CAST(?6 AS TEXT) IS NULL OR r.unique_id = ?6) AND r.registered_at >= ?4",
                    " AND (CAST(?7 AS BIGINT) IS NULL OR r.registered_at < ?7 OR (r.registered_at = ?7 AND (r.key_pid > ?8 OR (r.key_pid = ?8 AND r.unique_id > ?9))))",
                    " ORDER BY r.registered_at DESC, r.key_pid, r.unique_id LIMIT ?3"
                ),
                params![
                    filter.pid.as_ref(),
                    i64::from(filter.revoked_only),
                    limit,
                    since,
                    i64::from(filter.active_only),
                    filter.unique.as_ref(),
                    after.map(|c| i64_of(c.registered_at)),
                    after.map_or("", |c| c.key_pid.as_str()),
                    after.map_or("", |c| c.unique.as_str())
                ],
                &mut |r| f(SealedRegistration::load(r, key)?),
            )
        })
    }

    fn device(&self, key_pid: &str, unique: &str) -> Result<Option<Registration>, Error> {
        self.read(|conn| {
            conn.query_opt(
                concat!(
                    registration_select!(),
                    " WHERE r.key_pid = ?1 AND r.unique_id = ?2"
                ),
                params![key_pid, unique],
                |r| SealedRegistration::load(r, self.key()),
            )
        })
    }

    fn device_by_uuid(&self, uuid: &str) -> Result<Option<Registration>, Error> {
        self.read(|conn| {
            conn.query_opt(
                concat!(registration_select!(), " WHERE t.uuid = ?1"),
                params![uuid],
                |r| SealedRegistration::load(r, self.key()),
            )
        })
    }

    fn device_by_barcode(
        &self,
        pid: Option<&str>,
        barcode: &str,
    ) -> Result<Option<Registration>, Error> {
        self.read(|conn| {
            if let Some(p) = pid {
                require_product(conn, p)?;
            }
            // `t.pid IN (...)` lets the (pid, barcode) index serve every product.
            conn.query_opt(
                concat!(
                    registration_select!(),
                    " WHERE t.pid IN (SELECT pid FROM products WHERE CAST(?1 AS TEXT) IS NULL OR pid = ?1) AND t.barcode = ?2 ORDER BY t.pid LIMIT 1"
                ),
                params![pid, barcode],
                |r| SealedRegistration::load(r, self.key()),
            )
        })
    }

    fn devices_by_mac(&self, mac: &str) -> Result<Vec<Registration>, Error> {
        let mac = MacRange::normalise(mac).map_err(Error::from)?;
        self.read(|conn| {
            conn.query_vec(
                concat!(
                    registration_select!(),
                    " WHERE t.mac = ?1 ORDER BY r.registered_at"
                ),
                params![&mac],
                |r| SealedRegistration::load(r, self.key()),
            )
        })
    }

    fn triplet(&self, uuid: &str) -> Result<Option<Triplet>, Error> {
        self.read(|conn| {
            conn.query_opt(
                &format!("SELECT {TRIPLET_COLUMNS} FROM triplets t WHERE t.uuid = ?1"),
                params![uuid],
                |r| SealedTriplet::read(r, 0)?.open(self.key()),
            )
        })
    }

    fn triplet_history(&self, uuid: &str) -> Result<Vec<HistoryEntry>, Error> {
        self.read(|conn| history(conn, "uuid = ?1", params![uuid]))
    }

    fn device_history(&self, key_pid: &str, unique: &str) -> Result<Vec<HistoryEntry>, Error> {
        self.read(|conn| {
            history(
                conn,
                "key_pid = ?1 AND unique_id = ?2",
                params![key_pid, unique],
            )
        })
    }

    fn withdrawal_candidates(
        &self,
        pid: &str,
        refs: &[TripletRef],
    ) -> Result<Vec<Withdrawal>, Error> {
        if refs.is_empty() {
            return Err(Error::Invalid("no triplets named".into()));
        }
        self.read(|conn| {
            require_product(conn, pid)?;
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (index, r) in refs.iter().enumerate() {
                let read = |row: &dyn Row| {
                    Ok((
                        row.text(0)?,
                        row.opt_text(1)?.unwrap_or_default(),
                        row.text(2)?,
                        row.int(3)?,
                        row.bool(4)?,
                        row.text(5)?,
                    ))
                };
                let found = match r {
                    TripletRef::Uuid(u) => conn.query_opt(
                        "SELECT uuid, barcode, mac, state, withdrawn_at IS NOT NULL, pid FROM triplets WHERE uuid = ?1",
                        params![u],
                        read,
                    )?,
                    TripletRef::Barcode(b) => conn.query_opt(
                        "SELECT uuid, barcode, mac, state, withdrawn_at IS NOT NULL, pid FROM triplets WHERE pid = ?1 AND barcode = ?2",
                        params![pid, b],
                        read,
                    )?,
                };
                let message = match found {
                    None => format!("no triplet with {r} in product `{pid}`"),
                    Some((_, _, _, _, _, ref other)) if other != pid => {
                        format!("{r} belongs to product `{other}`, not `{pid}`")
                    }
                    Some((uuid, barcode, mac, 0, _, _)) => {
                        if seen.insert(uuid.clone()) {
                            out.push(Withdrawal { uuid, barcode, mac });
                        }
                        continue;
                    }
                    Some((_, _, _, 1, _, _)) => format!(
                        "{r} is bound to a device: revoke the device instead (`dynreg device revoke`)"
                    ),
                    Some((_, _, _, _, true, _)) => format!("{r} is already withdrawn"),
                    Some(_) => format!("{r} belongs to a revoked device"),
                };
                return Err(Error::Item { index, message });
            }
            Ok(out)
        })
    }

    fn withdraw(&self, pid: &str, uuids: Vec<String>, now: u64) -> Result<u64, Error> {
        let pid = pid.to_owned();
        self.write(move |conn, _| {
            for (index, uuid) in uuids.iter().enumerate() {
                let n = conn.execute(
                    "UPDATE triplets SET state = 2, withdrawn_at = ?3 WHERE pid = ?1 AND uuid = ?2 AND state = 0",
                    params![&pid, uuid, i64_of(now)],
                )?;
                if n != 1 {
                    return Err(Error::Item {
                        index,
                        message: format!("uuid `{uuid}` is no longer a free triplet of `{pid}`"),
                    });
                }
            }
            Ok(uuids.len() as u64)
        })
    }

    fn revoke(&self, key_pid: &str, unique: &str, now: u64, by: &Actor) -> Result<(), Error> {
        let (k, u) = (key_pid.to_owned(), unique.to_owned());
        let mut entry = by.entry(now, "device.revoked", key_pid, unique);
        self.write(move |conn, _| {
            let triplet = conn.query_opt(
                "SELECT r.triplet_id, r.revoked_at, r.pid, t.uuid FROM registrations r JOIN triplets t ON t.id = r.triplet_id WHERE r.key_pid = ?1 AND r.unique_id = ?2",
                params![&k, &u],
                |r| Ok((r.int(0)?, r.opt_int(1)?, r.text(2)?, r.text(3)?)),
            )?;
            match triplet {
                None => Err(Error::NotFound(format!("no device `{u}` registered with pid `{k}`"))),
                Some((_, Some(_), _, _)) => Err(Error::Conflict(format!("device `{u}` of pid `{k}` is already revoked"))),
                Some((id, None, pid, uuid)) => {
                    conn.execute(
                        "UPDATE registrations SET revoked_at = ?3 WHERE key_pid = ?1 AND unique_id = ?2",
                        params![&k, &u, i64_of(now)],
                    )?;
                    conn.execute("UPDATE triplets SET state = 2 WHERE id = ?1", params![id])?;
                    (entry.pid, entry.uuid) = (pid, uuid);
                    insert_audit(conn, &entry).map(drop)
                }
            }
        })
    }

    fn reset(&self, key_pid: &str, unique: &str, now: u64, by: &Actor) -> Result<(), Error> {
        let (k, u) = (key_pid.to_owned(), unique.to_owned());
        let mut entry = by.entry(now, "device.reset", key_pid, unique);
        self.write(move |conn, _| {
            let revoked = conn.query_opt(
                "SELECT r.revoked_at, r.pid, t.uuid FROM registrations r JOIN triplets t ON t.id = r.triplet_id WHERE r.key_pid = ?1 AND r.unique_id = ?2",
                params![&k, &u],
                |r| Ok((r.opt_int(0)?, r.text(1)?, r.text(2)?)),
            )?;
            match revoked {
                None => Err(Error::NotFound(format!("no device `{u}` registered with pid `{k}`"))),
                Some((None, _, _)) => Err(Error::Conflict(format!(
                    "device `{u}` of pid `{k}` is not revoked: revoke it first (`dynreg device revoke`)"
                ))),
                Some((Some(_), pid, uuid)) => {
                    (entry.pid, entry.uuid) = (pid.clone(), uuid);
                    insert_audit(conn, &entry)?;
                    conn.execute(
                        "INSERT INTO device_history (uuid, pid, key_pid, unique_id, registered_at, revoked_at, reset_at) SELECT t.uuid, r.pid, r.key_pid, r.unique_id, r.registered_at, r.revoked_at, ?3 FROM registrations r JOIN triplets t ON t.id = r.triplet_id WHERE r.key_pid = ?1 AND r.unique_id = ?2",
                        params![&k, &u, i64_of(now)],
                    )?;
                    conn.execute(
                        "DELETE FROM registrations WHERE key_pid = ?1 AND unique_id = ?2",
                        params![&k, &u],
                    )?;
                    // The device no longer counts towards its product's quota.
                    conn.execute(
                        "UPDATE products SET bound = bound - 1 WHERE pid = ?1 AND quota IS NOT NULL AND bound > 0",
                        params![&pid],
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn set_outbox(&self, on: bool) -> Result<u64, Error> {
        self.write(move |conn, _| {
            if on {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('outbox', ?1) ON CONFLICT (key) DO NOTHING",
                    params![b"on".as_slice()],
                )?;
                return Ok(0);
            }
            conn.execute("DELETE FROM meta WHERE key = 'outbox'", &[])?;
            conn.execute("DELETE FROM outbox", &[])
        })
    }

    fn outbox_on(&self) -> Result<bool, Error> {
        self.read(|conn| conn.exists("SELECT 1 FROM meta WHERE key = 'outbox'", &[]))
    }

    fn outbox_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|conn| {
            conn.query_vec(
                "SELECT a.id, a.at, a.action, a.pid, a.target, a.uuid, COALESCE(t.mac, ''), COALESCE(t.barcode, ''), a.detail FROM outbox o JOIN audit a ON a.id = o.audit_id LEFT JOIN triplets t ON t.uuid = a.uuid AND a.uuid <> '' ORDER BY o.audit_id LIMIT ?1",
                params![limit],
                |r| {
                    Ok(OutboxEvent {
                        id: u64_of(r.int(0)?),
                        at: u64_of(r.int(1)?),
                        kind: r.text(2)?,
                        pid: r.text(3)?,
                        unique: r.text(4)?,
                        uuid: r.text(5)?,
                        mac: r.text(6)?,
                        barcode: r.text(7)?,
                        detail: r.text(8)?,
                    })
                },
            )
        })
    }

    fn outbox_delivered(&self, ids: &[u64]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.write(move |conn, _| {
            for id in ids {
                conn.execute(
                    "DELETE FROM outbox WHERE audit_id = ?1",
                    params![i64_of(id)],
                )?;
            }
            Ok(())
        })
    }

    fn outbox_backlog(&self) -> Result<u64, Error> {
        self.read(|conn| {
            Ok(u64_of(
                conn.query_opt("SELECT count(*) FROM outbox", &[], |r| r.int(0))?
                    .unwrap_or(0),
            ))
        })
    }

    fn outbox_lease(&self, holder: &str, now: u64, ttl: u64) -> Result<bool, Error> {
        let holder = holder.to_owned();
        self.write(move |conn, _| {
            let current = conn.query_opt(
                "SELECT value FROM meta WHERE key = 'outbox_lease'",
                &[],
                |r| r.bytes(0),
            )?;
            if let Some(value) = current {
                let text = String::from_utf8_lossy(&value).into_owned();
                let (who, until) = text.rsplit_once(' ').unwrap_or(("", "0"));
                if who != holder && until.parse::<u64>().unwrap_or(0) > now {
                    return Ok(false);
                }
            }
            let lease = format!("{holder} {}", now + ttl).into_bytes();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('outbox_lease', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![&lease],
            )?;
            Ok(true)
        })
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, Error> {
        let entry = entry.clone();
        self.write(move |conn, _| insert_audit(conn, &entry).map(u64_of))
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        let action = match filter.action.as_deref() {
            None => None,
            Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'.') => {
                Some(match a.strip_suffix('.') {
                    Some(object) => format!("{object}.%"),
                    None => a.to_owned(),
                })
            }
            Some(a) => {
                return Err(Error::Invalid(format!(
                    "action `{a}` is not an action (`device.registered`) or an object's actions (`device.`)"
                )));
            }
        };
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        };
        // The direction is part of the statement (one cached statement each).
        let sql = if filter.oldest_first {
            AUDIT_SELECT_OLDEST_FIRST
        } else {
            AUDIT_SELECT
        };
        self.read(|conn| {
            conn.query_vec(
                sql,
                params![
                    filter.pid.as_ref(),
                    filter.target.as_ref(),
                    filter.uuid.as_ref(),
                    filter.actor.as_ref(),
                    action.as_ref(),
                    i64_of(filter.since.unwrap_or(0)),
                    filter.before.map_or(i64::MAX, i64_of),
                    limit,
                    i64::from(filter.registrations_only),
                    filter.after.map_or(0, i64_of)
                ],
                |r| {
                    Ok(AuditRecord {
                        id: u64_of(r.int(0)?),
                        entry: AuditEntry {
                            at: u64_of(r.int(1)?),
                            actor: r.text(2)?,
                            origin: r.text(3)?,
                            action: r.text(4)?,
                            pid: r.text(5)?,
                            target: r.text(6)?,
                            uuid: r.text(7)?,
                            detail: r.text(8)?,
                        },
                    })
                },
            )
        })
    }

    fn insert_token(
        &self,
        name: &str,
        scope: Scope,
        hash: &[u8; 32],
        created_by: &str,
        now: u64,
    ) -> Result<TokenInfo, Error> {
        validate_token_name(name)?;
        let (n, h, by) = (name.to_owned(), hash.to_vec(), created_by.to_owned());
        let id = self.write(move |conn, _| {
            conn.insert_id(
                "INSERT INTO api_tokens (name, scope, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![&n, scope.as_str(), &h, i64_of(now), &by],
            )?
            .ok_or_else(|| Error::Conflict(format!("a token named `{n}` exists: revoke it first, or choose another name")))
        })?;
        Ok(TokenInfo {
            id: u64_of(id),
            name: name.to_owned(),
            scope,
            created_at: now,
            created_by: created_by.to_owned(),
            revoked_at: None,
        })
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.read(|conn| {
            conn.query_vec(
                "SELECT id, name, scope, created_at, created_by, revoked_at FROM api_tokens ORDER BY id",
                &[],
                token_of,
            )
        })
    }

    fn revoke_token(&self, name: &str, now: u64) -> Result<TokenInfo, Error> {
        let n = name.to_owned();
        self.write(move |conn, _| {
            let token = conn
                .query_opt(
                    "SELECT id, name, scope, created_at, created_by, revoked_at FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL",
                    params![&n],
                    token_of,
                )?
                .ok_or_else(|| Error::NotFound(format!("no token named `{n}` (or it is revoked already)")))?;
            conn.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1",
                params![i64_of(token.id), i64_of(now)],
            )?;
            Ok(TokenInfo {
                revoked_at: Some(now),
                ..token
            })
        })
    }

    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenInfo>, Error> {
        self.read(|conn| {
            conn.query_opt(
                "SELECT id, name, scope, created_at, created_by, revoked_at FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL",
                params![hash.as_slice()],
                token_of,
            )
        })
    }

    fn bulk_load(
        &self,
        pid: &str,
        start: u64,
        count: u64,
        now: u64,
        progress: &dyn Fn(u64),
    ) -> Result<u64, Error> {
        self.read(|conn| require_product(conn, pid))?;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(50_000);
            let key = self.key();
            let items: Vec<(String, Vec<u8>)> = (0..n)
                .map(|_| {
                    let t = generate::triplet(now, String::new(), String::new());
                    let sealed = seal_triplet_secret(key, &t);
                    (t.uuid, sealed)
                })
                .collect();
            let pid = pid.to_owned();
            let base = start + done;
            self.write(move |conn, _| {
                for (i, (uuid, sealed)) in items.iter().enumerate() {
                    let id = conn
                        .insert_id(
                            "INSERT INTO triplets (pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, '', NULL, 1)",
                            params![&pid, uuid, sealed],
                        )?
                        .ok_or_else(|| Error::Unavailable("an insert returned no id".into()))?;
                    let unique = format!("bulk-{}", base + i as u64);
                    conn.execute(
                        "INSERT INTO registrations (key_pid, unique_id, pid, triplet_id, registered_at, last_seen_at) VALUES (?1, ?2, ?1, ?3, ?4, ?4)",
                        params![&pid, &unique, id, i64_of(now)],
                    )?;
                }
                conn.execute(
                    "UPDATE products SET bound = bound + ?2 WHERE pid = ?1 AND quota IS NOT NULL",
                    params![&pid, i64_of(n)],
                )?;
                Ok(())
            })?;
            done += n;
            progress(done);
        }
        Ok(done)
    }
}

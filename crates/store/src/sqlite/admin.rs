//! The operator's operations on SQLite: products, pools, devices (what they take and
//! answer, and their validation, are backend-neutral: [`crate::admin`]).
//!
//! Writes run on the writer thread like registrations (so they are serialised with
//! them and committed durably); reads use the read connection. Multi-row writes
//! (pool generation, import) are one transaction: all or nothing.

use dynreg_registrar::model::PreviousSecret;
use dynreg_registrar::model::is_valid_pid;
use dynreg_registrar::{
    MacRange, NewTriplet, Product, Registration, Secret, SourceMode, Triplet, TripletState,
    generate,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::tx::{
    REGISTRATION_SELECT, SealedRegistration, SealedTriplet, TRIPLET_COLUMNS, insert_triplet,
    state_code,
};
use super::{SqliteStore, i64_of, product_aad, u64_of};
use crate::Error;
use crate::admin::{
    Deleted, DeviceFilter, HistoryEntry, MAX_POOL_BATCH, Operator, PoolStats, ProductUpdate,
    Progress, TripletRef, Withdrawal, validate_import_batch, validate_name, validate_ts_window,
};
use crate::crypto::MasterKey;

fn mode_from(s: &str) -> Result<SourceMode, Error> {
    s.parse().map_err(Error::from)
}

/// Reads a product with its secret opened.
pub(crate) fn read_product(
    conn: &Connection,
    key: &MasterKey,
    pid: &str,
) -> Result<Option<Product>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT pid, name, secret_enc, enabled, mode, mac_start, mac_end, ts_window, created_at, rereg, quota, previous_secret_enc, previous_secret_until FROM products WHERE pid = ?1",
    )?;
    let row = stmt
        .query_row([pid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, Option<Vec<u8>>>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        })
        .optional()?;
    let Some((
        pid,
        name,
        secret_enc,
        enabled,
        mode,
        mac_start,
        mac_end,
        ts_window,
        created_at,
        rereg,
        quota,
        previous_enc,
        previous_until,
    )) = row
    else {
        return Ok(None);
    };
    let secret = key.open_string(&product_aad(&pid), &secret_enc)?;
    let previous_secret = match (previous_enc, previous_until) {
        (Some(enc), Some(until)) => Some(PreviousSecret {
            secret: Secret::new(key.open_string(&previous_aad(&pid), &enc)?),
            until: u64_of(until),
        }),
        _ => None,
    };
    Ok(Some(Product {
        pid,
        name,
        secret: Secret::new(secret),
        enabled,
        mode: mode_from(&mode)?,
        mac_range: match (mac_start, mac_end) {
            (Some(s), Some(e)) => Some(MacRange {
                start: u64_of(s),
                end: u64_of(e),
            }),
            _ => None,
        },
        ts_window: u64_of(ts_window),
        rereg: rereg.parse().map_err(Error::from)?,
        quota: quota.map(u64_of),
        previous_secret,
        created_at: u64_of(created_at),
    }))
}

/// The associated data that binds a product's previous secret to its row.
fn previous_aad(pid: &str) -> Vec<u8> {
    [b"product-previous:".as_slice(), pid.as_bytes()].concat()
}

fn require_product(conn: &Connection, pid: &str) -> Result<(), Error> {
    let exists: bool = conn
        .prepare_cached("SELECT 1 FROM products WHERE pid = ?1")?
        .exists([pid])?;
    if exists {
        Ok(())
    } else {
        Err(Error::NotFound(format!("unknown pid `{pid}`")))
    }
}

fn pool_stats(conn: &Connection, pid: &str) -> Result<PoolStats, Error> {
    let mut stats = PoolStats::default();
    let mut stmt = conn.prepare_cached(
        "SELECT state, withdrawn_at IS NOT NULL, count(*) FROM triplets WHERE pid = ?1 GROUP BY 1, 2",
    )?;
    let mut rows = stmt.query([pid])?;
    while let Some(r) = rows.next()? {
        let n = u64_of(r.get(2)?);
        match (r.get::<_, i64>(0)?, r.get::<_, bool>(1)?) {
            (0, _) => stats.free += n,
            (1, _) => stats.bound += n,
            (_, true) => stats.withdrawn += n,
            (_, false) => stats.revoked += n,
        }
    }
    stats.devices = u64_of(
        conn.prepare_cached("SELECT count(*) FROM registrations WHERE pid = ?1")?
            .query_row([pid], |r| r.get(0))?,
    );
    let mac: Option<(Option<i64>, Option<i64>)> = conn
        .prepare_cached("SELECT mac_next, mac_end FROM products WHERE pid = ?1")?
        .query_row([pid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((Some(next), Some(end))) = mac {
        stats.mac_left = Some(u64_of((end - next + 1).max(0)));
    }
    let (served, refused): (i64, i64) = conn
        .prepare_cached(
            "SELECT reregistrations, reregistrations_refused FROM products WHERE pid = ?1",
        )?
        .query_row([pid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default();
    stats.reregistrations = u64_of(served);
    stats.reregistrations_refused = u64_of(refused);
    Ok(stats)
}

/// Assigns MAC addresses from `pid`'s range to `triplets` that have none, advancing the
/// range; refuses when the range is too small.
fn assign_macs(
    conn: &Connection,
    pid: &str,
    triplets: &mut [(NewTriplet, Vec<u8>)],
) -> Result<(), Error> {
    let (next, end): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT mac_next, mac_end FROM products WHERE pid = ?1")?
        .query_row([pid], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(next), Some(end)) = (next, end) else {
        return Ok(());
    };
    let wanted = i64::try_from(triplets.len()).unwrap_or(i64::MAX);
    let left = (end - next + 1).max(0);
    if wanted > left {
        return Err(Error::Invalid(format!(
            "MAC range overflow: {wanted} addresses needed, {left} left in the range of `{pid}` (next {}, last {})",
            MacRange::format(u64_of(next)),
            MacRange::format(u64_of(end))
        )));
    }
    for (i, (t, _)) in triplets.iter_mut().enumerate() {
        t.mac = MacRange::format(u64_of(next) + i as u64);
    }
    conn.prepare_cached("UPDATE products SET mac_next = ?2 WHERE pid = ?1")?
        .execute(params![pid, next + wanted])?;
    Ok(())
}

impl Operator for SqliteStore {
    fn location(&self) -> String {
        self.path().display().to_string()
    }

    fn close(&self) -> Result<(), Error> {
        SqliteStore::close(self)
    }

    fn load_product(&self, pid: &str) -> Result<Option<Product>, Error> {
        SqliteStore::load_product(self, pid)
    }

    fn product_pids(&self) -> Result<Vec<String>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT pid FROM products ORDER BY pid")?;
        let pids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(pids)
    }

    fn insert_product(&self, product: &Product) -> Result<(), Error> {
        if !is_valid_pid(&product.pid) {
            return Err(Error::Invalid(format!(
                "pid `{}` is not valid",
                product.pid
            )));
        }
        let p = product.clone();
        self.write_blocking(move |conn, key| {
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
            let n = conn.prepare_cached(
                "INSERT INTO products (pid, name, secret_enc, enabled, mode, mac_start, mac_end, mac_next, ts_window, created_at, rereg, quota, previous_secret_enc, previous_secret_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT (pid) DO NOTHING",
            )?
            .execute(params![p.pid, p.name, sealed, p.enabled, p.mode.name(), start, end, i64_of(p.ts_window), i64_of(p.created_at), p.rereg.to_string(), p.quota.map(i64_of), previous, until])?;
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
            quota,
        } = update;
        let name = name.as_deref().map(validate_name).transpose()?;
        if let Some(w) = ts_window {
            validate_ts_window(w)?;
        }
        let pid_owned = pid.to_owned();
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid_owned)?;
            if let Some(name) = name {
                conn.prepare_cached("UPDATE products SET name = ?2 WHERE pid = ?1")?
                    .execute(params![pid_owned, name])?;
            }
            if let Some(mode) = mode {
                conn.prepare_cached("UPDATE products SET mode = ?2 WHERE pid = ?1")?
                    .execute(params![pid_owned, mode.name()])?;
            }
            if let Some(w) = ts_window {
                conn.prepare_cached("UPDATE products SET ts_window = ?2 WHERE pid = ?1")?
                    .execute(params![pid_owned, i64_of(w)])?;
            }
            if let Some(range) = mac_range {
                let (old_start, old_next): (Option<i64>, Option<i64>) = conn
                    .prepare_cached("SELECT mac_start, mac_next FROM products WHERE pid = ?1")?
                    .query_row([&pid_owned], |r| Ok((r.get(0)?, r.get(1)?)))?;
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
                conn.prepare_cached(
                    "UPDATE products SET mac_start = ?2, mac_end = ?3, mac_next = ?4 WHERE pid = ?1",
                )?
                .execute(params![pid_owned, start, end, next])?;
            }
            if let Some(rereg) = rereg {
                conn.prepare_cached("UPDATE products SET rereg = ?2 WHERE pid = ?1")?
                    .execute(params![pid_owned, rereg.to_string()])?;
            }
            if let Some(quota) = quota {
                // The count is kept only while a quota is set: recount when one is set.
                conn.prepare_cached(
                    "UPDATE products SET quota = ?2, bound = (SELECT count(*) FROM registrations WHERE pid = ?1) WHERE pid = ?1",
                )?
                .execute(params![pid_owned, quota.map(i64_of)])?;
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn delete_product(&self, pid: &str, force: bool) -> Result<Deleted, Error> {
        let pid_owned = pid.to_owned();
        let deleted = self.write_blocking(move |conn, _| {
            require_product(conn, &pid_owned)?;
            let devices: i64 = conn
                .prepare_cached("SELECT count(*) FROM registrations WHERE pid = ?1")?
                .query_row([&pid_owned], |r| r.get(0))?;
            if devices > 0 && !force {
                return Err(Error::Conflict(format!(
                    "product `{pid_owned}` has {devices} registered devices: revoke or move them, or delete with --force (which forgets them too)"
                )));
            }
            // A registration's pid is the product of its triplet: these are exactly the
            // devices holding the product's triplets. Devices that authenticate with
            // its pid but moved to another product (replacePid) hold that product's
            // triplets and stay with it.
            let n_reg = conn
                .prepare_cached("DELETE FROM registrations WHERE pid = ?1")?
                .execute([&pid_owned])?;
            let n_trip = conn
                .prepare_cached("DELETE FROM triplets WHERE pid = ?1")?
                .execute([&pid_owned])?;
            conn.prepare_cached("DELETE FROM products WHERE pid = ?1")?
                .execute([&pid_owned])?;
            Ok(Deleted {
                devices: n_reg as u64,
                triplets: n_trip as u64,
            })
        })?;
        self.invalidate(pid);
        Ok(deleted)
    }

    fn set_enabled(&self, pid: &str, enabled: bool) -> Result<(), Error> {
        let pid_owned = pid.to_owned();
        self.write_blocking(move |conn, _| {
            let n = conn
                .prepare_cached("UPDATE products SET enabled = ?2 WHERE pid = ?1")?
                .execute(params![pid_owned, enabled])?;
            if n == 0 {
                return Err(Error::NotFound(format!("unknown pid `{pid_owned}`")));
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn rotate_secret(&self, pid: &str, grace_secs: u64, now: u64) -> Result<Secret, Error> {
        let secret = generate::secret();
        let (pid_owned, s) = (pid.to_owned(), secret.clone());
        self.write_blocking(move |conn, key| {
            let old = read_product(conn, key, &pid_owned)?
                .ok_or_else(|| Error::NotFound(format!("unknown pid `{pid_owned}`")))?;
            let sealed = key.seal(&product_aad(&pid_owned), s.expose().as_bytes());
            let previous = key.seal(&previous_aad(&pid_owned), old.secret.expose().as_bytes());
            conn.prepare_cached(
                "UPDATE products SET secret_enc = ?2, previous_secret_enc = ?3, previous_secret_until = ?4 WHERE pid = ?1",
            )?
            .execute(params![
                pid_owned,
                sealed,
                previous,
                i64_of(now.saturating_add(grace_secs))
            ])?;
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(secret)
    }

    fn retire_secret(&self, pid: &str, now: u64) -> Result<(), Error> {
        let pid_owned = pid.to_owned();
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid_owned)?;
            let n = conn
                .prepare_cached(
                    "UPDATE products SET previous_secret_until = ?2 WHERE pid = ?1 AND previous_secret_until > ?2",
                )?
                .execute(params![pid_owned, i64_of(now)])?;
            if n == 0 {
                return Err(Error::Conflict(format!(
                    "product `{pid_owned}` has no previous secret in a grace period (nothing to retire)"
                )));
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(())
    }

    fn pool_stats(&self, pid: &str) -> Result<PoolStats, Error> {
        let conn = self.reader();
        require_product(&conn, pid)?;
        pool_stats(&conn, pid)
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
        require_product(&self.reader(), pid)?;
        let key = self.inner.key.clone();
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let t = generate::triplet(now, String::new(), String::new());
            let sealed = key.seal(&super::triplet_aad(&t.uuid), t.secret.expose().as_bytes());
            items.push((t, sealed));
            if i % 4096 == 0 {
                progress(i as u64 / 2);
            }
        }
        let (pid, prefix) = (pid.to_owned(), barcode_prefix.to_owned());
        let half = count / 2;
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid)?;
            assign_macs(conn, &pid, &mut items)?;
            let first: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM triplets", [], |r| r.get(0))?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO triplets (id, pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            )?;
            for (i, (t, sealed)) in items.iter_mut().enumerate() {
                let sealed = &*sealed;
                let id = first + i as i64;
                t.barcode = format!("{prefix}{id:012}");
                stmt.execute(params![id, pid, t.uuid, sealed, t.mac, t.barcode])
                    .map_err(|e| match e.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::ConstraintViolation) => Error::Conflict(format!(
                            "barcode `{}` or uuid `{}` already exists in the store",
                            t.barcode, t.uuid
                        )),
                        _ => Error::Sqlite(e),
                    })?;
                if i % 4096 == 0 {
                    progress(half + i as u64 / 2);
                }
            }
            Ok(items.into_iter().map(|(t, _)| t).collect())
        })
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
        require_product(&self.reader(), pid)?;
        let key = self.inner.key.clone();
        let pid = pid.to_owned();
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid)?;
            let mut uuid_exists = conn.prepare_cached("SELECT 1 FROM triplets WHERE uuid = ?1")?;
            let mut barcode_exists =
                conn.prepare_cached("SELECT 1 FROM triplets WHERE pid = ?1 AND barcode = ?2")?;
            let mut mac_holder =
                conn.prepare_cached("SELECT pid, uuid FROM triplets WHERE mac = ?1 LIMIT 1")?;
            let range: (Option<i64>, Option<i64>, Option<i64>) = conn
                .prepare_cached("SELECT mac_start, mac_end, mac_next FROM products WHERE pid = ?1")?
                .query_row([&pid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let range = match range {
                (Some(s), Some(e), next) => Some((MacRange { start: u64_of(s), end: u64_of(e) }, next)),
                _ => None,
            };
            // Imported MACs in the range at or past its next address would be handed
            // out again by generation: the range moves past the highest of them.
            let mut next_after: Option<u64> = None;
            let mut without_mac: Vec<(NewTriplet, Vec<u8>)> = Vec::new();
            let mut without_mac_at: Vec<usize> = Vec::new();
            for (i, t) in triplets.into_iter().enumerate() {
                if uuid_exists.exists([&t.uuid])? {
                    return Err(Error::Item {
                        index: i,
                        message: format!("uuid `{}` already exists in the store", t.uuid),
                    });
                }
                if !t.barcode.is_empty() && barcode_exists.exists(params![pid, t.barcode])? {
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
                if let Some((holder_pid, holder)) = mac_holder
                    .query_row([&t.mac], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .optional()?
                {
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
                insert_triplet(conn, &key, &pid, &t, TripletState::Free)
                    .map_err(|e| conflict_at(i, &t, e))?;
                if i % 4096 == 0 {
                    progress(i as u64);
                }
            }
            if let Some(next) = next_after {
                conn.prepare_cached("UPDATE products SET mac_next = ?2 WHERE pid = ?1")?
                    .execute(params![pid, i64_of(next)])?;
            }
            assign_macs(conn, &pid, &mut without_mac)?;
            for ((t, _), i) in without_mac.iter().zip(without_mac_at) {
                insert_triplet(conn, &key, &pid, t, TripletState::Free)
                    .map_err(|e| conflict_at(i, t, e))?;
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
        let conn = self.reader();
        require_product(&conn, pid)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {TRIPLET_COLUMNS} FROM triplets t WHERE t.pid = ?1 AND (?2 IS NULL OR t.state = ?2) ORDER BY t.id"
        ))?;
        let mut rows = stmt.query(params![pid, state.map(state_code)])?;
        while let Some(row) = rows.next()? {
            f(SealedTriplet::read(row, 0)?.open(self.key())?)?;
        }
        Ok(())
    }

    fn for_each_device(
        &self,
        filter: &DeviceFilter,
        f: &mut dyn FnMut(Registration) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let conn = self.reader();
        if let Some(pid) = &filter.pid {
            require_product(&conn, pid)?;
        }
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            i64::try_from(filter.limit).unwrap_or(i64::MAX)
        };
        let mut stmt = conn.prepare(&format!(
            "{REGISTRATION_SELECT} WHERE (?1 IS NULL OR r.pid = ?1) AND (?2 = 0 OR r.revoked_at IS NOT NULL) AND r.registered_at >= ?4 ORDER BY r.registered_at DESC, r.key_pid, r.unique_id LIMIT ?3"
        ))?;
        let since = i64_of(filter.since.unwrap_or(0));
        let mut rows = stmt.query(params![filter.pid, filter.revoked_only, limit, since])?;
        while let Some(row) = rows.next()? {
            f(SealedRegistration::read(row)?.open(self.key())?)?;
        }
        Ok(())
    }

    fn device(&self, key_pid: &str, unique: &str) -> Result<Option<Registration>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{REGISTRATION_SELECT} WHERE r.key_pid = ?1 AND r.unique_id = ?2"
        ))?;
        stmt.query_row(params![key_pid, unique], SealedRegistration::read)
            .optional()?
            .map(|s| s.open(self.key()))
            .transpose()
    }

    fn device_by_uuid(&self, uuid: &str) -> Result<Option<Registration>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{REGISTRATION_SELECT} WHERE t.uuid = ?1"))?;
        stmt.query_row(params![uuid], SealedRegistration::read)
            .optional()?
            .map(|s| s.open(self.key()))
            .transpose()
    }

    fn device_by_barcode(
        &self,
        pid: Option<&str>,
        barcode: &str,
    ) -> Result<Option<Registration>, Error> {
        let conn = self.reader();
        if let Some(p) = pid {
            require_product(&conn, p)?;
        }
        // `t.pid IN (...)` lets SQLite use the (pid, barcode) index for every product.
        let mut stmt = conn.prepare_cached(&format!(
            "{REGISTRATION_SELECT} WHERE t.pid IN (SELECT pid FROM products WHERE ?1 IS NULL OR pid = ?1) AND t.barcode = ?2 ORDER BY t.pid LIMIT 1"
        ))?;
        stmt.query_row(params![pid, barcode], SealedRegistration::read)
            .optional()?
            .map(|s| s.open(self.key()))
            .transpose()
    }

    fn devices_by_mac(&self, mac: &str) -> Result<Vec<Registration>, Error> {
        let mac = MacRange::normalise(mac).map_err(Error::from)?;
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{REGISTRATION_SELECT} WHERE t.mac = ?1 ORDER BY r.registered_at"
        ))?;
        let mut rows = stmt.query([&mac])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(SealedRegistration::read(row)?.open(self.key())?);
        }
        Ok(out)
    }

    fn triplet(&self, uuid: &str) -> Result<Option<Triplet>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TRIPLET_COLUMNS} FROM triplets t WHERE t.uuid = ?1"
        ))?;
        stmt.query_row([uuid], |r| SealedTriplet::read(r, 0))
            .optional()?
            .map(|t| t.open(self.key()))
            .transpose()
    }

    fn triplet_history(&self, uuid: &str) -> Result<Vec<HistoryEntry>, Error> {
        self.history("uuid = ?1", params![uuid])
    }

    fn device_history(&self, key_pid: &str, unique: &str) -> Result<Vec<HistoryEntry>, Error> {
        self.history("key_pid = ?1 AND unique_id = ?2", params![key_pid, unique])
    }

    fn withdrawal_candidates(
        &self,
        pid: &str,
        refs: &[TripletRef],
    ) -> Result<Vec<Withdrawal>, Error> {
        if refs.is_empty() {
            return Err(Error::Invalid("no triplets named".into()));
        }
        let conn = self.reader();
        require_product(&conn, pid)?;
        let mut by_uuid =
            conn.prepare_cached("SELECT uuid, barcode, mac, state, withdrawn_at IS NOT NULL, pid FROM triplets WHERE uuid = ?1")?;
        let mut by_barcode = conn.prepare_cached(
            "SELECT uuid, barcode, mac, state, withdrawn_at IS NOT NULL, pid FROM triplets WHERE pid = ?1 AND barcode = ?2",
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (index, r) in refs.iter().enumerate() {
            let read = |row: &rusqlite::Row<'_>| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, bool>(4)?,
                    row.get::<_, String>(5)?,
                ))
            };
            let found = match r {
                TripletRef::Uuid(u) => by_uuid.query_row([u], read).optional()?,
                TripletRef::Barcode(b) => by_barcode.query_row(params![pid, b], read).optional()?,
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
    }

    fn withdraw(&self, pid: &str, uuids: Vec<String>, now: u64) -> Result<u64, Error> {
        let pid = pid.to_owned();
        self.write_blocking(move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "UPDATE triplets SET state = 2, withdrawn_at = ?3 WHERE pid = ?1 AND uuid = ?2 AND state = 0",
            )?;
            for (index, uuid) in uuids.iter().enumerate() {
                if stmt.execute(params![pid, uuid, i64_of(now)])? != 1 {
                    return Err(Error::Item {
                        index,
                        message: format!("uuid `{uuid}` is no longer a free triplet of `{pid}`"),
                    });
                }
            }
            Ok(uuids.len() as u64)
        })
    }

    fn revoke(&self, key_pid: &str, unique: &str, now: u64) -> Result<(), Error> {
        let (k, u) = (key_pid.to_owned(), unique.to_owned());
        self.write_blocking(move |conn, _| {
            let triplet: Option<(i64, Option<i64>)> = conn
                .prepare_cached("SELECT triplet_id, revoked_at FROM registrations WHERE key_pid = ?1 AND unique_id = ?2")?
                .query_row(params![k, u], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match triplet {
                None => Err(Error::NotFound(format!("no device `{u}` registered with pid `{k}`"))),
                Some((_, Some(_))) => Err(Error::Conflict(format!("device `{u}` of pid `{k}` is already revoked"))),
                Some((id, None)) => {
                    conn.prepare_cached("UPDATE registrations SET revoked_at = ?3 WHERE key_pid = ?1 AND unique_id = ?2")?
                        .execute(params![k, u, i64_of(now)])?;
                    conn.prepare_cached("UPDATE triplets SET state = 2 WHERE id = ?1")?.execute([id])?;
                    Ok(())
                }
            }
        })
    }

    fn reset(&self, key_pid: &str, unique: &str, now: u64) -> Result<(), Error> {
        let (k, u) = (key_pid.to_owned(), unique.to_owned());
        self.write_blocking(move |conn, _| {
            let revoked: Option<(Option<i64>, String)> = conn
                .prepare_cached("SELECT revoked_at, pid FROM registrations WHERE key_pid = ?1 AND unique_id = ?2")?
                .query_row(params![k, u], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match revoked {
                None => Err(Error::NotFound(format!("no device `{u}` registered with pid `{k}`"))),
                Some((None, _)) => Err(Error::Conflict(format!(
                    "device `{u}` of pid `{k}` is not revoked: revoke it first (`dynreg device revoke`)"
                ))),
                Some((Some(_), pid)) => {
                    conn.prepare_cached(
                        "INSERT INTO device_history (uuid, pid, key_pid, unique_id, registered_at, revoked_at, reset_at) SELECT t.uuid, r.pid, r.key_pid, r.unique_id, r.registered_at, r.revoked_at, ?3 FROM registrations r JOIN triplets t ON t.id = r.triplet_id WHERE r.key_pid = ?1 AND r.unique_id = ?2",
                    )?
                    .execute(params![k, u, i64_of(now)])?;
                    conn.prepare_cached("DELETE FROM registrations WHERE key_pid = ?1 AND unique_id = ?2")?
                        .execute(params![k, u])?;
                    // The device no longer counts towards its product's quota.
                    conn.prepare_cached(
                        "UPDATE products SET bound = bound - 1 WHERE pid = ?1 AND quota IS NOT NULL AND bound > 0",
                    )?
                    .execute([pid])?;
                    Ok(())
                }
            }
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
        require_product(&self.reader(), pid)?;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(50_000);
            let key = self.inner.key.clone();
            let items: Vec<(String, Vec<u8>)> = (0..n)
                .map(|_| {
                    let t = generate::triplet(now, String::new(), String::new());
                    let sealed =
                        key.seal(&super::triplet_aad(&t.uuid), t.secret.expose().as_bytes());
                    (t.uuid, sealed)
                })
                .collect();
            let pid = pid.to_owned();
            let base = start + done;
            self.write_blocking(move |conn, _| {
                let mut ins_t = conn.prepare_cached("INSERT INTO triplets (pid, uuid, secret_enc, mac, barcode, state) VALUES (?1, ?2, ?3, '', NULL, 1)")?;
                let mut ins_r = conn.prepare_cached("INSERT INTO registrations (key_pid, unique_id, pid, triplet_id, registered_at, last_seen_at) VALUES (?1, ?2, ?1, ?3, ?4, ?4)")?;
                for (i, (uuid, sealed)) in items.iter().enumerate() {
                    ins_t.execute(params![pid, uuid, sealed])?;
                    let id = conn.last_insert_rowid();
                    ins_r.execute(params![pid, format!("bulk-{}", base + i as u64), id, i64_of(now)])?;
                }
                conn.prepare_cached(
                    "UPDATE products SET bound = bound + ?2 WHERE pid = ?1 AND quota IS NOT NULL",
                )?
                .execute(params![pid, i64_of(n)])?;
                Ok(())
            })?;
            done += n;
            progress(done);
        }
        Ok(done)
    }
}

impl SqliteStore {
    fn history(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<HistoryEntry>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT uuid, pid, key_pid, unique_id, registered_at, revoked_at, reset_at FROM device_history WHERE {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok(HistoryEntry {
                uuid: r.get(0)?,
                pid: r.get(1)?,
                key_pid: r.get(2)?,
                unique: r.get(3)?,
                registered_at: u64_of(r.get(4)?),
                revoked_at: r.get::<_, Option<i64>>(5)?.map(u64_of),
                reset_at: u64_of(r.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn conflict_at(i: usize, t: &NewTriplet, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => Error::Item {
            index: i,
            message: format!(
                "uuid `{}` or barcode `{}` appears twice (in the file or the store)",
                t.uuid, t.barcode
            ),
        },
        _ => Error::Sqlite(e),
    }
}

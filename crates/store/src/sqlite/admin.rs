//! The operator's operations: products, pools, devices.
//!
//! Writes run on the writer thread like registrations (so they are serialised with
//! them and committed durably); reads use the read connection. Multi-row writes
//! (pool generation, import) are one transaction: all or nothing.

use std::sync::Arc;

use dynreg_registrar::model::{MAX_NAME_LEN, is_valid_pid};
use dynreg_registrar::{
    MacRange, NewTriplet, Product, Registration, ReregPolicy, Secret, SourceMode, Triplet,
    TripletState, generate,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::tx::{
    REGISTRATION_SELECT, SealedRegistration, SealedTriplet, TRIPLET_COLUMNS, insert_triplet,
    state_code,
};
use super::{SqliteStore, i64_of, product_aad, u64_of};
use crate::Error;
use crate::crypto::MasterKey;

/// The most triplets one `generate_pool` or `import_pool` call accepts.
pub const MAX_POOL_BATCH: u64 = 10_000_000;
/// The longest uuid, mac, barcode accepted by import, in bytes.
pub const MAX_FIELD_LEN: usize = 64;
/// The longest device secret accepted by import, in bytes.
pub const MAX_DEVICE_SECRET_LEN: usize = 128;

/// What an operator gives to create a product.
#[derive(Debug, Clone)]
pub struct NewProduct {
    /// The pid; generated when `None`.
    pub pid: Option<String>,
    /// A human name.
    pub name: String,
    /// Where triplets come from.
    pub mode: SourceMode,
    /// MAC addresses for generated triplets.
    pub mac_range: Option<MacRange>,
    /// CONNECT ts skew window, seconds.
    pub ts_window: u64,
    /// When a device that registered before gets its triplet again.
    pub rereg: ReregPolicy,
    /// The most devices the product may bind (`None`: no limit).
    pub quota: Option<u64>,
}

/// Changes to a product's registration rules; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProductUpdate {
    /// A new re-registration policy.
    pub rereg: Option<ReregPolicy>,
    /// A new quota: `Some(None)` removes it.
    pub quota: Option<Option<u64>>,
}

/// A product without its secret, with its pool and device counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSummary {
    /// The pid.
    pub pid: String,
    /// The name.
    pub name: String,
    /// Whether registration is enabled.
    pub enabled: bool,
    /// Where triplets come from.
    pub mode: SourceMode,
    /// The MAC range, if any.
    pub mac_range: Option<MacRange>,
    /// The ts window in seconds.
    pub ts_window: u64,
    /// The re-registration policy.
    pub rereg: ReregPolicy,
    /// The most devices the product may bind, if limited.
    pub quota: Option<u64>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Triplet and device counts.
    pub stats: PoolStats,
}

/// Counts of a product's triplets and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Triplets not yet handed out.
    pub free: u64,
    /// Triplets bound to a device.
    pub bound: u64,
    /// Triplets of revoked devices (never handed out again).
    pub revoked: u64,
    /// Devices registered under the product.
    pub devices: u64,
    /// MAC addresses left in the product's range, if it has one.
    pub mac_left: Option<u64>,
    /// Re-registrations served (a device that registered before got its triplet again).
    pub reregistrations: u64,
    /// Re-registrations refused by the product's policy.
    pub reregistrations_refused: u64,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices registered under this product.
    pub pid: Option<String>,
    /// Only revoked devices.
    pub revoked_only: bool,
    /// At most this many (0: no limit).
    pub limit: usize,
}

fn mode_from(s: &str) -> Result<SourceMode, Error> {
    s.parse().map_err(Error::Invalid)
}

/// Reads a product with its secret opened.
pub(crate) fn read_product(
    conn: &Connection,
    key: &MasterKey,
    pid: &str,
) -> Result<Option<Product>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT pid, name, secret_enc, enabled, mode, mac_start, mac_end, ts_window, created_at, rereg, quota FROM products WHERE pid = ?1",
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
    )) = row
    else {
        return Ok(None);
    };
    let secret = key.open_string(&product_aad(&pid), &secret_enc)?;
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
        rereg: rereg.parse().map_err(Error::Invalid)?,
        quota: quota.map(u64_of),
        created_at: u64_of(created_at),
    }))
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
    let mut stmt =
        conn.prepare_cached("SELECT state, count(*) FROM triplets WHERE pid = ?1 GROUP BY state")?;
    let mut rows = stmt.query([pid])?;
    while let Some(r) = rows.next()? {
        let n = u64_of(r.get(1)?);
        match r.get::<_, i64>(0)? {
            0 => stats.free = n,
            1 => stats.bound = n,
            _ => stats.revoked += n,
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

/// Progress of a long operation: called with the number of items done so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

impl SqliteStore {
    /// Creates a product with a fresh secret. The pid is generated when not given.
    pub fn create_product(&self, new: NewProduct, now: u64) -> Result<Product, Error> {
        if let Some(pid) = &new.pid {
            if !is_valid_pid(pid) {
                return Err(Error::Invalid(format!(
                    "pid `{pid}` is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -"
                )));
            }
        }
        let name = new.name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "product name must be 1 to {MAX_NAME_LEN} bytes of printable text"
            )));
        }
        if new.ts_window == 0 || new.ts_window > 7 * 24 * 3600 {
            return Err(Error::Invalid(
                "ts window must be 1 second to 7 days".into(),
            ));
        }
        let product = Product {
            pid: new.pid.unwrap_or_else(generate::pid),
            name,
            secret: generate::secret(),
            enabled: true,
            mode: new.mode,
            mac_range: new.mac_range,
            ts_window: new.ts_window,
            rereg: new.rereg,
            quota: new.quota,
            created_at: now,
        };
        self.insert_product(&product)?;
        Ok(product)
    }

    /// Inserts a product exactly as given, secret included (moving products between
    /// stores, restoring from an export, tests). Refuses an existing pid.
    pub fn insert_product(&self, product: &Product) -> Result<(), Error> {
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
            let n = conn.prepare_cached(
                "INSERT INTO products (pid, name, secret_enc, enabled, mode, mac_start, mac_end, mac_next, ts_window, created_at, rereg, quota) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?9, ?10, ?11) ON CONFLICT (pid) DO NOTHING",
            )?
            .execute(params![p.pid, p.name, sealed, p.enabled, p.mode.name(), start, end, i64_of(p.ts_window), i64_of(p.created_at), p.rereg.to_string(), p.quota.map(i64_of)])?;
            if n == 0 {
                return Err(Error::Conflict(format!("a product with pid `{}` exists", p.pid)));
            }
            Ok(())
        })?;
        self.invalidate(&product.pid);
        Ok(())
    }

    /// Every product, without secrets, with counts, ordered by pid.
    pub fn list_products(&self) -> Result<Vec<ProductSummary>, Error> {
        let pids: Vec<String> = {
            let conn = self.reader();
            let mut stmt = conn.prepare("SELECT pid FROM products ORDER BY pid")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        pids.iter().map(|p| self.product_summary(p)).collect()
    }

    /// One product, without its secret, with counts.
    pub fn product_summary(&self, pid: &str) -> Result<ProductSummary, Error> {
        let product = self
            .load_product(pid)?
            .ok_or_else(|| Error::NotFound(format!("unknown pid `{pid}`")))?;
        let stats = pool_stats(&self.reader(), pid)?;
        Ok(ProductSummary {
            pid: product.pid,
            name: product.name,
            enabled: product.enabled,
            mode: product.mode,
            mac_range: product.mac_range,
            ts_window: product.ts_window,
            rereg: product.rereg,
            quota: product.quota,
            created_at: product.created_at,
            stats,
        })
    }

    /// Changes a product's re-registration policy and quota. A quota applies to new
    /// bindings only: devices already registered keep their triplets even when there are
    /// more of them than the new quota. Setting a quota recounts the product's devices;
    /// a server that still serves the product from its cache (up to the cache TTL,
    /// 2 s) does not count the devices it registers meanwhile.
    pub fn update_product(&self, pid: &str, update: ProductUpdate) -> Result<(), Error> {
        let pid_owned = pid.to_owned();
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid_owned)?;
            if let Some(rereg) = update.rereg {
                conn.prepare_cached("UPDATE products SET rereg = ?2 WHERE pid = ?1")?
                    .execute(params![pid_owned, rereg.to_string()])?;
            }
            if let Some(quota) = update.quota {
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

    /// Enables or disables registration for a product.
    pub fn set_enabled(&self, pid: &str, enabled: bool) -> Result<(), Error> {
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

    /// Gives a product a new secret and returns it. Devices not yet registered need the
    /// new secret from now on.
    pub fn rotate_secret(&self, pid: &str) -> Result<Secret, Error> {
        let secret = generate::secret();
        let (pid_owned, s) = (pid.to_owned(), secret.clone());
        self.write_blocking(move |conn, key| {
            let sealed = key.seal(&product_aad(&pid_owned), s.expose().as_bytes());
            let n = conn
                .prepare_cached("UPDATE products SET secret_enc = ?2 WHERE pid = ?1")?
                .execute(params![pid_owned, sealed])?;
            if n == 0 {
                return Err(Error::NotFound(format!("unknown pid `{pid_owned}`")));
            }
            Ok(())
        })?;
        self.invalidate(pid);
        Ok(secret)
    }

    /// Counts of a product's pool and devices.
    pub fn pool_stats(&self, pid: &str) -> Result<PoolStats, Error> {
        let conn = self.reader();
        require_product(&conn, pid)?;
        pool_stats(&conn, pid)
    }

    /// Generates `count` free triplets for `pid` (MACs from its range when it has one;
    /// barcodes `prefix` + a 12-digit serial unique in the store) in one transaction,
    /// and returns them, secrets included, for the factory CSV. `now` (Unix seconds)
    /// goes into the generated uuids.
    pub fn generate_pool(
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

    /// Imports triplets into `pid`'s pool as free, in one transaction: all or nothing.
    /// Triplets without a MAC get one from the product's range when it has one. A
    /// failure names the item (0-based) that caused it, as [`Error::Invalid`] or
    /// [`Error::Conflict`] starting with `item N:`.
    pub fn import_pool(
        &self,
        pid: &str,
        triplets: Vec<NewTriplet>,
        progress: Progress,
    ) -> Result<u64, Error> {
        let count = triplets.len() as u64;
        if count == 0 || count > MAX_POOL_BATCH {
            return Err(Error::Invalid(format!(
                "the file holds {count} triplets: import 1 to {MAX_POOL_BATCH}"
            )));
        }
        for (i, t) in triplets.iter().enumerate() {
            validate_import(t).map_err(|message| Error::Item { index: i, message })?;
        }
        require_product(&self.reader(), pid)?;
        let key = self.inner.key.clone();
        let pid = pid.to_owned();
        self.write_blocking(move |conn, _| {
            require_product(conn, &pid)?;
            let mut uuid_exists = conn.prepare_cached("SELECT 1 FROM triplets WHERE uuid = ?1")?;
            let mut barcode_exists =
                conn.prepare_cached("SELECT 1 FROM triplets WHERE pid = ?1 AND barcode = ?2")?;
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
                insert_triplet(conn, &key, &pid, &t, TripletState::Free)
                    .map_err(|e| conflict_at(i, &t, e))?;
                if i % 4096 == 0 {
                    progress(i as u64);
                }
            }
            assign_macs(conn, &pid, &mut without_mac)?;
            for ((t, _), i) in without_mac.iter().zip(without_mac_at) {
                insert_triplet(conn, &key, &pid, t, TripletState::Free)
                    .map_err(|e| conflict_at(i, t, e))?;
            }
            Ok(count)
        })
    }

    /// Calls `f` for each triplet of `pid`'s pool (optionally only those in `state`), in
    /// creation order, secrets opened: re-exporting a factory CSV.
    pub fn for_each_triplet(
        &self,
        pid: &str,
        state: Option<TripletState>,
        mut f: impl FnMut(Triplet) -> Result<(), Error>,
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

    /// Devices, newest first.
    pub fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Registration>, Error> {
        let mut out = Vec::new();
        self.for_each_device(filter, |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for each device matching `filter`, newest first, without holding them
    /// all in memory (for exports).
    pub fn for_each_device(
        &self,
        filter: &DeviceFilter,
        mut f: impl FnMut(Registration) -> Result<(), Error>,
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
            "{REGISTRATION_SELECT} WHERE (?1 IS NULL OR r.pid = ?1) AND (?2 = 0 OR r.revoked_at IS NOT NULL) ORDER BY r.registered_at DESC, r.key_pid, r.unique_id LIMIT ?3"
        ))?;
        let mut rows = stmt.query(params![filter.pid, filter.revoked_only, limit])?;
        while let Some(row) = rows.next()? {
            f(SealedRegistration::read(row)?.open(self.key())?)?;
        }
        Ok(())
    }

    /// The device (`key_pid`, `unique`): `key_pid` is the pid it authenticates with.
    pub fn device(&self, key_pid: &str, unique: &str) -> Result<Option<Registration>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "{REGISTRATION_SELECT} WHERE r.key_pid = ?1 AND r.unique_id = ?2"
        ))?;
        stmt.query_row(params![key_pid, unique], SealedRegistration::read)
            .optional()?
            .map(|s| s.open(self.key()))
            .transpose()
    }

    /// The device holding the triplet `uuid`.
    pub fn device_by_uuid(&self, uuid: &str) -> Result<Option<Registration>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{REGISTRATION_SELECT} WHERE t.uuid = ?1"))?;
        stmt.query_row(params![uuid], SealedRegistration::read)
            .optional()?
            .map(|s| s.open(self.key()))
            .transpose()
    }

    /// Revokes a device: its registrations are refused with `DeviceRevoked` and its
    /// triplet is never handed out again.
    pub fn revoke(&self, key_pid: &str, unique: &str, now: u64) -> Result<(), Error> {
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

    /// Forgets a revoked device's registration so that it may register again (it gets
    /// a fresh triplet; the old one stays revoked).
    pub fn reset(&self, key_pid: &str, unique: &str) -> Result<(), Error> {
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

    /// Registers `count` generated devices (uniques `bulk-<start>`...) under `pid` in
    /// transactions of 50,000, without going through the registrar: for loading a store
    /// before a benchmark. Returns how many were added.
    pub fn bulk_load(
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

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks one imported triplet's fields.
fn validate_import(t: &NewTriplet) -> Result<(), String> {
    if t.uuid.is_empty()
        || t.uuid.len() > MAX_FIELD_LEN
        || !printable(&t.uuid)
        || t.uuid.contains(['/', '+', '#'])
    {
        return Err(format!(
            "uuid `{}` must be 1 to {MAX_FIELD_LEN} printable characters without / + #",
            t.uuid
        ));
    }
    let secret = t.secret.expose();
    if secret.is_empty() || secret.len() > MAX_DEVICE_SECRET_LEN || !printable(secret) {
        return Err(format!(
            "secret of `{}` must be 1 to {MAX_DEVICE_SECRET_LEN} printable characters",
            t.uuid
        ));
    }
    if t.mac.len() > MAX_FIELD_LEN || !printable(&t.mac) {
        return Err(format!(
            "mac of `{}` must be at most {MAX_FIELD_LEN} printable characters",
            t.uuid
        ));
    }
    if t.barcode.len() > MAX_FIELD_LEN || !printable(&t.barcode) {
        return Err(format!(
            "barcode of `{}` must be at most {MAX_FIELD_LEN} printable characters",
            t.uuid
        ));
    }
    Ok(())
}

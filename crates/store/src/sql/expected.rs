//! Expected devices in SQL (PROTOCOL.md section 2, `admission = listed`): the lookup a
//! CONNECT makes, the upload, the listing, removal and the counts of a product's stats.

use dynreg_registrar::ExpectedDevice;

use super::{Conn, SqlBackend, i64_of, params, u64_of};
use crate::Error;
use crate::admin::{Expected, ExpectedFilter, Progress, validate_expected};

/// Rows per write transaction of an upload: the store's one writer serves the
/// registrations waiting between two.
const CHUNK: usize = 50_000;

/// The device `unique` listed for `pid`: one read of the primary key.
pub(crate) fn read(
    conn: &mut dyn Conn,
    pid: &str,
    unique: &str,
) -> Result<Option<ExpectedDevice>, Error> {
    conn.query_opt(
        "SELECT unique_id, barcode, mac, added_at FROM expected_devices WHERE pid = ?1 AND unique_id = ?2",
        params![pid, unique],
        |r| {
            Ok(ExpectedDevice {
                unique: r.text(0)?,
                barcode: r.text(1)?,
                mac: r.text(2)?,
                added_at: u64_of(r.int(3)?),
            })
        },
    )
}

/// (devices listed for `pid`, those of them not registered yet).
pub(crate) fn counts(conn: &mut dyn Conn, pid: &str) -> Result<(u64, u64), Error> {
    let listed = conn
        .query_opt(
            "SELECT count(*) FROM expected_devices WHERE pid = ?1",
            params![pid],
            |r| r.int(0),
        )?
        .unwrap_or(0);
    if listed == 0 {
        return Ok((0, 0));
    }
    let registered = conn
        .query_opt(
            "SELECT count(*) FROM expected_devices e JOIN registrations r ON r.key_pid = e.pid AND r.unique_id = e.unique_id WHERE e.pid = ?1",
            params![pid],
            |r| r.int(0),
        )?
        .unwrap_or(0);
    Ok((u64_of(listed), u64_of(listed - registered)))
}

/// Checks an upload as a whole: uniques and barcodes repeated within it, each field.
fn validate(devices: &mut [ExpectedDevice]) -> Result<(), Error> {
    if devices.is_empty() || devices.len() > crate::expected_csv::MAX_EXPECTED_BATCH {
        return Err(Error::Invalid(format!(
            "{} devices: list 1 to {}",
            devices.len(),
            crate::expected_csv::MAX_EXPECTED_BATCH
        )));
    }
    let mut uniques = std::collections::HashMap::new();
    let mut barcodes = std::collections::HashMap::new();
    for (i, d) in devices.iter_mut().enumerate() {
        validate_expected(d).map_err(|e| Error::Item {
            index: i,
            message: e.0,
        })?;
    }
    for (i, d) in devices.iter().enumerate() {
        let item = |message: String| Error::Item { index: i, message };
        if let Some(first) = uniques.insert(d.unique.as_str(), i) {
            return Err(item(format!(
                "unique `{}` appears twice (first at item {first})",
                d.unique
            )));
        }
        if !d.barcode.is_empty() {
            if let Some(first) = barcodes.insert(d.barcode.as_str(), i) {
                return Err(item(format!(
                    "barcode `{}` appears twice (first at item {first})",
                    d.barcode
                )));
            }
        }
    }
    Ok(())
}

/// [`crate::Operator::expect_devices`].
pub(crate) fn expect<B: SqlBackend>(
    backend: &B,
    pid: &str,
    devices: Vec<ExpectedDevice>,
    progress: &Progress,
) -> Result<u64, Error> {
    let mut devices = devices;
    validate(&mut devices)?;
    backend.read(|conn| super::admin::require_product(conn, pid))?;
    let total = devices.len();
    let mut written = 0usize;
    let mut rest = devices;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(CHUNK));
        let chunk = std::mem::replace(&mut rest, tail);
        let n = chunk.len();
        let owner = pid.to_owned();
        let result = backend.write(move |conn, _| {
            super::admin::require_product(conn, &owner)?;
            for d in &chunk {
                conn.execute(
                    "INSERT INTO expected_devices (pid, unique_id, barcode, mac, added_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (pid, unique_id) DO UPDATE SET barcode = excluded.barcode, mac = excluded.mac, added_at = excluded.added_at",
                    params![&owner, &d.unique, &d.barcode, &d.mac, i64_of(d.added_at)],
                )?;
            }
            Ok(())
        });
        if let Err(e) = result {
            return Err(if written == 0 {
                e
            } else {
                Error::Invalid(format!(
                    "{e} (after {written} of {total} devices were listed: upload the file again)"
                ))
            });
        }
        written += n;
        progress(written as u64);
    }
    backend.invalidate(pid);
    backend.read(|conn| {
        Ok(u64_of(
            conn.query_opt(
                "SELECT count(*) FROM expected_devices WHERE pid = ?1",
                params![pid],
                |r| r.int(0),
            )?
            .unwrap_or(0),
        ))
    })
}

/// [`crate::Operator::list_expected`].
pub(crate) fn list(
    conn: &mut dyn Conn,
    pid: &str,
    filter: &ExpectedFilter,
) -> Result<Vec<Expected>, Error> {
    super::admin::require_product(conn, pid)?;
    let limit = if filter.limit == 0 {
        i64::MAX
    } else {
        i64_of(filter.limit as u64)
    };
    let mut out = Vec::new();
    conn.query(
        "SELECT e.unique_id, e.barcode, e.mac, e.added_at, r.registered_at FROM expected_devices e LEFT JOIN registrations r ON r.key_pid = e.pid AND r.unique_id = e.unique_id WHERE e.pid = ?1 AND e.unique_id > ?2 AND (?3 = 0 OR r.registered_at IS NULL) ORDER BY e.unique_id LIMIT ?4",
        params![
            pid,
            filter.after.as_deref().unwrap_or(""),
            i64::from(filter.waiting_only),
            limit
        ],
        &mut |r| {
            out.push(Expected {
                device: ExpectedDevice {
                    unique: r.text(0)?,
                    barcode: r.text(1)?,
                    mac: r.text(2)?,
                    added_at: u64_of(r.int(3)?),
                },
                registered_at: r.opt_int(4)?.map(u64_of),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// [`crate::Operator::remove_expected`].
pub(crate) fn remove<B: SqlBackend>(
    backend: &B,
    pid: &str,
    uniques: &[String],
) -> Result<u64, Error> {
    let (owner, uniques) = (pid.to_owned(), uniques.to_vec());
    let n = backend.write(move |conn, _| {
        super::admin::require_product(conn, &owner)?;
        let mut n = 0;
        for u in &uniques {
            n += conn.execute(
                "DELETE FROM expected_devices WHERE pid = ?1 AND unique_id = ?2",
                params![&owner, u],
            )?;
        }
        Ok(n)
    })?;
    backend.invalidate(pid);
    Ok(n)
}

//! Copying a store's rows to another store as they are: sealed secrets stay sealed
//! (the associated data is the row's identity, the same in both), ids stay the ids.

use super::{Conn, Row, Value};
use crate::Error;

/// A column's type, for reading it from one database and binding it in the other.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    Bytes,
    OptBytes,
    Bool,
}

/// A value read, owned until it is written.
#[derive(Debug, Clone)]
enum Owned {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl Owned {
    fn read(row: &dyn Row, i: usize, kind: Kind) -> Result<Self, Error> {
        Ok(match kind {
            Kind::Int => Self::Int(row.int(i)?),
            Kind::OptInt => row.opt_int(i)?.map_or(Self::Null, Self::Int),
            Kind::Text => Self::Text(row.text(i)?),
            Kind::OptText => row.opt_text(i)?.map_or(Self::Null, Self::Text),
            Kind::Bytes => Self::Bytes(row.bytes(i)?),
            Kind::OptBytes => row.opt_bytes(i)?.map_or(Self::Null, Self::Bytes),
            Kind::Bool => Self::Bool(row.bool(i)?),
        })
    }

    fn value(&self) -> Value<'_> {
        match self {
            Self::Null => Value::Null,
            Self::Int(v) => Value::Int(*v),
            Self::Text(s) => Value::Text(s),
            Self::Bytes(b) => Value::Bytes(b),
            Self::Bool(b) => Value::Bool(*b),
        }
    }
}

/// The tables a store holds, parents first.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "products",
        &[
            ("pid", Kind::Text),
            ("name", Kind::Text),
            ("secret_enc", Kind::Bytes),
            ("enabled", Kind::Bool),
            ("mode", Kind::Text),
            ("mac_start", Kind::OptInt),
            ("mac_end", Kind::OptInt),
            ("mac_next", Kind::OptInt),
            ("ts_window", Kind::Int),
            ("created_at", Kind::Int),
            ("rereg", Kind::Text),
            ("quota", Kind::OptInt),
            ("bound", Kind::Int),
            ("reregistrations", Kind::Int),
            ("reregistrations_refused", Kind::Int),
            ("previous_secret_enc", Kind::OptBytes),
            ("previous_secret_until", Kind::OptInt),
            ("low_water", Kind::OptInt),
            ("low_fired", Kind::Int),
            ("signatures", Kind::Text),
            ("admission", Kind::Text),
        ],
    ),
    (
        "expected_devices",
        &[
            ("pid", Kind::Text),
            ("unique_id", Kind::Text),
            ("barcode", Kind::Text),
            ("mac", Kind::Text),
            ("added_at", Kind::Int),
        ],
    ),
    (
        "triplets",
        &[
            ("id", Kind::Int),
            ("pid", Kind::Text),
            ("uuid", Kind::Text),
            ("secret_enc", Kind::Bytes),
            ("mac", Kind::Text),
            ("barcode", Kind::OptText),
            ("state", Kind::Int),
            ("withdrawn_at", Kind::OptInt),
        ],
    ),
    (
        "registrations",
        &[
            ("key_pid", Kind::Text),
            ("unique_id", Kind::Text),
            ("pid", Kind::Text),
            ("triplet_id", Kind::Int),
            ("registered_at", Kind::Int),
            ("last_seen_at", Kind::Int),
            ("revoked_at", Kind::OptInt),
        ],
    ),
    (
        "device_history",
        &[
            ("id", Kind::Int),
            ("uuid", Kind::Text),
            ("pid", Kind::Text),
            ("key_pid", Kind::Text),
            ("unique_id", Kind::Text),
            ("registered_at", Kind::Int),
            ("revoked_at", Kind::OptInt),
            ("reset_at", Kind::Int),
        ],
    ),
];

/// Rows per INSERT statement.
const ROWS_PER_INSERT: usize = 500;

/// How many rows each table holds.
pub(crate) fn counts(conn: &mut dyn Conn) -> Result<Vec<(&'static str, u64)>, Error> {
    TABLES
        .iter()
        .map(|(table, _)| {
            let n = conn
                .query_opt(&format!("SELECT count(*) FROM {table}"), &[], |r| r.int(0))?
                .unwrap_or(0);
            Ok((*table, super::u64_of(n)))
        })
        .collect()
}

/// Copies every row of `from` into `to` (in the caller's transaction on `to`), calling
/// `progress(table, rows copied so far)`.
pub(crate) fn copy(
    from: &mut dyn Conn,
    to: &mut dyn Conn,
    progress: &dyn Fn(&str, u64),
) -> Result<(), Error> {
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let select = format!("SELECT {} FROM {table} ORDER BY 1", names.join(", "));
        let mut rows: Vec<Vec<Owned>> = Vec::with_capacity(ROWS_PER_INSERT);
        let mut done = 0u64;
        let mut flush = |rows: &mut Vec<Vec<Owned>>, done: &mut u64| -> Result<(), Error> {
            if rows.is_empty() {
                return Ok(());
            }
            let mut sql = format!("INSERT INTO {table} ({}) VALUES ", names.join(", "));
            let mut n = 0;
            for (r, _) in rows.iter().enumerate() {
                if r > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for c in 0..names.len() {
                    n += 1;
                    if c > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("?{n}"));
                }
                sql.push(')');
            }
            let values: Vec<Value<'_>> = rows.iter().flatten().map(Owned::value).collect();
            to.execute(&sql, &values)?;
            *done += rows.len() as u64;
            progress(table, *done);
            rows.clear();
            Ok(())
        };
        from.query(&select, &[], &mut |row| {
            let values = columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| Owned::read(row, i, *kind))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(values);
            if rows.len() == ROWS_PER_INSERT {
                flush(&mut rows, &mut done)?;
            }
            Ok(())
        })?;
        flush(&mut rows, &mut done)?;
    }
    Ok(())
}

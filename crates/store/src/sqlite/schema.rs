//! The schema, as an ordered list of migrations embedded in the binary.
//!
//! `PRAGMA user_version` records how many migrations a database has had; opening a
//! database applies the missing ones in one transaction. A database written by a newer
//! dynreg (more migrations than this binary knows) is refused rather than guessed at.

use rusqlite::Connection;
use rusqlite::config::DbConfig;

use crate::Error;

/// Migration `i` brings a database from version `i` to `i + 1`. Append only: never edit
/// a migration that has shipped.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: products, triplets, registrations.
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE products (
        pid        TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        secret_enc BLOB NOT NULL,
        enabled    INTEGER NOT NULL DEFAULT 1,
        mode       TEXT NOT NULL CHECK (mode IN ('pool', 'generate', 'pool-then-generate')),
        mac_start  INTEGER,
        mac_end    INTEGER,
        mac_next   INTEGER,
        ts_window  INTEGER NOT NULL DEFAULT 900,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- state: 0 free, 1 bound, 2 revoked
    CREATE TABLE triplets (
        id         INTEGER PRIMARY KEY,
        pid        TEXT NOT NULL REFERENCES products (pid),
        uuid       TEXT NOT NULL UNIQUE,
        secret_enc BLOB NOT NULL,
        mac        TEXT NOT NULL DEFAULT '',
        barcode    TEXT,
        state      INTEGER NOT NULL CHECK (state IN (0, 1, 2))
    );
    CREATE UNIQUE INDEX triplets_barcode ON triplets (pid, barcode) WHERE barcode IS NOT NULL;
    CREATE INDEX triplets_free ON triplets (pid, id) WHERE state = 0;
    CREATE INDEX triplets_pid_state ON triplets (pid, state);
    -- Keyed by the identity the device authenticates with; pid is where it is registered.
    CREATE TABLE registrations (
        key_pid       TEXT NOT NULL,
        unique_id     TEXT NOT NULL,
        pid           TEXT NOT NULL REFERENCES products (pid),
        triplet_id    INTEGER NOT NULL UNIQUE REFERENCES triplets (id),
        registered_at INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL,
        revoked_at    INTEGER,
        PRIMARY KEY (key_pid, unique_id)
    ) WITHOUT ROWID;
    CREATE INDEX registrations_pid ON registrations (pid, registered_at);",
];

/// Sets the connection's pragmas: WAL, full durability, foreign keys, busy timeout.
pub(crate) fn configure(conn: &Connection) -> Result<(), Error> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Config(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )));
    }
    // Plans never depend on bound values: without this, SQLite (built with STAT4)
    // re-prepares statements whose parameters are compared with partial-index terms
    // every time a value changes, which cost a third of the writer's time.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 10000;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384;",
    )?;
    Ok(())
}

/// Applies the migrations this database lacks.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the database has schema version {version}, newer than this dynreg knows ({}); upgrade dynreg",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
    }
    tx.commit()?;
    Ok(())
}

//! The schema, as an ordered list of migrations embedded in the binary.
//!
//! `PRAGMA user_version` records how many migrations a database has had; opening a
//! database applies the missing ones in one transaction. A database written by a newer
//! dynreg (more migrations than this binary knows) is refused rather than guessed at.

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension};

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
    // 2: the triplets' state CHECK as equalities. SQLite evaluates `state IN (0, 1, 2)`
    // in a CHECK by building a temporary b-tree of the list on every insert and update
    // (a dozen allocations per registration on the writer thread). A CHECK cannot be
    // altered in place, so the table is rebuilt (SQLite's documented procedure, run with
    // foreign keys off and checked before commit); rows, ids and indexes are unchanged.
    "CREATE TABLE triplets_v2 (
        id         INTEGER PRIMARY KEY,
        pid        TEXT NOT NULL REFERENCES products (pid),
        uuid       TEXT NOT NULL UNIQUE,
        secret_enc BLOB NOT NULL,
        mac        TEXT NOT NULL DEFAULT '',
        barcode    TEXT,
        state      INTEGER NOT NULL CHECK (state = 0 OR state = 1 OR state = 2)
    );
    INSERT INTO triplets_v2 (id, pid, uuid, secret_enc, mac, barcode, state)
        SELECT id, pid, uuid, secret_enc, mac, barcode, state FROM triplets ORDER BY id;
    DROP TABLE triplets;
    ALTER TABLE triplets_v2 RENAME TO triplets;
    CREATE UNIQUE INDEX triplets_barcode ON triplets (pid, barcode) WHERE barcode IS NOT NULL;
    CREATE INDEX triplets_free ON triplets (pid, id) WHERE state = 0;
    CREATE INDEX triplets_pid_state ON triplets (pid, state);",
    // 3: per-product re-registration policy, quota and re-registration counters.
    // Products that existed before keep the behaviour they had (`always`); new ones get
    // the default policy from the operator's command. `bound` counts the devices
    // registered under a product, kept only for products with a quota (the one place it
    // is read: a registration of another product pays nothing for it, where a trigger
    // would look the product up on every insert); it is recounted whenever a quota is
    // set.
    "ALTER TABLE products ADD COLUMN rereg TEXT NOT NULL DEFAULT 'always';
    ALTER TABLE products ADD COLUMN quota INTEGER;
    ALTER TABLE products ADD COLUMN bound INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE products ADD COLUMN reregistrations INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE products ADD COLUMN reregistrations_refused INTEGER NOT NULL DEFAULT 0;",
    // 4: secret rotation with a grace period (the previous secret, sealed, and the end of
    // its grace); withdrawn free triplets (state 2, never handed out, told apart from
    // revoked ones by `withdrawn_at`); MAC lookups (imports refuse MACs in use, the
    // returns desk finds a device by MAC); the history of triplets whose device was
    // reset, so that the old triplet stays findable.
    "ALTER TABLE products ADD COLUMN previous_secret_enc BLOB;
    ALTER TABLE products ADD COLUMN previous_secret_until INTEGER;
    ALTER TABLE triplets ADD COLUMN withdrawn_at INTEGER;
    CREATE INDEX triplets_mac ON triplets (mac) WHERE mac <> '';
    CREATE TABLE device_history (
        id            INTEGER PRIMARY KEY,
        uuid          TEXT NOT NULL,
        pid           TEXT NOT NULL,
        key_pid       TEXT NOT NULL,
        unique_id     TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        revoked_at    INTEGER,
        reset_at      INTEGER NOT NULL
    );
    CREATE INDEX device_history_uuid ON device_history (uuid);
    CREATE INDEX device_history_device ON device_history (key_pid, unique_id);",
    // 5: the admin API's tokens (stored as SHA-256 hashes; a name is unique among the
    // tokens not revoked) and the append-only audit log.
    AUDIT_AND_TOKENS,
    // 6: the event outbox: the audit lines of device events (and pool.low) waiting to
    // be delivered to the platform, added by a trigger in the transaction that writes
    // the line, while the outbox is on (`meta.outbox`).
    // Also each product's low-water mark of free triplets, and whether `pool.low`
    // fired (cleared when the pool is refilled above the mark).
    "CREATE TABLE outbox (
        audit_id INTEGER PRIMARY KEY REFERENCES audit (id)
    );
    ALTER TABLE products ADD COLUMN low_water INTEGER;
    ALTER TABLE products ADD COLUMN low_fired INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER audit_outbox AFTER INSERT ON audit
    WHEN NEW.action IN ('device.registered', 'device.reregistered', 'device.revoked', 'device.reset', 'pool.low')
        AND EXISTS (SELECT 1 FROM meta WHERE key = 'outbox')
    BEGIN
        INSERT INTO outbox (audit_id) VALUES (NEW.id);
    END;",
    // 7: which sign methods a product's devices may use (`any`: the seed's and the
    // device-bound ones; `bound`), which uniques may CONNECT (`open`; `listed`: those
    // listed in expected_devices), and the expected devices (PROTOCOL.md section 2).
    "ALTER TABLE products ADD COLUMN signatures TEXT NOT NULL DEFAULT 'any' CHECK (signatures IN ('any', 'bound'));
    ALTER TABLE products ADD COLUMN admission TEXT NOT NULL DEFAULT 'open' CHECK (admission IN ('open', 'listed'));
    CREATE TABLE expected_devices (
        pid       TEXT NOT NULL REFERENCES products (pid),
        unique_id TEXT NOT NULL,
        barcode   TEXT NOT NULL DEFAULT '',
        mac       TEXT NOT NULL DEFAULT '',
        added_at  INTEGER NOT NULL,
        PRIMARY KEY (pid, unique_id)
    ) WITHOUT ROWID;",
];

/// Migration 5: the same tables as PostgreSQL's migration 2.
const AUDIT_AND_TOKENS: &str = "CREATE TABLE api_tokens (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
        hash        BLOB NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL,
        created_by  TEXT NOT NULL,
        revoked_at  INTEGER
    );
    CREATE UNIQUE INDEX api_tokens_name ON api_tokens (name) WHERE revoked_at IS NULL;
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY,
        at      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        origin  TEXT NOT NULL,
        action  TEXT NOT NULL,
        pid     TEXT NOT NULL,
        target  TEXT NOT NULL,
        uuid    TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    -- Lines by product and target (a device's page). No index on uuid or time: each
    -- would cost every registration a random b-tree insert (measured: the registration
    -- path's writer lost a sixth of its rate to a uuid index); those filters scan.
    CREATE INDEX audit_pid ON audit (pid, target) WHERE pid <> '';";

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

/// Applies the migrations this database lacks, in one transaction.
///
/// Foreign keys are off while they run (a migration may rebuild a table that others
/// refer to, which SQLite only allows that way) and every reference is checked before
/// the commit; the connection's setting is restored afterwards.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let fks: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
    let result = apply_migrations(conn);
    if fks {
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    }
    result
}

fn apply_migrations(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the database has schema version {version}, newer than this dynreg knows ({}); upgrade dynreg",
            MIGRATIONS.len()
        )));
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
    }
    let broken: Option<String> = tx
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .optional()?;
    if let Some(table) = broken {
        return Err(Error::Config(format!(
            "migrating the database left a broken reference in table {table}; nothing was changed"
        )));
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        stmt.query_map([], |r| r.get::<_, String>(1))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn version_1_databases_are_migrated_with_their_rows_and_references_intact() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO products (pid, name, secret_enc, mode, created_at)
                 VALUES ('p', 'P', x'00', 'pool', 1);
             INSERT INTO triplets (id, pid, uuid, secret_enc, mac, barcode, state) VALUES
                 (1, 'p', 'u1', x'01', 'm1', 'B1', 0),
                 (2, 'p', 'u2', x'02', '', NULL, 1),
                 (7, 'p', 'u7', x'07', '', NULL, 2);
             INSERT INTO registrations VALUES ('p', 'dev', 'p', 2, 10, 11, NULL);",
        )
        .unwrap();
        let rows = |conn: &Connection| -> Vec<(i64, String, Option<String>, i64)> {
            conn.prepare("SELECT id, uuid, barcode, state FROM triplets ORDER BY id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let before = rows(&conn);
        let insert =
            "INSERT INTO triplets (pid, uuid, secret_enc, state) VALUES ('p', 'x', x'00', 1)";
        assert!(ops(&conn, insert).contains(&"OpenEphemeral".to_owned()));

        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        migrate(&mut conn).unwrap();

        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(rows(&conn), before);
        // The CHECK no longer builds a temporary b-tree, and still refuses other states.
        assert!(!ops(&conn, insert).contains(&"OpenEphemeral".to_owned()));
        let bad = conn.execute(
            "INSERT INTO triplets (pid, uuid, secret_enc, state) VALUES ('p', 'x', x'00', 3)",
            [],
        );
        assert!(bad.unwrap_err().to_string().contains("CHECK"));
        // Foreign keys are back on and still point at the rebuilt table.
        let fks: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fks);
        let dangling = conn.execute(
            "INSERT INTO registrations VALUES ('p', 'other', 'p', 99, 10, 11, NULL)",
            [],
        );
        assert!(dangling.unwrap_err().to_string().contains("FOREIGN KEY"));
        // The indexes came back, and a duplicate barcode is still refused.
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'triplets' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "triplets_barcode",
                "triplets_free",
                "triplets_mac",
                "triplets_pid_state"
            ]
        );
        let dup = conn.execute(
            "INSERT INTO triplets (pid, uuid, secret_enc, barcode, state) VALUES ('p', 'y', x'00', 'B1', 0)",
            [],
        );
        assert!(dup.unwrap_err().to_string().contains("UNIQUE"));
        // Opening again is a no-op.
        migrate(&mut conn).unwrap();
        assert_eq!(rows(&conn), before);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        let e = migrate(&mut conn).unwrap_err().to_string();
        assert!(e.contains("newer than this dynreg knows"), "{e}");
    }
}

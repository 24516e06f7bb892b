//! One connection of a thread ([`PgConn`]): opened again when it breaks, the SQL
//! layer's [`Conn`] over it, and the claim of free pool triplets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::Error;
use crate::sql::deferred::Bulk;
use crate::sql::{Conn, Row, Value, i64_of, params};

use super::*;

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Every integer column is BIGINT: each variant binds to the type of its column.
        true
    }

    to_sql_checked!();
}

crate::sql::impl_row!(postgres::Row, try_get);

/// SQLite's `?N` parameters as PostgreSQL's `$N` (the shared statements hold no `?`
/// elsewhere).
pub(super) fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// One thread's connection, opened again when it breaks.
pub(super) struct PgConn {
    pub(super) settings: Arc<Settings>,
    /// Per pool, where the next search for a free triplet starts (shared by the
    /// store's writers).
    pub(super) cursors: Arc<Mutex<HashMap<String, i64>>>,
    pub(super) client: Option<postgres::Client>,
    pub(super) statements: HashMap<String, postgres::Statement>,
    pub(super) in_tx: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) last_error: String,
    /// Run on every new connection: the registration path's planner settings.
    pub(super) setup: Option<&'static str>,
    /// What is left of this transaction's wait for free triplets that concurrent
    /// transactions hold (see [`HELD_TRIPLETS_WAIT`]).
    pub(super) held_wait_left: Duration,
}

/// The registration path's connections never scan a table: every statement they run
/// has an index. PostgreSQL caches a generic plan for a prepared statement after a few
/// runs, and one planned while a table was small (a new store) kept scanning it as it
/// grew: registrations fell to 1,500/s on a new database until autovacuum analysed it
/// (measured with auto_explain: `Seq Scan on registrations` in the lookup by device).
pub(super) const HOT_PATH_SETUP: &str = "SET enable_seqscan = off";

/// How long a thread waits before it tries to connect again.
pub(super) const RECONNECT_EVERY: Duration = Duration::from_millis(250);

impl PgConn {
    pub(super) fn new(settings: Arc<Settings>, client: Option<postgres::Client>) -> Self {
        Self {
            settings,
            cursors: Arc::default(),
            client,
            statements: HashMap::new(),
            held_wait_left: HELD_TRIPLETS_WAIT,
            in_tx: false,
            retry_at: None,
            last_error: String::new(),
            setup: None,
        }
    }

    /// A session of the registration path (see [`HOT_PATH_SETUP`]).
    pub(super) fn hot(
        settings: Arc<Settings>,
        mut client: postgres::Client,
    ) -> Result<Self, postgres::Error> {
        client.batch_execute(HOT_PATH_SETUP)?;
        let mut s = Self::new(settings, Some(client));
        s.setup = Some(HOT_PATH_SETUP);
        Ok(s)
    }

    pub(super) fn unavailable(&self) -> Error {
        Error::Unavailable(format!(
            "PostgreSQL at {} is unreachable: {}",
            self.settings.display, self.last_error
        ))
    }

    /// The open connection, connecting if there is none (at most every
    /// [`RECONNECT_EVERY`]).
    pub(super) fn client(&mut self) -> Result<&mut postgres::Client, Error> {
        if self
            .client
            .as_ref()
            .is_some_and(postgres::Client::is_closed)
        {
            self.drop_connection();
        }
        if self.client.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err(self.unavailable());
            }
            let connected = self.settings.connect().and_then(|mut c| {
                if let Some(setup) = self.setup {
                    c.batch_execute(setup)?;
                }
                Ok(c)
            });
            match connected {
                Ok(c) => {
                    self.client = Some(c);
                    self.retry_at = None;
                }
                Err(e) => {
                    self.last_error = describe(&e);
                    self.retry_at = Some(Instant::now() + RECONNECT_EVERY);
                    return Err(self.unavailable());
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Unavailable("no connection".into()))
    }

    /// Checks the operator connection before an operation (one round trip; the server
    /// may have restarted since the last): a dead one is dropped, to be opened again by
    /// the next statement, so that an operation does not fail on a connection lost
    /// before it began.
    pub(super) fn revalidate(&mut self) {
        if let Some(client) = &mut self.client {
            if client.is_valid(Duration::from_secs(5)).is_err() {
                self.drop_connection();
            }
        }
    }

    pub(super) fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
        self.in_tx = false;
    }

    /// Notes a failure: a lost connection is dropped, to be opened again.
    pub(super) fn check<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, Error> {
        r.map_err(|e| {
            if connection_lost(&e) {
                self.last_error = describe(&e);
                self.drop_connection();
            }
            Error::Postgres(e)
        })
    }

    /// Locks up to `n` free triplets of `pid`'s pool for this transaction, skipping
    /// those that concurrent transactions hold, and calls `read` with each (the
    /// [`crate::sql::tx::TRIPLET_COLUMNS`]); how many it found.
    ///
    /// Claimed triplets leave dead entries at the start of the free index until VACUUM,
    /// and a scan from the start would step over all of them on every claim (quadratic
    /// in a busy hour). The search starts where this store's last claim of the pool
    /// was; only when that does not find enough does it look before it (which finds
    /// triplets that a rolled-back claim or a concurrent writer skipped).
    pub(super) fn claim_free(
        &mut self,
        pid: &str,
        n: usize,
        read: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<Claimed, Error> {
        let from = self
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid)
            .copied()
            .unwrap_or(0);
        let mut claimed: Vec<i64> = Vec::with_capacity(n);
        for (start, end) in [(from, i64::MAX), (0, from)] {
            if claimed.len() == n || start >= end {
                continue;
            }
            let conn: &mut dyn Conn = self;
            conn.query(
                "SELECT t.id, t.pid, t.uuid, t.secret_enc, t.mac, t.barcode, t.state FROM triplets t WHERE t.pid = ?1 AND t.state = 0 AND t.id >= ?2 AND t.id < ?3 ORDER BY t.id LIMIT ?4 FOR UPDATE SKIP LOCKED",
                params![pid, start, end, i64_of((n - claimed.len()) as u64)],
                &mut |r| {
                    claimed.push(r.int(0)?);
                    read(r)
                },
            )?;
        }
        let found = claimed.len();
        let last = claimed.iter().copied().max();
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        match last {
            Some(id) => {
                let c = cursors.entry(pid.to_owned()).or_insert(0);
                *c = (*c).max(id + 1);
            }
            None => {
                cursors.remove(pid);
            }
        }
        drop(cursors);
        // Skipped rows are free triplets that concurrent transactions hold (rows this
        // transaction holds are not skipped: they are in `claimed`).
        let mut held = false;
        if found < n {
            self.query_arrays(
                "SELECT EXISTS (SELECT 1 FROM triplets WHERE pid = $1 AND state = 0 AND NOT (id = ANY($2)))",
                &[&pid, &claimed],
                &mut |r| {
                    held = r.bool(0)?;
                    Ok(())
                },
            )?;
        }
        Ok(Claimed { found, held })
    }

    pub(super) fn statement(&mut self, sql: &str) -> Result<postgres::Statement, Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client()?.prepare(&dollar_params(sql));
        let s = self.check(prepared)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// What [`PgConn::claim_free`] found.
pub(super) struct Claimed {
    /// Triplets locked and read.
    pub(super) found: usize,
    /// Fewer than asked for, and concurrent transactions hold free triplets of the pool.
    pub(super) held: bool,
}

/// How long, in all, the claims of one transaction wait for free triplets that
/// concurrent transactions hold before they count them as taken and call the pool
/// empty. Per transaction, not per claim: the transactions that hold them may be
/// waiting too, for the triplets this one has bound.
pub(super) const HELD_TRIPLETS_WAIT: Duration = Duration::from_millis(50);

impl Drop for PgConn {
    fn drop(&mut self) {
        // The driver's client blocks on its own runtime as it closes, which panics on
        // a thread that drives async tasks: close it elsewhere then.
        if let Some(client) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("dynreg-pg-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

pub(super) fn bind<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Conn for PgConn {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, Error> {
        let stmt = self.statement(sql)?;
        let r = self.client()?.execute(&stmt, &bind(params));
        self.check(r)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<(), Error> {
        use postgres::fallible_iterator::FallibleIterator;
        let stmt = self.statement(sql)?;
        let client = self.client()?;
        let result = (|| -> Result<(), Error> {
            let mut rows = client.query_raw(&stmt, params.iter())?;
            while let Some(row) = rows.next()? {
                each(&row)?;
            }
            Ok(())
        })();
        match result {
            Err(Error::Postgres(e)) => self.check(Err(e)),
            other => other,
        }
    }

    fn insert_id(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<i64>, Error> {
        let conn: &mut dyn Conn = self;
        conn.query_opt(&format!("{sql} RETURNING id"), params, |r| r.int(0))
    }

    fn control(&mut self, sql: &str) -> Result<(), Error> {
        let r = self.client()?.batch_execute(sql);
        self.check(r)?;
        let word = sql.split_whitespace().next().unwrap_or_default();
        if word.eq_ignore_ascii_case("BEGIN") {
            self.in_tx = true;
        } else if (word.eq_ignore_ascii_case("COMMIT") || word.eq_ignore_ascii_case("ROLLBACK"))
            && !sql.contains(" TO ")
        {
            self.in_tx = false;
        }
        Ok(())
    }

    fn begin(&mut self) -> Result<(), Error> {
        if self.in_tx {
            // A transaction left open by a failure: start clean.
            let _ = self.control("ROLLBACK");
        }
        self.held_wait_left = HELD_TRIPLETS_WAIT;
        self.control("BEGIN")
    }

    fn in_transaction(&self) -> bool {
        self.in_tx && self.client.is_some()
    }

    fn free_triplet(
        &mut self,
        pid: &str,
        read: &mut dyn FnMut(&dyn Row) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        // Triplets that others hold are mostly about to be bound by them, but some are
        // handed back (a batch rolled back, or claimed ahead and not needed): wait a
        // little for them. A pool whose free triplets are all still held after the wait
        // is busy, not empty: the device is told to try again (5031), not that the pool
        // is exhausted (5030), which only a pool with no free triplet at all answers.
        let mut wait = Duration::from_millis(1);
        loop {
            let claim = self.claim_free(pid, 1, read)?;
            if claim.found == 1 || !claim.held {
                return Ok(claim.found == 1);
            }
            if self.held_wait_left.is_zero() {
                return Err(Error::Unavailable(format!(
                    "every free triplet of product `{pid}` is held by registrations in flight"
                )));
            }
            wait = wait.min(self.held_wait_left);
            std::thread::sleep(wait);
            self.held_wait_left -= wait;
            wait *= 2;
        }
    }

    fn bulk(&mut self) -> Option<&mut dyn Bulk> {
        Some(self)
    }

    fn reserve_triplet_ids(&mut self, n: usize) -> Result<Vec<i64>, Error> {
        let conn: &mut dyn Conn = self;
        let mut ids = conn.query_vec(
            "SELECT nextval(pg_get_serial_sequence('triplets', 'id')) FROM generate_series(1, CAST(?1 AS BIGINT))",
            params![i64_of(n as u64)],
            |r| r.int(0),
        )?;
        ids.sort_unstable();
        Ok(ids)
    }
}

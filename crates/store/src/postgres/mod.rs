//! The PostgreSQL store: several dynreg instances on one database.
//!
//! - **Registrations** run on writer threads ([`DEFAULT_WRITERS`] by default), each
//!   owning one connection and taking jobs from one shared queue. A writer runs the job
//!   that waits and every job already queued behind it in one transaction and commits
//!   once (group commit, `sql/batch.rs`): the database's fsync per commit is shared by
//!   the batch, and nothing is answered before its commit. The batch reads ahead and
//!   writes its rows set-based (`sql/deferred.rs`: BEGIN, one read, one write,
//!   COMMIT); what that does not cover runs the statements SQLite runs (`sql/`). A
//!   free pool triplet is taken with `FOR UPDATE
//!   SKIP LOCKED`, so that writers of several instances never wait for, nor take, the
//!   same triplet, and a device registered by another instance an instant earlier is
//!   found when the batch runs again (the insert of its registration says `ON CONFLICT
//!   DO NOTHING`).
//! - **Product and expected-device lookups** run on two reader threads.
//! - **Operator operations** run on the caller's thread over a connection of their own.
//! - **Product changes** made through this store reach its cache at once; changes by
//!   another instance are seen when the registrar's product cache expires its entry
//!   (2 s).
//! - **Outages**: a connection that breaks is opened again when next needed, at most
//!   every 250 ms per thread; meanwhile work fails with
//!   [`StoreErrorKind::Unavailable`], which devices see as the retryable status.

mod schema;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dynreg_registrar::{
    AuditEntry, ExpectedDevice, Intent, Product, ProductListener, Store, StoreError,
    StoreErrorKind, Tx,
};
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::Error;
use crate::crypto::{KeySource, MasterKey};
use crate::sql::batch::{Batcher, Counters, Job, TxJob};
use crate::sql::deferred::{Bulk, Kept, Written};
use crate::sql::tx::registration_select;
use crate::sql::{Conn, Row, SqlBackend, Value, i64_of, params, u64_of};

/// Writer connections by default. Measured on the 2-core reference machine with
/// PostgreSQL 15 beside dynreg (docs/benchmarks.md): 2 writers committed 24,900
/// registrations/s from 64 callers where 4 did 16,300 and 1 did 16,300; fewer writers
/// make larger batches, so fewer transactions and less PostgreSQL CPU per
/// registration. A database on its own machine with slow fsyncs may want more
/// (`database_writers`).
pub const DEFAULT_WRITERS: usize = 2;

/// How to open a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database?sslmode=...` (or the key=value
    /// form). `sslmode` as libpq reads it: `disable` connects in plain text; `prefer`
    /// (the default) uses TLS when the server offers it and `require` insists on it,
    /// both without checking the server's certificate; `verify-ca` and `verify-full`
    /// check it against the system's roots, [`PgConfig::ca_file`] and `sslrootcert`
    /// (dynreg checks the host name in both).
    pub url: String,
    /// Where the master key comes from: [`KeySource::Hex`] or [`KeySource::File`]
    /// (there is no data dir). Every instance on one database needs the same key.
    pub key: KeySource,
    /// Threads running registrations, each with its own connection: group-commit
    /// batches in flight at once (default [`DEFAULT_WRITERS`]).
    pub writers: usize,
    /// The most registrations committed together in one transaction.
    pub max_batch: usize,
    /// Statements running longer are cancelled (PostgreSQL's `statement_timeout`).
    pub statement_timeout: Duration,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// A PEM file of certificate authorities to trust for the server's certificate,
    /// besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Create dynreg's schema in a database that has none (and the key file when it is
    /// missing). When `false`, such a database is refused and named.
    pub create: bool,
}

impl PgConfig {
    /// The defaults for `url`: key from `key`, 2 writers, batches of up to 64, 30 s
    /// statement timeout, 5 s connect timeout.
    pub fn new(url: impl Into<String>, key: KeySource) -> Self {
        Self {
            url: url.into(),
            key,
            writers: DEFAULT_WRITERS,
            max_batch: 64,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
            create: true,
        }
    }
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    if url.contains("://") {
        return dynreg_net::url::redact(url);
    }
    // key=value form: hide password=...
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A PostgreSQL error in words: the server's message and detail, or the client's error
/// and its cause.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str(": ");
            s.push_str(detail);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Whether `e` means the connection is gone (or the server is going away), so that it
/// must be opened again.
fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
    }
}

/// Maps a PostgreSQL error to the registrar's view of it (kind and message), keeping it
/// as the source.
pub(crate) fn classify(e: postgres::Error) -> StoreError {
    StoreError::new(kind_of(&e), describe(&e)).with_source(e)
}

/// What kind of failure a PostgreSQL error is.
pub(crate) fn kind_of(e: &postgres::Error) -> StoreErrorKind {
    if connection_lost(e) {
        StoreErrorKind::Unavailable
    } else {
        match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION =>
            {
                StoreErrorKind::Conflict
            }
            Some(c)
                if [
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::QUERY_CANCELED,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::LOCK_NOT_AVAILABLE,
                ]
                .contains(c) =>
            {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Backend,
        }
    }
}

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
fn dollar_params(sql: &str) -> String {
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

/// How to connect: parsed once.
struct Settings {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL without its password.
    display: String,
}

/// What the URL says of TLS beyond what the driver reads: `sslmode=verify-ca` and
/// `verify-full` (given to the driver as `require`) and `sslrootcert`.
struct TlsWishes {
    verify: bool,
    root_cert: Option<PathBuf>,
}

/// Takes `sslmode=verify-*` and `sslrootcert` out of a URL (either form) for dynreg to
/// apply, leaving what the driver parses.
fn split_tls_params(url: &str) -> (String, TlsWishes) {
    let mut wishes = TlsWishes {
        verify: false,
        root_cert: None,
    };
    let mut take = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslmode", "verify-ca" | "verify-full") => {
                wishes.verify = true;
                Some("sslmode=require".to_owned())
            }
            ("sslrootcert", path) => {
                wishes.root_cert = Some(PathBuf::from(path));
                None
            }
            _ => Some(format!("{key}={value}")),
        }
    };
    let rewritten = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<String> = query
                    .split('&')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                take(k, v)
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rewritten, wishes)
}

impl Settings {
    fn new(config: &PgConfig) -> Result<Self, Error> {
        let display = redact(&config.url);
        let (url, wishes) = split_tls_params(&config.url);
        let mut pg: postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("database URL {display}: {e}")))?;
        pg.application_name("dynreg")
            .connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(&format!(
                "-c statement_timeout={}",
                config.statement_timeout.as_millis()
            ));
        let tls = match pg.get_ssl_mode() {
            postgres::config::SslMode::Disable => None,
            _ => Some(tls_connector(
                wishes.verify,
                wishes.root_cert.as_deref().or(config.ca_file.as_deref()),
            )?),
        };
        Ok(Self {
            config: pg,
            tls,
            display,
        })
    }

    fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

fn tls_connector(
    verify: bool,
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Error> {
    use tokio_rustls::rustls;
    if !verify {
        let provider = dynreg_net::tls::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS for the database: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(unverified::AnyCertificate(provider)))
            .with_no_client_auth();
        return Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config));
    }
    let config = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("database CA file {}: {e}", path.display())))?;
            dynreg_net::tls::client_config(dynreg_net::tls::Roots::SystemAnd(&pem))
                .map_err(|e| Error::Config(format!("database CA file {}: {e}", path.display())))?
        }
        None => dynreg_net::tls::client_config(dynreg_net::tls::Roots::System)
            .map_err(|e| Error::Config(format!("TLS for the database: {e}")))?,
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=prefer` and `require` as libpq has them: encryption without a check of
/// the server's certificate (the handshake's signatures are still verified).
mod unverified {
    use std::sync::Arc;
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::crypto::{
        CryptoProvider, verify_tls12_signature, verify_tls13_signature,
    };
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct AnyCertificate(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// One thread's connection, opened again when it breaks.
struct Session {
    settings: Arc<Settings>,
    /// Per pool, where the next search for a free triplet starts (shared by the
    /// store's writers).
    cursors: Arc<Mutex<HashMap<String, i64>>>,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    in_tx: bool,
    retry_at: Option<Instant>,
    last_error: String,
    /// Run on every new connection: the registration path's planner settings.
    setup: Option<&'static str>,
    /// What is left of this transaction's wait for free triplets that concurrent
    /// transactions hold (see [`HELD_TRIPLETS_WAIT`]).
    held_wait_left: Duration,
}

/// The registration path's connections never scan a table: every statement they run
/// has an index. PostgreSQL caches a generic plan for a prepared statement after a few
/// runs, and one planned while a table was small (a new store) kept scanning it as it
/// grew: registrations fell to 1,500/s on a new database until autovacuum analysed it
/// (measured with auto_explain: `Seq Scan on registrations` in the lookup by device).
const HOT_PATH_SETUP: &str = "SET enable_seqscan = off";

/// How long a thread waits before it tries to connect again.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);

impl Session {
    fn new(settings: Arc<Settings>, client: Option<postgres::Client>) -> Self {
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
    fn hot(settings: Arc<Settings>, mut client: postgres::Client) -> Result<Self, postgres::Error> {
        client.batch_execute(HOT_PATH_SETUP)?;
        let mut s = Self::new(settings, Some(client));
        s.setup = Some(HOT_PATH_SETUP);
        Ok(s)
    }

    fn unavailable(&self) -> Error {
        Error::Unavailable(format!(
            "PostgreSQL at {} is unreachable: {}",
            self.settings.display, self.last_error
        ))
    }

    /// The open connection, connecting if there is none (at most every
    /// [`RECONNECT_EVERY`]).
    fn client(&mut self) -> Result<&mut postgres::Client, Error> {
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
    fn revalidate(&mut self) {
        if let Some(client) = &mut self.client {
            if client.is_valid(Duration::from_secs(5)).is_err() {
                self.drop_connection();
            }
        }
    }

    fn drop_connection(&mut self) {
        self.client = None;
        self.statements.clear();
        self.in_tx = false;
    }

    /// Notes a failure: a lost connection is dropped, to be opened again.
    fn check<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, Error> {
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
    fn claim_free(
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

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client()?.prepare(&dollar_params(sql));
        let s = self.check(prepared)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// What [`Session::claim_free`] found.
struct Claimed {
    /// Triplets locked and read.
    found: usize,
    /// Fewer than asked for, and concurrent transactions hold free triplets of the pool.
    held: bool,
}

/// How long, in all, the claims of one transaction wait for free triplets that
/// concurrent transactions hold before they count them as taken and call the pool
/// empty. Per transaction, not per claim: the transactions that hold them may be
/// waiting too, for the triplets this one has bound.
const HELD_TRIPLETS_WAIT: Duration = Duration::from_millis(50);

impl Drop for Session {
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

fn bind<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Conn for Session {
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

/// The set-based statements: arrays bound as parameters and unnested.
impl Bulk for Session {
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
const KEPT_WRITE: &str = "WITH t AS (
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

impl Session {
    /// Runs a query with array parameters and calls `each` with every row.
    fn query_arrays(
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

/// Work for a reader thread.
type ReadJob = Box<dyn FnOnce(&mut Session, &MasterKey) + Send>;

/// Counters of the writers (see [`crate::WriterStats`]).
struct Threads {
    writers: RwLock<Option<Sender<Box<dyn Job>>>>,
    readers: RwLock<Option<Sender<ReadJob>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    key: Arc<MasterKey>,
    settings: Arc<Settings>,
    admin: Mutex<Session>,
    threads: Threads,
    counters: Arc<Counters>,
    listeners: crate::sql::Listeners,
}

/// The PostgreSQL store. Cheap to clone (clones share the threads and connections).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.settings.display)
            .finish_non_exhaustive()
    }
}

/// The number of reader threads (product and expected-device lookups).
const READERS: usize = 2;

impl PgStore {
    /// Connects, applies the missing migrations (under the migration lock), checks the
    /// master key against the database (recording it in a new one), and starts the
    /// writer and reader threads.
    ///
    /// Blocking, like every operator operation of the store; it may be called from an
    /// async task all the same (it runs on a thread of its own, outside the runtime).
    pub fn open(config: &PgConfig) -> Result<Self, Error> {
        if config.key == KeySource::DataDir {
            return Err(Error::KeyNeeded);
        }
        std::thread::scope(|s| {
            s.spawn(|| Self::open_here(config))
                .join()
                .unwrap_or_else(|_| Err(Error::Unavailable("opening the store panicked".into())))
        })
    }

    fn open_here(config: &PgConfig) -> Result<Self, Error> {
        let settings = Arc::new(Settings::new(config)?);
        let cannot = |e: &postgres::Error| {
            Error::Config(format!(
                "cannot connect to PostgreSQL at {}: {}",
                settings.display,
                describe(e)
            ))
        };
        let client = settings.connect().map_err(|e| cannot(&e))?;
        let mut admin = Session::new(settings.clone(), Some(client));
        let key = Self::prepare(&mut admin, config, &settings.display)?;
        let key = Arc::new(key);

        let counters = Arc::new(Counters::default());
        let (writer_tx, writer_rx) = channel::<Box<dyn Job>>();
        let writer_rx = Arc::new(Mutex::new(writer_rx));
        let (reader_tx, reader_rx) = channel::<ReadJob>();
        let reader_rx = Arc::new(Mutex::new(reader_rx));
        let mut handles = Vec::new();
        let cursors: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        for i in 0..config.writers.max(1) {
            let mut session = settings
                .connect()
                .and_then(|c| Session::hot(settings.clone(), c))
                .map_err(|e| cannot(&e))?;
            session.cursors = cursors.clone();
            let (jobs, key, counters) = (writer_rx.clone(), key.clone(), counters.clone());
            let max_batch = config.max_batch.max(1);
            handles.push(spawn(&format!("dynreg-pg-writer-{i}"), move || {
                Batcher {
                    conn: &mut session,
                    key: &key,
                    max_batch,
                    counters: &counters,
                }
                .run(&*jobs);
            })?);
        }
        for i in 0..READERS {
            let mut session = settings
                .connect()
                .and_then(|c| Session::hot(settings.clone(), c))
                .map_err(|e| cannot(&e))?;
            let (jobs, key) = (reader_rx.clone(), key.clone());
            handles.push(spawn(&format!("dynreg-pg-reader-{i}"), move || {
                serve_reads(&jobs, &mut session, &key);
            })?);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                settings,
                admin: Mutex::new(admin),
                threads: Threads {
                    writers: RwLock::new(Some(writer_tx)),
                    readers: RwLock::new(Some(reader_tx)),
                    handles: Mutex::new(handles),
                },
                counters,
                listeners: crate::sql::Listeners::default(),
            }),
        })
    }

    /// Migrates and checks the key, in one transaction under the migration lock.
    fn prepare(admin: &mut Session, config: &PgConfig, display: &str) -> Result<MasterKey, Error> {
        let named = |e: Error| match e {
            Error::Postgres(e) => Error::Config(format!("database {display}: {}", describe(&e))),
            other => other,
        };
        admin.begin().map_err(named)?;
        let result = (|| {
            let migrated = schema::migrate(admin, config.create, display)?;
            let fresh = migrated.from == 0
                && !(admin as &mut dyn Conn)
                    .exists("SELECT 1 FROM meta WHERE key = 'key_check'", &[])?;
            let (key, _) = MasterKey::load(&config.key, Path::new("."), fresh && config.create)?;
            crate::sql::check_key(admin, &key)?;
            Ok(key)
        })();
        match result {
            Ok(key) => {
                admin.control("COMMIT").map_err(named)?;
                Ok(key)
            }
            Err(e) => {
                let _ = admin.control("ROLLBACK");
                Err(named(e))
            }
        }
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, Session> {
        self.inner
            .admin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the planner's statistics of dynreg's tables (`ANALYZE`): useful after a
    /// bulk load, before autovacuum gets to it.
    pub fn analyze(&self) -> Result<(), Error> {
        self.read(|conn| conn.control("ANALYZE products, triplets, registrations"))
    }

    /// Asks the server for a checkpoint now (needs a superuser or the `pg_checkpoint`
    /// role): after a bulk load, so that writing the load's WAL back does not fall in
    /// what is measured next (the benchmarks' setup; SQLite's
    /// [`crate::SqliteStore::checkpoint`]).
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.read(|conn| conn.control("CHECKPOINT"))
    }

    /// Copies every product, pool triplet, device and device history entry of `from`
    /// (a SQLite store opened with the same master key) into this store, in one
    /// transaction: sealed secrets as they are, ids kept. Refuses a store that holds
    /// anything; checks, before it commits, that each table holds as many rows as in
    /// `from`. Returns the rows copied per table. `progress(table, rows)` is called as
    /// rows go.
    pub fn copy_from(
        &self,
        from: &crate::SqliteStore,
        progress: &dyn Fn(&str, u64),
    ) -> Result<Vec<(&'static str, u64)>, Error> {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            let to: &mut dyn Conn = &mut *admin;
            to.begin()?;
            let result = (|| {
                // Nothing else may write meanwhile: the check and the copy are one.
                to.control("LOCK TABLE products, triplets, registrations, device_history IN EXCLUSIVE MODE")?;
                let present: Vec<String> = crate::sql::copy::counts(to)?
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(t, n)| format!("{n} {t}"))
                    .collect();
                if !present.is_empty() {
                    return Err(Error::Conflict(format!(
                        "{} is not empty ({}): store copy only fills an empty store",
                        self.inner.settings.display,
                        present.join(", ")
                    )));
                }
                let expected = SqlBackend::read(from, |src| {
                    let expected = crate::sql::copy::counts(src)?;
                    crate::sql::copy::copy(src, to, progress)?;
                    Ok(expected)
                })?;
                let copied = crate::sql::copy::counts(to)?;
                if copied != expected {
                    return Err(Error::Invalid(format!(
                        "the copy does not match its source (copied {copied:?}, source {expected:?}); nothing was written"
                    )));
                }
                // Later inserts take ids after the copied ones.
                to.control("SELECT setval(pg_get_serial_sequence('triplets', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM triplets), false)")?;
                to.control("SELECT setval(pg_get_serial_sequence('device_history', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM device_history), false)")?;
                Ok(copied)
            })();
            match result {
                Ok(copied) => {
                    to.control("COMMIT")?;
                    Ok(copied)
                }
                Err(e) => {
                    if to.in_transaction() {
                        let _ = to.control("ROLLBACK");
                    }
                    Err(e)
                }
            }
        })
    }

    /// The database, without its password.
    pub fn url(&self) -> &str {
        &self.inner.settings.display
    }

    /// How many write transactions the writers have committed and how many
    /// registrations they held.
    pub fn writer_stats(&self) -> crate::WriterStats {
        let c = &self.inner.counters;
        crate::WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            reruns: c.reruns.load(Ordering::Relaxed),
        }
    }

    /// Stops the threads after the work already queued and closes the connections.
    pub fn close(&self) -> Result<(), Error> {
        let t = &self.inner.threads;
        drop(
            t.writers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            t.readers
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handles: Vec<_> = t
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Error::Unavailable("a store thread panicked".into()))?;
        }
        Ok(())
    }

    fn read_job<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Session, &MasterKey) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .inner
            .threads
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| {
                s.send(Box::new(move |session: &mut Session, key: &MasterKey| {
                    let _ = tx.send(work(session, key));
                }))
                .is_ok()
            })
            .unwrap_or(false);
        async move {
            if !sent {
                return Err(StoreError::unavailable("the store is closed"));
            }
            rx.await
                .map_err(|_| StoreError::unavailable("the store's reader stopped"))?
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.threads.writers.get_mut().map(Option::take));
        drop(self.threads.readers.get_mut().map(Option::take));
        if let Ok(handles) = self.threads.handles.get_mut() {
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| Error::Config(format!("cannot start thread {name}: {e}")))
}

/// Runs blocking database work: on a worker of a multi-threaded tokio runtime, through
/// `block_in_place` (the driver's blocking client cannot run on a thread that drives
/// async tasks); elsewhere, as it is.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn serve_reads(jobs: &Mutex<Receiver<ReadJob>>, session: &mut Session, key: &MasterKey) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(session, key),
            Err(_) => return,
        }
    }
}

impl Store for PgStore {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        let pid = pid.to_owned();
        self.read_job(move |session, key| {
            crate::sql::admin::read_product(session, key, &pid)
                .map(|p| p.map(Arc::new))
                .map_err(StoreError::from)
        })
    }

    fn expected_device(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<ExpectedDevice>, StoreError>> + Send {
        let (pid, unique) = (pid.to_owned(), unique.to_owned());
        self.read_job(move |session, _| {
            crate::sql::expected::read(session, &pid, &unique).map_err(StoreError::from)
        })
    }

    fn on_product_change(&self, listener: ProductListener) {
        self.inner.listeners.add(listener);
    }

    fn record_into(&self, metrics: Arc<dynreg_registrar::metrics::Metrics>) {
        let _ = self.inner.counters.metrics.set(metrics);
    }

    fn transact<T, F>(
        &self,
        intent: Option<Intent>,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self
            .inner
            .threads
            .writers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| {
                s.send(Box::new(TxJob {
                    intent,
                    work,
                    result: None,
                    reply: tx,
                }))
                .is_ok()
            })
            .unwrap_or(false);
        async move {
            if !submitted {
                return Err(StoreError::unavailable("the store is closed"));
            }
            rx.await
                .map_err(|_| StoreError::unavailable("the store's writer stopped"))?
        }
    }
}

impl SqlBackend for PgStore {
    fn location(&self) -> String {
        self.inner.settings.display.clone()
    }

    fn close(&self) -> Result<(), Error> {
        PgStore::close(self)
    }

    fn key(&self) -> &MasterKey {
        &self.inner.key
    }

    fn read<T>(&self, read: impl FnOnce(&mut dyn Conn) -> Result<T, Error>) -> Result<T, Error> {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            read(&mut *admin)
        })
    }

    fn write<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(&mut dyn Conn, &MasterKey) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        blocking(|| {
            let mut admin = self.admin();
            admin.revalidate();
            let conn: &mut dyn Conn = &mut *admin;
            conn.begin()?;
            match work(conn, &self.inner.key) {
                Ok(v) => {
                    conn.control("COMMIT")?;
                    Ok(v)
                }
                Err(e) => {
                    if conn.in_transaction() {
                        let _ = conn.control("ROLLBACK");
                    }
                    Err(e)
                }
            }
        })
    }

    fn schema_version(&self) -> Result<u64, Error> {
        self.read(|conn| {
            conn.query_opt("SELECT version FROM dynreg_schema", &[], |r| r.int(0))
                .map(|v| crate::sql::u64_of(v.unwrap_or(0)))
        })
    }

    fn invalidate(&self, pid: &str) {
        self.inner.listeners.notify(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://dynreg:s3cret@db.example:5432/dynreg?sslmode=require"),
            "postgres://dynreg:***@db.example:5432/dynreg?sslmode=require"
        );
        assert_eq!(redact("postgres://dynreg@db/x"), "postgres://dynreg@db/x");
        assert_eq!(
            redact("host=db user=dynreg password=s3cret dbname=x"),
            "host=db user=dynreg password=*** dbname=x"
        );
    }

    #[test]
    fn verify_modes_and_root_certs_are_read_by_dynreg() {
        let (url, w) = split_tls_params(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3",
        );
        assert_eq!(url, "postgres://u@db/x?sslmode=require&connect_timeout=3");
        assert!(w.verify);
        assert_eq!(w.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (url, w) = split_tls_params("host=db sslmode=require user=u");
        assert_eq!(url, "host=db sslmode=require user=u");
        assert!(!w.verify);
        let (url, _) = split_tls_params("postgres://u@db/x?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://u@db/x");
    }

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }
}

//! The store's configuration: the URL and its TLS parameters, the writers, the key,
//! and how the URL is shown (without its password).

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use crate::crypto::KeySource;

use super::tls::tls_connector;

/// Writer connections by default. Measured on the 2-core reference machine with
/// PostgreSQL 15 beside dynreg (docs/benchmarks.md): 2 writers committed 24,900
/// registrations/s from 64 callers where 4 did 16,300 and 1 did 16,300; fewer writers
/// make larger batches, so fewer transactions and less PostgreSQL CPU per
/// registration. A database on its own machine with slow fsyncs may want more
/// (`database_writers`).
pub const DEFAULT_WRITERS: usize = 2;

/// How to open a [`super::PgStore`].
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

/// How to connect: parsed once.
pub(super) struct Settings {
    pub(super) config: postgres::Config,
    pub(super) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL without its password.
    pub(super) display: String,
}

/// What the URL says of TLS beyond what the driver reads: `sslmode=verify-ca` and
/// `verify-full` (given to the driver as `require`) and `sslrootcert`.
pub(super) struct TlsWishes {
    pub(super) verify: bool,
    pub(super) root_cert: Option<PathBuf>,
}

/// Takes `sslmode=verify-*` and `sslrootcert` out of a URL (either form) for dynreg to
/// apply, leaving what the driver parses.
pub(super) fn split_tls_params(url: &str) -> (String, TlsWishes) {
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
    pub(super) fn new(config: &PgConfig) -> Result<Self, Error> {
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

    pub(super) fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

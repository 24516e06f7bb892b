//! `dynreg`: the one binary. It parses arguments, opens the store and calls the library
//! crates; the rules live in `dynreg-registrar` and `dynreg-store`, not here.
//!
//! Exit codes: 0 success; 1 the operation failed (unknown pid, conflict, bad file...);
//! 2 bad arguments (from clap, or a [`Usage`] error). Under `--json`, an error is one
//! JSON document on stderr: `{"error": "...", "exit": N}`.

mod cmd;
mod config;
mod fdlimit;
mod logging;
mod outfile;
mod output;
mod progress;
mod store;

pub(crate) use dynreg_proto::unix_now;
use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, Parser, Subcommand};
use dynreg_store::{KeySource, PgConfig, PgStore, SqliteConfig, SqliteStore};

use crate::store::Backend;

use crate::config::{FileConfig, Setting};

/// dynreg: dynamic registration of IoT devices over MQTT.
///
/// Operators create products, generate or import triplet pools for the factory, and
/// watch and revoke devices; `dynreg serve` runs the registration service.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The config file, read by every command [default: ./dynreg.toml when it exists].
    #[arg(long, global = true, env = "DYNREG_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The data dir: database and (by default) master key [default: `data_dir` from
    /// the config file, else dynreg-data].
    #[arg(long, global = true, env = "DYNREG_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A file holding the master key (64 hex digits) [default: `master_key_file` from
    /// the config file, else DATA_DIR/master.key, generated when the store is created].
    /// The key itself may instead be given in DYNREG_MASTER_KEY.
    #[arg(long, global = true, env = "DYNREG_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// A PostgreSQL store instead of the data dir: `postgres://user@host/db?sslmode=...`
    /// [default: `database_url` from the config file]. Several instances may share
    /// one; each needs the same master key (--master-key-file or DYNREG_MASTER_KEY).
    #[arg(long, global = true, env = "DYNREG_DATABASE_URL", value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// PostgreSQL writer connections, each committing a batch of registrations at a
    /// time, 1 to 64 [default: `database_writers` from the config file, else 2].
    #[arg(long, global = true, env = "DYNREG_DATABASE_WRITERS", value_name = "N")]
    pub(crate) database_writers: Option<usize>,
    /// Print one JSON document on stdout instead of tables (errors: one JSON document
    /// on stderr). Commands that write CSV write CSV either way.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// A usage error found after parsing (exit code 2, like clap's).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Whether a command may create the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// Only an existing store: a missing data dir is an error naming it.
    Existing,
    /// Create the data dir, key and database when missing (`init`, `serve`,
    /// `product create`, `product import`).
    Create,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registration service: the embedded MQTT endpoint on the SQLite store.
    Serve(cmd::serve::ServeArgs),
    /// Create a store (data dir, master key, database; or dynreg's schema in the
    /// PostgreSQL database --database-url names) and say where.
    Init,
    /// Apply the store's schema migrations (every command that opens the store applies
    /// them too) and print its schema version.
    Migrate,
    /// Create, list, show, update, enable, disable, delete, export and import
    /// products; rotate and retire their secrets.
    #[command(subcommand)]
    Product(cmd::product::ProductCmd),
    /// Generate, import, export, count and withdraw a product's triplet pool.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCmd),
    /// List, show (by pid and unique, uuid, barcode or MAC), revoke, reset and export
    /// registered devices.
    #[command(subcommand)]
    Device(cmd::device::DeviceCmd),
    /// Create, list and revoke the admin API's tokens.
    #[command(subcommand)]
    Token(cmd::access::TokenCmd),
    /// Read the audit log: registrations, revocations, resets and operator actions.
    #[command(subcommand)]
    Audit(cmd::access::AuditCmd),
    /// The event outbox that `serve --webhook-url` delivers: its state, or turn it off.
    #[command(subcommand)]
    Outbox(cmd::access::OutboxCmd),
    /// Move a store: copy the SQLite data dir into an empty PostgreSQL database.
    #[command(subcommand)]
    Store(cmd::store::StoreCmd),
    /// Register a device (or a CSV of devices) like firmware would, and print its
    /// triplet.
    Register(cmd::register::RegisterArgs),
    /// Load-test a dynreg endpoint (or a broker with `dynreg bench responder`) with
    /// simulated devices doing the full registration cycle.
    Bench(cmd::bench::BenchArgs),
}

/// The data dir when neither a flag, the environment nor a config file names one.
pub(crate) const DEFAULT_DATA_DIR: &str = "dynreg-data";

/// The database (file, or URL without its password) a command opened, named in
/// database errors.
static OPENED: OnceLock<String> = OnceLock::new();

/// Where the store is, and which setting said so.
pub(crate) struct StoreLocation {
    pub(crate) data_dir: PathBuf,
    /// A PostgreSQL store instead of the data dir.
    pub(crate) database_url: Option<String>,
    pub(crate) database_ca_file: Option<PathBuf>,
    /// PostgreSQL writer connections (`--database-writers`, `database_writers`).
    pub(crate) database_writers: usize,
    pub(crate) from: &'static str,
    pub(crate) key: KeySource,
}

impl Global {
    /// The config file (read once): `--config`/`DYNREG_CONFIG`, else `./dynreg.toml`
    /// when it exists, else nothing.
    pub(crate) fn file(&self) -> anyhow::Result<&'static (FileConfig, Option<PathBuf>)> {
        static FILE: OnceLock<(FileConfig, Option<PathBuf>)> = OnceLock::new();
        if let Some(f) = FILE.get() {
            return Ok(f);
        }
        let loaded = FileConfig::load(self.config.as_deref())?;
        Ok(FILE.get_or_init(|| loaded))
    }

    /// The data dir and master key every command uses: flag or environment, then the
    /// config file, then the defaults.
    pub(crate) fn location(&self) -> anyhow::Result<StoreLocation> {
        let (file, _) = self.file()?;
        let (data_dir, from) = match (&self.data_dir, &file.data_dir) {
            (Some(d), _) => (d.clone(), "--data-dir / DYNREG_DATA_DIR"),
            (None, Some(d)) => (d.clone(), "data_dir in the config file"),
            (None, None) => (PathBuf::from(DEFAULT_DATA_DIR), "the default"),
        };
        let key = match (
            std::env::var("DYNREG_MASTER_KEY"),
            &self.master_key_file,
            &file.master_key_file,
        ) {
            (Ok(hex), _, _) if !hex.is_empty() => KeySource::Hex(hex),
            (_, Some(f), _) | (_, None, Some(f)) => KeySource::File(f.clone()),
            _ => KeySource::DataDir,
        };
        let (database_url, from) = match (&self.database_url, &file.database_url) {
            (Some(u), _) if !u.is_empty() => {
                (Some(u.clone()), "--database-url / DYNREG_DATABASE_URL")
            }
            (_, Some(u)) => (Some(u.clone()), "database_url in the config file"),
            _ => (None, from),
        };
        let database_writers = Setting {
            key: "database_writers",
            flag: "--database-writers",
            env: "DYNREG_DATABASE_WRITERS",
            cli: self.database_writers,
            file: file.database_writers,
            default: dynreg_store::DEFAULT_WRITERS,
        }
        .in_range(1, 64)?;
        Ok(StoreLocation {
            data_dir,
            database_url,
            database_ca_file: file.database_ca_file.clone(),
            database_writers,
            from,
            key,
        })
    }

    /// Opens the store the config names. Says on stderr which one (not under
    /// `--json`).
    pub(crate) fn open(&self, mode: Open) -> anyhow::Result<Backend> {
        let loc = self.location()?;
        let store = self.open_location(&loc, mode)?;
        if !self.json {
            let config = match self.file()? {
                (_, Some(p)) => format!(", config {}", p.display()),
                (_, None) => String::new(),
            };
            let what = if loc.database_url.is_some() {
                "database URL"
            } else {
                "data dir"
            };
            eprintln!(
                "store: {} ({what} from {}{config})",
                store.location(),
                loc.from
            );
        }
        Ok(store)
    }

    /// Opens the store at `loc`.
    pub(crate) fn open_location(&self, loc: &StoreLocation, mode: Open) -> anyhow::Result<Backend> {
        if let Some(url) = &loc.database_url {
            let mut config = PgConfig::new(url.clone(), loc.key.clone());
            config.create = mode == Open::Create;
            config.ca_file.clone_from(&loc.database_ca_file);
            config.writers = loc.database_writers;
            let store = PgStore::open(&config).map_err(|e| match e {
                dynreg_store::Error::KeyNeeded => anyhow::anyhow!(
                    "{e}: give --master-key-file (master_key_file in the config file) or DYNREG_MASTER_KEY"
                ),
                e => e.into(),
            })?;
            let _ = OPENED.set(store.url().to_owned());
            return Ok(Backend::Postgres(store));
        }
        let config = SqliteConfig {
            key: loc.key.clone(),
            create: mode == Open::Create,
            ..SqliteConfig::new(&loc.data_dir)
        };
        let store = SqliteStore::open(&config)?;
        let _ = OPENED.set(store.path().display().to_string());
        Ok(Backend::Sqlite(store))
    }
}

/// Who runs this command, for the audit log: `cli:<OS user>` on this host.
pub(crate) fn actor() -> dynreg_store::Actor {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    dynreg_store::Actor {
        name: format!("cli:{user}"),
        origin: host,
    }
}

/// Runs an operator action on `store` and records it in the audit log as [`actor`]'s
/// `action` on `pid`'s `target` ([`dynreg_store::audited`]).
pub(crate) fn audited<T>(
    store: &Backend,
    action: &str,
    pid: &str,
    target: &str,
    work: impl FnOnce(
        &dyn dynreg_store::Operator,
        &mut dynreg_registrar::AuditEntry,
    ) -> Result<T, dynreg_store::Error>,
) -> Result<T, dynreg_store::Error> {
    let entry = actor().entry(unix_now(), action, pid, target);
    dynreg_store::audited(&**store, entry, |o, e| work(o, e))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let json = std::env::args().any(|a| a == "--json");
            if json && e.use_stderr() {
                let msg = e.render().to_string();
                let doc = serde_json::json!({ "error": msg.trim(), "exit": 2 });
                eprintln!("{doc}");
                std::process::exit(2);
            }
            e.exit();
        }
    };
    let json = cli.global.json;
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(&cli.global, &args),
        Command::Init => init(&cli.global),
        Command::Migrate => migrate(&cli.global),
        Command::Store(c) => cmd::store::run(&cli.global, c),
        Command::Product(c) => cmd::product::run(&cli.global, c),
        Command::Pool(c) => cmd::pool::run(&cli.global, c),
        Command::Device(c) => cmd::device::run(&cli.global, c),
        Command::Token(c) => cmd::access::token(&cli.global, c),
        Command::Audit(c) => cmd::access::audit(&cli.global, c),
        Command::Outbox(c) => cmd::access::outbox(&cli.global, &c),
        Command::Bench(args) => cmd::bench::run(&cli.global, &args),
        Command::Register(args) => match cmd::register::run(&cli.global, &args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        std::process::exit(report(json, &e));
    }
}

/// Prints an error (JSON on stderr under `--json`) and returns the exit code.
pub(crate) fn report(json: bool, e: &anyhow::Error) -> i32 {
    let code = if e.downcast_ref::<Usage>().is_some() {
        2
    } else {
        1
    };
    let mut msg = format!("{e:#}");
    let from_database = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<dynreg_store::Error>(),
            Some(dynreg_store::Error::Sqlite(_) | dynreg_store::Error::Postgres(_))
        )
    });
    if let (true, Some(path)) = (from_database, OPENED.get()) {
        msg.push_str(&format!(" (database {path})"));
    }
    if json {
        eprintln!("{}", serde_json::json!({ "error": msg, "exit": code }));
    } else {
        eprintln!("error: {msg}");
    }
    code
}

/// `dynreg migrate`.
fn migrate(g: &Global) -> anyhow::Result<()> {
    let loc = g.location()?;
    let store = g.open_location(&loc, Open::Create)?;
    let version = store.schema_version()?;
    let location = store.location();
    store.close()?;
    if g.json {
        output::json(&serde_json::json!({ "database": location, "schema_version": version }))?;
    } else {
        println!("{location}: schema version {version}, the newest this dynreg knows");
    }
    Ok(())
}

/// `dynreg init`.
fn init(g: &Global) -> anyhow::Result<()> {
    let loc = g.location()?;
    if loc.database_url.is_some() {
        let store = g.open_location(&loc, Open::Create)?;
        let location = store.location();
        let version = store.schema_version()?;
        store.close()?;
        let key = match &loc.key {
            KeySource::File(f) => f.display().to_string(),
            _ => "DYNREG_MASTER_KEY".into(),
        };
        if g.json {
            output::json(&serde_json::json!({
                "database": location, "master_key": key, "schema_version": version,
            }))?;
        } else {
            println!(
                "store ready: {location} (schema version {version}); master key from {key}: every instance needs it, back it up"
            );
        }
        return Ok(());
    }
    let existed = loc
        .data_dir
        .join(dynreg_store::sqlite::DB_FILE_NAME)
        .exists();
    let store = g.open_location(&loc, Open::Create)?;
    let path = store.location();
    store.close()?;
    let key = match &loc.key {
        KeySource::DataDir => loc
            .data_dir
            .join(dynreg_store::crypto::KEY_FILE_NAME)
            .display()
            .to_string(),
        KeySource::File(f) => f.display().to_string(),
        KeySource::Hex(_) => "DYNREG_MASTER_KEY".into(),
    };
    if g.json {
        output::json(&serde_json::json!({
            "database": path, "master_key": key, "created": !existed,
        }))?;
    } else if existed {
        println!(
            "a store exists at {} (master key from {key}): nothing to do",
            path
        );
    } else {
        println!(
            "store created: {} (data dir from {}); master key in {key}: back it up, the secrets cannot be read without it",
            path, loc.from
        );
    }
    Ok(())
}

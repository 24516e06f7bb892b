//! `dynreg`: the one binary. It parses arguments, opens the store and calls the library
//! crates; the rules live in `dynreg-registrar` and `dynreg-store`, not here.
//!
//! Exit codes: 0 success; 1 the operation failed (unknown pid, conflict, bad file...);
//! 2 bad arguments (from clap).

mod cmd;
mod config;
mod logging;
mod output;
mod progress;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use dynreg_store::{KeySource, SqliteConfig, SqliteStore};

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
    /// The data dir: database and (by default) master key [default: dynreg-data].
    #[arg(long, global = true, env = "DYNREG_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// A file holding the master key (64 hex digits). Default: DATA_DIR/master.key,
    /// generated on first use. The key itself may instead be given in DYNREG_MASTER_KEY.
    #[arg(long, global = true, env = "DYNREG_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registration service: the embedded MQTT endpoint on the SQLite store.
    Serve(cmd::serve::ServeArgs),
    /// Create, list, show, enable, disable products; rotate their secrets.
    #[command(subcommand)]
    Product(cmd::product::ProductCmd),
    /// Generate, import and count a product's triplet pool.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCmd),
    /// List, show, revoke, reset and export registered devices.
    #[command(subcommand)]
    Device(cmd::device::DeviceCmd),
    /// Register a device (or a CSV of devices) like firmware would, and print its
    /// triplet.
    Register(cmd::register::RegisterArgs),
    /// Load-test a dynreg endpoint (or a broker with `dynreg bench responder`) with
    /// simulated devices doing the full registration cycle.
    Bench(cmd::bench::BenchArgs),
}

/// The data dir when neither a flag, the environment nor a config file names one.
pub(crate) const DEFAULT_DATA_DIR: &str = "dynreg-data";

impl Global {
    /// Opens the store in the data dir with the configured master key.
    pub(crate) fn open(&self) -> anyhow::Result<SqliteStore> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        self.open_at(&dir)
    }

    /// Opens the store in `data_dir` with the configured master key.
    pub(crate) fn open_at(&self, data_dir: &std::path::Path) -> anyhow::Result<SqliteStore> {
        let key = match (std::env::var("DYNREG_MASTER_KEY"), &self.master_key_file) {
            (Ok(hex), _) if !hex.is_empty() => KeySource::Hex(hex),
            (_, Some(file)) => KeySource::File(file.clone()),
            _ => KeySource::DataDir,
        };
        let config = SqliteConfig {
            key,
            ..SqliteConfig::new(data_dir)
        };
        Ok(SqliteStore::open(&config)?)
    }
}

/// The current Unix time in seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(&cli.global, &args),
        Command::Product(c) => cmd::product::run(&cli.global, c),
        Command::Pool(c) => cmd::pool::run(&cli.global, c),
        Command::Device(c) => cmd::device::run(&cli.global, c),
        Command::Bench(args) => cmd::bench::run(&cli.global, &args),
        Command::Register(args) => match cmd::register::run(&cli.global, &args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

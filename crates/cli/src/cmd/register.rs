//! `dynreg register`: register a device (or a CSV of devices) like firmware would.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use dynreg_client::{Environment, Error, MqttVersion, Registration, RetryPolicy, Tls, Triplet};
use dynreg_proto::credentials::SignMethod;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cmd::pool::CsvOut;
use crate::progress::Bar;
use crate::{Global, Usage, output, unix_now};

/// Exit codes of `dynreg register`.
pub(crate) mod exit {
    /// The device is registered (or was, per the state file).
    pub(crate) const REGISTERED: i32 = 0;
    /// Anything else went wrong (state file unreadable...).
    pub(crate) const OTHER: i32 = 1;
    /// The server refused the CONNECT (bad credentials, unknown/disabled product, limit).
    pub(crate) const CONNECT_REFUSED: i32 = 3;
    /// The server answered with a failure status (res != 0).
    pub(crate) const REFUSED: i32 = 4;
    /// No reply in time.
    pub(crate) const TIMEOUT: i32 = 5;
    /// The network failed (cannot connect, TLS, connection lost).
    pub(crate) const NETWORK: i32 = 6;
    /// `--batch`: some devices were not registered (see the result CSV).
    pub(crate) const BATCH_INCOMPLETE: i32 = 7;
}

const EXIT_CODES: &str = "Exit codes: 0 registered (or read from --state); 1 other error; \
2 bad arguments; 3 CONNECT refused (credentials, unknown or disabled product, rate limit); \
4 registration refused (res != 0, the message says why); 5 timeout; 6 network error; \
7 --batch: some devices not registered.";

/// Options of `dynreg register`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct RegisterArgs {
    /// The named environment to register in (`test` or `formal`, or any other
    /// `[env.NAME]` of the config file): its host, port, TLS and CA. The flags below
    /// override it.
    #[arg(long)]
    env: Option<String>,
    /// The broker host [default: 127.0.0.1, or the environment's].
    #[arg(long)]
    host: Option<String>,
    /// The broker port [default: 1883, or 8883 with --tls, or the environment's].
    #[arg(long)]
    port: Option<u16>,
    /// The product id.
    #[arg(long)]
    pid: String,
    /// The product's registration secret (prefer the environment variable: arguments
    /// show in process lists).
    #[arg(long, env = "DYNREG_SECRET", hide_env_values = true)]
    secret: String,
    /// The device's unique (no `_`); a random UUID is generated when absent.
    #[arg(long, conflicts_with = "batch")]
    unique: Option<String>,
    /// The sign method: hmacSha256 or hmacSha1 (the seed's), or the device-bound
    /// hmacSha256u or hmacSha1u, which sign the unique too (what a product with
    /// `signatures = bound` takes).
    #[arg(long, default_value = "hmacSha256", value_parser = parse_method)]
    sign_method: SignMethod,
    /// A barcode to write onto the triplet.
    #[arg(long, conflicts_with = "batch")]
    barcode: Option<String>,
    /// Register under this product instead (needs --replace-secret).
    #[arg(long, requires = "replace_secret")]
    replace_pid: Option<String>,
    /// The replacement product's secret.
    #[arg(
        long,
        env = "DYNREG_REPLACE_SECRET",
        hide_env_values = true,
        requires = "replace_pid"
    )]
    replace_secret: Option<String>,
    /// The MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value = "5", value_parser = ["3", "5"])]
    mqtt: String,
    /// Connect over TLS (system roots, or --ca).
    #[arg(long)]
    tls: bool,
    /// A PEM CA file to trust for TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Seconds each attempt may take.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    /// Attempts in all (1: no retry).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: u32,
    /// Keep the unique and the triplet in FILE, like a device's flash: a later run
    /// with the same --pid (and --unique, if given) returns them without touching the
    /// network; another pid or unique is a usage error (the file answers only for its
    /// own device). Written atomically, mode 0600.
    #[arg(long, conflicts_with = "batch")]
    state: Option<PathBuf>,
    /// With --state: register again over the network even though the file holds a
    /// triplet, with the file's unique, and replace the file with the new triplet
    /// (the server hands the same device its triplet again when the product's
    /// re-registration policy allows).
    #[arg(long, requires = "state")]
    force: bool,
    /// Register every device of a CSV (columns `unique[,barcode]`, optional header).
    #[arg(long)]
    batch: Option<PathBuf>,
    /// With --batch: devices registering at once.
    #[arg(long, default_value_t = 10, requires = "batch", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// With --batch: write the result CSV here, mode 0600 (refused if it exists);
    /// default stdout. The result is CSV even under --json (which then prints a
    /// summary).
    #[arg(long, requires = "batch")]
    out: Option<PathBuf>,
}

fn parse_method(s: &str) -> Result<SignMethod, String> {
    SignMethod::parse(s).map_err(|_| {
        format!("`{s}` is not a sign method (hmacSha256, hmacSha1, hmacSha256u or hmacSha1u)")
    })
}

/// What `--state` keeps.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    unique: String,
    pid: String,
    uuid: String,
    secret: String,
    mac: String,
    host: String,
    registered_at: u64,
}

fn read_state(path: &Path) -> anyhow::Result<Option<State>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("state file {} is not a dynreg state file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

/// Writes the state beside its final name, mode 0600, syncs, renames into place.
fn write_state(path: &Path, state: &State) -> anyhow::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn exit_code(e: &Error) -> i32 {
    match e {
        Error::ConnectRefused { .. } => exit::CONNECT_REFUSED,
        Error::Refused { .. } | Error::SubscribeRefused => exit::REFUSED,
        Error::Timeout(_) => exit::TIMEOUT,
        Error::Network(_) => exit::NETWORK,
        _ => exit::OTHER,
    }
}

impl RegisterArgs {
    /// The registration these options describe, in the environment `env` if any.
    fn registration(&self, env: Option<&Environment>) -> Registration {
        let mut r = Registration::new("127.0.0.1", &self.pid, &self.secret);
        if let Some(e) = env {
            r = r.environment(e);
        }
        if let Some(h) = &self.host {
            r = r.host(h);
        }
        r = r
            .sign_method(self.sign_method)
            .mqtt_version(if self.mqtt == "3" {
                MqttVersion::V311
            } else {
                MqttVersion::V5
            })
            .timeout(Duration::from_secs(self.timeout))
            .retry(RetryPolicy {
                max_attempts: self.attempts,
                ..RetryPolicy::default()
            });
        if let Some(p) = self.port {
            r = r.port(p);
        }
        if self.tls || self.ca.is_some() {
            r = r.tls(self.ca.clone().map_or(Tls::SystemRoots, Tls::CaFile));
        }
        if let (Some(p), Some(s)) = (&self.replace_pid, &self.replace_secret) {
            r = r.replace_pid(p, s);
        }
        r
    }
}

fn print_triplet(g: &Global, t: &Triplet, source: &str) -> anyhow::Result<()> {
    if g.json {
        output::json(&json!({
            "pid": t.pid, "uuid": t.uuid, "secret": t.secret, "mac": t.mac,
            "unique": t.unique, "source": source,
        }))?;
    } else {
        output::fields(&[
            ("pid", t.pid.clone()),
            ("uuid", t.uuid.clone()),
            ("secret", t.secret.clone()),
            ("mac", t.mac.clone()),
            ("unique", t.unique.clone()),
        ])?;
    }
    Ok(())
}

/// The environment `--env` names, from the config file.
fn environment(g: &Global, args: &RegisterArgs) -> anyhow::Result<Option<Environment>> {
    let Some(name) = &args.env else {
        return Ok(None);
    };
    let (file, path) = g.file()?;
    match file.env.get(name) {
        Some(e) => Ok(Some(e.clone())),
        None => {
            let known: Vec<&str> = file.env.keys().map(String::as_str).collect();
            Err(Usage(format!(
                "--env {name}: no [env.{name}] in {} ({})",
                path.as_deref().map_or_else(
                    || "the config (no dynreg.toml here, and no --config)".into(),
                    |p| p.display().to_string()
                ),
                if known.is_empty() {
                    "it defines no environments; see docs/configuration.md".to_owned()
                } else {
                    format!("it defines {}", known.join(", "))
                }
            ))
            .into())
        }
    }
}

/// Runs `dynreg register`; returns the process exit code.
pub(crate) fn run(g: &Global, args: &RegisterArgs) -> anyhow::Result<i32> {
    let env = environment(g, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(batch) = &args.batch {
        // Claimed before the runtime runs anything (and before any device registers).
        let csv = CsvOut::create(args.out.as_deref())?;
        return runtime.block_on(run_batch(g, args, env.as_ref(), batch, csv));
    }
    let stored = match &args.state {
        Some(path) => read_state(path)?,
        None => None,
    };
    if let (Some(s), Some(path)) = (&stored, &args.state) {
        let other_unique = args.unique.as_ref().filter(|u| **u != s.unique);
        if s.pid != args.pid || other_unique.is_some() {
            return Err(Usage(format!(
                "state file {} holds device {} of pid {}, not {} of pid {}: a state file answers only for its own device (use another --state file)",
                path.display(),
                s.unique,
                s.pid,
                other_unique.map_or(s.unique.as_str(), String::as_str),
                args.pid
            ))
            .into());
        }
        if !args.force {
            eprintln!("from the state file (no network); --force registers again");
            let t = Triplet {
                pid: s.pid.clone(),
                uuid: s.uuid.clone(),
                secret: s.secret.clone(),
                mac: s.mac.clone(),
                unique: s.unique.clone(),
            };
            print_triplet(g, &t, "state")?;
            return Ok(exit::REGISTERED);
        }
    }
    let mut r = args.registration(env.as_ref());
    if let Some(u) = args
        .unique
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.unique.clone()))
    {
        r = r.unique(u);
    }
    if let Some(b) = &args.barcode {
        r = r.barcode(b);
    }
    let r = r.with_unique_fixed();
    match runtime.block_on(r.register()) {
        Ok(t) => {
            if let Some(path) = &args.state {
                write_state(
                    path,
                    &State {
                        unique: t.unique.clone(),
                        pid: t.pid.clone(),
                        uuid: t.uuid.clone(),
                        secret: t.secret.clone(),
                        mac: t.mac.clone(),
                        host: r.host_value().to_owned(),
                        registered_at: unix_now(),
                    },
                )?;
            }
            print_triplet(g, &t, "network")?;
            Ok(exit::REGISTERED)
        }
        Err(e) => {
            let code = exit_code(&e);
            if g.json {
                eprintln!(
                    "{}",
                    json!({ "error": e.to_string(), "unique": r.unique_value(), "exit": code })
                );
            } else {
                eprintln!("error: {e}");
            }
            Ok(code)
        }
    }
}

/// Reads `unique[,barcode]` rows; a first row starting with `unique` is a header.
fn read_batch(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {name}"))?;
    let (counting, line_of) = dynreg_store::factory_csv::count_lines(std::io::BufReader::new(file));
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(counting);
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| {
            anyhow::anyhow!(
                "{name} {}",
                dynreg_store::factory_csv::describe(&e, &line_of)
            )
        })?;
        let line = line_of.at(rec.position());
        let unique = rec.get(0).unwrap_or("").to_owned();
        if i == 0 && unique.eq_ignore_ascii_case("unique") {
            continue;
        }
        if rec.len() > 2 {
            bail!(
                "{name} line {line}: expected unique[,barcode], found {} fields",
                rec.len()
            );
        }
        if unique.is_empty() || unique.contains('_') || !dynreg_proto::is_valid_id(&unique) {
            bail!(
                "{name} line {line}: `{unique}` is not a valid unique (1 to 64 bytes, no _ / + #)"
            );
        }
        if !seen.insert(unique.clone()) {
            bail!("{name} line {line}: duplicate unique `{unique}`");
        }
        rows.push((unique, rec.get(1).unwrap_or("").to_owned()));
    }
    if rows.is_empty() {
        bail!("{name}: no devices");
    }
    Ok(rows)
}

async fn run_batch(
    g: &Global,
    args: &RegisterArgs,
    env: Option<&Environment>,
    path: &Path,
    mut csv: CsvOut,
) -> anyhow::Result<i32> {
    let rows = read_batch(path)?;
    let base = args.registration(env);
    let limit = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(args.concurrency).unwrap_or(10),
    ));
    let bar = Arc::new(Bar::new("registering", rows.len() as u64));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(rows.len());
    for (unique, barcode) in rows {
        let mut r = base.clone().unique(&unique);
        if !barcode.is_empty() {
            r = r.barcode(&barcode);
        }
        let (limit, bar, done) = (limit.clone(), bar.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = r.register().await;
            bar.set(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            (unique, barcode, result)
        }));
    }
    csv.row([
        "unique", "barcode", "result", "pid", "uuid", "secret", "mac", "error",
    ])?;
    let (mut ok, mut failed) = (0u64, 0u64);
    for t in tasks {
        let (unique, barcode, result) = t.await?;
        match result {
            Ok(t) => {
                ok += 1;
                csv.row([
                    unique.as_str(),
                    &barcode,
                    "registered",
                    &t.pid,
                    &t.uuid,
                    &t.secret,
                    &t.mac,
                    "",
                ])?;
            }
            Err(e) => {
                failed += 1;
                csv.row([
                    unique.as_str(),
                    &barcode,
                    "failed",
                    "",
                    "",
                    "",
                    "",
                    &e.to_string(),
                ])?;
            }
        }
    }
    bar.finish();
    csv.finish()?;
    if g.json {
        output::json(&json!({ "registered": ok, "failed": failed, "out": args.out }))?;
    } else {
        eprintln!("{ok} registered, {failed} failed");
    }
    Ok(if failed == 0 {
        exit::REGISTERED
    } else {
        exit::BATCH_INCOMPLETE
    })
}

//! `dynreg pool ...`: generate, import, stats, export.
//!
//! The factory CSV has the header `uuid,secret,mac,barcode` (mac and barcode columns may
//! be left out on import, or left empty).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use dynreg_registrar::{NewTriplet, TripletState};
use dynreg_store::TripletRef;
use serde_json::json;

use crate::outfile::OutFile;
use crate::progress::Bar;
use crate::{Global, Open, Usage, audited, output, unix_now};

/// The factory CSV header.
pub(crate) const CSV_HEADER: [&str; 4] = dynreg_store::factory_csv::HEADER;

#[derive(Debug, Subcommand)]
pub(crate) enum PoolCmd {
    /// Generate free triplets (random uuid and secret, MAC from the product's range,
    /// barcode PREFIX + 12-digit serial) and write the factory CSV (CSV even under
    /// --json, which then only changes the summary printed after --out).
    Generate {
        /// The product id.
        #[arg(long)]
        pid: String,
        /// How many triplets (1 to 10,000,000).
        #[arg(long)]
        count: u64,
        /// Text put before every barcode's serial number.
        #[arg(long, default_value = "")]
        barcode_prefix: String,
        /// Write the CSV here, mode 0600 (refused if the file exists; claimed before
        /// any triplet is made); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import triplets from a CSV file (header uuid,secret,mac,barcode) as free: all or
    /// nothing. MACs are checked (AA:BB:CC:DD:EE:FF, AA-BB-CC-DD-EE-FF or
    /// AABBCCDDEEFF, stored as AA:BB:CC:DD:EE:FF), must be unique in the file and the
    /// store, and inside the product's MAC range when it has one.
    Import {
        /// The product id.
        #[arg(long)]
        pid: String,
        /// The CSV file.
        file: PathBuf,
    },
    /// Count the pool's free, bound and revoked triplets and the product's devices.
    Stats {
        /// The product id.
        #[arg(long)]
        pid: String,
    },
    /// Write the pool's triplets (secrets included) as a factory CSV again (CSV even
    /// under --json).
    Export {
        /// The product id.
        #[arg(long)]
        pid: String,
        /// Only triplets in this state: free, bound or revoked (withdrawn ones count
        /// as revoked).
        #[arg(long)]
        state: Option<TripletState>,
        /// Write the CSV here, mode 0600 (refused if the file exists); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Withdraw leaked or damaged free triplets: they are never handed out. Name them
    /// by --barcode, --uuid or a --file; all must be free triplets of the product, or
    /// nothing is withdrawn. Asks for confirmation unless --yes.
    Withdraw {
        /// The product id.
        #[arg(long)]
        pid: String,
        /// A barcode (repeat the flag for more).
        #[arg(long)]
        barcode: Vec<String>,
        /// A uuid (repeat the flag for more).
        #[arg(long)]
        uuid: Vec<String>,
        /// A CSV file with a header naming a `uuid` or a `barcode` column (a factory
        /// CSV qualifies; a barcode list is a file whose first line is `barcode`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// A CSV destination: a file claimed and written as [`OutFile`] describes (exclusive,
/// 0600, complete or absent), or stdout.
pub(crate) struct CsvOut {
    writer: csv::Writer<Box<dyn Write>>,
    file: Option<OutFile>,
}

impl CsvOut {
    /// Claims the destination. A file that exists is refused: a factory CSV holds
    /// secrets that exist nowhere else in clear, and overwriting one loses them.
    pub(crate) fn create(out: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = out else {
            return Ok(Self {
                writer: csv::Writer::from_writer(Box::new(std::io::stdout())),
                file: None,
            });
        };
        let file = OutFile::claim(path)?;
        Ok(Self {
            writer: csv::Writer::from_writer(Box::new(file.handle()?)),
            file: Some(file),
        })
    }

    pub(crate) fn row<I: AsRef<[u8]>>(
        &mut self,
        fields: impl IntoIterator<Item = I>,
    ) -> anyhow::Result<()> {
        self.writer.write_record(fields).map_err(|e| self.error(&e))
    }

    fn error(&self, e: &csv::Error) -> anyhow::Error {
        match &self.file {
            Some(f) => anyhow::anyhow!("cannot write {}: {e}", f.path().display()),
            None => anyhow::anyhow!("cannot write to stdout: {e}"),
        }
    }

    /// Flushes, syncs and renames the file into place.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.writer
            .flush()
            .map_err(|e| self.error(&csv::Error::from(e)))?;
        if let Some(f) = self.file.take() {
            f.commit()?;
        }
        Ok(())
    }
}

/// After a CSV was written to a file: says how many rows (`--json`: one document).
/// Nothing is printed when the CSV itself went to stdout.
pub(crate) fn report_written(
    g: &Global,
    pid: &str,
    n: u64,
    what: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = out {
        if g.json {
            output::json(&json!({ "pid": pid, "count": n, "out": path }))?;
        } else {
            println!("{n} {what} of {pid} written to {}", path.display());
        }
    }
    Ok(())
}

/// Reads a factory CSV: each triplet with its line number. Every problem names the
/// file and line.
fn read_csv(file: &Path) -> anyhow::Result<(Vec<NewTriplet>, Vec<u64>)> {
    let name = file.display().to_string();
    let reader = std::fs::File::open(file).with_context(|| format!("cannot read {name}"))?;
    Ok(dynreg_store::factory_csv::read_triplets(
        std::io::BufReader::new(reader),
        &name,
    )?)
}

/// Reads triplet references from a CSV whose header names a `uuid` or `barcode`
/// column; every problem names the file and line.
fn read_refs(path: &Path) -> anyhow::Result<Vec<TripletRef>> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {name}"))?;
    let (counting, line_of) = dynreg_store::factory_csv::count_lines(std::io::BufReader::new(file));
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(counting);
    let headers = rdr
        .headers()
        .with_context(|| format!("{name} line 1: not a CSV header"))?
        .clone();
    let col = |n: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(n));
    let (at, uuid) = match (col("uuid"), col("barcode")) {
        (Some(i), _) => (i, true),
        (None, Some(i)) => (i, false),
        _ => bail!("{name} line 1: the header names no `uuid` or `barcode` column"),
    };
    let mut refs = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            anyhow::anyhow!(
                "{name} {}",
                dynreg_store::factory_csv::describe(&e, &line_of)
            )
        })?;
        let line = line_of.at(rec.position());
        let v = rec.get(at).unwrap_or("");
        if v.is_empty() {
            bail!(
                "{name} line {line}: empty {}",
                if uuid { "uuid" } else { "barcode" }
            );
        }
        refs.push(if uuid {
            TripletRef::Uuid(v.to_owned())
        } else {
            TripletRef::Barcode(v.to_owned())
        });
    }
    if refs.is_empty() {
        bail!("{name}: no triplets listed");
    }
    Ok(refs)
}

pub(crate) fn run(g: &Global, cmd: PoolCmd) -> anyhow::Result<()> {
    let store = g.open(Open::Existing)?;
    match cmd {
        PoolCmd::Generate {
            pid,
            count,
            barcode_prefix,
            out,
        } => {
            // Claim the destination first: a CSV that cannot be written must not leave
            // triplets in the store whose secrets nobody has.
            let mut csv = CsvOut::create(out.as_deref())?;
            let bar = Arc::new(Bar::new("generating", count));
            let b = bar.clone();
            let triplets = audited(&store, "pool.generated", &pid, "", |ops, e| {
                e.detail = serde_json::json!({"count": count}).to_string();
                ops.generate_pool(
                    &pid,
                    count,
                    &barcode_prefix,
                    unix_now(),
                    Arc::new(move |n| b.set(n)),
                )
            })?;
            bar.finish();
            crate::outfile::note_on_interrupt(format!(
                "the {} triplets were committed before the interruption: `dynreg pool export --pid {pid} --state free` writes their CSV again",
                triplets.len()
            ));
            csv.row(CSV_HEADER)?;
            for t in &triplets {
                csv.row(dynreg_store::factory_csv::record(t))?;
            }
            csv.finish()?;
            report_written(
                g,
                &pid,
                triplets.len() as u64,
                "triplets generated",
                out.as_deref(),
            )?;
        }
        PoolCmd::Import { pid, file } => {
            let (triplets, lines) = read_csv(&file)?;
            let n = triplets.len() as u64;
            let bar = Arc::new(Bar::new("importing", n));
            let b = bar.clone();
            let imported = audited(&store, "pool.imported", &pid, "", |ops, e| {
                e.detail = serde_json::json!({"count": n}).to_string();
                ops.import_pool(&pid, triplets, Arc::new(move |n| b.set(n)))
            })
            .map_err(|e| match e {
                dynreg_store::Error::Item { index, message } => anyhow::anyhow!(
                    "{} line {}: {message}; nothing was imported",
                    file.display(),
                    lines.get(index).copied().unwrap_or(0)
                ),
                other => anyhow::Error::new(other),
            })?;
            bar.finish();
            if g.json {
                output::json(&json!({ "pid": pid, "imported": imported }))?;
            } else {
                println!("{imported} triplets imported into the pool of {pid}");
            }
        }
        PoolCmd::Stats { pid } => {
            let s = store.pool_stats(&pid)?;
            if g.json {
                // The admin API's shape (the store's type), with the pid.
                let mut v = serde_json::to_value(s)?;
                v["pid"] = json!(pid);
                output::json(&v)?;
            } else {
                let mut f = vec![
                    ("pid", pid),
                    ("free", s.free.to_string()),
                    ("bound", s.bound.to_string()),
                    ("revoked", s.revoked.to_string()),
                    ("withdrawn", s.withdrawn.to_string()),
                    ("devices", s.devices.to_string()),
                ];
                if let Some(m) = s.mac_left {
                    f.push(("MACs left", m.to_string()));
                }
                output::fields(&f)?;
            }
        }
        PoolCmd::Withdraw {
            pid,
            barcode,
            uuid,
            file,
            yes,
        } => {
            let mut refs: Vec<TripletRef> = barcode.into_iter().map(TripletRef::Barcode).collect();
            refs.extend(uuid.into_iter().map(TripletRef::Uuid));
            let from_file = match &file {
                Some(f) => read_refs(f)?,
                None => Vec::new(),
            };
            let flags = refs.len();
            refs.extend(from_file);
            if refs.is_empty() {
                return Err(Usage(
                    "pool withdraw: name triplets with --barcode, --uuid or --file".into(),
                )
                .into());
            }
            let found = store
                .withdrawal_candidates(&pid, &refs)
                .map_err(|e| match e {
                    dynreg_store::Error::Item { index, message } => {
                        match (&file, index.checked_sub(flags)) {
                            (Some(f), Some(row)) => anyhow::anyhow!(
                                "{} data row {}: {message}; nothing was withdrawn",
                                f.display(),
                                row + 1
                            ),
                            _ => anyhow::anyhow!("{message}; nothing was withdrawn"),
                        }
                    }
                    other => anyhow::Error::new(other),
                })?;
            let n = found.len();
            if !yes
                && !output::confirm(&format!(
                    "withdraw {n} free triplets of {pid}? They will never be handed out"
                ))?
            {
                bail!("not confirmed: nothing was withdrawn");
            }
            let withdrawn = audited(&store, "pool.withdrawn", &pid, "", |ops, e| {
                e.detail = serde_json::json!({"count": found.len()}).to_string();
                ops.withdraw(
                    &pid,
                    found.iter().map(|w| w.uuid.clone()).collect(),
                    unix_now(),
                )
            })?;
            if g.json {
                output::json(&json!({
                    "pid": pid, "withdrawn": withdrawn,
                    "triplets": found.iter().map(|w| json!({"uuid": w.uuid, "barcode": w.barcode, "mac": w.mac})).collect::<Vec<_>>(),
                }))?;
            } else {
                println!("{withdrawn} free triplets of {pid} withdrawn");
            }
        }
        PoolCmd::Export { pid, state, out } => {
            let mut csv = CsvOut::create(out.as_deref())?;
            csv.row(CSV_HEADER)?;
            let mut n = 0u64;
            audited(&store, "pool.exported", &pid, "", |ops, _| {
                ops.for_each_triplet(&pid, state, &mut |t| {
                    n += 1;
                    csv.row([t.uuid.as_str(), t.secret.expose(), &t.mac, &t.barcode])
                        .map_err(|e| dynreg_store::Error::Invalid(e.to_string()))
                })
            })?;
            csv.finish()?;
            report_written(g, &pid, n, "triplets", out.as_deref())?;
        }
    }
    store.close()?;
    Ok(())
}

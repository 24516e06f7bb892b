//! `dynreg pool ...`: generate, import, stats, export.
//!
//! The factory CSV has the header `uuid,secret,mac,barcode` (mac and barcode columns may
//! be left out on import, or left empty).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use dynreg_registrar::{NewTriplet, TripletState};
use serde_json::json;

use crate::progress::Bar;
use crate::{Global, now, output};

/// The factory CSV header.
pub(crate) const CSV_HEADER: [&str; 4] = dynreg_store::factory_csv::HEADER;

#[derive(Debug, Subcommand)]
pub(crate) enum PoolCmd {
    /// Generate free triplets (random uuid and secret, MAC from the product's range,
    /// barcode PREFIX + 12-digit serial) and write the factory CSV.
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
        /// Write the CSV here (refused if the file exists); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import triplets from a CSV file (header uuid,secret,mac,barcode) as free: all or
    /// nothing.
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
    /// Write the pool's triplets (secrets included) as a factory CSV again.
    Export {
        /// The product id.
        #[arg(long)]
        pid: String,
        /// Only triplets in this state: free, bound or revoked.
        #[arg(long, value_parser = parse_state)]
        state: Option<TripletState>,
        /// Write the CSV here (refused if the file exists); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_state(s: &str) -> Result<TripletState, String> {
    match s {
        "free" => Ok(TripletState::Free),
        "bound" => Ok(TripletState::Bound),
        "revoked" => Ok(TripletState::Revoked),
        _ => Err(format!("`{s}` is not a state (free, bound, revoked)")),
    }
}

/// A CSV destination: a new file written beside its final name and renamed into place
/// once complete (so a half-written CSV never carries the final name), or stdout.
pub(crate) struct CsvOut {
    writer: csv::Writer<Box<dyn Write>>,
    paths: Option<(PathBuf, PathBuf)>,
}

impl CsvOut {
    /// Opens the destination. A file that exists is refused: a factory CSV holds
    /// secrets that exist nowhere else in clear, and overwriting one loses them.
    pub(crate) fn create(out: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = out else {
            return Ok(Self {
                writer: csv::Writer::from_writer(Box::new(std::io::stdout())),
                paths: None,
            });
        };
        if path.exists() {
            bail!(
                "{} exists: choose another file (it may hold secrets found nowhere else)",
                path.display()
            );
        }
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let file =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            writer: csv::Writer::from_writer(Box::new(file)),
            paths: Some((tmp, path.to_owned())),
        })
    }

    pub(crate) fn row<I: AsRef<[u8]>>(
        &mut self,
        fields: impl IntoIterator<Item = I>,
    ) -> anyhow::Result<()> {
        self.writer.write_record(fields)?;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        if let Some((tmp, path)) = self.paths.take() {
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for CsvOut {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.paths {
            let _ = fs::remove_file(tmp);
        }
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

pub(crate) fn run(g: &Global, cmd: PoolCmd) -> anyhow::Result<()> {
    let store = g.open()?;
    match cmd {
        PoolCmd::Generate {
            pid,
            count,
            barcode_prefix,
            out,
        } => {
            // Open the destination first: a CSV that cannot be written must not leave
            // triplets in the store whose secrets nobody has.
            let mut csv = CsvOut::create(out.as_deref())?;
            let bar = Arc::new(Bar::new("generating", count));
            let b = bar.clone();
            let triplets = store.generate_pool(
                &pid,
                count,
                &barcode_prefix,
                now(),
                Arc::new(move |n| b.set(n)),
            )?;
            bar.finish();
            csv.row(CSV_HEADER)?;
            for t in &triplets {
                csv.row([t.uuid.as_str(), t.secret.expose(), &t.mac, &t.barcode])?;
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
            let imported = store
                .import_pool(&pid, triplets, Arc::new(move |n| b.set(n)))
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
                output::json(&json!({
                    "pid": pid, "free": s.free, "bound": s.bound, "revoked": s.revoked,
                    "devices": s.devices, "mac_left": s.mac_left,
                }))?;
            } else {
                let mut f = vec![
                    ("pid", pid),
                    ("free", s.free.to_string()),
                    ("bound", s.bound.to_string()),
                    ("revoked", s.revoked.to_string()),
                    ("devices", s.devices.to_string()),
                ];
                if let Some(m) = s.mac_left {
                    f.push(("MACs left", m.to_string()));
                }
                output::fields(&f)?;
            }
        }
        PoolCmd::Export { pid, state, out } => {
            let mut csv = CsvOut::create(out.as_deref())?;
            csv.row(CSV_HEADER)?;
            let mut n = 0u64;
            store.for_each_triplet(&pid, state, |t| {
                n += 1;
                csv.row([t.uuid.as_str(), t.secret.expose(), &t.mac, &t.barcode])
                    .map_err(|e| dynreg_store::Error::Invalid(e.to_string()))
            })?;
            csv.finish()?;
            report_written(g, &pid, n, "triplets", out.as_deref())?;
        }
    }
    store.close()?;
    Ok(())
}

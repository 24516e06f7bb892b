//! `dynreg device ...`: list, show, revoke, reset, export.
//!
//! A device is named by the pid it authenticates with (its clientId's pid) and its
//! unique; `--uuid` finds it by its triplet instead.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use dynreg_registrar::Registration;
use dynreg_store::DeviceFilter;
use serde_json::{Value, json};

use crate::cmd::pool::{CsvOut, report_written};
use crate::progress::Bar;
use crate::{Global, now, output};

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCmd {
    /// List devices, newest first.
    List {
        /// Only devices registered under this product.
        #[arg(long)]
        pid: Option<String>,
        /// Only revoked devices.
        #[arg(long)]
        revoked: bool,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one device.
    Show {
        /// The pid the device authenticates with.
        #[arg(long, requires = "unique", conflicts_with = "uuid")]
        pid: Option<String>,
        /// The device's unique.
        #[arg(long, requires = "pid")]
        unique: Option<String>,
        /// Find the device by its triplet's uuid instead.
        #[arg(long)]
        uuid: Option<String>,
        /// Also print the device secret.
        #[arg(long)]
        reveal_secret: bool,
    },
    /// Revoke a device: its registrations are refused (4031) and its triplet is never
    /// handed out again.
    Revoke {
        /// The pid the device authenticates with.
        #[arg(long)]
        pid: String,
        /// The device's unique.
        #[arg(long)]
        unique: String,
    },
    /// Forget a revoked device so that it may register again (with a fresh triplet).
    Reset {
        /// The pid the device authenticates with.
        #[arg(long)]
        pid: String,
        /// The device's unique.
        #[arg(long)]
        unique: String,
    },
    /// Register COUNT synthetic devices (uniques `bulk-<n>`, generated triplets) directly
    /// in the store, bypassing the network: for benchmarks and capacity tests.
    BulkLoad {
        /// The product to register them under.
        #[arg(long)]
        pid: String,
        /// How many devices.
        #[arg(long)]
        count: u64,
        /// The first serial number (uniques `bulk-<start>` upwards).
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
    /// Write a product's devices as CSV.
    Export {
        /// The product the devices are registered under.
        #[arg(long)]
        pid: String,
        /// Write here (refused if the file exists); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Include each device's secret.
        #[arg(long)]
        with_secrets: bool,
    },
}

fn device_json(r: &Registration, secret: bool) -> Value {
    let mut v = json!({
        "pid": r.pid,
        "unique": r.unique,
        "auth_pid": r.key_pid,
        "from_pid": r.from_pid(),
        "uuid": r.triplet.uuid,
        "mac": r.triplet.mac,
        "barcode": r.triplet.barcode,
        "registered_at": output::time(r.registered_at),
        "last_seen_at": output::time(r.last_seen_at),
        "revoked_at": r.revoked_at.map(output::time),
    });
    if secret {
        v["secret"] = json!(r.triplet.secret.expose());
    }
    v
}

const EXPORT_HEADER: [&str; 9] = [
    "pid",
    "unique",
    "uuid",
    "mac",
    "barcode",
    "registered_at",
    "last_seen_at",
    "revoked_at",
    "from_pid",
];

pub(crate) fn run(g: &Global, cmd: DeviceCmd) -> anyhow::Result<()> {
    let store = g.open()?;
    match cmd {
        DeviceCmd::List {
            pid,
            revoked,
            limit,
        } => {
            let list = store.list_devices(&DeviceFilter {
                pid,
                revoked_only: revoked,
                limit,
            })?;
            if g.json {
                output::json(&Value::Array(
                    list.iter().map(|r| device_json(r, false)).collect(),
                ))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.pid.clone(),
                            r.unique.clone(),
                            r.triplet.uuid.clone(),
                            r.triplet.barcode.clone(),
                            output::time(r.registered_at),
                            r.revoked_at.map_or_else(
                                || "active".into(),
                                |t| format!("revoked {}", output::time(t)),
                            ),
                        ]
                    })
                    .collect();
                output::table(
                    &["PID", "UNIQUE", "UUID", "BARCODE", "REGISTERED", "STATE"],
                    &rows,
                )?;
            }
        }
        DeviceCmd::Show {
            pid,
            unique,
            uuid,
            reveal_secret,
        } => {
            let found = match (pid, unique, uuid) {
                (Some(p), Some(u), None) => store
                    .device(&p, &u)?
                    .with_context(|| format!("no device `{u}` registered with pid `{p}`"))?,
                (None, None, Some(id)) => store
                    .device_by_uuid(&id)?
                    .with_context(|| format!("no device holds uuid `{id}`"))?,
                _ => bail!("name the device with --pid and --unique, or with --uuid"),
            };
            if g.json {
                output::json(&device_json(&found, reveal_secret))?;
            } else {
                let mut f = vec![
                    ("pid", found.pid.clone()),
                    ("unique", found.unique.clone()),
                    ("uuid", found.triplet.uuid.clone()),
                    ("mac", found.triplet.mac.clone()),
                    ("barcode", found.triplet.barcode.clone()),
                    ("registered", output::time(found.registered_at)),
                    ("last seen", output::time(found.last_seen_at)),
                    (
                        "state",
                        found.revoked_at.map_or_else(
                            || "active".into(),
                            |t| format!("revoked {}", output::time(t)),
                        ),
                    ),
                ];
                if let Some(from) = found.from_pid() {
                    f.push(("moved from", from.to_owned()));
                }
                if reveal_secret {
                    f.insert(3, ("secret", found.triplet.secret.expose().to_owned()));
                }
                output::fields(&f)?;
            }
        }
        DeviceCmd::Revoke { pid, unique } => {
            store.revoke(&pid, &unique, now())?;
            if g.json {
                output::json(&json!({ "pid": pid, "unique": unique, "revoked": true }))?;
            } else {
                println!("device {unique} of {pid} revoked");
            }
        }
        DeviceCmd::Reset { pid, unique } => {
            store.reset(&pid, &unique)?;
            if g.json {
                output::json(&json!({ "pid": pid, "unique": unique, "reset": true }))?;
            } else {
                println!(
                    "device {unique} of {pid} reset: it may register again and will get a fresh triplet"
                );
            }
        }
        DeviceCmd::BulkLoad { pid, count, start } => {
            let bar = Bar::new("loading", count);
            let n = store.bulk_load(&pid, start, count, now(), &|n| bar.set(n))?;
            bar.finish();
            if g.json {
                output::json(&json!({ "pid": pid, "loaded": n }))?;
            } else {
                println!(
                    "{n} devices registered under {pid} (uniques bulk-{start} to bulk-{})",
                    start + n.saturating_sub(1)
                );
            }
        }
        DeviceCmd::Export {
            pid,
            out,
            with_secrets,
        } => {
            let mut csv = CsvOut::create(out.as_deref())?;
            let mut header: Vec<&str> = EXPORT_HEADER.to_vec();
            if with_secrets {
                header.push("secret");
            }
            csv.row(&header)?;
            let mut n = 0u64;
            let filter = DeviceFilter {
                pid: Some(pid.clone()),
                revoked_only: false,
                limit: 0,
            };
            store.for_each_device(&filter, |r| {
                n += 1;
                let mut row = vec![
                    r.pid.clone(),
                    r.unique.clone(),
                    r.triplet.uuid.clone(),
                    r.triplet.mac.clone(),
                    r.triplet.barcode.clone(),
                    output::time(r.registered_at),
                    output::time(r.last_seen_at),
                    r.revoked_at.map(output::time).unwrap_or_default(),
                    r.from_pid().unwrap_or_default().to_owned(),
                ];
                if with_secrets {
                    row.push(r.triplet.secret.expose().to_owned());
                }
                csv.row(&row)
                    .map_err(|e| dynreg_store::Error::Invalid(e.to_string()))
            })?;
            csv.finish()?;
            report_written(g, &pid, n, "devices", out.as_deref())?;
        }
    }
    store.close()?;
    Ok(())
}

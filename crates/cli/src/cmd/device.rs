//! `dynreg device ...`: list, show, revoke, reset, export, and the devices expected in
//! advance (expect, expected, unexpect: [`crate::cmd::expected`]).
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
use dynreg_store::admin::{DeviceAction, act_on_device};

use crate::{Global, Open, Usage, actor, audited, output, unix_now};
use dynreg_store::HistoryEntry;

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
        /// Only devices registered at or after TIME: 2026-11-28T14:28:35Z, 2026-11-28
        /// (UTC), Unix seconds, or a duration ago (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one device, with the triplets it held before a reset. Name it by --pid and
    /// --unique, or by what is in hand: --uuid, --barcode (with --pid to pick the
    /// product) or --mac. A uuid whose device was reset shows who held it.
    Show {
        /// The pid the device authenticates with (with --unique), or the product of
        /// --barcode.
        #[arg(long, conflicts_with_all = ["uuid", "mac"])]
        pid: Option<String>,
        /// The device's unique.
        #[arg(long, requires = "pid", conflicts_with = "barcode")]
        unique: Option<String>,
        /// Find the device by its triplet's uuid.
        #[arg(long, conflicts_with_all = ["barcode", "mac"])]
        uuid: Option<String>,
        /// Find the device by the barcode on its label.
        #[arg(long, conflicts_with = "mac")]
        barcode: Option<String>,
        /// Find the device by its MAC (AA:BB:CC:DD:EE:FF, AA-BB-CC-DD-EE-FF or
        /// AABBCCDDEEFF).
        #[arg(long)]
        mac: Option<String>,
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
    /// List devices in advance for a product (`admission = listed` then admits only
    /// them): a CSV of `unique[,barcode[,mac]]`, header optional, from the factory. A
    /// listed device's registration puts its barcode and MAC on its triplet. Listing a
    /// unique again replaces its barcode and MAC.
    Expect {
        /// The product.
        #[arg(long)]
        pid: String,
        /// The CSV file.
        file: PathBuf,
    },
    /// Show the devices listed for a product, by unique, with when each registered.
    Expected {
        /// The product.
        #[arg(long)]
        pid: String,
        /// Only the devices not registered yet.
        #[arg(long)]
        waiting: bool,
        /// Only uniques after this one (the next page).
        #[arg(long)]
        after: Option<String>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the counts only (listed, not registered yet).
        #[arg(long)]
        count: bool,
    },
    /// Remove devices from a product's list (a registered one keeps its registration,
    /// but is refused its next CONNECT while the product admits listed devices only).
    Unexpect {
        /// The product.
        #[arg(long)]
        pid: String,
        /// The uniques to remove.
        #[arg(required = true)]
        uniques: Vec<String>,
    },
    /// Write a product's devices as CSV (CSV even under --json).
    Export {
        /// The product the devices are registered under.
        #[arg(long)]
        pid: String,
        /// Write here, mode 0600 (refused if the file exists); default: stdout.
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

fn history_json(h: &HistoryEntry) -> Value {
    json!({
        "uuid": h.uuid, "pid": h.pid, "auth_pid": h.key_pid, "unique": h.unique,
        "registered_at": output::time(h.registered_at),
        "revoked_at": h.revoked_at.map(output::time),
        "reset_at": output::time(h.reset_at),
    })
}

fn history_line(h: &HistoryEntry) -> String {
    format!(
        "triplet {} of {} held by {} of {} from {}{}, reset {}",
        h.uuid,
        h.pid,
        h.unique,
        h.key_pid,
        output::time(h.registered_at),
        h.revoked_at
            .map_or_else(String::new, |t| format!(", revoked {}", output::time(t))),
        output::time(h.reset_at)
    )
}

pub(crate) fn run(g: &Global, cmd: DeviceCmd) -> anyhow::Result<()> {
    let store = g.open(Open::Existing)?;
    match cmd {
        DeviceCmd::List {
            pid,
            revoked,
            since,
            limit,
        } => {
            let since = since
                .as_deref()
                .map(|s| output::parse_time(s, unix_now()))
                .transpose()
                .map_err(|e| Usage(format!("--since: {e}")))?;
            let list = store.list_devices(&DeviceFilter {
                pid,
                revoked_only: revoked,
                since,
                limit,
                ..DeviceFilter::default()
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
            barcode,
            mac,
            reveal_secret,
        } => {
            let (found, what) = match (pid, unique, uuid, barcode, mac) {
                (Some(p), Some(u), None, None, None) => (
                    store.device(&p, &u)?,
                    format!("no device `{u}` registered with pid `{p}`"),
                ),
                (None, None, Some(id), None, None) => {
                    let found = store.device_by_uuid(&id)?;
                    if found.is_none() {
                        return show_triplet_history(g, &store, &id);
                    }
                    (found, String::new())
                }
                (p, None, None, Some(b), None) => (
                    store.device_by_barcode(p.as_deref(), &b)?,
                    format!(
                        "no device holds a triplet with barcode `{b}`{}",
                        p.map_or_else(String::new, |p| format!(" of product `{p}`"))
                    ),
                ),
                (None, None, None, None, Some(m)) => {
                    let mut all = store.devices_by_mac(&m)?;
                    if all.len() > 1 {
                        eprintln!(
                            "{} devices hold MAC {m}; showing the latest (pool imported before MACs were checked?)",
                            all.len()
                        );
                    }
                    (all.pop(), format!("no device holds a triplet with MAC {m}"))
                }
                _ => {
                    return Err(Usage(
                        "name the device with --pid and --unique, --uuid, --barcode [--pid], or --mac"
                            .into(),
                    )
                    .into());
                }
            };
            let found = found.context(what)?;
            let history = store.device_history(&found.key_pid, &found.unique)?;
            if g.json {
                let mut v = device_json(&found, reveal_secret);
                v["history"] = Value::Array(history.iter().map(history_json).collect());
                output::json(&v)?;
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
                for h in &history {
                    f.push(("before", history_line(h)));
                }
                output::fields(&f)?;
            }
        }
        DeviceCmd::Revoke { pid, unique } => {
            act_on_device(
                &*store,
                &actor(),
                DeviceAction::Revoke,
                &pid,
                &unique,
                unix_now(),
            )?;
            if g.json {
                output::json(&json!({ "pid": pid, "unique": unique, "revoked": true }))?;
            } else {
                println!("device {unique} of {pid} revoked");
            }
        }
        DeviceCmd::Reset { pid, unique } => {
            act_on_device(
                &*store,
                &actor(),
                DeviceAction::Reset,
                &pid,
                &unique,
                unix_now(),
            )?;
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
            let n = store.bulk_load(&pid, start, count, unix_now(), &|n| bar.set(n))?;
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
        DeviceCmd::Expect { pid, file } => crate::cmd::expected::expect(g, &store, &pid, &file)?,
        DeviceCmd::Expected {
            pid,
            waiting,
            after,
            limit,
            count,
        } => {
            let filter = dynreg_store::ExpectedFilter {
                waiting_only: waiting,
                after,
                limit,
            };
            crate::cmd::expected::list(g, &store, &pid, &filter, count)?;
        }
        DeviceCmd::Unexpect { pid, uniques } => {
            crate::cmd::expected::remove(g, &store, &pid, &uniques)?;
        }
        DeviceCmd::Export {
            pid,
            out,
            with_secrets,
        } => {
            let mut csv = CsvOut::create(out.as_deref())?;
            let mut header: Vec<&str> = dynreg_store::admin::DEVICE_EXPORT_HEADER.to_vec();
            if with_secrets {
                header.push("secret");
            }
            csv.row(&header)?;
            let mut n = 0u64;
            let filter = DeviceFilter {
                pid: Some(pid.clone()),
                ..DeviceFilter::default()
            };
            let mut write = |ops: &dyn dynreg_store::Operator| {
                ops.for_each_device(&filter, &mut |r| {
                    n += 1;
                    let row = dynreg_store::admin::device_export_row(&r, with_secrets);
                    csv.row(&row)
                        .map_err(|e| dynreg_store::Error::Invalid(e.to_string()))
                })
            };
            if with_secrets {
                // Device secrets leave the store: who took them is on record.
                audited(&store, "device.exported", &pid, "", |ops, _| write(ops))?;
            } else {
                write(&*store)?;
            }
            csv.finish()?;
            report_written(g, &pid, n, "devices", out.as_deref())?;
        }
    }
    store.close()?;
    Ok(())
}

/// `device show --uuid` for a triplet no device holds now: its state, and who held it
/// before a reset.
fn show_triplet_history(
    g: &Global,
    store: &crate::store::Backend,
    uuid: &str,
) -> anyhow::Result<()> {
    let triplet = store.triplet(uuid)?;
    let history = store.triplet_history(uuid)?;
    let Some(t) = triplet else {
        bail!("no triplet has uuid `{uuid}`");
    };
    if g.json {
        output::json(&json!({
            "uuid": t.uuid, "pid": t.pid, "mac": t.mac, "barcode": t.barcode,
            "state": t.state.name(), "device": null,
            "history": history.iter().map(history_json).collect::<Vec<_>>(),
        }))?;
    } else {
        let mut f = vec![
            ("uuid", t.uuid.clone()),
            ("pid", t.pid.clone()),
            ("mac", t.mac.clone()),
            ("barcode", t.barcode.clone()),
            (
                "state",
                format!("{} (no device holds it now)", t.state.name()),
            ),
        ];
        for h in &history {
            f.push(("held before", history_line(h)));
        }
        output::fields(&f)?;
    }
    store.close()?;
    Ok(())
}

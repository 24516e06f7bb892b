//! `dynreg product ...`: create, list, show, update, enable, disable, delete,
//! rotate-secret, retire-secret, export, import.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use dynreg_registrar::{Admission, MacRange, Product, ReregPolicy, Signatures, SourceMode, model};
use dynreg_store::{NewProduct, PoolStats, ProductDefinition, ProductSummary, ProductUpdate};
use serde_json::{Value, json};

use crate::outfile::OutFile;
use crate::{Global, Open, Usage, audited, output, unix_now};

/// The grace period of `rotate-secret` when `--grace` is not given: 90 days.
///
/// A routine rotation must not lock out devices flashed with the old secret that have
/// not registered yet, and those sit in warehouses and shops for months. A leak is
/// the other case, and it is a deliberate act: `--grace 0`.
pub(crate) const DEFAULT_GRACE: &str = dynreg_store::admin::DEFAULT_GRACE;

#[derive(Debug, Subcommand)]
pub(crate) enum ProductCmd {
    /// Create a product; prints its pid and secret (the secret is shown only here and
    /// by `product show --reveal-secret`).
    Create {
        /// A human name.
        #[arg(long)]
        name: String,
        /// The pid (1 to 64 of A-Z a-z 0-9 . _ -); generated when absent.
        #[arg(long)]
        pid: Option<String>,
        /// Where triplets come from: pool, generate or pool-then-generate.
        #[arg(long, default_value = "pool")]
        mode: SourceMode,
        /// MAC addresses for generated triplets, START-END (e.g.
        /// 02:00:00:00:00:00-02:00:00:00:FF:FF).
        #[arg(long)]
        mac_range: Option<MacRange>,
        /// The CONNECT ts skew window in seconds.
        #[arg(long, default_value_t = dynreg_proto::credentials::DEFAULT_TS_WINDOW)]
        ts_window: u64,
        /// When a device that registered before gets its triplet again: `always`,
        /// `never`, or `window:DURATION` (e.g. window:24h, window:7d) after its first
        /// registration. Later requests get res 4032 until an operator resets the
        /// device. See docs/security.md.
        #[arg(long, default_value_t = ReregPolicy::DEFAULT)]
        reregistration: ReregPolicy,
        /// Which sign methods devices may use: `any` (the seed's hmacSha1 and
        /// hmacSha256, and the device-bound hmacSha1u and hmacSha256u) or `bound` (the
        /// device-bound ones only: a captured CONNECT cannot register another device).
        /// See docs/security.md.
        #[arg(long, default_value_t = Signatures::Any)]
        signatures: Signatures,
        /// Which devices may register: `open` (any unique whose credentials verify) or
        /// `listed` (only the uniques listed with `dynreg device expect`; any other is
        /// refused at CONNECT). See docs/security.md.
        #[arg(long, default_value_t = Admission::Open)]
        admission: Admission,
        /// The most devices the product may bind; more get res 4033 [default: no limit].
        #[arg(long)]
        quota: Option<u64>,
        /// Free triplets below which `pool.low` fires (an audit line and, with a
        /// webhook, an event) [default: none].
        #[arg(long)]
        low_water: Option<u64>,
    },
    /// Change a product: name, mode, MAC range, ts window, re-registration policy,
    /// signatures, admission, quota. Only the options given change.
    Update {
        /// The product id.
        pid: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Where triplets come from: pool, generate or pool-then-generate.
        #[arg(long)]
        mode: Option<SourceMode>,
        /// A new MAC range START-END for generated triplets (addresses already handed
        /// out from the old range are skipped).
        #[arg(long, conflicts_with = "no_mac_range")]
        mac_range: Option<MacRange>,
        /// Remove the MAC range (generated triplets get no MAC).
        #[arg(long)]
        no_mac_range: bool,
        /// The CONNECT ts skew window in seconds (1 to 604800).
        #[arg(long)]
        ts_window: Option<u64>,
        /// `always`, `never`, or `window:DURATION` (e.g. window:24h).
        #[arg(long)]
        reregistration: Option<ReregPolicy>,
        /// `any` or `bound` (device-bound sign methods only).
        #[arg(long)]
        signatures: Option<Signatures>,
        /// `open` or `listed` (only the devices listed with `dynreg device expect`).
        #[arg(long)]
        admission: Option<Admission>,
        /// The most devices the product may bind (devices already registered keep
        /// their triplets).
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<u64>,
        /// Remove the product's quota.
        #[arg(long)]
        no_quota: bool,
        /// Free triplets below which `pool.low` fires.
        #[arg(long, conflicts_with = "no_low_water")]
        low_water: Option<u64>,
        /// Remove the product's low-water mark.
        #[arg(long)]
        no_low_water: bool,
    },
    /// List products with their pool and device counts.
    List,
    /// Show one product.
    Show {
        /// The product id.
        pid: String,
        /// Also print the product's registration secret.
        #[arg(long)]
        reveal_secret: bool,
    },
    /// Let devices of the product register.
    Enable {
        /// The product id.
        pid: String,
    },
    /// Refuse registrations for the product (CONNECT is refused, requests get 4030).
    Disable {
        /// The product id.
        pid: String,
    },
    /// Give the product a new secret and print it. Devices still to be flashed need the
    /// new one; devices already registered are not affected. The old secret keeps
    /// working for the grace period, for devices flashed with it that have not
    /// registered yet.
    RotateSecret {
        /// The product id.
        pid: String,
        /// How long the old secret keeps working (e.g. 0, 12h, 30d). 0: at once, the
        /// case of a leaked secret. The default covers devices that sit in shops for
        /// months; `retire-secret` ends it early.
        #[arg(long, default_value = DEFAULT_GRACE, value_parser = model::parse_duration)]
        grace: u64,
    },
    /// End the grace period of the product's previous secret now: devices that still
    /// hold it are refused (and the log says that they hold the old secret).
    RetireSecret {
        /// The product id.
        pid: String,
    },
    /// Delete a product and its triplets. Refused while devices are registered under
    /// it, unless --force (which forgets those devices too).
    Delete {
        /// The product id.
        pid: String,
        /// Delete even with registered devices, and forget them.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Write a product's definition (name, mode, MAC range, ts window, policy, quota;
    /// with --with-secret its secret) as JSON, to move it from the test environment
    /// to the formal one with `product import`. Never its triplets or devices.
    Export {
        /// The product id.
        pid: String,
        /// Include the product secret (devices flashed for one environment then work
        /// in the other). The file is created mode 0600.
        #[arg(long)]
        with_secret: bool,
        /// Write here (refused if the file exists); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create a product from a `product export` file. Without a secret in the file,
    /// the product gets a new one, printed here.
    Import {
        /// The file `product export` wrote.
        file: PathBuf,
        /// Create it under this pid instead of the file's.
        #[arg(long)]
        pid: Option<String>,
    },
}

/// A product as JSON: the admin API's shape (the store's type serialized).
fn summary_json(p: &ProductSummary) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

fn summary_fields(p: &ProductSummary) -> Vec<(&'static str, String)> {
    vec![
        ("pid", p.pid.clone()),
        ("name", p.name.clone()),
        ("enabled", p.enabled.to_string()),
        ("mode", p.mode.name().into()),
        (
            "mac range",
            p.mac_range.map_or("-".into(), |r| r.to_string()),
        ),
        ("ts window", format!("{} s", p.ts_window)),
        ("re-registration", p.rereg.to_string()),
        ("signatures", p.signatures.to_string()),
        (
            "admission",
            match p.admission {
                Admission::Open => "open".to_owned(),
                Admission::Listed => format!(
                    "listed ({} devices listed, {} not registered yet)",
                    p.stats.expected, p.stats.expected_waiting
                ),
            },
        ),
        ("quota", p.quota.map_or("-".into(), |q| q.to_string())),
        (
            "low water",
            p.stats
                .low_water
                .map_or("-".into(), |n| format!("{n} free triplets")),
        ),
        (
            "previous secret",
            match p.previous_secret_until {
                None => "-".into(),
                Some(t) if t > unix_now() => format!("works until {}", output::time(t)),
                Some(t) => format!("retired {}", output::time(t)),
            },
        ),
        ("created", output::time(p.created_at)),
        (
            "pool",
            format!(
                "{} free, {} bound, {} revoked",
                p.stats.free, p.stats.bound, p.stats.revoked
            ),
        ),
        ("devices", p.stats.devices.to_string()),
        (
            "re-registrations",
            format!(
                "{} served, {} refused by the policy",
                p.stats.reregistrations, p.stats.reregistrations_refused
            ),
        ),
    ]
}

pub(crate) fn run(g: &Global, cmd: ProductCmd) -> anyhow::Result<()> {
    let mode = match cmd {
        ProductCmd::Create { .. } | ProductCmd::Import { .. } => Open::Create,
        _ => Open::Existing,
    };
    let store = g.open(mode)?;
    match cmd {
        ProductCmd::Create {
            name,
            pid,
            mode,
            mac_range,
            ts_window,
            reregistration,
            signatures,
            admission,
            quota,
            low_water,
        } => {
            let new = NewProduct {
                pid,
                name,
                mode,
                mac_range,
                ts_window,
                rereg: reregistration,
                signatures,
                admission,
                quota,
                low_water,
            };
            let p = audited(&store, "product.created", "", "", |ops, e| {
                let p = ops.create_product(new, unix_now())?;
                e.pid.clone_from(&p.pid);
                Ok(p)
            })?;
            print_created(g, &p, true)?;
        }
        ProductCmd::List => {
            let list = store.list_products()?;
            if g.json {
                output::json(&Value::Array(list.iter().map(summary_json).collect()))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.pid.clone(),
                            p.name.clone(),
                            if p.enabled { "yes" } else { "no" }.into(),
                            p.mode.name().into(),
                            p.stats.free.to_string(),
                            p.stats.devices.to_string(),
                            output::time(p.created_at),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "PID", "NAME", "ENABLED", "MODE", "FREE", "DEVICES", "CREATED",
                    ],
                    &rows,
                )?;
            }
        }
        ProductCmd::Show { pid, reveal_secret } => {
            let p = store.product_summary(&pid)?;
            let secret = if reveal_secret {
                let full = store
                    .load_product(&pid)?
                    .with_context(|| format!("unknown pid `{pid}`"))?;
                Some(full.secret.expose().to_owned())
            } else {
                None
            };
            if g.json {
                let mut v = summary_json(&p);
                if let Some(s) = secret {
                    v["secret"] = json!(s);
                }
                output::json(&v)?;
            } else {
                let mut f = summary_fields(&p);
                if let Some(s) = secret {
                    f.insert(1, ("secret", s));
                }
                output::fields(&f)?;
            }
        }
        ProductCmd::Update {
            pid,
            name,
            mode,
            mac_range,
            no_mac_range,
            ts_window,
            reregistration,
            signatures,
            admission,
            quota,
            no_quota,
            low_water,
            no_low_water,
        } => {
            let update = ProductUpdate {
                name,
                mode,
                mac_range: if no_mac_range {
                    Some(None)
                } else {
                    mac_range.map(Some)
                },
                ts_window,
                rereg: reregistration,
                signatures,
                admission,
                quota: if no_quota {
                    Some(None)
                } else {
                    quota.map(Some)
                },
                low_water: if no_low_water {
                    Some(None)
                } else {
                    low_water.map(Some)
                },
            };
            if update.is_empty() {
                return Err(Usage(format!(
                    "product update {pid}: nothing to change (give --name, --mode, --mac-range, --no-mac-range, --ts-window, --reregistration, --quota, --no-quota, --low-water or --no-low-water)"
                ))
                .into());
            }
            audited(&store, "product.updated", &pid, "", |ops, _| {
                ops.update_product(&pid, update)
            })?;
            let p = store.product_summary(&pid)?;
            if g.json {
                output::json(&summary_json(&p))?;
            } else {
                output::fields(&summary_fields(&p))?;
            }
        }
        ProductCmd::Enable { pid } => set_enabled(g, &store, &pid, true)?,
        ProductCmd::Disable { pid } => set_enabled(g, &store, &pid, false)?,
        ProductCmd::RotateSecret { pid, grace } => {
            let at = unix_now();
            let secret = audited(&store, "product.secret_rotated", &pid, "", |ops, e| {
                e.detail = serde_json::json!({"grace": grace}).to_string();
                ops.rotate_secret(&pid, grace, at)
            })?;
            let until = at.saturating_add(grace);
            if g.json {
                output::json(&json!({
                    "pid": pid, "secret": secret.expose(),
                    "previous_secret_until": output::time(until),
                }))?;
            } else {
                output::fields(&[
                    ("pid", pid.clone()),
                    ("secret", secret.expose().to_owned()),
                    (
                        "old secret",
                        if grace == 0 {
                            "refused from now on".to_owned()
                        } else {
                            format!(
                                "works until {} ({}); `dynreg product retire-secret {pid}` ends that early",
                                output::time(until),
                                model::format_duration(grace)
                            )
                        },
                    ),
                ])?;
            }
        }
        ProductCmd::RetireSecret { pid } => {
            audited(&store, "product.secret_retired", &pid, "", |ops, _| {
                ops.retire_secret(&pid, unix_now())
            })?;
            if g.json {
                output::json(&json!({ "pid": pid, "previous_secret_retired": true }))?;
            } else {
                println!(
                    "product {pid}: the previous secret is refused from now on (servers see this within 2 s)"
                );
            }
        }
        ProductCmd::Delete { pid, force, yes } => {
            let s = store.product_summary(&pid)?;
            if s.stats.devices > 0 && !force {
                bail!(
                    "product `{pid}` has {} registered devices: revoke or move them, or add --force (which forgets them too)",
                    s.stats.devices
                );
            }
            let what = format!(
                "delete product {pid} ({}) with {} free, {} bound, {} revoked triplets and {} devices?",
                s.name,
                s.stats.free,
                s.stats.bound,
                s.stats.revoked + s.stats.withdrawn,
                s.stats.devices
            );
            if !yes && !output::confirm(&what)? {
                bail!("not confirmed: nothing was deleted");
            }
            let d = audited(&store, "product.deleted", &pid, "", |ops, e| {
                if force {
                    e.detail = r#"{"force":true}"#.into();
                }
                ops.delete_product(&pid, force)
            })?;
            if g.json {
                output::json(
                    &json!({ "pid": pid, "deleted": true, "devices": d.devices, "triplets": d.triplets }),
                )?;
            } else {
                println!(
                    "product {pid} deleted, with {} triplets and {} devices",
                    d.triplets, d.devices
                );
            }
        }
        ProductCmd::Export {
            pid,
            with_secret,
            out,
        } => {
            let def = if with_secret {
                audited(&store, "product.exported", &pid, "", |ops, _| {
                    ProductDefinition::export(ops, &pid, true)
                })?
            } else {
                ProductDefinition::export(&*store, &pid, false)?
            };
            let mut text = serde_json::to_vec_pretty(&def)?;
            text.push(b'\n');
            match &out {
                None => std::io::stdout().write_all(&text)?,
                Some(path) => {
                    let file = OutFile::claim(path)?;
                    file.handle()?
                        .write_all(&text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    file.commit()?;
                    eprintln!(
                        "product {pid} written to {}{}",
                        path.display(),
                        if with_secret {
                            " (with its secret)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        ProductCmd::Import { file, pid } => {
            let name = file.display();
            let text = std::fs::read(&file).with_context(|| format!("cannot read {name}"))?;
            let def: ProductDefinition = serde_json::from_slice(&text)
                .with_context(|| format!("{name} is not a `dynreg product export` file"))?;
            let pid = pid.unwrap_or_else(|| def.pid.clone());
            let (p, generated) = audited(&store, "product.imported", &pid, "", |ops, _| {
                def.import(ops, Some(pid.clone()), unix_now())
            })
            .with_context(|| format!("{name}"))?;
            print_created(g, &p, generated)?;
        }
    }
    store.close()?;
    Ok(())
}

fn set_enabled(
    g: &Global,
    store: &crate::store::Backend,
    pid: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    let action = dynreg_store::admin::enabled_action(enabled);
    audited(store, action, pid, "", |ops, _| {
        ops.set_enabled(pid, enabled)
    })?;
    if g.json {
        output::json(&json!({ "pid": pid, "enabled": enabled }))?;
    } else {
        println!(
            "product {pid}: registration {}",
            if enabled { "enabled" } else { "disabled" }
        );
    }
    Ok(())
}

/// Prints a product just created, as `product show --reveal-secret` would.
fn print_created(g: &Global, p: &Product, new_secret: bool) -> anyhow::Result<()> {
    let summary = ProductSummary::new(p.clone(), PoolStats::default());
    let secret = p.secret.expose().to_owned();
    if g.json {
        let mut v = summary_json(&summary);
        v["secret"] = json!(secret);
        output::json(&v)?;
    } else {
        let mut f = summary_fields(&summary);
        f.insert(1, ("secret", secret));
        output::fields(&f)?;
        if new_secret {
            eprintln!(
                "Keep the secret: it is flashed into every device of the product and shown again only with `product show --reveal-secret`."
            );
        }
    }
    Ok(())
}

//! `dynreg product ...`: create, list, show, update, enable, disable, rotate-secret.

use anyhow::Context;
use clap::Subcommand;
use dynreg_registrar::{MacRange, ReregPolicy, SourceMode};
use dynreg_store::{NewProduct, ProductSummary, ProductUpdate};
use serde_json::{Value, json};

use crate::{Global, now, output};

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
        /// The most devices the product may bind; more get res 4033 [default: no limit].
        #[arg(long)]
        quota: Option<u64>,
    },
    /// Change a product's re-registration policy or quota.
    Update {
        /// The product id.
        pid: String,
        /// `always`, `never`, or `window:DURATION` (e.g. window:24h).
        #[arg(long)]
        reregistration: Option<ReregPolicy>,
        /// The most devices the product may bind (devices already registered keep
        /// their triplets).
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<u64>,
        /// Remove the product's quota.
        #[arg(long)]
        no_quota: bool,
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
    /// new one; devices already registered are not affected.
    RotateSecret {
        /// The product id.
        pid: String,
    },
}

fn summary_json(p: &ProductSummary) -> Value {
    json!({
        "pid": p.pid,
        "name": p.name,
        "enabled": p.enabled,
        "mode": p.mode.name(),
        "mac_range": p.mac_range.map(|r| r.to_string()),
        "ts_window": p.ts_window,
        "reregistration": p.rereg.to_string(),
        "quota": p.quota,
        "created_at": output::time(p.created_at),
        "pool": {
            "free": p.stats.free,
            "bound": p.stats.bound,
            "revoked": p.stats.revoked,
        },
        "devices": p.stats.devices,
        "mac_left": p.stats.mac_left,
        "reregistrations": p.stats.reregistrations,
        "reregistrations_refused": p.stats.reregistrations_refused,
    })
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
        ("quota", p.quota.map_or("-".into(), |q| q.to_string())),
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
    let store = g.open()?;
    match cmd {
        ProductCmd::Create {
            name,
            pid,
            mode,
            mac_range,
            ts_window,
            reregistration,
            quota,
        } => {
            let p = store.create_product(
                NewProduct {
                    pid,
                    name,
                    mode,
                    mac_range,
                    ts_window,
                    rereg: reregistration,
                    quota,
                },
                now(),
            )?;
            if g.json {
                output::json(&json!({
                    "pid": p.pid, "name": p.name, "secret": p.secret.expose(), "mode": p.mode.name(),
                    "mac_range": p.mac_range.map(|r| r.to_string()), "ts_window": p.ts_window,
                    "reregistration": p.rereg.to_string(), "quota": p.quota,
                    "enabled": p.enabled, "created_at": output::time(p.created_at),
                }))?;
            } else {
                output::fields(&[
                    ("pid", p.pid.clone()),
                    ("secret", p.secret.expose().to_owned()),
                    ("name", p.name.clone()),
                    ("mode", p.mode.name().into()),
                    (
                        "mac range",
                        p.mac_range.map_or("-".into(), |r| r.to_string()),
                    ),
                    ("ts window", format!("{} s", p.ts_window)),
                    ("re-registration", p.rereg.to_string()),
                    ("quota", p.quota.map_or("-".into(), |q| q.to_string())),
                ])?;
                eprintln!(
                    "Keep the secret: it is flashed into every device of the product and shown again only with `product show --reveal-secret`."
                );
            }
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
            reregistration,
            quota,
            no_quota,
        } => {
            let quota = if no_quota {
                Some(None)
            } else {
                quota.map(Some)
            };
            if reregistration.is_none() && quota.is_none() {
                anyhow::bail!(
                    "product update {pid}: nothing to change (give --reregistration, --quota or --no-quota)"
                );
            }
            store.update_product(
                &pid,
                ProductUpdate {
                    rereg: reregistration,
                    quota,
                },
            )?;
            let p = store.product_summary(&pid)?;
            if g.json {
                output::json(&summary_json(&p))?;
            } else {
                output::fields(&summary_fields(&p))?;
            }
        }
        ProductCmd::Enable { pid } => set_enabled(g, &store, &pid, true)?,
        ProductCmd::Disable { pid } => set_enabled(g, &store, &pid, false)?,
        ProductCmd::RotateSecret { pid } => {
            let secret = store.rotate_secret(&pid)?;
            if g.json {
                output::json(&json!({ "pid": pid, "secret": secret.expose() }))?;
            } else {
                output::fields(&[("pid", pid), ("secret", secret.expose().to_owned())])?;
            }
        }
    }
    store.close()?;
    Ok(())
}

fn set_enabled(
    g: &Global,
    store: &dynreg_store::SqliteStore,
    pid: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    store.set_enabled(pid, enabled)?;
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

//! `dynreg store ...`: moving a store from the SQLite data dir to PostgreSQL.

use anyhow::bail;
use clap::Subcommand;
use dynreg_store::{KeySource, PgConfig, PgStore};
use serde_json::json;

use crate::progress::Bar;
use crate::store::Backend;
use crate::{Global, Open, Usage, output};

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCmd {
    /// Copy the SQLite store (the data dir the config names) into an empty PostgreSQL
    /// database: products, pools, devices and their history, secrets still sealed under
    /// the same master key. Checks the counts before it commits; refuses a database
    /// that holds anything. Stop `dynreg serve` on the data dir first.
    Copy {
        /// The PostgreSQL database: `postgres://user@host/db?sslmode=...`.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

pub(crate) fn run(g: &Global, cmd: StoreCmd) -> anyhow::Result<()> {
    let StoreCmd::Copy { to } = cmd;
    let loc = g.location()?;
    if loc.database_url.is_some() {
        return Err(Usage(format!(
            "store copy reads the SQLite data dir, but the store is set to a PostgreSQL database (from {}): drop --database-url / DYNREG_DATABASE_URL / database_url",
            loc.from
        ))
        .into());
    }
    let Backend::Sqlite(source) = g.open(Open::Existing)? else {
        bail!("store copy reads a SQLite store");
    };
    // The same key for the copy: the secrets stay sealed under it.
    let key = match &loc.key {
        KeySource::DataDir => {
            KeySource::File(loc.data_dir.join(dynreg_store::crypto::KEY_FILE_NAME))
        }
        other => other.clone(),
    };
    let mut config = PgConfig::new(to, key);
    config.writers = 1;
    config.ca_file.clone_from(&loc.database_ca_file);
    let target = PgStore::open(&config)?;
    let totals = source.table_counts()?;
    let bars: Vec<(&str, Bar)> = totals
        .iter()
        .map(|(t, n)| (*t, Bar::new(&format!("copying {t}"), *n)))
        .collect();
    let copied = target.copy_from(&source, &|table, n| {
        if let Some((_, bar)) = bars.iter().find(|(t, _)| *t == table) {
            bar.set(n);
        }
    })?;
    for (_, bar) in &bars {
        bar.finish();
    }
    let url = target.url().to_owned();
    target.close()?;
    source.close()?;
    if g.json {
        let tables: serde_json::Map<String, serde_json::Value> = copied
            .iter()
            .map(|(t, n)| ((*t).to_owned(), json!(n)))
            .collect();
        output::json(&json!({ "to": url, "copied": tables }))?;
    } else {
        let list: Vec<String> = copied.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!(
            "copied to {url}: {} (counts checked); serve from it with --database-url and the same master key",
            list.join(", ")
        );
    }
    Ok(())
}

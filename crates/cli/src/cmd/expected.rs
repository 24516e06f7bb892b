//! `dynreg device expect | expected | unexpect`: the devices listed in advance for a
//! product that admits listed devices only (`product update P --admission listed`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dynreg_store::ExpectedFilter;
use dynreg_store::expected_csv;
use serde_json::json;

use crate::progress::Bar;
use crate::store::Backend;
use crate::{Global, actor, audited, output, unix_now};

/// `device expect`: lists the devices of `file` for `pid`.
pub(crate) fn expect(g: &Global, store: &Backend, pid: &str, file: &Path) -> anyhow::Result<()> {
    let name = file.display().to_string();
    let reader = std::fs::File::open(file).with_context(|| format!("cannot read {name}"))?;
    let bar = Arc::new(Bar::new("listing", 0));
    let b = bar.clone();
    let entry = actor().entry(unix_now(), expected_csv::UPLOADED, pid, "");
    let (n, listed) = expected_csv::upload(
        &**store,
        pid,
        std::io::BufReader::new(reader),
        &name,
        unix_now(),
        entry,
        move |done, total| {
            b.set_total(total);
            b.set(done);
        },
    )?;
    bar.finish();
    let admission = store.load_product(pid)?.map(|p| p.admission);
    if g.json {
        output::json(&json!({ "pid": pid, "listed_now": n, "listed": listed }))?;
    } else {
        println!("{n} devices listed for {pid} ({listed} in all)");
        if admission == Some(dynreg_registrar::Admission::Open) {
            println!(
                "note: {pid} admits any device (admission open); `dynreg product update {pid} --admission listed` admits the listed ones only"
            );
        }
    }
    Ok(())
}

/// `device expected`: the listed devices of `pid`, or their counts.
pub(crate) fn list(
    g: &Global,
    store: &Backend,
    pid: &str,
    filter: &ExpectedFilter,
    count: bool,
) -> anyhow::Result<()> {
    if count {
        let s = store.pool_stats(pid)?;
        if g.json {
            output::json(
                &json!({ "pid": pid, "expected": s.expected, "expected_waiting": s.expected_waiting }),
            )?;
        } else {
            output::fields(&[
                ("pid", pid.to_owned()),
                ("listed", s.expected.to_string()),
                ("not registered yet", s.expected_waiting.to_string()),
            ])?;
        }
        return Ok(());
    }
    let list = store.list_expected(pid, filter)?;
    if g.json {
        let rows: Vec<_> = list
            .iter()
            .map(|e| {
                json!({
                    "unique": e.device.unique, "barcode": e.device.barcode, "mac": e.device.mac,
                    "listed_at": output::time(e.device.added_at),
                    "registered_at": e.registered_at.map(output::time),
                })
            })
            .collect();
        output::json(&json!(rows))?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                vec![
                    e.device.unique.clone(),
                    e.device.barcode.clone(),
                    e.device.mac.clone(),
                    output::time(e.device.added_at),
                    e.registered_at.map_or("-".into(), output::time),
                ]
            })
            .collect();
        output::table(&["UNIQUE", "BARCODE", "MAC", "LISTED", "REGISTERED"], &rows)?;
    }
    Ok(())
}

/// `device unexpect`: removes listed devices of `pid`.
pub(crate) fn remove(
    g: &Global,
    store: &Backend,
    pid: &str,
    uniques: &[String],
) -> anyhow::Result<()> {
    let n = uniques.len();
    let removed = audited(store, expected_csv::REMOVED, pid, "", |ops, e| {
        let removed = ops.remove_expected(pid, uniques)?;
        e.detail = serde_json::json!({"count": removed}).to_string();
        Ok(removed)
    })?;
    if g.json {
        output::json(&json!({ "pid": pid, "removed": removed }))?;
    } else {
        println!("{removed} of {n} devices removed from the list of {pid}");
    }
    Ok(())
}

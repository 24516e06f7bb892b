//! The CSV of expected devices (`unique[,barcode[,mac]]`) that a factory uploads for a
//! product that admits listed devices only: what `device expect`, `POST
//! /products/{pid}/expected` and the console read. The header line is optional (a first
//! line whose first field is `unique` is one, and may then order the columns); every
//! problem names the file and the line.

use std::collections::HashMap;
use std::io::Read;

use dynreg_registrar::ExpectedDevice;

use crate::admin::validate_expected;
use crate::factory_csv::{CsvError, count_lines, describe};

/// The columns, in the order they are read without a header.
pub const HEADER: [&str; 3] = ["unique", "barcode", "mac"];

/// The most devices one upload may list.
pub const MAX_EXPECTED_BATCH: usize = 10_000_000;

/// The expected devices of a CSV read from `reader` (named `name` in errors), each
/// with its line number; `now` is their `added_at`. MACs are normalised
/// (`AA:BB:CC:DD:EE:FF`).
pub fn read_expected<R: Read>(
    reader: R,
    name: &str,
    now: u64,
) -> Result<(Vec<ExpectedDevice>, Vec<u64>), CsvError> {
    let (reader, line_of) = count_lines(reader);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let mut cols = [Some(0), Some(1), Some(2)];
    let mut width = HEADER.len();
    let mut devices = Vec::new();
    let mut lines = Vec::new();
    let mut seen_unique: HashMap<String, u64> = HashMap::new();
    let mut seen_barcode: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    for rec in rdr.records() {
        let rec =
            rec.map_err(|e| CsvError::new(format!("{name} {}", describe(&e, &line_of)), None))?;
        let line = line_of.at(rec.position());
        let at = |m: String| CsvError::new(format!("{name} line {line}: {m}"), Some(line));
        if std::mem::take(&mut first) && rec.get(0) == Some("unique") {
            cols = [None, None, None];
            for (i, h) in rec.iter().enumerate() {
                let Some(c) = HEADER.iter().position(|k| *k == h) else {
                    return Err(at(format!(
                        "unknown column `{h}` (the header is unique,barcode,mac)"
                    )));
                };
                if cols[c].replace(i).is_some() {
                    return Err(at(format!("column `{h}` appears twice")));
                }
            }
            width = rec.len();
            continue;
        }
        if rec.len() > width {
            return Err(at(format!(
                "{} fields: expected unique[,barcode[,mac]] (or the header's {width})",
                rec.len()
            )));
        }
        let get = |c: usize| cols[c].and_then(|i| rec.get(i)).unwrap_or("").to_owned();
        let mut device = ExpectedDevice {
            unique: get(0),
            barcode: get(1),
            mac: get(2),
            added_at: now,
        };
        validate_expected(&mut device).map_err(|e| at(e.0))?;
        let ExpectedDevice {
            ref unique,
            ref barcode,
            ..
        } = device;
        if let Some(first) = seen_unique.insert(unique.clone(), line) {
            return Err(at(format!(
                "duplicate unique `{unique}` (first on line {first})"
            )));
        }
        if !barcode.is_empty() {
            if let Some(first) = seen_barcode.insert(barcode.clone(), line) {
                return Err(at(format!(
                    "duplicate barcode `{barcode}` (first on line {first})"
                )));
            }
        }
        if devices.len() == MAX_EXPECTED_BATCH {
            return Err(at(format!(
                "more than {MAX_EXPECTED_BATCH} devices: split the file"
            )));
        }
        devices.push(device);
        lines.push(line);
    }
    if devices.is_empty() {
        return Err(CsvError::new(format!("{name}: no devices listed"), None));
    }
    Ok((devices, lines))
}

/// The audit action of an upload of expected devices (detail `{"count": N}`).
pub const UPLOADED: &str = "expected.uploaded";
/// The audit action of a removal of expected devices (detail `{"count": N}`).
pub const REMOVED: &str = "expected.removed";

/// Reads a CSV of expected devices from `reader` (named `name` in errors) and lists
/// them for `pid` ([`crate::Operator::expect_devices`]), with the audit line `entry`
/// (action [`UPLOADED`]): the one upload of every front door (CLI, API, console).
/// Errors name the file and line ([`UploadError::line`]). `progress` is called with
/// (devices written, devices in the file). Returns (devices in the file, devices the
/// product lists now).
pub fn upload<O: crate::Operator + ?Sized, R: Read>(
    ops: &O,
    pid: &str,
    reader: R,
    name: &str,
    now: u64,
    entry: dynreg_registrar::AuditEntry,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<(u64, u64), UploadError> {
    let (devices, lines) = read_expected(reader, name, now).map_err(UploadError::Csv)?;
    let n = devices.len() as u64;
    progress(0, n);
    let listed = crate::audited(ops, entry, |ops, e| {
        e.detail = serde_json::json!({"count": n}).to_string();
        ops.expect_devices(
            pid,
            devices,
            std::sync::Arc::new(move |done| progress(done, n)),
        )
    })
    .map_err(|e| match e {
        crate::Error::Item { index, message } => {
            let line = lines.get(index).copied().unwrap_or(0);
            UploadError::Csv(CsvError::new(
                format!("{name} line {line}: {message}; nothing was listed"),
                Some(line),
            ))
        }
        other => UploadError::Store(other),
    })?;
    Ok((n, listed))
}

/// Why an upload of expected devices failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file: its line, when the problem is on one.
    #[error(transparent)]
    Csv(CsvError),
    /// The store (an unknown product, storage failures).
    #[error(transparent)]
    Store(crate::Error),
}

impl UploadError {
    /// The line of the file the problem is on, if it is on one.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Csv(e) => e.line(),
            Self::Store(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_with_or_without_a_header_and_names_the_line_of_each_problem() {
        let (d, lines) = read_expected(
            "u1\nu2,BC2\n\nu3,,0a-00-00-00-00-03\n".as_bytes(),
            "f.csv",
            7,
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[1].unique.as_str(), d[1].barcode.as_str()), ("u2", "BC2"));
        assert_eq!(d[2].mac, "0A:00:00:00:00:03");
        assert_eq!(d[0].added_at, 7);
        assert_eq!(lines, [1, 2, 4]);
        let (d, _) = read_expected(
            "unique,mac,barcode\nu1,0A0000000001,B\n".as_bytes(),
            "f.csv",
            0,
        )
        .unwrap();
        assert_eq!(
            (d[0].mac.as_str(), d[0].barcode.as_str()),
            ("0A:00:00:00:00:01", "B")
        );
        for (text, want) in [
            (
                "unique,colour\nu1,red\n",
                "f.csv line 1: unknown column `colour`",
            ),
            (
                "unique,unique\n",
                "f.csv line 1: column `unique` appears twice",
            ),
            ("u_1\n", "f.csv line 1: unique `u_1` must be"),
            ("u/1\n", "f.csv line 1: unique `u/1` must be"),
            (
                "u1\nu2\nu1\n",
                "f.csv line 3: duplicate unique `u1` (first on line 1)",
            ),
            (
                "u1,B\nu2,B\n",
                "f.csv line 2: duplicate barcode `B` (first on line 1)",
            ),
            ("u1,,zz\n", "f.csv line 1: mac of `u1`"),
            ("u1,a,b,c\n", "f.csv line 1: 4 fields"),
            ("unique\n", "f.csv: no devices listed"),
            ("", "f.csv: no devices listed"),
        ] {
            let e = read_expected(text.as_bytes(), "f.csv", 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}

//! The factory CSV of triplets (`uuid,secret,mac,barcode`, docs/data-model.md): what
//! `pool import` reads and `pool generate` and `pool export` write. Reading checks
//! the header, empty and duplicate values, and names the file and line of every
//! problem; the store then checks lengths and uniqueness against what it holds.

use std::collections::HashMap;
use std::io::Read;

use dynreg_registrar::{NewTriplet, Secret};

/// The header line, in the order the columns are written.
pub const HEADER: [&str; 4] = ["uuid", "secret", "mac", "barcode"];

/// What is wrong with a CSV, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CsvError(String);

/// A CSV reading error in the words of the other messages: `line N: ...`.
pub fn describe(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "line {}: {len} fields where the header has {expected_len}",
            pos.as_ref().map_or(0, csv::Position::line)
        ),
        csv::ErrorKind::Utf8 { pos, .. } => format!(
            "line {}: not UTF-8 text",
            pos.as_ref().map_or(0, csv::Position::line)
        ),
        csv::ErrorKind::Io(io) => format!("cannot be read: {io}"),
        _ => match e.position() {
            Some(p) => format!("line {}: malformed CSV", p.line()),
            None => format!("malformed CSV: {e}"),
        },
    }
}

/// The triplets of a factory CSV read from `reader` (named `name` in errors), each with
/// its line number.
pub fn read_triplets<R: Read>(
    reader: R,
    name: &str,
) -> Result<(Vec<NewTriplet>, Vec<u64>), CsvError> {
    let fail = |m: String| Err(CsvError(m));
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return fail(format!("{name}: cannot read the header line: {e}")),
    };
    let mut col = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        if !HEADER.contains(&h) {
            return fail(format!(
                "{name} line 1: unknown column `{h}` (the header is uuid,secret,mac,barcode)"
            ));
        }
        if col.insert(h.to_owned(), i).is_some() {
            return fail(format!("{name} line 1: column `{h}` appears twice"));
        }
    }
    let (Some(&u), Some(&s)) = (col.get("uuid"), col.get("secret")) else {
        return fail(format!(
            "{name} line 1: the header must name at least uuid and secret (uuid,secret,mac,barcode)"
        ));
    };
    let (m, b) = (col.get("mac").copied(), col.get("barcode").copied());
    let mut triplets = Vec::new();
    let mut lines = Vec::new();
    let mut seen_uuid: HashMap<String, u64> = HashMap::new();
    let mut seen_barcode: HashMap<String, u64> = HashMap::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => return fail(format!("{name} {}", describe(&e))),
        };
        let line = rec.position().map_or(0, csv::Position::line);
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).unwrap_or("").to_owned();
        let t = NewTriplet {
            uuid: get(Some(u)),
            secret: Secret::new(get(Some(s))),
            mac: get(m),
            barcode: get(b),
        };
        if t.uuid.is_empty() || t.secret.expose().is_empty() {
            return fail(format!(
                "{name} line {line}: uuid and secret must not be empty"
            ));
        }
        if let Some(first) = seen_uuid.insert(t.uuid.clone(), line) {
            return fail(format!(
                "{name} line {line}: duplicate uuid `{}` (first on line {first})",
                t.uuid
            ));
        }
        if !t.barcode.is_empty() {
            if let Some(first) = seen_barcode.insert(t.barcode.clone(), line) {
                return fail(format!(
                    "{name} line {line}: duplicate barcode `{}` (first on line {first})",
                    t.barcode
                ));
            }
        }
        triplets.push(t);
        lines.push(line);
    }
    if triplets.is_empty() {
        return fail(format!("{name}: no triplets after the header line"));
    }
    Ok((triplets, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_names_the_line_of_each_problem() {
        let (t, lines) = read_triplets(
            "uuid,secret,barcode\nu1,s1,B1\n\nu2 , s2 ,\n".as_bytes(),
            "f.csv",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].uuid.as_str(), t[1].barcode.as_str()), ("u2", ""));
        assert_eq!(lines, [2, 3]);
        for (text, want) in [
            (
                "uuid,secret,colour\n",
                "f.csv line 1: unknown column `colour`",
            ),
            ("uuid,uuid,secret\n", "column `uuid` appears twice"),
            ("uuid,mac\nu,m\n", "at least uuid and secret"),
            (
                "uuid,secret\nu1,s\nu1,t\n",
                "f.csv line 3: duplicate uuid `u1` (first on line 2)",
            ),
            (
                "uuid,secret\n,s\n",
                "f.csv line 2: uuid and secret must not be empty",
            ),
            ("uuid,secret\n", "no triplets"),
            (
                "uuid,secret\nu1,s1\nu2\n",
                "f.csv line 3: 1 fields where the header has 2",
            ),
        ] {
            let e = read_triplets(text.as_bytes(), "f.csv")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}

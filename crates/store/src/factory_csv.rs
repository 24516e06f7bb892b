//! The factory CSV of triplets (`uuid,secret,mac,barcode`, docs/data-model.md): what
//! `pool import` reads and `pool generate` and `pool export` write. Reading checks
//! the header, empty and duplicate values, and names the file and line of every
//! problem; the store then checks lengths and uniqueness against what it holds.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::rc::Rc;

use dynreg_registrar::{NewTriplet, Secret};

/// The header line, in the order the columns are written.
pub const HEADER: [&str; 4] = ["uuid", "secret", "mac", "barcode"];

/// What is wrong with a CSV, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CsvError {
    message: String,
    line: Option<u64>,
}

impl CsvError {
    /// An error with `message`, about `line` when given.
    pub fn new(message: impl Into<String>, line: Option<u64>) -> Self {
        Self {
            message: message.into(),
            line,
        }
    }

    /// The line it is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        self.line
    }
}

/// A reader that notes where the line breaks are (`\n`, `\r\n`, or a lone `\r`, as
/// the `csv` crate reads them), so that [`Lines::at`] can turn a record's byte offset
/// into the line a person sees in an editor. (The `csv` crate's own line count skips
/// blank lines and does not advance at a lone `\r`.)
#[derive(Debug)]
pub struct LineCounting<R> {
    inner: R,
    breaks: Rc<RefCell<Breaks>>,
}

#[derive(Debug, Default)]
struct Breaks {
    /// Bytes read so far.
    offset: u64,
    /// The breaks read but not yet passed by a query: where each starts, and its length
    /// (2 for `\r\n`).
    ahead: VecDeque<(u64, u64)>,
    /// Breaks before the last position asked about.
    behind: u64,
    /// Whether the last byte read was `\r` (a `\n` after it ends the same break).
    after_cr: bool,
}

/// The line numbers of the records read through a [`LineCounting`] reader.
#[derive(Debug, Clone)]
pub struct Lines(Rc<RefCell<Breaks>>);

/// Wraps `reader` to count its lines; the [`Lines`] answer for it.
pub fn count_lines<R: Read>(reader: R) -> (LineCounting<R>, Lines) {
    let breaks = Rc::new(RefCell::new(Breaks::default()));
    (
        LineCounting {
            inner: reader,
            breaks: breaks.clone(),
        },
        Lines(breaks),
    )
}

impl<R: Read> Read for LineCounting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut b = self.breaks.borrow_mut();
        for (i, &c) in buf[..n].iter().enumerate() {
            let at = b.offset + i as u64;
            if c == b'\n' && b.after_cr {
                if let Some(last) = b.ahead.back_mut() {
                    last.1 = 2;
                }
            } else if c == b'\r' || c == b'\n' {
                b.ahead.push_back((at, 1));
            }
            b.after_cr = c == b'\r';
        }
        b.offset += n as u64;
        Ok(n)
    }
}

impl Lines {
    /// The 1-based line of `pos` (a record's or an error's position); 0 when unknown.
    /// Positions must be asked about in the order they come in the file.
    ///
    /// The `csv` crate puts a record's position just after the previous record (for a
    /// `\r\n`, possibly on its `\n`), before the blank lines it skipped: the breaks
    /// that follow one another from there are those blank lines, and count too.
    pub fn at(&self, pos: Option<&csv::Position>) -> u64 {
        let Some(pos) = pos else { return 0 };
        let mut b = self.0.borrow_mut();
        let mut cursor = pos.byte();
        while let Some(&(at, len)) = b.ahead.front() {
            if at > cursor {
                break;
            }
            // A break that reaches the cursor or past it (the csv crate may place a
            // record on the `\n` of a `\r\n`) ends where the next line starts.
            cursor = cursor.max(at + len);
            b.ahead.pop_front();
            b.behind += 1;
        }
        b.behind + 1
    }
}

/// A CSV reading error in the words of the other messages: `line N: ...`.
pub fn describe(e: &csv::Error, lines: &Lines) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "line {}: {len} fields where the header has {expected_len}",
            lines.at(pos.as_ref())
        ),
        csv::ErrorKind::Utf8 { pos, .. } => {
            format!("line {}: not UTF-8 text", lines.at(pos.as_ref()))
        }
        csv::ErrorKind::Io(io) => format!("cannot be read: {io}"),
        _ => match e.position() {
            Some(p) => format!("line {}: malformed CSV", lines.at(Some(p))),
            None => format!("malformed CSV: {e}"),
        },
    }
}

/// The fields of `t`'s line in a factory CSV, in [`HEADER`]'s order.
pub fn record(t: &NewTriplet) -> [&str; 4] {
    [t.uuid.as_str(), t.secret.expose(), &t.mac, &t.barcode]
}

/// The triplets of a factory CSV read from `reader` (named `name` in errors), each with
/// its line number.
pub fn read_triplets<R: Read>(
    reader: R,
    name: &str,
) -> Result<(Vec<NewTriplet>, Vec<u64>), CsvError> {
    let fail = |m: String| {
        Err(CsvError {
            message: m,
            line: None,
        })
    };
    let fail_at = |line: u64, m: String| {
        Err(CsvError {
            message: m,
            line: Some(line),
        })
    };
    let (reader, line_of) = count_lines(reader);
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
            return fail_at(
                1,
                format!(
                    "{name} line 1: unknown column `{h}` (the header is uuid,secret,mac,barcode)"
                ),
            );
        }
        if col.insert(h.to_owned(), i).is_some() {
            return fail_at(1, format!("{name} line 1: column `{h}` appears twice"));
        }
    }
    let (Some(&u), Some(&s)) = (col.get("uuid"), col.get("secret")) else {
        return fail_at(
            1,
            format!(
                "{name} line 1: the header must name at least uuid and secret (uuid,secret,mac,barcode)"
            ),
        );
    };
    let (m, b) = (col.get("mac").copied(), col.get("barcode").copied());
    let mut triplets = Vec::new();
    let mut lines = Vec::new();
    let mut seen_uuid: HashMap<String, u64> = HashMap::new();
    let mut seen_barcode: HashMap<String, u64> = HashMap::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => return fail(format!("{name} {}", describe(&e, &line_of))),
        };
        let line = line_of.at(rec.position());
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).unwrap_or("").to_owned();
        let t = NewTriplet {
            uuid: get(Some(u)),
            secret: Secret::new(get(Some(s))),
            mac: get(m),
            barcode: get(b),
        };
        if t.uuid.is_empty() || t.secret.expose().is_empty() {
            return fail_at(
                line,
                format!("{name} line {line}: uuid and secret must not be empty"),
            );
        }
        if let Some(first) = seen_uuid.insert(t.uuid.clone(), line) {
            return fail_at(
                line,
                format!(
                    "{name} line {line}: duplicate uuid `{}` (first on line {first})",
                    t.uuid
                ),
            );
        }
        if !t.barcode.is_empty() {
            if let Some(first) = seen_barcode.insert(t.barcode.clone(), line) {
                return fail_at(
                    line,
                    format!(
                        "{name} line {line}: duplicate barcode `{}` (first on line {first})",
                        t.barcode
                    ),
                );
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
        assert_eq!(lines, [2, 4], "the blank line counts, as in an editor");
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

    #[test]
    fn lines_are_counted_as_an_editor_shows_them_whatever_the_line_ends() {
        for (text, want) in [
            ("uuid,secret\nu1,s\n\n\nu2,s\n", [2, 5]),
            ("uuid,secret\r\nu1,s\r\n\r\nu2,s\r\n", [2, 4]),
            ("uuid,secret\ru1,s\ru2,s", [2, 3]),
            ("uuid,secret\nu1,\"multi\nline\"\nu2,s\n", [2, 4]),
        ] {
            let (_, lines) = read_triplets(text.as_bytes(), "f.csv").unwrap();
            assert_eq!(lines, want, "{text:?}");
        }
        let e = read_triplets("uuid,secret\r\n\r\nu1,s\r\nu2\r\n".as_bytes(), "f.csv")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.csv line 4:"), "{e}");
        // Found by the csv_import fuzz target: lone \r line ends numbered every record
        // line 1, so the second record's line was not after the first's.
        let found = b"uuid,secret\ruuid,{eecret\r\0id,{eecr\0\0\0\0";
        let (_, lines) = read_triplets(&found[..], "f.csv").unwrap();
        assert_eq!(lines, [2, 3]);
    }
}

//! Output for people (aligned tables) and for scripts (`--json`: one JSON document).

use std::io::{self, Write};

use serde_json::Value;

/// Prints one JSON document on stdout.
pub(crate) fn json(value: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let line =
        |out: &mut io::StdoutLock<'_>, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
            let mut first = true;
            let mut text = String::new();
            for (cell, w) in cells.zip(&widths) {
                if !first {
                    text.push_str("  ");
                }
                first = false;
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
            writeln!(out, "{}", text.trim_end())
        };
    line(&mut out, &mut header.iter().copied())?;
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Prints `key: value` lines, keys aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) -> io::Result<()> {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = io::stdout().lock();
    for (k, v) in pairs {
        writeln!(out, "{k:<w$}  {v}")?;
    }
    Ok(())
}

/// Unix seconds as RFC 3339 UTC (`2026-11-28T14:28:35Z`).
pub(crate) fn time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_626_197_189), "2021-07-13T17:26:29Z");
        assert_eq!(super::time(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(super::time(951_782_400), "2000-02-29T00:00:00Z");
    }
}

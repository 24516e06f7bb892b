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
    dynreg_registrar::model::rfc3339(secs)
}

/// Parses a point in time given on the command line: RFC 3339 UTC
/// (`2026-11-28T14:28:35Z`), a UTC date (`2026-11-28`), Unix seconds, or a duration
/// before `now` (`24h`, `7d`, `90m`).
pub(crate) fn parse_time(s: &str, now: u64) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a time: use 2026-11-28T14:28:35Z, 2026-11-28, Unix seconds, or a duration ago like 24h or 7d"
        )
    };
    if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
        return t.parse().map_err(|_| bad());
    }
    if t.ends_with(['s', 'm', 'h', 'd']) && t[..t.len() - 1].chars().all(|c| c.is_ascii_digit()) {
        let d = dynreg_registrar::model::parse_duration(t)?;
        return Ok(now.saturating_sub(d));
    }
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let num = |x: &str, len: usize| -> Result<i64, String> {
        if x.len() == len && x.chars().all(|c| c.is_ascii_digit()) {
            x.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let secs = match time {
        None => 0,
        Some(tm) => {
            let tm = tm.strip_suffix(['Z', 'z']).ok_or_else(|| {
                format!("`{s}`: give the time in UTC with a Z (2026-11-28T14:28:35Z)")
            })?;
            let mut hms = tm.split(':');
            let (Some(h), Some(mi), sec) = (hms.next(), hms.next(), hms.next()) else {
                return Err(bad());
            };
            let (h, mi) = (num(h, 2)?, num(mi, 2)?);
            let sec = match sec {
                Some(x) => num(x, 2)?,
                None => 0,
            };
            if h > 23 || mi > 59 || sec > 60 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + sec
        }
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + secs).map_err(|_| bad())
}

/// Asks `question` on the terminal; `false` unless the answer starts with y.
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(crate::Usage(format!(
            "{question}: stdin is not a terminal to ask on; add --yes to confirm"
        ))
        .into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim_start().starts_with(['y', 'Y']))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_parse_back() {
        for t in [0, 951_782_400, 1_626_197_189, 4_102_444_800] {
            assert_eq!(super::parse_time(&super::time(t), 0), Ok(t));
        }
        assert_eq!(super::parse_time("2021-07-13", 0), Ok(1_626_134_400));
        assert_eq!(super::parse_time("1626197189", 0), Ok(1_626_197_189));
        assert_eq!(super::parse_time("24h", 100_000), Ok(100_000 - 86_400));
        for bad in [
            "yesterday",
            "2021-13-01",
            "2021-07-13T10:00",
            "2021-7-1",
            "",
        ] {
            assert!(super::parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_626_197_189), "2021-07-13T17:26:29Z");
        assert_eq!(super::time(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(super::time(951_782_400), "2000-02-29T00:00:00Z");
    }
}

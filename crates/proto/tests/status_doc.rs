//! `docs/status-codes.md` and `Status` must agree: every code, name, retry hint and
//! message in the enum appears as one table row, and the table has no other rows.

use dynreg_proto::Status;

#[test]
fn status_table_matches_docs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/status-codes.md");
    let doc = std::fs::read_to_string(path).expect("docs/status-codes.md exists");
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(1)
                    .is_some_and(|c| c.trim().parse::<u16>().is_ok())
        })
        .map(|l| {
            l.split(" | ")
                .map(|c| c.trim_matches(|c| c == '|' || c == ' '))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), Status::ALL.len(), "one row per status");
    for s in Status::ALL {
        let row = rows
            .iter()
            .find(|r| r[0] == s.code().to_string())
            .unwrap_or_else(|| panic!("{s:?} ({}) missing from the doc table", s.code()));
        assert_eq!(row[1], format!("{s:?}"));
        let retry = s.retry_after().map_or("no".to_string(), |r| r.to_string());
        assert_eq!(row[2], retry, "retry hint of {s:?}");
        assert_eq!(row[3], s.message(), "msg of {s:?}");
    }
}

#![no_main]
//! Fuzzes the factory CSV reader of `pool import`: any bytes either read as triplets
//! with non-empty, distinct uuids and line numbers in order, or give an error that
//! names the file. The same bytes go through the reader of expected devices (`device
//! expect`), with the same promises for its uniques.
use dynreg_store::expected_csv::read_expected;
use dynreg_store::factory_csv::read_triplets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_triplets(data, "f.csv") {
        Ok((triplets, lines)) => {
            assert_eq!(triplets.len(), lines.len());
            assert!(!triplets.is_empty());
            assert!(lines.windows(2).all(|w| w[0] < w[1]));
            let mut uuids: Vec<&str> = triplets.iter().map(|t| t.uuid.as_str()).collect();
            assert!(uuids.iter().all(|u| !u.is_empty()));
            uuids.sort_unstable();
            uuids.dedup();
            assert_eq!(uuids.len(), triplets.len());
        }
        Err(e) => assert!(e.to_string().starts_with("f.csv")),
    }
    match read_expected(data, "e.csv", 0) {
        Ok((devices, lines)) => {
            assert_eq!(devices.len(), lines.len());
            assert!(!devices.is_empty());
            assert!(lines.windows(2).all(|w| w[0] < w[1]));
            let mut uniques: Vec<&str> = devices.iter().map(|d| d.unique.as_str()).collect();
            assert!(uniques.iter().all(|u| dynreg_registrar::model::is_valid_unique(u)));
            uniques.sort_unstable();
            uniques.dedup();
            assert_eq!(uniques.len(), devices.len());
        }
        Err(e) => assert!(e.to_string().starts_with("e.csv")),
    }
});

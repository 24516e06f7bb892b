#![no_main]
//! Fuzzes the factory CSV reader of `pool import`: any bytes either read as triplets
//! with non-empty, distinct uuids and line numbers in order, or give an error that
//! names the file.
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
});

#![no_main]
//! Fuzzes the parsers of operator input: re-registration policies, durations, MAC
//! ranges, imported MACs and product modes. What parses formats back to something that parses to the
//! same value.
use dynreg_registrar::model::{MacRange, ReregPolicy, SourceMode, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = s.parse::<ReregPolicy>() {
        assert_eq!(p.to_string().parse::<ReregPolicy>(), Ok(p));
    }
    if let Ok(secs) = parse_duration(s) {
        assert!(secs <= 10 * 365 * 86_400);
    }
    if let Ok(r) = s.parse::<MacRange>() {
        assert!(r.start <= r.end);
        assert_eq!(r.to_string().parse::<MacRange>(), Ok(r));
    }
    if let Ok(mac) = MacRange::normalise(s) {
        // The canonical form is a fixed point, and parses as a MAC.
        assert_eq!(MacRange::normalise(&mac), Ok(mac.clone()));
        assert_eq!(mac.len(), 17);
        assert!(MacRange::parse_mac(&mac).is_ok());
    }
    if let Ok(m) = s.parse::<SourceMode>() {
        assert_eq!(m.name().parse::<SourceMode>(), Ok(m));
    }
});

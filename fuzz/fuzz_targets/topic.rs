#![no_main]
//! Fuzzes the topic parser; a parsed topic must format back to the same text.
use dynreg_proto::topic::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = Topic::parse(s) {
            assert_eq!(t.to_string(), s);
        }
    }
});

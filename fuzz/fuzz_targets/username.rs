#![no_main]
//! Fuzzes the username parser; a parsed username must format back to a parsable one.
use dynreg_proto::credentials::Username;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = Username::parse(s) {
            let again = u.to_string();
            assert_eq!(Username::parse(&again), Ok(u));
        }
    }
});

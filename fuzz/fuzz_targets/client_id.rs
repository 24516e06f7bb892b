#![no_main]
//! Fuzzes the clientId parser; a parsed clientId must format back to the same text.
use dynreg_proto::credentials::ClientId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = ClientId::parse(s) {
            assert_eq!(id.to_string(), s);
        }
    }
});

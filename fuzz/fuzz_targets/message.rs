#![no_main]
//! Fuzzes the register request and reply parsers and the request validation.
use dynreg_proto::message::{RegisterReply, RegisterRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = RegisterRequest::from_json(data) {
        let _ = r.validate();
        assert_eq!(RegisterRequest::from_json(&r.to_json()).unwrap(), r);
    }
    if let Ok(r) = RegisterReply::from_json(data) {
        assert_eq!(RegisterReply::from_json(&r.to_json()).unwrap(), r);
    }
});

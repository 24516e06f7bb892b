//! Known-answer vectors from `../shared/vectors/credentials.json`, computed independently
//! of this code. The file is read at run time relative to the workspace root; the test
//! fails loudly when it is missing.

use std::path::PathBuf;

use dynreg_proto::credentials::{Credentials, SignMethod, sign, verify_connect};
use dynreg_proto::topic::Topic;
use serde_json::Value;

fn vectors() -> Value {
    let path = std::env::var_os("DYNREG_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/vectors/credentials.json")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the credential vectors are missing at {}: {e}. They live in ../shared/vectors/ \
             beside the repository (set DYNREG_VECTORS to point elsewhere).",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("credentials.json is valid JSON")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector lacks string {key}: {v}"))
}

#[test]
fn valid_vectors_sign_and_verify() {
    let all = vectors();
    let valid = all["valid"].as_array().expect("valid is an array");
    assert!(valid.len() >= 6, "expected at least 6 valid vectors");
    for v in valid {
        let pid = s(v, "pid");
        let secret = s(v, "secret").as_bytes();
        let ts = v["ts"].as_u64().expect("ts");
        let method = SignMethod::parse(s(v, "signMethod")).expect("known sign method");
        let unique = s(v, "unique");

        // Signing reproduces the password, and formatting reproduces the strings.
        assert_eq!(
            sign(method, secret, pid, unique, ts).as_str(),
            s(v, "password"),
            "{v}"
        );
        let creds = Credentials {
            pid,
            unique,
            sign_method: method,
            ts,
        };
        assert_eq!(creds.client_id().to_string(), s(v, "clientId"));
        assert_eq!(creds.username().to_string(), s(v, "username"));
        assert_eq!(
            Topic::request(pid, unique).to_string(),
            s(v, "request_topic")
        );
        assert_eq!(
            Topic::response(pid, unique).to_string(),
            s(v, "response_topic")
        );

        // Parsing and verifying with now = ts accepts, in either case of hex.
        let parsed = verify_connect(
            s(v, "clientId"),
            s(v, "username"),
            s(v, "password").as_bytes(),
            secret,
            ts,
            900,
        )
        .unwrap_or_else(|e| panic!("valid vector refused ({e}): {v}"));
        assert_eq!(parsed, creds);
        let upper = s(v, "password").to_ascii_uppercase();
        verify_connect(
            s(v, "clientId"),
            s(v, "username"),
            upper.as_bytes(),
            secret,
            ts,
            900,
        )
        .unwrap();
        // Topics parse back to their owner.
        assert_eq!(
            Topic::parse(s(v, "request_topic")),
            Ok(Topic::request(pid, unique))
        );
        assert_eq!(
            Topic::parse(s(v, "response_topic")),
            Ok(Topic::response(pid, unique))
        );
        // The same credentials far outside the window are refused.
        assert!(
            verify_connect(
                s(v, "clientId"),
                s(v, "username"),
                s(v, "password").as_bytes(),
                secret,
                ts + 901,
                900
            )
            .is_err()
        );
    }
}

#[test]
fn invalid_vectors_are_refused_whatever_the_clock() {
    let all = vectors();
    let invalid = all["invalid"].as_array().expect("invalid is an array");
    assert!(!invalid.is_empty());
    // Every secret that appears among the valid vectors, so that no invalid case passes
    // because we tried the wrong key.
    let secrets: Vec<&str> = all["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| s(v, "secret"))
        .collect();
    for v in invalid {
        for secret in &secrets {
            for now in [0, 1_626_197_189, 1_626_197_190, 4_102_444_800, u64::MAX] {
                for window in [0, 900, u64::MAX] {
                    let r = verify_connect(
                        s(v, "clientId"),
                        s(v, "username"),
                        s(v, "password").as_bytes(),
                        secret.as_bytes(),
                        now,
                        window,
                    );
                    assert!(
                        r.is_err(),
                        "accepted invalid vector ({}) with now={now}",
                        s(v, "why")
                    );
                }
            }
        }
    }
}

/// Device-bound credentials (`hmacSha1u`, `hmacSha256u`: content
/// `uuid=${pid},unique=${unique},ts=${ts}`). The shared file predates them, so these
/// passwords were computed independently of this code, with Python's `hmac` module:
/// `hmac.new(secret, content.encode(), hashlib.sha256).hexdigest()`. docs/device-guide.md
/// shows the first one as its worked example.
const BOUND: [(&str, &str, &str); 2] = [
    (
        "hmacSha256u",
        "8f14e45fceea167a",
        "d4a83f0d75f00670b596848250310946770fb3e55e0df3e425a0dcc3fb25be59",
    ),
    (
        "hmacSha1u",
        "8f14e45fceea167a",
        "001cc52d2005d0c46881a43fce935af0157ce801",
    ),
];

#[test]
fn device_bound_vectors_verify_for_their_own_unique_only() {
    let (pid, secret, ts) = ("p7kq2x9d", b"Zk3mQ8vR2tY6wP1n", 1_626_197_189);
    for (method, unique, password) in BOUND {
        let m = SignMethod::parse(method).unwrap();
        assert!(m.is_bound());
        assert_eq!(sign(m, secret, pid, unique, ts).as_str(), password);
        let username = format!("{pid}|signMethod={method},ts={ts}");
        verify_connect(
            &format!("register_{pid}_{unique}"),
            &username,
            password.as_bytes(),
            secret,
            ts,
            900,
        )
        .unwrap_or_else(|e| panic!("{method} refused: {e}"));
        // The same password presented by another unique is a bad signature.
        assert_eq!(
            verify_connect(
                &format!("register_{pid}_0f8fad5b-d9cb-469f-a165-70867728950e"),
                &username,
                password.as_bytes(),
                secret,
                ts,
                900,
            ),
            Err(dynreg_proto::CredentialError::BadSignature)
        );
    }
    // Another unique's own bound password (also from Python's hmac).
    assert_eq!(
        sign(
            SignMethod::HmacSha256Bound,
            secret,
            pid,
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            ts
        )
        .as_str(),
        "c8b88a049ac6b8c94268a52c99e8afe137875dd797406e14c1533b3a81f7453b"
    );
}

//! Property tests: format-then-parse round trips, and parsers never panic.

use dynreg_proto::credentials::{
    ClientId, Credentials, SignMethod, Username, sign, verify_password,
};
use dynreg_proto::message::{RegisterReply, RegisterRequest, ReplyData, RequestData};
use dynreg_proto::topic::{Topic, TopicKind};
use dynreg_proto::{MAX_ID_LEN, Status};
use proptest::prelude::*;

/// A valid pid: any topic-level-safe characters, `_` and `|` excluded (the username
/// ends its pid at the first `|`; product pids never contain one).
fn pid() -> impl Strategy<Value = String> {
    "[^/+#|\\p{Cc}]{1,16}".prop_filter("at most 64 bytes", |s| s.len() <= MAX_ID_LEN)
}

/// A valid unique: as a pid, and without `_`.
fn unique() -> impl Strategy<Value = String> {
    "[^/+#_\\p{Cc}]{1,16}".prop_filter("at most 64 bytes", |s| s.len() <= MAX_ID_LEN)
}

fn method() -> impl Strategy<Value = SignMethod> {
    proptest::sample::select(SignMethod::ALL.to_vec())
}

proptest! {
    #[test]
    fn client_id_round_trip(pid in "[^/+#\\p{Cc}]{1,16}".prop_filter("len", |s| s.len() <= 64), unique in unique()) {
        let text = ClientId::new(&pid, &unique).unwrap().to_string();
        let parsed = ClientId::parse(&text).unwrap();
        prop_assert_eq!(parsed.pid, pid.as_str());
        prop_assert_eq!(parsed.unique, unique.as_str());
    }

    #[test]
    fn username_round_trip(pid in pid(), m in method(), ts in any::<u64>()) {
        let text = Username { pid: &pid, sign_method: m, ts }.to_string();
        let parsed = Username::parse(&text).unwrap();
        prop_assert_eq!(parsed, Username { pid: &pid, sign_method: m, ts });
    }

    #[test]
    fn credentials_sign_then_verify(pid in pid(), unique in unique(), m in method(),
                                    ts in 0u64..=u64::MAX / 2, skew in 0u64..=900,
                                    secret in proptest::collection::vec(any::<u8>(), 0..80)) {
        let creds = Credentials { pid: &pid, unique: &unique, sign_method: m, ts };
        let (cid, user) = (creds.client_id().to_string(), creds.username().to_string());
        let parsed = Credentials::parse(&cid, &user).unwrap();
        prop_assert_eq!(parsed, creds);
        let pw = sign(m, &secret, &pid, &unique, ts);
        prop_assert!(parsed.verify(&secret, pw.as_bytes(), ts + skew, 900).is_ok());
        prop_assert!(parsed.verify(&secret, pw.as_bytes(), ts + 901, 900).is_err());
        let mut other = secret;
        other.push(0x55); // not 0: HMAC zero-pads short keys, so k and k||0 are one key
        prop_assert!(verify_password(m, &other, &pid, &unique, ts, pw.as_bytes()).is_err());
    }

    #[test]
    fn topic_round_trip(pid in pid(), unique in unique(), req in any::<bool>()) {
        let t = if req { Topic::request(&pid, &unique) } else { Topic::response(&pid, &unique) };
        let text = t.to_string();
        prop_assert_eq!(text.len(), t.len());
        let parsed = Topic::parse(&text).unwrap();
        prop_assert_eq!(parsed, t);
        let kind = if req { TopicKind::Request } else { TopicKind::Response };
        prop_assert!(parsed.is(&pid, &unique, kind));
    }

    #[test]
    fn request_round_trip(id in "\\PC{1,20}", ts in proptest::option::of(any::<u64>()), ack in 0u8..=1,
                          barcode in "\\PC{0,20}", replace_pid in "\\PC{0,20}", secret in "\\PC{0,20}") {
        let r = RegisterRequest { id, ts, code: "register".into(), ack,
            data: RequestData { barcode, replace_pid, secret } };
        let back = RegisterRequest::from_json(&r.to_json()).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn reply_round_trip(id in "\\PC{0,20}", code in "\\PC{0,12}", ts in any::<u64>(),
                        triplet in proptest::option::of(("\\PC{1,8}", "\\PC{1,8}", "\\PC{1,8}", "\\PC{0,8}")),
                        status in proptest::sample::select(Status::ALL.to_vec())) {
        let r = match triplet {
            Some((p, u, s, m)) => RegisterReply::success(id, code, ts, ReplyData::triplet(p, u, s, m)),
            None => RegisterReply::failure(id, code, ts, status),
        };
        prop_assert_eq!(RegisterReply::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn parsers_never_panic_on_text(s in "\\PC{0,200}", t in "\\PC{0,200}", p in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = ClientId::parse(&s);
        let _ = Username::parse(&s);
        let _ = SignMethod::parse(&s);
        let _ = Topic::parse(&s);
        if let Ok(c) = Credentials::parse(&s, &t) {
            let _ = c.verify(b"k", &p, 0, 900);
        }
        let _ = RegisterRequest::from_json(s.as_bytes()).map(|r| r.validate());
        let _ = RegisterReply::from_json(s.as_bytes());
    }

    #[test]
    fn parsers_never_panic_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = RegisterRequest::from_json(&b).map(|r| r.validate());
        let _ = RegisterReply::from_json(&b);
        let s = String::from_utf8_lossy(&b);
        let _ = ClientId::parse(&s);
        let _ = Username::parse(&s);
        let _ = Topic::parse(&s);
    }

    #[test]
    fn structured_garbage_near_valid(prefix in "(register_)?", mid in "[a-z_|=,/+#]{0,30}", ts in "[0-9a-z+-]{0,25}") {
        let cid = format!("{prefix}{mid}");
        let user = format!("{mid}|signMethod=hmacSha256,ts={ts}");
        let _ = Credentials::parse(&cid, &user);
        let _ = Topic::parse(&format!("register/v2/{mid}"));
    }
}

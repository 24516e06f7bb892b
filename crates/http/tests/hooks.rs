//! The broker hooks over real HTTP on port 0, against a SQLite store: EMQX's authn and
//! authz, and RabbitMQ's auth backend replayed from what RabbitMQ 3.10 sent
//! (`../shared/facts/rabbitmq-3.10-auth-http-requests.jsonl`).

use std::net::SocketAddr;
use std::sync::Arc;

use dynreg_http::{HookAuth, HttpServer, router};
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_registrar::{AuthPolicy, Registrar, SourceMode};
use dynreg_testkit::TempStore;

mod common;
mod support;
use common::now;
use support::enc;

struct Hooks {
    addr: SocketAddr,
    _store: TempStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Hooks {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(auth: HookAuth) -> Hooks {
    let store = TempStore::new();
    store.product("p1", SourceMode::Generate);
    store.disabled("off", SourceMode::Generate);
    store.product("a.b", SourceMode::Generate);
    store.listed("L", &["dev1"]);
    let mut bound = dynreg_registrar::conformance::product("B", SourceMode::Generate);
    bound.signatures = dynreg_registrar::Signatures::Bound;
    store.put(&bound);
    let registrar = Arc::new(Registrar::with_policy(
        store.store.clone(),
        AuthPolicy::default(),
    ));
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(server.run(router(registrar, auth, None), async {
        let _ = stopped.await;
    }));
    Hooks {
        addr,
        _store: store,
        stop: Some(stop),
    }
}

/// A POST with a content type and (when given) an authorization header: the status
/// and body of the reply.
async fn request(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let headers = format!("content-type: {content_type}\r\n{auth}");
    let (status, _, body) = common::request(addr, "POST", path, &headers, body).await;
    (status, body)
}

async fn json(h: &Hooks, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, text) = request(h.addr, path, "application/json", &body.to_string(), None).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn form(h: &Hooks, path: &str, fields: &[(&str, &str)]) -> String {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let (status, text) = request(
        h.addr,
        path,
        "application/x-www-form-urlencoded",
        &body,
        None,
    )
    .await;
    assert_eq!(status, 200, "{path}: {text}");
    text
}

/// A signed CONNECT for `pid` (conformance secret `secret-of-<pid>`) at `ts`.
fn creds(pid: &str, unique: &str, ts: u64) -> (String, String, String) {
    let password = sign(
        SignMethod::HmacSha256,
        format!("secret-of-{pid}").as_bytes(),
        pid,
        unique,
        ts,
    );
    (
        format!("register_{pid}_{unique}"),
        format!("{pid}|signMethod=hmacSha256,ts={ts}"),
        password.as_str().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_authn_decides_like_the_endpoint() {
    let h = start(HookAuth::open()).await;
    let ts = now();
    let (cid, user, pw) = creds("p1", "u1", ts);
    let r = json(
        &h,
        "/hooks/emqx/authn",
        serde_json::json!({"clientid": cid, "username": user, "password": pw, "peerhost": "127.0.0.1"}),
    )
    .await;
    assert_eq!(r["result"], "allow", "{r}");
    assert_eq!(r["is_superuser"], false);
    let acl = r["acl"].as_array().unwrap();
    assert_eq!(acl[0]["topic"], "eq register/v2/p1/u1/register");
    assert_eq!(acl[1]["topic"], "eq register/v2/p1/u1/register_response");
    assert_eq!(acl[2]["permission"], "deny");

    // The same credential again for the same unique (a reconnect), and for another
    // unique (a device of the product that signed in the same second): both allowed.
    let again = serde_json::json!({"clientid": cid, "username": user, "password": pw});
    assert_eq!(
        json(&h, "/hooks/emqx/authn", again).await["result"],
        "allow"
    );
    let (cid2, _, _) = creds("p1", "u2", ts);
    let shared = serde_json::json!({"clientid": cid2, "username": user, "password": pw});
    assert_eq!(
        json(&h, "/hooks/emqx/authn", shared).await["result"],
        "allow"
    );

    // A bad password, a stale ts, a disabled product, a pid mismatch: deny.
    let bad = serde_json::json!({"clientid": "register_p1_u3", "username": creds("p1", "u3", ts + 1).1, "password": "00"});
    assert_eq!(json(&h, "/hooks/emqx/authn", bad).await["result"], "deny");
    let (c, u, p) = creds("p1", "u4", ts - 3600);
    let stale = serde_json::json!({"clientid": c, "username": u, "password": p});
    assert_eq!(json(&h, "/hooks/emqx/authn", stale).await["result"], "deny");
    let (c, u, p) = creds("off", "u5", ts);
    let disabled = serde_json::json!({"clientid": c, "username": u, "password": p});
    assert_eq!(
        json(&h, "/hooks/emqx/authn", disabled).await["result"],
        "deny"
    );
    let (_, u, p) = creds("p1", "u6", ts + 2);
    let mismatch = serde_json::json!({"clientid": "register_p2_u6", "username": u, "password": p});
    assert_eq!(
        json(&h, "/hooks/emqx/authn", mismatch).await["result"],
        "deny"
    );

    // Not a registration client: another authenticator decides.
    let other = serde_json::json!({"clientid": "sensor-17", "username": "plant", "password": "x"});
    assert_eq!(
        json(&h, "/hooks/emqx/authn", other).await["result"],
        "ignore"
    );

    // A form body works too (EMQX can be configured to send one).
    let (c, u, p) = creds("p1", "u7", ts + 3);
    let text = form(
        &h,
        "/hooks/emqx/authn",
        &[("clientid", &c), ("username", &u), ("password", &p)],
    )
    .await;
    assert!(text.contains("\"allow\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_authz_allows_own_topics_only() {
    let h = start(HookAuth::open()).await;
    let user = "p1|signMethod=hmacSha256,ts=1";
    let ask = |topic: &str, action: &str, qos: serde_json::Value, retain: serde_json::Value| serde_json::json!({"clientid": "register_p1_u1", "username": user, "topic": topic, "action": action, "qos": qos, "retain": retain});
    let req = "register/v2/p1/u1/register";
    let resp = "register/v2/p1/u1/register_response";
    let cases = [
        (ask(req, "publish", 1.into(), false.into()), "allow"),
        (ask(req, "publish", "0".into(), "false".into()), "allow"),
        (ask(resp, "subscribe", 1.into(), false.into()), "allow"),
        (ask(resp, "publish", 1.into(), false.into()), "deny"),
        (ask(req, "subscribe", 1.into(), false.into()), "deny"),
        (ask(req, "publish", 2.into(), false.into()), "deny"),
        (ask(req, "publish", 1.into(), true.into()), "deny"),
        (
            ask(
                "register/v2/p1/u2/register",
                "publish",
                0.into(),
                false.into(),
            ),
            "deny",
        ),
        (
            ask(
                "register/v2/p1/+/register_response",
                "subscribe",
                0.into(),
                false.into(),
            ),
            "deny",
        ),
        (ask("#", "subscribe", 0.into(), false.into()), "deny"),
    ];
    for (body, want) in cases {
        let got = json(&h, "/hooks/emqx/authz", body.clone()).await;
        assert_eq!(got["result"], want, "{body}");
    }
    let other = serde_json::json!({"clientid": "sensor-17", "topic": "x", "action": "publish"});
    assert_eq!(
        json(&h, "/hooks/emqx/authz", other).await["result"],
        "ignore"
    );
}

/// Every request RabbitMQ 3.10.8 sent for one device's session, replayed, with the
/// answer each must get; the device's CONNECT is re-signed (the recording's password
/// was not a real signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_backend_answers_what_rabbitmq_asks() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/facts/rabbitmq-3.10-auth-http-requests.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the RabbitMQ facts are missing at {}: {e}. They live in ../shared/facts/ beside this checkout",
            path.display()
        )
    });
    let h = start(HookAuth::open()).await;
    let ts = now();
    let (_, user, password) = creds("p1", "u1", ts);
    let mut asked = 0;
    for line in text.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let p = rec["path"].as_str().unwrap();
        let Some(hook) = p.strip_prefix("/auth/") else {
            continue;
        };
        let mut fields: Vec<(String, String)> = rec["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv[0].as_str().unwrap().to_owned(),
                    kv[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let device = fields.iter().any(|(_, v)| v == "register_p1_u1");
        for (k, v) in &mut fields {
            if device && (k == "username" || k == "variable_map.username") {
                v.clone_from(&user);
            }
            if device && k == "password" {
                v.clone_from(&password);
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let want = match hook {
            // The worker's own AMQP user is left to the internal backend.
            "user" if !device => "deny",
            "topic" if get("routing_key") == "forbidden.x" => "deny",
            "topic" if get("routing_key").contains('*') => "deny",
            _ => "allow",
        };
        let borrowed: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = form(&h, &format!("/hooks/rabbitmq/{hook}"), &borrowed).await;
        assert_eq!(got, want, "{hook} {fields:?}");
        asked += 1;
    }
    assert!(asked >= 20, "only {asked} requests replayed");

    // Another device's queue and topic, a bad password, and ambiguous ids: deny.
    let other_queue = [
        ("username", user.as_str()),
        ("vhost", "/"),
        ("resource", "queue"),
        ("name", "mqtt-subscription-register_p1_u2qos1"),
        ("permission", "read"),
        ("client_id", "register_p1_u1"),
    ];
    assert_eq!(
        form(&h, "/hooks/rabbitmq/resource", &other_queue).await,
        "deny"
    );
    let other_topic = [
        ("username", user.as_str()),
        ("resource", "topic"),
        ("name", "amq.topic"),
        ("permission", "read"),
        ("routing_key", "register.v2.p1.u2.register_response"),
        ("variable_map.client_id", "register_p1_u1"),
    ];
    assert_eq!(
        form(&h, "/hooks/rabbitmq/topic", &other_topic).await,
        "deny"
    );
    let bad = [
        ("username", user.as_str()),
        ("password", "0123"),
        ("vhost", "/"),
        ("client_id", "register_p1_u9"),
    ];
    assert_eq!(form(&h, "/hooks/rabbitmq/user", &bad).await, "deny");
    let (c, u, p) = creds("a.b", "u1", ts);
    let dotted = [
        ("username", u.as_str()),
        ("password", p.as_str()),
        ("client_id", c.as_str()),
    ];
    assert_eq!(form(&h, "/hooks/rabbitmq/user", &dotted).await, "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vernemq_webhooks_decide_like_the_endpoint() {
    let h = start(HookAuth::open()).await;
    let (cid, user, pw) = creds("p1", "u1", now());
    let register = serde_json::json!({"peer_addr": "127.0.0.1", "peer_port": 5000, "client_id": cid, "username": user, "password": pw, "mountpoint": "", "clean_session": true});
    for hook in ["auth_on_register", "auth_on_register_m5"] {
        let r = json(&h, &format!("/hooks/vernemq/{hook}"), register.clone()).await;
        assert_eq!(r["result"], "ok", "{hook}: {r}");
    }
    let mut bad = register.clone();
    bad["password"] = "00".into();
    let r = json(&h, "/hooks/vernemq/auth_on_register", bad).await;
    assert_eq!(r["result"]["error"], "not_allowed", "{r}");
    let other = serde_json::json!({"client_id": "sensor-1", "username": "x", "password": "y"});
    assert_eq!(
        json(&h, "/hooks/vernemq/auth_on_register", other).await["result"],
        "next"
    );

    let sub = |topic: &str| serde_json::json!({"client_id": cid, "username": user, "mountpoint": "", "topics": [{"topic": topic, "qos": 1}]});
    let own = json(
        &h,
        "/hooks/vernemq/auth_on_subscribe",
        sub("register/v2/p1/u1/register_response"),
    )
    .await;
    assert_eq!(own["result"], "ok", "{own}");
    let wild = json(
        &h,
        "/hooks/vernemq/auth_on_subscribe_m5",
        sub("register/v2/p1/+/register_response"),
    )
    .await;
    assert_eq!(wild["result"]["error"], "not_allowed", "{wild}");

    let publish = |topic: &str, retain: bool| serde_json::json!({"client_id": cid, "username": user, "mountpoint": "", "qos": 1, "topic": topic, "payload": "e30=", "retain": retain});
    let own = json(
        &h,
        "/hooks/vernemq/auth_on_publish",
        publish("register/v2/p1/u1/register", false),
    )
    .await;
    assert_eq!(own["result"], "ok", "{own}");
    for body in [
        publish("register/v2/p1/u2/register", false),
        publish("register/v2/p1/u1/register", true),
    ] {
        let r = json(&h, "/hooks/vernemq/auth_on_publish_m5", body.clone()).await;
        assert_eq!(r["result"]["error"], "not_allowed", "{body}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_token_is_required_when_set() {
    let h = start(HookAuth::token("t0ken")).await;
    let body = r#"{"clientid":"sensor","topic":"x","action":"publish"}"#;
    let (status, text) = request(h.addr, "/hooks/emqx/authz", "application/json", body, None).await;
    assert_eq!(status, 401, "{text}");
    let (status, _) = request(
        h.addr,
        "/hooks/emqx/authz",
        "application/json",
        body,
        Some("Bearer nope"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, text) = request(
        h.addr,
        "/hooks/emqx/authz",
        "application/json",
        body,
        Some("Bearer t0ken"),
    )
    .await;
    assert_eq!((status, text.contains("ignore")), (200, true), "{text}");
    // Basic authentication with the token as the password (RabbitMQ's URLs).
    let (status, text) = request(
        h.addr,
        "/hooks/rabbitmq/user",
        "application/x-www-form-urlencoded",
        "username=w&password=x",
        Some("Basic ZHlucmVnOnQwa2Vu"),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "deny"));
    // Health needs no token.
    let (status, _, body) = common::request(h.addr, "GET", "/healthz", "", "").await;
    assert_eq!(status, 200, "{body}");
}

/// The CONNECT hook of each broker for `(client_id, username, password)` from `ip`:
/// whether it allowed it.
async fn hook_allows(h: &Hooks, broker: &str, c: &(String, String, String), ip: &str) -> bool {
    let (cid, user, pw) = c;
    match broker {
        "emqx" => {
            let body = serde_json::json!({"clientid": cid, "username": user, "password": pw, "peerhost": ip});
            json(h, "/hooks/emqx/authn", body).await["result"] == "allow"
        }
        "rabbitmq" => {
            let fields = [
                ("username", user.as_str()),
                ("password", pw.as_str()),
                ("vhost", "/"),
                ("client_id", cid.as_str()),
                ("ip", ip),
            ];
            // RabbitMQ asks `user` (no address), then `vhost` (with the address).
            let vhost = [
                ("username", user.as_str()),
                ("vhost", "/"),
                ("ip", ip),
                ("client_id", cid.as_str()),
            ];
            form(h, "/hooks/rabbitmq/user", &fields).await == "allow"
                && form(h, "/hooks/rabbitmq/vhost", &vhost).await == "allow"
        }
        _ => {
            let body = serde_json::json!({"peer_addr": ip, "peer_port": 5000, "client_id": cid, "username": user, "password": pw, "mountpoint": "", "clean_session": true});
            json(h, "/hooks/vernemq/auth_on_register", body).await["result"] == "ok"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_devices_signing_one_second_are_all_allowed_twice_by_every_hook() {
    let h = start(HookAuth::open()).await;
    let ts = now();
    for broker in ["emqx", "rabbitmq", "vernemq"] {
        // 500 devices of one product behind one address, every one signing the same
        // second (so presenting the same credential), then all of them again (a herd
        // re-registering), concurrently.
        for round in 0..2 {
            let mut all = tokio::task::JoinSet::new();
            for i in 0..500 {
                let c = creds("p1", &format!("{broker}-dev{i}"), ts);
                let h = Hooks {
                    addr: h.addr,
                    _store: TempStore::new(),
                    stop: None,
                };
                let broker = broker.to_owned();
                all.spawn(async move { hook_allows(&h, &broker, &c, "10.1.2.3").await });
            }
            let allowed = all.join_all().await.iter().filter(|a| **a).count();
            assert_eq!(allowed, 500, "{broker}, round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_address_is_still_served_its_valid_devices_through_every_hook() {
    let h = start(HookAuth::open()).await;
    let ts = now();
    for (n, broker) in ["emqx", "rabbitmq", "vernemq"].into_iter().enumerate() {
        let ip = format!("10.9.9.{n}");
        // 60 CONNECTs with a wrong secret: the address is banned after 30 (the default).
        for i in 0..60 {
            let (cid, user, _) = creds("p1", &format!("bad{i}"), ts);
            let wrong = sign(
                SignMethod::HmacSha256,
                b"test-environment-secret",
                "p1",
                "x",
                ts,
            );
            assert!(!hook_allows(&h, broker, &(cid, user, wrong.to_string()), &ip).await);
        }
        // 20 devices with the right secret from the same address, same second: served.
        for i in 0..20 {
            let c = creds("p1", &format!("{broker}-good{i}"), ts);
            assert!(
                hook_allows(&h, broker, &c, &ip).await,
                "{broker}: device {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_product_admits_its_listed_devices_only_through_every_hook() {
    let h = start(HookAuth::open()).await;
    let ts = now();
    for broker in ["emqx", "rabbitmq", "vernemq"] {
        assert!(
            hook_allows(&h, broker, &creds("L", "dev1", ts), "10.3.3.3").await,
            "{broker}"
        );
        assert!(
            !hook_allows(&h, broker, &creds("L", "stranger", ts), "10.3.3.3").await,
            "{broker}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_bound_credentials_through_every_hook() {
    let h = start(HookAuth::open()).await;
    let ts = now();
    let bound = |pid: &str, unique: &str| {
        let password = sign(
            SignMethod::HmacSha256Bound,
            format!("secret-of-{pid}").as_bytes(),
            pid,
            unique,
            ts,
        );
        (
            format!("register_{pid}_{unique}"),
            format!("{pid}|signMethod=hmacSha256u,ts={ts}"),
            password.as_str().to_owned(),
        )
    };
    for broker in ["emqx", "rabbitmq", "vernemq"] {
        // A bound product takes a bound credential, and refuses the seed's.
        assert!(
            hook_allows(&h, broker, &bound("B", "dev1"), "10.4.4.4").await,
            "{broker}"
        );
        assert!(
            !hook_allows(&h, broker, &creds("B", "dev1", ts), "10.4.4.4").await,
            "{broker}"
        );
        // A bound credential presented for another unique is refused, on any product.
        for pid in ["B", "p1"] {
            let (_, user, password) = bound(pid, "victim");
            let replay = (format!("register_{pid}_thief"), user, password);
            assert!(
                !hook_allows(&h, broker, &replay, "10.4.4.5").await,
                "{broker} {pid}"
            );
        }
    }
}

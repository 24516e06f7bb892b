//! The admin API over real HTTP on port 0, against a SQLite store: tokens and scopes,
//! problem documents, products, pools, devices with cursor pagination, revocation and
//! reset, the audit log, and the OpenAPI document.

use std::net::SocketAddr;

use dynreg_proto::RegisterRequest;
use dynreg_registrar::Device;
use dynreg_store::{Operator, Scope};
use dynreg_testkit::TempStore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Server, now, start};

/// A token of `scope` named after it.
fn token(store: &TempStore, scope: Scope) -> String {
    common::token_named(store, &format!("{scope}-token"), scope)
}

/// A request with a bearer token (when given) and a content type: the status, the
/// reply's content type and body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let headers = format!("content-type: {content_type}\r\n{auth}");
    let (status, head, body) = common::request(addr, method, path, &headers, body).await;
    let ctype = common::header(&head, "content-type")
        .unwrap_or("")
        .to_owned();
    (status, ctype, body)
}

async fn get(s: &Server, path: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = call(s.addr, "GET", path, Some(token), "", "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn send(s: &Server, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = call(
        s.addr,
        method,
        path,
        Some(token),
        "application/json",
        &body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_are_enforced_with_problem_documents() {
    let s = start().await;
    let read = token(&s.store, Scope::Read);
    let write = token(&s.store, Scope::Write);
    let admin = token(&s.store, Scope::Admin);

    let (status, ctype, body) = call(s.addr, "GET", "/api/v1/products", None, "", "").await;
    assert_eq!(status, 401);
    assert_eq!(ctype, "application/problem+json");
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (p["status"].as_u64(), p["code"].as_str()),
        (Some(401), Some("unauthorized"))
    );
    assert_eq!(p["type"], "urn:dynreg:problem:unauthorized");
    let (status, _) = get(&s, "/api/v1/products", "dynreg_not-a-token").await;
    assert_eq!(status, 401);

    assert_eq!(get(&s, "/api/v1/products", &read).await, (200, json!([])));
    let (status, p) = send(&s, "POST", "/api/v1/products", &read, json!({"name": "x"})).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
    assert!(p["detail"].as_str().unwrap().contains("needs write"), "{p}");
    let (status, _) = get(&s, "/api/v1/tokens", &write).await;
    assert_eq!(status, 403, "tokens are admin only");

    // An admin creates a token through the API; the new token works until revoked.
    let (status, created) = send(
        &s,
        "POST",
        "/api/v1/tokens",
        &admin,
        json!({"name": "platform", "scope": "read"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let platform = created["token"].as_str().unwrap().to_owned();
    assert!(platform.starts_with("dynreg_"));
    assert_eq!(get(&s, "/api/v1/products", &platform).await.0, 200);
    let (status, p) = send(
        &s,
        "POST",
        "/api/v1/tokens",
        &admin,
        json!({"name": "platform", "scope": "read"}),
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("conflict")));
    let (status, list) = get(&s, "/api/v1/tokens", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert!(
        !list.to_string().contains(&platform),
        "tokens are never listed"
    );
    let (status, revoked) = send(&s, "DELETE", "/api/v1/tokens/platform", &admin, json!({})).await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_u64());
    assert_eq!(get(&s, "/api/v1/products", &platform).await.0, 401);

    // Bad input is a 400 problem, whatever part of the request it is in.
    let (status, p) = send(&s, "POST", "/api/v1/products", &write, json!({"nam": "x"})).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (400, Some("bad_request")),
        "{p}"
    );
    let (status, p) = get(&s, "/api/v1/devices?limit=x", &read).await;
    assert_eq!((status, p["code"].as_str()), (400, Some("bad_request")));
    let (status, p) = get(&s, "/api/v1/devices?limit=0", &read).await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid")));
    let (status, p) = get(&s, "/api/v1/nothing", &read).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("not_found")));

    // The audit log names who did what, from where.
    let (_, audit) = get(&s, "/api/v1/audit?action=token.", &admin).await;
    let actions: Vec<(&str, &str, &str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap(),
                l["actor"].as_str().unwrap(),
                l["origin"].as_str().unwrap(),
                l["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("token.revoked", "admin-token", "127.0.0.1", "platform"),
            ("token.created", "admin-token", "127.0.0.1", "platform"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_pools_and_devices_through_the_api() {
    let s = start().await;
    let write = token(&s.store, Scope::Write);
    let read = token(&s.store, Scope::Read);

    let (status, created) = send(
        &s,
        "POST",
        "/api/v1/products",
        &write,
        json!({"pid": "P1", "name": "Lamp", "mode": "pool", "reregistration": "window:1d"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["product"]["pid"], "P1");
    assert_eq!(created["product"]["reregistration"], "window:1d");
    let secret = created["secret"].as_str().unwrap();
    assert_eq!(
        s.store
            .store
            .load_product("P1")
            .unwrap()
            .unwrap()
            .secret
            .expose(),
        secret
    );
    let (status, p) = send(
        &s,
        "POST",
        "/api/v1/products",
        &write,
        json!({"pid": "P1", "name": "again"}),
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("conflict")));
    let (status, p) = send(
        &s,
        "POST",
        "/api/v1/products",
        &write,
        json!({"name": "x", "mode": "sometimes"}),
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid")));
    assert!(p["detail"].as_str().unwrap().starts_with("mode:"), "{p}");

    // Patch: a field set, a field removed with null, the rest unchanged.
    let (status, p) = send(
        &s,
        "PATCH",
        "/api/v1/products/P1",
        &write,
        json!({"name": "Lamp 2", "quota": 10}),
    )
    .await;
    assert_eq!(
        (status, p["name"].as_str(), p["quota"].as_u64()),
        (200, Some("Lamp 2"), Some(10))
    );
    let (_, p) = send(
        &s,
        "PATCH",
        "/api/v1/products/P1",
        &write,
        json!({"quota": null}),
    )
    .await;
    assert!(p["quota"].is_null() && p["name"] == "Lamp 2", "{p}");
    let (status, p) = send(&s, "POST", "/api/v1/products/P1/disable", &write, json!({})).await;
    assert_eq!((status, p["enabled"].as_bool()), (200, Some(false)));
    send(&s, "POST", "/api/v1/products/P1/enable", &write, json!({})).await;

    // Generate: the factory CSV, once.
    let (status, ctype, csv) = call(
        s.addr,
        "POST",
        "/api/v1/products/P1/pool/generate",
        Some(&write),
        "application/json",
        &json!({"count": 5000, "barcode_prefix": "LB"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{csv}");
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5001);
    assert_eq!(lines[0], "uuid,secret,mac,barcode");
    let first: Vec<&str> = lines[1].split(',').collect();
    let stored = s.store.store.triplet(first[0]).unwrap().unwrap();
    assert_eq!(stored.secret.expose(), first[1]);
    assert!(first[3].starts_with("LB"));
    let (_, stats) = get(&s, "/api/v1/products/P1/pool", &read).await;
    assert_eq!(stats["free"], 5000);

    // Import: all or nothing, the refused line named.
    let bad = format!("uuid,secret,mac\nnew-1,s1,\n{},s2,\n", first[0]);
    let (status, _, body) = call(
        s.addr,
        "POST",
        "/api/v1/products/P1/pool/import",
        Some(&write),
        "text/csv",
        &bad,
    )
    .await;
    let p: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, p["code"].as_str(), p["line"].as_u64()),
        (422, Some("invalid_item"), Some(3)),
        "{p}"
    );
    let (_, stats) = get(&s, "/api/v1/products/P1/pool", &read).await;
    assert_eq!(stats["free"], 5000, "nothing imported");
    let (status, _, body) = call(
        s.addr,
        "POST",
        "/api/v1/products/P1/pool/import",
        Some(&write),
        "text/csv",
        "uuid,secret\nnew-1,s1\nnew-2,s2\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"imported":2}"#));

    // Withdraw by barcode.
    let (status, w) = send(
        &s,
        "POST",
        "/api/v1/products/P1/pool/withdraw",
        &write,
        json!({"barcodes": [first[3]]}),
    )
    .await;
    assert_eq!(
        (status, w[0]["uuid"].as_str()),
        (200, Some(first[0])),
        "{w}"
    );

    // Devices register; the listing pages through them with a cursor, newest first.
    for i in 0..25 {
        let unique = format!("dev-{i:02}");
        s.registrar
            .commit_registration(
                1_700_000_000 + i,
                Device {
                    pid: "P1",
                    unique: &unique,
                },
                &RegisterRequest::new("1", 1_700_000_000),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/devices?pid=P1&limit=10".to_owned();
    loop {
        let (status, page) = get(&s, &path, &read).await;
        assert_eq!(status, 200, "{page}");
        for d in page["items"].as_array().unwrap() {
            seen.push(d["unique"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(c) => path = format!("/api/v1/devices?pid=P1&limit=10&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).rev().map(|i| format!("dev-{i:02}")).collect();
    assert_eq!(seen, want);

    // Find by barcode, revoke, reset: each audited with the token's name.
    let held = s.store.store.device("P1", "dev-03").unwrap().unwrap();
    let (_, found) = get(
        &s,
        &format!("/api/v1/devices?barcode={}", held.triplet.barcode),
        &read,
    )
    .await;
    assert_eq!(found["items"][0]["unique"], "dev-03", "{found}");
    let (status, _) = send(
        &s,
        "POST",
        "/api/v1/devices/P1/dev-03/revoke",
        &read,
        json!({}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, d) = send(
        &s,
        "POST",
        "/api/v1/devices/P1/dev-03/revoke",
        &write,
        json!({}),
    )
    .await;
    assert_eq!((status, d["state"].as_str()), (200, Some("revoked")), "{d}");
    let (status, p) = send(
        &s,
        "POST",
        "/api/v1/devices/P1/dev-03/revoke",
        &write,
        json!({}),
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (409, Some("conflict")));
    let (_, revoked) = get(&s, "/api/v1/devices?state=revoked", &read).await;
    assert_eq!(revoked["items"].as_array().unwrap().len(), 1);
    let (status, _) = send(
        &s,
        "POST",
        "/api/v1/devices/P1/dev-03/reset",
        &write,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, detail) = get(&s, "/api/v1/devices/P1/dev-03", &read).await;
    assert_eq!(status, 200, "{detail}");
    assert!(detail["device"].is_null());
    assert_eq!(
        detail["previous_triplets"][0]["uuid"],
        held.triplet.uuid.as_str()
    );
    let history: Vec<(&str, &str)> = detail["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["action"].as_str().unwrap(), l["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            ("device.reset", "write-token"),
            ("device.revoked", "write-token"),
            ("device.registered", "device"),
        ]
    );
    assert!(
        detail["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uuid"] == held.triplet.uuid.as_str())
    );
    let (status, _) = get(&s, "/api/v1/devices/P1/nobody", &read).await;
    assert_eq!(status, 404);

    // Recent registrations, paged by `before`.
    let (_, regs) = get(&s, "/api/v1/registrations?limit=20", &read).await;
    assert_eq!(regs["items"].as_array().unwrap().len(), 20);
    assert_eq!(regs["items"][0]["target"], "dev-24");
    let before = regs["next"].as_u64().unwrap();
    let (_, rest) = get(&s, &format!("/api/v1/registrations?before={before}"), &read).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 5);

    // Deletion is refused while devices are registered, unless forced.
    let (status, _) = send(&s, "DELETE", "/api/v1/products/P1", &write, json!({})).await;
    assert_eq!(status, 409);
    let (status, d) = send(
        &s,
        "DELETE",
        "/api/v1/products/P1?force=true",
        &write,
        json!({}),
    )
    .await;
    assert_eq!((status, d["devices"].as_u64()), (200, Some(24)), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let s = start().await;
    let read = token(&s.store, Scope::Read);
    let (status, doc) = get(&s, "/api/v1/openapi.json", &read).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/products",
        "/products/{pid}",
        "/products/{pid}/rotate-secret",
        "/products/{pid}/pool/generate",
        "/products/{pid}/pool/import",
        "/devices",
        "/devices/{pid}/{unique}/revoke",
        "/devices/export",
        "/products/{pid}/export",
        "/products/{pid}/import",
        "/products/{pid}/expected",
        "/products/{pid}/expected/{unique}",
        "/audit",
        "/registrations",
        "/tokens",
    ] {
        assert!(paths.iter().any(|k| *k == p), "{p} missing from {paths:?}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // Health needs no token; readiness asks the store.
    let (status, _, body) = call(s.addr, "GET", "/healthz", None, "", "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = call(s.addr, "GET", "/readyz", None, "", "").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_and_count_registrations_and_pools() {
    let s = start().await;
    let read = token(&s.store, Scope::Read);
    s.store.product("M", dynreg_registrar::SourceMode::Pool);
    s.store
        .pool("M", dynreg_registrar::conformance::pool("M", 3));
    let reply = s
        .registrar
        .register(
            1_700_000_000,
            Device {
                pid: "M",
                unique: "m1",
            },
            &RegisterRequest::new("1", 1_700_000_000),
        )
        .await;
    assert_eq!(reply.res, 0);
    let (status, _, _) = call(s.addr, "GET", "/metrics", None, "", "").await;
    assert_eq!(status, 401);
    let (status, ctype, text) = call(s.addr, "GET", "/metrics", Some(&read), "", "").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    // The metrics are the process's: other tests add to them, so only "at least".
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("dynreg_registrations_total{status=\"0\"}") >= 1.0);
    assert!(value("dynreg_registration_duration_seconds_count") >= 1.0);
    assert!(value("dynreg_store_batch_size_count") >= 1.0);
    assert_eq!(value("dynreg_pool_free_triplets{pid=\"M\"}"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_stream_live_as_server_sent_events() {
    let s = start().await;
    let read = token(&s.store, Scope::Read);
    s.store.product("S", dynreg_registrar::SourceMode::Generate);
    let register = |unique: &'static str| {
        let r = s.registrar.clone();
        async move {
            r.commit_registration(
                1_700_000_000,
                Device { pid: "S", unique },
                &RegisterRequest::new("1", 1_700_000_000),
            )
            .await
            .unwrap()
        }
    };
    // Before the stream starts: not sent.
    register("before").await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/registrations/stream?pid=S HTTP/1.0\r\nhost: x\r\nauthorization: Bearer {read}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "text/event-stream").await;
    let live = register("live").await;
    read_until(&mut stream, &mut seen, "\"target\":\"live\"").await;
    assert!(seen.contains("event: registration"), "{seen}");
    assert!(seen.contains(&live.triplet.uuid), "{seen}");
    assert!(!seen.contains("\"target\":\"before\""), "{seen}");
    // Without a token: no stream.
    let (status, _, _) = call(s.addr, "GET", "/api/v1/registrations/stream", None, "", "").await;
    assert_eq!(status, 401);
}

/// Reads from `stream` into `seen` until it holds `needle` (10 s at most).
async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` in time: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_move_between_stores_and_devices_export_as_csv() {
    let s = start().await;
    let (read, write) = (token(&s.store, Scope::Read), token(&s.store, Scope::Write));
    let (status, created) = send(
        &s,
        "POST",
        "/api/v1/products",
        &write,
        serde_json::json!({"pid": "E", "name": "Exported", "mode": "generate",
                           "mac_range": "02:00:00:00:00:00-02:00:00:00:00:ff",
                           "reregistration": "never", "low_water": 5}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // Without the secret: read scope. With it: write scope.
    let (status, def) = get(&s, "/api/v1/products/E/export", &read).await;
    assert_eq!(status, 200, "{def}");
    assert_eq!(def["mode"], "generate");
    assert_eq!(def["low_water"], 5);
    assert!(def.get("secret").is_none(), "{def}");
    let (status, p) = get(&s, "/api/v1/products/E/export?with_secret=true", &read).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("forbidden")),
        "{p}"
    );
    let (status, with) = get(&s, "/api/v1/products/E/export?with_secret=true", &write).await;
    assert_eq!(status, 200);
    assert_eq!(with["secret"], created["secret"]);
    // Into another store (here: under another pid), the secret kept.
    let (status, imported) = send(&s, "POST", "/api/v1/products/E2/import", &write, with).await;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["secret"], created["secret"]);
    assert_eq!(imported["product"]["pid"], "E2");
    let (_, copy) = get(&s, "/api/v1/products/E2/export", &read).await;
    let mut expected = def.clone();
    expected["pid"] = "E2".into();
    assert_eq!(copy, expected);
    // Without a secret in the definition, a new one; a bad field is named.
    let (status, fresh) = send(
        &s,
        "POST",
        "/api/v1/products/E3/import",
        &write,
        def.clone(),
    )
    .await;
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["secret"], created["secret"]);
    let mut bad = def.clone();
    bad["reregistration"] = "sometimes".into();
    let (status, p) = send(&s, "POST", "/api/v1/products/E4/import", &write, bad).await;
    assert_eq!(status, 400, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("reregistration"),
        "{p}"
    );
    let (status, p) = send(&s, "POST", "/api/v1/products/E/import", &write, def).await;
    assert_eq!(status, 409, "{p}");

    // Devices as CSV, with their secrets only for a write token.
    let reg = s
        .registrar
        .commit_registration(
            now(),
            Device {
                pid: "E",
                unique: "e1",
            },
            &RegisterRequest::new("1", now()),
        )
        .await
        .unwrap();
    let (status, ctype, csv) = call(
        s.addr,
        "GET",
        "/api/v1/devices/export?pid=E",
        Some(&read),
        "",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "pid,unique,uuid,mac,barcode,registered_at,last_seen_at,revoked_at,from_pid"
    );
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with(&format!("E,e1,{},02:00:00:00:00:00,", reg.triplet.uuid)),
        "{csv}"
    );
    let (status, _, _) = call(
        s.addr,
        "GET",
        "/api/v1/devices/export?pid=E&with_secrets=true",
        Some(&read),
        "",
        "",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, csv) = call(
        s.addr,
        "GET",
        "/api/v1/devices/export?pid=E&with_secrets=true",
        Some(&write),
        "",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .ends_with(&format!(",{}", reg.triplet.secret.expose())),
        "{csv}"
    );
    let (status, _, _) = call(
        s.addr,
        "GET",
        "/api/v1/devices/export?pid=nope",
        Some(&read),
        "",
        "",
    )
    .await;
    assert_eq!(status, 404);
    // Exports with secrets and the imports are audited.
    let (_, audit) = get(&s, "/api/v1/audit?action=device.exported", &read).await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
    let (_, audit) = get(&s, "/api/v1/audit?action=product.", &read).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"product.exported") && actions.contains(&"product.imported"),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_turned_off_by_an_admin_only() {
    let s = start().await;
    let (write, admin) = (token(&s.store, Scope::Write), token(&s.store, Scope::Admin));
    s.store.store.set_outbox(true).unwrap();
    s.store.product("O", dynreg_registrar::SourceMode::Generate);
    s.registrar
        .commit_registration(
            now(),
            Device {
                pid: "O",
                unique: "o1",
            },
            &RegisterRequest::new("1", now()),
        )
        .await
        .unwrap();
    let (_, outbox) = get(&s, "/api/v1/outbox", &write).await;
    assert_eq!(outbox, json!({"on": true, "backlog": 1}));
    let (status, _) = send(&s, "POST", "/api/v1/outbox/off", &write, json!({})).await;
    assert_eq!(status, 403);
    let (status, off) = send(&s, "POST", "/api/v1/outbox/off", &admin, json!({})).await;
    assert_eq!((status, off), (200, json!({"on": false, "dropped": 1})));
    let (_, outbox) = get(&s, "/api/v1/outbox", &write).await;
    assert_eq!(outbox, json!({"on": false, "backlog": 0}));
    let (_, audit) = get(&s, "/api/v1/audit?action=outbox.off", &write).await;
    assert_eq!(audit["items"][0]["detail"], r#"{"dropped":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_devices_are_uploaded_listed_counted_and_removed() {
    let s = start().await;
    let (read, write) = (token(&s.store, Scope::Read), token(&s.store, Scope::Write));
    let (status, p) = send(
        &s,
        "POST",
        "/api/v1/products",
        &write,
        json!({"name": "Listed", "pid": "LS", "mode": "generate", "admission": "listed"}),
    )
    .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["product"]["admission"], "listed");
    let upload = async |body: &str, token: &str| {
        let (status, _, text) = call(
            s.addr,
            "POST",
            "/api/v1/products/LS/expected",
            Some(token),
            "text/csv",
            body,
        )
        .await;
        (
            status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    // A read token may not; a refused line lists nothing and is named.
    assert_eq!(upload("u1\n", &read).await.0, 403);
    let (status, p) = upload("unique,barcode,mac\nu1,B1,0a0000000001\nu_2,B2,\n", &write).await;
    assert_eq!(
        (status, p["code"].as_str(), p["line"].as_u64()),
        (422, Some("invalid_item"), Some(3)),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("unique `u_2`"),
        "{p}"
    );
    let (status, p) = upload(
        "unique,barcode,mac\nu1,B1,0a0000000001\nu2,B2,\nu3,,\n",
        &write,
    )
    .await;
    assert_eq!(
        (status, p["listed_now"].as_u64(), p["listed"].as_u64()),
        (200, Some(3), Some(3)),
        "{p}"
    );
    // One registers (through the registrar, as a device would after its CONNECT).
    let r = dynreg_registrar::Registrar::new(s.store.store.clone());
    let got = r
        .commit_registration(
            now(),
            Device {
                pid: "LS",
                unique: "u1",
            },
            &RegisterRequest::new("1", now()),
        )
        .await
        .unwrap();
    assert_eq!(
        (got.triplet.barcode.as_str(), got.triplet.mac.as_str()),
        ("B1", "0A:00:00:00:00:01")
    );
    // Counted in the product; listed by page, all or those waiting.
    let (_, p) = get(&s, "/api/v1/products/LS", &read).await;
    assert_eq!(
        (
            p["pool"]["expected"].as_u64(),
            p["pool"]["expected_waiting"].as_u64()
        ),
        (Some(3), Some(2)),
        "{p}"
    );
    let (status, page) = get(&s, "/api/v1/products/LS/expected?limit=2", &read).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["unique"], "u1");
    assert!(page["items"][0]["registered_at"].is_u64());
    assert_eq!(page["next"], "u2");
    let (_, page) = get(&s, "/api/v1/products/LS/expected?after=u2", &read).await;
    assert_eq!(page["items"][0]["unique"], "u3");
    assert!(page["next"].is_null());
    let (_, page) = get(&s, "/api/v1/products/LS/expected?waiting=true", &read).await;
    let waiting: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unique"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, ["u2", "u3"]);
    // Removed; removing again is 404; the audit log has both.
    let (status, _, _) = call(
        s.addr,
        "DELETE",
        "/api/v1/products/LS/expected/u3",
        Some(&write),
        "",
        "",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, body) = call(
        s.addr,
        "DELETE",
        "/api/v1/products/LS/expected/u3",
        Some(&write),
        "",
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (_, audit) = get(&s, "/api/v1/audit?pid=LS", &read).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"expected.uploaded") && actions.contains(&"expected.removed"),
        "{actions:?}"
    );
    // An unknown product is 404.
    assert_eq!(upload("u1\n", &write).await.0, 200);
    let (status, _, _) = call(
        s.addr,
        "POST",
        "/api/v1/products/NOPE/expected",
        Some(&write),
        "text/csv",
        "u1\n",
    )
    .await;
    assert_eq!(status, 404);
}

//! Device events delivered to a webhook by `dynreg serve --webhook-url`, against a
//! receiver that fails 30% of requests and is down for 10 s, and across a SIGKILL of
//! the server: every event arrives at least once, signed, in order per device.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;

mod common;

const SECRET: &str = "webhook-test-secret";
/// The first device of `dynreg bench` (uniques `bench-` and a serial from 0).
const UNIQUE0: &str = "bench-0";

/// What the receiver saw, in arrival order (200s only).
#[derive(Default)]
struct Seen {
    requests: u64,
    failed_on_purpose: u64,
    bad_signatures: u64,
    events: Vec<Value>,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    /// Every request with `requests % 10` in this set is answered 500.
    fail: &'static [u64],
    /// How long each request takes.
    delay: Duration,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    tokio::time::sleep(r.delay).await;
    let mut seen = r.seen.lock().unwrap();
    seen.requests += 1;
    if r.fail.contains(&(seen.requests % 10)) {
        seen.failed_on_purpose += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let want = format!("sha256={}", hex(&mac.finalize().into_bytes()));
    let got = headers
        .get("x-dynreg-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if got != want {
        seen.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    seen.events.push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

/// Serves the receiver on `addr` until `stop` resolves.
async fn receive(
    addr: SocketAddr,
    r: Receiver,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .unwrap();
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A server that is killed if the test ends early.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dynreg serve` on `d` with the webhook; its MQTT address.
fn serve(d: &Path, hook: SocketAddr) -> (Server, String) {
    let mut child = common::bin()
        .args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(["--webhook-url", &format!("http://{hook}/hook")])
        .args(["--webhook-secret", SECRET])
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    let lines = common::wait_for(&rx, "dynreg serving registrations");
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let serving: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let mqtt = serving["mqtt"].as_str().unwrap();
    let addr = mqtt.split(',').next().unwrap().to_owned();
    (Server(child), addr)
}

/// `n` devices register through the server at `mqtt` (uniques from the load generator).
fn register(d: &Path, mqtt: &str, secret: &str, n: u32) {
    let port = mqtt.rsplit(':').next().unwrap();
    let out = common::bin()
        .args(["--json", "bench", "--host", "127.0.0.1", "--port", port])
        .args([
            "--pid",
            "hooked",
            "-n",
            &n.to_string(),
            "-c",
            "10",
            "--timeout",
            "10",
        ])
        .env("DYNREG_SECRET", secret)
        .current_dir(d)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["completed"], n, "{report}");
}

/// Waits until the receiver has seen `n` distinct event ids (60 s at most).
fn wait_for_events(seen: &Mutex<Seen>, n: usize) {
    let start = Instant::now();
    loop {
        let distinct: HashSet<String> = seen
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        if distinct.len() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {n} events after 60 s",
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A product in generate mode; its secret.
fn product(d: &Path) -> String {
    let p = common::json(
        d,
        &[
            "product", "create", "--name", "Hooked", "--pid", "hooked", "--mode", "generate",
        ],
    );
    p["secret"].as_str().unwrap().to_owned()
}

#[test]
fn every_event_arrives_signed_and_in_order_despite_failures_and_downtime() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let secret = product(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hook = free_addr();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = Receiver {
        seen: seen.clone(),
        fail: &[1, 4, 8],
        delay: Duration::ZERO,
    };
    // The receiver is down for the first 10 s: everything registered meanwhile waits.
    let (up, went_up) = (
        Instant::now(),
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            receive(hook, receiver, std::future::pending()).await;
        }),
    );
    let (mut server, mqtt) = serve(d, hook);
    register(d, &mqtt, &secret, 60);
    // A revocation and a reset of one device, by the operator.
    common::json(
        d,
        &["device", "revoke", "--pid", "hooked", "--unique", UNIQUE0],
    );
    common::json(
        d,
        &["device", "reset", "--pid", "hooked", "--unique", UNIQUE0],
    );
    assert!(
        up.elapsed() < Duration::from_secs(10),
        "everything happened while the receiver was down"
    );
    wait_for_events(&seen, 62);
    common::sigterm(&server.0);
    let _ = server.0.wait();
    went_up.abort();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert!(seen.failed_on_purpose > 0, "the receiver failed requests");
    // Per device, in the order they were made: registered, revoked, reset.
    let mut by_device: HashMap<String, Vec<String>> = HashMap::new();
    for e in &seen.events {
        let kinds = by_device
            .entry(e["data"]["unique"].as_str().unwrap().to_owned())
            .or_default();
        let kind = e["type"].as_str().unwrap().to_owned();
        // A duplicate (sent again after a lost answer) repeats the last one.
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
    }
    assert_eq!(by_device.len(), 60);
    assert_eq!(
        by_device[UNIQUE0],
        ["device.registered", "device.revoked", "device.reset"]
    );
    let first = &seen.events[0];
    assert_eq!(first["data"]["pid"], "hooked");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(first["data"]["uuid"].as_str().unwrap().starts_with('d'));
}

#[test]
fn a_sigkill_during_delivery_loses_no_event() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let secret = product(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hook = free_addr();
    let seen = Arc::new(Mutex::new(Seen::default()));
    // A slow receiver, so that the kill falls in the middle of the delivery.
    let receiver = Receiver {
        seen: seen.clone(),
        fail: &[],
        delay: Duration::from_millis(40),
    };
    rt.spawn(receive(hook, receiver, std::future::pending()));
    let (mut server, mqtt) = serve(d, hook);
    register(d, &mqtt, &secret, 150);
    // Kill it once some, not all, events were delivered.
    let start = Instant::now();
    while seen.lock().unwrap().events.len() < 20 {
        assert!(start.elapsed() < Duration::from_secs(30), "no delivery");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let before = seen.lock().unwrap().events.len();
    assert!(
        before < 150,
        "the kill came after the whole delivery ({before})"
    );
    let (mut server, _) = serve(d, hook);
    wait_for_events(&seen, 150);
    common::sigterm(&server.0);
    let _ = server.0.wait();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    let ids: HashSet<&str> = seen
        .events
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 150);
    let status = common::json(d, &["outbox", "status"]);
    assert_eq!(status, serde_json::json!({"on": true, "backlog": 0}));
}

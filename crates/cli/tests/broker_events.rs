//! Device events published to the broker in attached mode (`serve --attach mqtt://…
//! --broker-events dynreg/events`) on a real Mosquitto 2: an event published while no
//! one subscribes waits in the outbox (Mosquitto answers "no matching subscribers")
//! and arrives once a subscriber comes; registrations and a revocation arrive on
//! their topics, in order per device, with the device's secret when configured.
//!
//! Needs `mosquitto` and `mosquitto_sub` (Debian's mosquitto and mosquitto-clients,
//! which `.ci/run` installs); without them the test says SKIPPED (under CI=true it
//! fails).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

/// A child killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn found(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Mosquitto on a free loopback port, once it accepts connections.
fn mosquitto() -> (Killed, u16) {
    let port = common::free_port();
    let child = Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), port)
}

/// `mosquitto_sub` on the events' topics (MQTT 5, QoS 1): its lines, `topic payload`.
fn subscribe(port: u16) -> (Killed, Receiver<String>) {
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-v", "-t", "dynreg/events/#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::stdout_lines(&mut child);
    (Killed(child), rx)
}

/// Reads `(topic, event)` pairs until `done` says enough (panicking after 30 s).
fn collect(
    rx: &Receiver<String>,
    seen: &mut Vec<(String, Value)>,
    done: impl Fn(&[(String, Value)]) -> bool,
) {
    let start = Instant::now();
    while !done(seen) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "events missing; got {seen:#?}"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let (topic, payload) = line.split_once(' ').unwrap();
            seen.push((topic.to_owned(), serde_json::from_str(payload).unwrap()));
        }
    }
}

fn register(d: &Path, port: u16, secret: &str, args: &[&str]) {
    let out = common::bin()
        .args(["--json"])
        .args(args)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--pid",
            "ev",
        ])
        .args(["--timeout", "10"])
        .env("DYNREG_SECRET", secret)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

#[test]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)"
)]
fn events_reach_mqtt_subscribers_and_wait_for_them() {
    let test = "events_reach_mqtt_subscribers_and_wait_for_them";
    if !(found("mosquitto") && found("mosquitto_sub")) {
        let why = "mosquitto and mosquitto_sub are not installed (apt-get install mosquitto mosquitto-clients; .ci/run installs them)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why}"
        );
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (_broker, port) = mosquitto();
    let p = common::json(
        d,
        &[
            "product", "create", "--name", "Ev", "--pid", "ev", "--mode", "generate",
        ],
    );
    let secret = p["secret"].as_str().unwrap().to_owned();
    let mut server = common::bin()
        .args(["--data-dir", "data", "serve", "--listen", "off"])
        .args(["--attach", &format!("mqtt://127.0.0.1:{port}")])
        .args([
            "--broker-events",
            "dynreg/events",
            "--events-include-secrets",
            "true",
        ])
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::stderr_lines(&mut server);
    common::wait_for(&lines, "MQTT worker consuming register requests");
    std::thread::spawn(move || while lines.recv().is_ok() {});
    let server = Killed(server);

    // No one subscribes yet: the event waits in the outbox.
    register(d, port, &secret, &["register", "--unique", "early"]);
    std::thread::sleep(Duration::from_secs(2));
    let status = common::json(d, &["outbox", "status"]);
    assert_eq!(status["backlog"], 1, "{status}");

    let (_sub, rx) = subscribe(port);
    let mut seen = Vec::new();
    collect(&rx, &mut seen, |s| !s.is_empty());
    assert_eq!(seen[0].0, "dynreg/events/ev/device/registered");
    assert_eq!(seen[0].1["data"]["unique"], "early");

    // Twenty devices, then the operator revokes one.
    register(d, port, &secret, &["bench", "-n", "20", "-c", "5"]);
    common::json(
        d,
        &["device", "revoke", "--pid", "ev", "--unique", "bench-3"],
    );
    collect(&rx, &mut seen, |s| {
        s.iter().any(|(_, e)| e["type"] == "device.revoked")
            && s.iter()
                .filter(|(_, e)| e["type"] == "device.registered")
                .map(|(_, e)| e["data"]["unique"].as_str().unwrap().to_owned())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 21
    });
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for (topic, e) in &seen {
        let kind = e["type"].as_str().unwrap();
        assert_eq!(
            *topic,
            format!("dynreg/events/ev/{}", kind.replace('.', "/"))
        );
        assert!(e["id"].as_str().unwrap().parse::<u64>().is_ok(), "{e}");
        let data = &e["data"];
        assert_eq!(data["pid"], "ev");
        let secret = data["secret"].as_str();
        if kind == "device.registered" {
            assert_eq!(secret.map(str::len), Some(32), "{e}");
        } else {
            assert!(secret.is_none(), "{e}");
        }
        order
            .entry(data["unique"].as_str().unwrap().to_owned())
            .or_default()
            .push(kind.to_owned());
    }
    let bench3 = &order["bench-3"];
    assert_eq!(
        bench3.last().map(String::as_str),
        Some("device.revoked"),
        "{bench3:?}"
    );
    assert!(
        bench3
            .iter()
            .all(|k| k == "device.registered" || k == "device.revoked")
    );
    drop(server);
}

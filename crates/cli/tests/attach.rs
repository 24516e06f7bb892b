//! Attached mode on a real 2-node RabbitMQ 3.10 cluster (MQTT plugin, HTTP auth
//! backend pointed at dynreg's hooks) and PostgreSQL: devices connect to either node
//! over MQTT 3.1.1, two `dynreg serve --listen off` instances answer through AMQP.
//!
//! The cluster is `support/rabbitmq-cluster.sh`'s, which `.ci/run` starts; its
//! variables name it (DYNREG_TEST_AMQP_URL, DYNREG_TEST_AMQP_URL_2,
//! DYNREG_TEST_RABBITMQ_MQTT, DYNREG_TEST_RABBITMQ_HOOK: the address the backend calls,
//! DYNREG_TEST_RABBITMQ_HOOK_TOKEN). Without them the test says SKIPPED (under
//! CI=true it fails).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Output, Stdio};

use serde_json::Value;

mod common;
use dynreg_testkit::pg as pgtest;

struct Cluster {
    amqp: [String; 2],
    mqtt: [u16; 2],
    hook: String,
    token: String,
    /// `rabbitmqctl` for node N: `ctl N args...`.
    ctl: String,
}

fn cluster(test: &str) -> Option<Cluster> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let found = (|| {
        let mqtt: Vec<u16> = var("DYNREG_TEST_RABBITMQ_MQTT")?
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        Some(Cluster {
            amqp: [var("DYNREG_TEST_AMQP_URL")?, var("DYNREG_TEST_AMQP_URL_2")?],
            mqtt: [*mqtt.first()?, *mqtt.get(1)?],
            hook: var("DYNREG_TEST_RABBITMQ_HOOK")?,
            token: var("DYNREG_TEST_RABBITMQ_HOOK_TOKEN")?,
            ctl: var("DYNREG_TEST_RABBITMQ_CTL")?,
        })
    })();
    if found.is_none() {
        let why = "no RabbitMQ cluster: run .ci/run, or support/rabbitmq-cluster.sh and export what it prints";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}; CI runs every test");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    found
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(url: &str, dir: &Path, args: &[&str]) -> Output {
    common::bin()
        .args(["--database-url", url, "--master-key-file", "k"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// `dynreg serve --listen off` attached to `amqp`, with the hooks when `hooks` is set,
/// and `extra` flags.
fn serve(url: &str, dir: &Path, amqp: &str, hooks: Option<(&str, &str)>, extra: &[&str]) -> Server {
    let mut cmd = common::bin();
    cmd.args(["--database-url", url, "--master-key-file", "k", "serve"])
        .args(["--listen", "off", "--attach", amqp])
        // A classic queue on node 1, where the first worker declares it: it survives
        // node 2 stopping. (A quorum queue needs a majority of its members: three
        // nodes to lose one; see docs/integrations/rabbitmq.md.)
        .args(["--attach-queue-type", "classic"])
        .args(extra);
    if let Some((addr, token)) = hooks {
        cmd.args(["--http-listen", addr, "--hook-token", token]);
    }
    let mut child = cmd
        .env("RUST_LOG", "info,lapin=warn")
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    common::wait_for(&rx, "AMQP worker consuming");
    // Keep reading the log so that the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server(child)
}

/// `dynreg register --batch` of `csv` through RabbitMQ's MQTT port, over MQTT 3.1.1.
fn batch(dir: &Path, port: u16, secret: &str, csv: &str, out: &str) -> Child {
    common::bin()
        .args([
            "register",
            "--port",
            &port.to_string(),
            "--pid",
            "plug",
            "--mqtt",
            "3",
        ])
        .args([
            "--batch",
            csv,
            "--concurrency",
            "20",
            "--out",
            out,
            "--timeout",
            "20",
        ])
        // The same clientId through both nodes at once: the broker closes the older
        // connection, and the device tries again.
        .args(["--attempts", "12"])
        .env("DYNREG_SECRET", secret)
        .current_dir(dir)
        .stderr(std::fs::File::create(dir.join(format!("{out}.log"))).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for a batch; fails with its log when it failed.
fn finish(dir: &Path, mut child: Child, out: &str) {
    if !child.wait().unwrap().success() {
        let log = std::fs::read_to_string(dir.join(format!("{out}.log"))).unwrap_or_default();
        let csv = std::fs::read_to_string(dir.join(out)).unwrap_or_default();
        let failed: Vec<&str> = csv
            .lines()
            .filter(|l| l.contains(",failed,"))
            .take(10)
            .collect();
        panic!("the batch {out} failed: {log}\n{}", failed.join("\n"));
    }
}

/// The rows of a batch's output (unique, uuid, secret), sorted; every one registered.
fn rows(dir: &Path, out: &str) -> Vec<String> {
    let mut rows: Vec<String> = std::fs::read_to_string(dir.join(out))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            // unique, barcode, result, pid, uuid, secret, mac, error
            let c: Vec<&str> = l.split(',').collect();
            assert_eq!(c[2], "registered", "{l}");
            [c[0], c[4], c[5]].join(",")
        })
        .collect();
    rows.sort();
    rows
}

fn devices(dir: &Path, name: &str, range: std::ops::Range<usize>) {
    let csv: String = std::iter::once("unique\n".to_owned())
        .chain(range.map(|i| format!("dev{i:04}\n")))
        .collect();
    std::fs::write(dir.join(name), csv).unwrap();
}

#[test]
#[cfg_attr(
    no_rabbitmq_cluster,
    ignore = "no RabbitMQ cluster: run .ci/run, or support/rabbitmq-cluster.sh and export what it prints"
)]
fn two_instances_behind_a_rabbitmq_cluster_register_every_device_once() {
    let test = "two_instances_behind_a_rabbitmq_cluster";
    let Some(c) = cluster(test) else {
        return;
    };
    let Some(db) = pgtest::TestDb::create(test) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let url = db.url.as_str();
    ok(&run(url, d, &["init"]));
    let p = ok(&run(
        url,
        d,
        &[
            "--json", "product", "create", "--name", "Plug", "--pid", "plug", "--mode", "pool",
        ],
    ));
    ok(&run(
        url,
        d,
        &[
            "pool", "generate", "--pid", "plug", "--count", "600", "--out", "pool.csv",
        ],
    ));
    let secret = p["secret"].as_str().unwrap().to_owned();
    // Instance one also publishes the device events to the broker; a platform reads
    // them over MQTT through node 1 (as the broker's internal user dynreg-worker).
    // Events wait in the outbox until the subscription's queue is bound.
    let one = serve(
        url,
        d,
        &c.amqp[0],
        Some((&c.hook, &c.token)),
        &["--broker-events", "dynreg/events"],
    );
    let two = serve(url, d, &c.amqp[1], None, &[]);
    let (_events_sub, events) = subscribe_events(c.mqtt[0]);

    // The same 300 devices through both nodes at once.
    eprintln!("attach test: 300 devices through both nodes");
    devices(d, "devices.csv", 0..300);
    let a = batch(d, c.mqtt[0], &secret, "devices.csv", "a.csv");
    let b = batch(d, c.mqtt[1], &secret, "devices.csv", "b.csv");
    finish(d, a, "a.csv");
    finish(d, b, "b.csv");
    let (ra, rb) = (rows(d, "a.csv"), rows(d, "b.csv"));
    assert_eq!((ra.len(), rb.len()), (300, 300));
    assert_eq!(ra, rb, "a device got two triplets");
    let uuids: HashSet<&str> = ra.iter().map(|r| r.split(',').nth(1).unwrap()).collect();
    assert_eq!(uuids.len(), 300, "a triplet was bound twice");

    // A wrong secret is refused at CONNECT by the hook.
    eprintln!("attach test: a wrong secret");
    let o = common::bin()
        .args([
            "register",
            "--port",
            &c.mqtt[0].to_string(),
            "--pid",
            "plug",
            "--mqtt",
            "3",
        ])
        .args(["--timeout", "5", "--unique", "intruder"])
        .env("DYNREG_SECRET", "not-the-secret")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("refused") || e.contains("credentials"), "{e}");

    // An independent client: mosquitto_rr over MQTT 3.1.1 through node 2.
    eprintln!("attach test: mosquitto_rr");
    rr(d, c.mqtt[1], &secret);

    // Instance two dies (SIGKILL) in the middle of a load through node 2: the requests
    eprintln!("attach test: kill -9 of instance two mid-load");
    // it held go back to the queue, and instance one answers them and the rest.
    devices(d, "more.csv", 300..500);
    let m = batch(d, c.mqtt[1], &secret, "more.csv", "m.csv");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut two = two;
    let _ = two.0.kill();
    let _ = two.0.wait();
    finish(d, m, "m.csv");
    let rm = rows(d, "m.csv");
    assert_eq!(rm.len(), 200);

    // RabbitMQ node 2 stops: devices on node 1 keep registering.
    eprintln!("attach test: RabbitMQ node 2 stops");
    let o = std::process::Command::new(&c.ctl)
        .args(["2", "stop_app"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    devices(d, "last.csv", 500..550);
    let l = batch(d, c.mqtt[0], &secret, "last.csv", "l.csv");
    finish(d, l, "l.csv");
    let rl = rows(d, "l.csv");
    assert_eq!(rl.len(), 50);
    let all: HashSet<String> = ra
        .iter()
        .chain(&rm)
        .chain(&rl)
        .map(|r| r.split(',').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), 550, "a triplet was bound twice");

    // Every registration reached the platform through the broker.
    eprintln!("attach test: device events through amq.topic");
    let start = std::time::Instant::now();
    let mut registered = HashSet::new();
    while registered.len() < 551 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{} of 551 device.registered events arrived",
            registered.len()
        );
        let Ok(line) = events.recv_timeout(std::time::Duration::from_millis(200)) else {
            continue;
        };
        let (topic, payload) = line.split_once(' ').unwrap();
        let e: Value = serde_json::from_str(payload).unwrap();
        let kind = e["type"].as_str().unwrap();
        assert_eq!(
            topic,
            format!("dynreg/events/plug/{}", kind.replace('.', "/"))
        );
        assert!(e["data"].get("secret").is_none(), "{e}");
        if kind == "device.registered" {
            registered.insert(e["data"]["uuid"].as_str().unwrap().to_owned());
        }
    }
    assert!(all.is_subset(&registered));
    drop(one);
    let stats = ok(&run(url, d, &["--json", "pool", "stats", "--pid", "plug"]));
    assert_eq!(
        (stats["bound"].as_u64(), stats["free"].as_u64()),
        (Some(551), Some(49)),
        "{stats}"
    );
}

/// A platform's MQTT subscriber (`mosquitto_sub`, a persistent session at QoS 1) to
/// the device events through RabbitMQ's MQTT port: its lines, `topic payload`.
fn subscribe_events(port: u16) -> (Server, std::sync::mpsc::Receiver<String>) {
    let mut child = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
        .args([
            "-u",
            "dynreg-worker",
            "-P",
            "workerpw",
            "-i",
            "platform-events",
            "-c",
        ])
        .args(["-q", "1", "-v", "-t", "dynreg/events/#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::stdout_lines(&mut child);
    (Server(child), rx)
}

/// One device registered by `mosquitto_rr` (Mosquitto's request/response client) over
/// MQTT 3.1.1, signed here.
fn rr(dir: &Path, port: u16, secret: &str) {
    use dynreg_proto::credentials::{SignMethod, sign};
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let password = sign(SignMethod::HmacSha256, secret.as_bytes(), "plug", "rr1", ts);
    let request = format!(r#"{{"id":"rr1","ts":{ts},"code":"register","ack":1,"data":{{}}}}"#);
    let o = std::process::Command::new("mosquitto_rr")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "311",
            "-q",
            "1",
            "-W",
            "20",
        ])
        .args(["-i", "register_plug_rr1"])
        .args(["-u", &format!("plug|signMethod=hmacSha256,ts={ts}")])
        .args(["-P", password.as_str()])
        .args(["-t", "register/v2/plug/rr1/register"])
        .args(["-e", "register/v2/plug/rr1/register_response"])
        .args(["-m", &request])
        .current_dir(dir)
        .output()
        .expect("mosquitto_rr runs (apt-get install mosquitto-clients)");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["res"], 0, "{reply}");
    assert!(
        reply["data"]["uuid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{reply}"
    );
}

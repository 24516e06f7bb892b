//! `dynreg register` against `dynreg serve`, both as child processes.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};

use serde_json::Value;

mod common;
use common::bin;

struct Serve {
    child: Child,
    port: u16,
    pid: String,
    secret: String,
    other_secret: String,
    dir: PathBuf,
    /// The server's log lines after "dynreg serving".
    log: std::sync::mpsc::Receiver<String>,
    _t: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Serve {
    serve_with(&[])
}

fn serve_with(extra: &[&str]) -> Serve {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let create = |args: &[&str]| -> Value {
        let out = bin()
            .args([
                "--data-dir",
                "data",
                "--json",
                "product",
                "create",
                "--mode",
                "generate",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p = create(&["--name", "Plug"]);
    let other = create(&["--name", "Other", "--pid", "other"]);
    let port = common::free_port();
    let mut child = bin()
        .args([
            "--data-dir",
            "data",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--connections-per-ip",
            "0",
        ])
        .args(extra)
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    common::wait_for(&rx, "dynreg serving");
    Serve {
        child,
        port,
        pid: p["pid"].as_str().unwrap().to_owned(),
        secret: p["secret"].as_str().unwrap().to_owned(),
        other_secret: other["secret"].as_str().unwrap().to_owned(),
        dir,
        log: rx,
        _t: t,
    }
}

fn register(s: &Serve, extra: &[&str]) -> Output {
    bin()
        .args([
            "--json",
            "register",
            "--port",
            &s.port.to_string(),
            "--pid",
            &s.pid,
            "--timeout",
            "5",
        ])
        .args(extra)
        .env("DYNREG_SECRET", &s.secret)
        .current_dir(&s.dir)
        .output()
        .unwrap()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn options_idempotency_and_state() {
    let s = serve();
    let a = json(&register(&s, &["--unique", "dev-1"]));
    assert_eq!(a["pid"], s.pid.as_str());
    assert_eq!(a["unique"], "dev-1");
    assert_eq!(a["secret"].as_str().unwrap().len(), 32);
    let again = json(&register(
        &s,
        &[
            "--unique",
            "dev-1",
            "--mqtt",
            "3",
            "--sign-method",
            "hmacSha1",
        ],
    ));
    assert_eq!(
        again["uuid"], a["uuid"],
        "same unique, same triplet, over 3.1.1 and SHA1 too"
    );
    // Every re-registration is logged with its source address.
    let lines = common::wait_for(&s.log, "re-registered");
    let line = lines.iter().find(|l| l.contains("re-registered")).unwrap();
    assert!(
        line.contains("peer=127.0.0.1:") && line.contains("unique=\"dev-1\""),
        "{line}"
    );
    let generated = json(&register(&s, &[]));
    assert_eq!(
        generated["unique"].as_str().unwrap().len(),
        36,
        "a UUID unique is generated and printed"
    );
    let moved = json(&register(
        &s,
        &[
            "--unique",
            "mv",
            "--barcode",
            "B-1",
            "--replace-pid",
            "other",
            "--replace-secret",
            &s.other_secret,
        ],
    ));
    assert_eq!(moved["pid"], "other");
    let device = bin()
        .args([
            "--data-dir",
            "data",
            "--json",
            "device",
            "show",
            "--pid",
            &s.pid,
            "--unique",
            "mv",
        ])
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let device = json(&device);
    assert_eq!(
        (device["pid"].as_str(), device["barcode"].as_str()),
        (Some("other"), Some("B-1"))
    );

    // --state: written 0600, then reused without the network.
    let state = s.dir.join("device.json");
    let first = json(&register(&s, &["--state", "device.json"]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let offline = bin()
        .args([
            "--json",
            "register",
            "--port",
            "1",
            "--pid",
            &s.pid,
            "--state",
            "device.json",
            "--attempts",
            "1",
        ])
        .env("DYNREG_SECRET", "irrelevant")
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let from_state = json(&offline);
    assert_eq!(
        (from_state["uuid"].clone(), from_state["source"].as_str()),
        (first["uuid"].clone(), Some("state"))
    );
    // --force goes to the network with the stored unique: same triplet.
    let forced = json(&register(&s, &["--state", "device.json", "--force"]));
    assert_eq!(
        (forced["uuid"].clone(), forced["source"].as_str()),
        (first["uuid"].clone(), Some("network"))
    );
    // The state file answers only for its own device: another pid or unique is a
    // usage error (exit 2) that says so, with or without --force.
    for extra in [
        vec!["--unique", "someone-else"],
        vec!["--unique", "someone-else", "--force"],
    ] {
        let mut args = vec!["--state", "device.json"];
        args.extend(extra);
        let o = register(&s, &args);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("answers only for its own device"), "{err}");
    }
    let o = bin()
        .args([
            "register",
            "--port",
            "1",
            "--pid",
            "other",
            "--state",
            "device.json",
        ])
        .env("DYNREG_SECRET", "irrelevant")
        .current_dir(&s.dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("of pid {}, not", s.pid)));
}

/// Accepts connections on a fake MQTT 3.1.1 server that refuses every CONNECT (not
/// authorized) and counts them.
fn refusing_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                if stream.read(&mut buf).unwrap_or(0) > 0 {
                    let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x05]);
                }
                let _ = stream.read(&mut buf);
            });
        }
    });
    (port, count)
}

#[test]
fn attempts_one_opens_exactly_one_connection() {
    let (port, count) = refusing_server();
    let o = bin()
        .args([
            "register",
            "--port",
            &port.to_string(),
            "--pid",
            "p",
            "--secret",
            "s",
            "--mqtt",
            "3",
            "--attempts",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn named_environments_come_from_the_config_file() {
    let s = serve();
    std::fs::write(
        s.dir.join("dynreg.toml"),
        format!(
            "[env.test]\nhost = \"127.0.0.1\"\nport = {}\n\n[env.formal]\nhost = \"127.0.0.1\"\nport = 1\n",
            s.port
        ),
    )
    .unwrap();
    let t = json(
        &bin()
            .args([
                "--json", "register", "--env", "test", "--pid", &s.pid, "--unique", "env-dev",
            ])
            .env("DYNREG_SECRET", &s.secret)
            .current_dir(&s.dir)
            .output()
            .unwrap(),
    );
    assert_eq!(t["unique"], "env-dev");
    // The formal profile points elsewhere (nothing listens on port 1).
    let o = bin()
        .args([
            "register",
            "--env",
            "formal",
            "--pid",
            &s.pid,
            "--attempts",
            "1",
        ])
        .env("DYNREG_SECRET", &s.secret)
        .current_dir(&s.dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:1"));
    // An environment the file does not define is a usage error naming what it has.
    let o = bin()
        .args(["register", "--env", "staging", "--pid", &s.pid])
        .env("DYNREG_SECRET", &s.secret)
        .current_dir(&s.dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no [env.staging] in dynreg.toml") && err.contains("formal, test"),
        "{err}"
    );
}

#[test]
fn exit_codes() {
    let s = serve();
    let code = |o: Output| o.status.code();
    // Registration refused (res 4011: wrong replacement secret).
    assert_eq!(
        code(register(
            &s,
            &[
                "--unique",
                "x",
                "--replace-pid",
                "other",
                "--replace-secret",
                "no"
            ]
        )),
        Some(4)
    );
    // CONNECT refused: wrong product secret.
    let o = bin()
        .args([
            "register",
            "--port",
            &s.port.to_string(),
            "--pid",
            &s.pid,
            "--secret",
            "wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{} refused the CONNECT: the server refused the credentials (a wrong product secret, this machine's clock off", s.port)),
        "in words, with the server: {err}"
    );
    // Under --json the error is one JSON document on stderr, and stdout is empty.
    let o = bin()
        .args([
            "--json",
            "register",
            "--port",
            &s.port.to_string(),
            "--pid",
            "nope",
            "--secret",
            "x",
            "--attempts",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty());
    let doc: Value = serde_json::from_slice(&o.stderr).expect("a JSON error on stderr");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("refused the product (unknown pid"),
        "{doc}"
    );
    // Network error: nothing listens.
    let closed = common::free_port().to_string();
    let o = bin()
        .args([
            "register",
            "--port",
            &closed,
            "--pid",
            "p",
            "--secret",
            "s",
            "--attempts",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6));
    // Timeout: a listener that never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let o = bin()
        .args([
            "register",
            "--port",
            &port,
            "--pid",
            "p",
            "--secret",
            "s",
            "--attempts",
            "1",
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    // Bad arguments.
    let o = bin()
        .args(["register", "--pid", "p", "--secret", "s", "--mqtt", "4"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    drop(silent);
}

#[test]
fn batch_of_500_with_concurrency_50() {
    // Five hundred devices of one product at once sign the same few ts values, so share
    // credentials: all are served at the server's defaults.
    let s = serve_with(&[]);
    let mut csv = String::from("unique,barcode\n");
    for i in 0..500 {
        csv.push_str(&format!("b{i},BC{i}\n"));
    }
    std::fs::write(s.dir.join("batch.csv"), csv).unwrap();
    let o = register(
        &s,
        &[
            "--batch",
            "batch.csv",
            "--concurrency",
            "50",
            "--out",
            "result.csv",
        ],
    );
    let summary = json(&o);
    assert_eq!(
        (summary["registered"].as_u64(), summary["failed"].as_u64()),
        (Some(500), Some(0))
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(s.dir.join("result.csv"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "the result holds device secrets"
        );
    }
    let result = std::fs::read_to_string(s.dir.join("result.csv")).unwrap();
    let mut uuids = std::collections::HashSet::new();
    for line in result.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[2], "registered", "{line}");
        assert!(uuids.insert(f[4].to_owned()));
    }
    assert_eq!(uuids.len(), 500);
    // A malformed batch names the line.
    std::fs::write(s.dir.join("bad.csv"), "unique\nok1\nbad_one\n").unwrap();
    let o = register(&s, &["--batch", "bad.csv"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.csv line 3"));
}

#[test]
fn over_tls_with_a_ca_file() {
    let t = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (t.path().join("cert.pem"), t.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let tls_port = common::free_port().to_string();
    let s = serve_with(&[
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let o = bin()
        .args([
            "--json",
            "register",
            "--port",
            &tls_port,
            "--pid",
            &s.pid,
            "--tls",
            "--ca",
            cert.to_str().unwrap(),
        ])
        .env("DYNREG_SECRET", &s.secret)
        .output()
        .unwrap();
    assert_eq!(json(&o)["pid"], s.pid.as_str());
    // A plain client on the TLS port is told that the port speaks TLS.
    let o = bin()
        .args([
            "register",
            "--port",
            &tls_port,
            "--pid",
            &s.pid,
            "--attempts",
            "1",
            "--timeout",
            "5",
        ])
        .env("DYNREG_SECRET", &s.secret)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("add --tls"), "{err}");
}

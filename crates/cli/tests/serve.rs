//! `dynreg serve`: configuration validated before anything is bound, and a graceful
//! shutdown on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

fn serve(dir: &Path, args: &[&str]) -> Command {
    let mut c = common::bin();
    c.arg("serve").args(args).current_dir(dir);
    c
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let out = serve(dir, args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let err = refused(d, &["--listen", "127.0.0.1:0", "--max-packet-size", "10"]);
    assert!(
        err.contains("mqtt.max_packet_size = 10") && err.contains("--max-packet-size"),
        "{err}"
    );
    std::fs::write(d.join("dynreg.toml"), "[mqtt]\nidle_timeout_sec = 5\n").unwrap();
    let err = refused(d, &["--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("dynreg.toml") && err.contains("idle_timeout_sec"),
        "{err}"
    );
    std::fs::write(d.join("dynreg.toml"), "[mqtt]\nlisten = \"nowhere\"\n").unwrap();
    assert!(refused(d, &[]).contains("mqtt.listen = \"nowhere\""));
    std::fs::remove_file(d.join("dynreg.toml")).unwrap();
    let err = refused(d, &["--listen", "127.0.0.1:0", "--tls-cert", "c.pem"]);
    assert!(err.contains("tls.key"), "{err}");
    let err = refused(
        d,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ],
    );
    assert!(err.contains("c.pem"), "{err}");
    let err = refused(d, &["--config", "missing.toml"]);
    assert!(err.contains("missing.toml"), "{err}");
    // Nothing was created: the configuration is checked before the store is opened.
    assert!(!d.join("dynreg-data").exists());
}

#[test]
fn serves_and_stops_gracefully_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("dynreg.toml"),
        "data_dir = \"from-toml\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = serve(d, &["--demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    let mut lines = common::wait_for(&rx, "dynreg serving registrations");
    assert!(
        d.join("from-toml/dynreg.sqlite3").exists(),
        "data_dir from the TOML file"
    );
    assert!(common::sigterm(&child));
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
    }
    assert!(
        lines.iter().any(|l| l.contains("store closed")),
        "{lines:?}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("mosquitto_rr") && out.contains("register_p"),
        "{out}"
    );
    assert!(
        !out.contains("-p 0 "),
        "the demo command names the port actually bound: {out}"
    );
}

#[test]
fn one_address_holding_idle_connections_cannot_lock_others_out() {
    // This test holds 2,000 connections itself.
    let limit = rlimit::increase_nofile_limit(8192).unwrap();
    if limit < 4096 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED one_address_holding_idle_connections_cannot_lock_others_out: open-file limit {limit} < 4096"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let created = common::bin()
        .args(["--json", "--data-dir", "data", "product", "create"])
        .args(["--name", "FD", "--pid", "fd", "--mode", "generate"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let product: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The server under a 1,024 open-file limit, as the attack found it, at its default
    // CONNECT policy (the load generator's devices sign the current second and share
    // credentials).
    let bin = common::bin();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(bin.get_program())
        .args(["--data-dir", "data", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .envs(bin.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("DYNREG_CONFIG")
        .env_remove("DYNREG_DATA_DIR")
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    let lines = common::wait_for(&rx, "dynreg serving");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("max_connections lowered to fit")),
        "{lines:?}"
    );
    // 2,000 connections from 127.0.0.1 that never send CONNECT.
    let idle: Vec<_> = (0..2000)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Devices from other addresses (the load generator connects from 127.1.x.y)
    // still register.
    let out = common::bin()
        .args([
            "--json",
            "bench",
            "--port",
            &port.to_string(),
            "--pid",
            "fd",
        ])
        .args(["-n", "20", "-c", "2", "--timeout", "5"])
        .env("DYNREG_SECRET", product["secret"].as_str().unwrap())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["completed"], 20, "{report}");
    drop(idle);
    common::sigterm(&child);
    let _ = child.wait();
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        rest.push(l);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains("not sent their CONNECT yet") && l.contains("127.0.0.1")),
        "the refused connections are logged: {rest:?}"
    );
}

/// One HTTP/1.0 request to `addr`: the status and body.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nhost: x\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_owned())
}

#[test]
fn json_logs_and_the_admin_api_metrics_and_health_on_the_http_server() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let err = refused(d, &["--listen", "127.0.0.1:0", "--log-format", "xml"]);
    assert!(
        err.contains("log_format `xml`") && err.contains("--log-format"),
        "{err}"
    );
    let created = common::bin()
        .args(["--json", "--data-dir", "data", "token", "create"])
        .args(["--name", "prometheus", "--scope", "read"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let token: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let mut child = serve(
        d,
        &[
            "--data-dir",
            "data",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let rx = common::stderr_lines(&mut child);
    let lines = common::wait_for(&rx, "dynreg serving registrations");
    let serving: serde_json::Value =
        serde_json::from_str(lines.last().unwrap()).unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert_eq!(serving["level"], "INFO", "{serving}");
    let http = serving["http"].as_str().unwrap().to_owned();

    assert_eq!(http_get(&http, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(http_get(&http, "/readyz", None), (200, "ready\n".into()));
    assert_eq!(http_get(&http, "/metrics", None).0, 401);
    let (status, metrics) = http_get(&http, "/metrics", Some(&token));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE dynreg_open_connections gauge"),
        "{metrics}"
    );
    let (status, products) = http_get(&http, "/api/v1/products", Some(&token));
    assert_eq!((status, products.as_str()), (200, "[]"));

    assert!(common::sigterm(&child));
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_low_pool_is_reported_with_no_event_destination() {
    // Before, only the outbox's deliverer checked the pools: with no webhook and no
    // broker events, `pool.low` never fired.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let run = |args: &[&str]| {
        let o = common::bin()
            .args(["--data-dir", "data"])
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    run(&[
        "product",
        "create",
        "--name",
        "Low",
        "--pid",
        "low",
        "--low-water",
        "5",
    ]);
    run(&[
        "pool", "generate", "--pid", "low", "--count", "3", "--out", "pool.csv",
    ]);
    let mut child = serve(d, &["--data-dir", "data", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    let lines = common::wait_for(&rx, "pool running low");
    assert!(lines.iter().any(|l| l.contains("low")), "{lines:?}");
    let audit = run(&["--json", "audit", "list", "--pid", "low"]);
    assert!(
        audit.contains("pool.low") && audit.contains(r#"\"free\":3"#),
        "{audit}"
    );
    common::sigterm(&child);
    let _ = child.wait();
}

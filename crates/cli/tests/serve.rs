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
    let mut lines = common::wait_for(&rx, "dynreg serving MQTT registrations");
    assert!(
        d.join("from-toml/dynreg.sqlite3").exists(),
        "data_dir from the TOML file"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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

//! The admin API against its own OpenAPI document, fuzzed by schemathesis (from PyPI)
//! against a real `dynreg serve`: no 5xx, and every response (status, content type,
//! body) as the document says.
//!
//! Needs `schemathesis` on the PATH (or its path in `DYNREG_TEST_SCHEMATHESIS`); says
//! SKIPPED without it, except under `CI=true`, where `.ci/run` installs it and its
//! absence is a failure. `DYNREG_TEST_SCHEMATHESIS_SECS` sets the time budget
//! (default 60 s).

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

fn schemathesis() -> Option<String> {
    let program =
        std::env::var("DYNREG_TEST_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let found = Command::new(&program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then_some(program)
}

#[test]
#[cfg_attr(
    no_schemathesis,
    ignore = "no schemathesis on the PATH (pip install schemathesis)"
)]
fn the_admin_api_answers_as_its_openapi_document_says() {
    let Some(program) = schemathesis() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the schemathesis test: install it (pip install schemathesis)"
        );
        // Straight to stderr (not captured): the run's summary counts SKIPPED lines.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_admin_api_answers_as_its_openapi_document_says: no schemathesis on the PATH (pip install schemathesis)"
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let run = |args: &[&str]| common::json(d, args);
    // Data for the operations that name a product. Its MAC range is small, so that a
    // fuzzed generation of many triplets is refused at once.
    run(&[
        "product",
        "create",
        "--name",
        "Fuzzed",
        "--pid",
        "P1",
        "--mode",
        "generate",
        "--mac-range",
        "02:00:00:00:00:00-02:00:00:00:00:FF",
    ]);
    // A name no fuzzed path will hit: DELETE /tokens/{name} must not revoke it.
    let token = run(&[
        "token",
        "create",
        "--name",
        "schemathesis-7c0f1d9e",
        "--scope",
        "admin",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut child = common::bin()
        .args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "warn,dynreg=info")
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    let lines = common::wait_for(&rx, "dynreg serving registrations");
    let serving: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let http = serving["http"].as_str().unwrap().to_owned();
    // Drain the server's log so that it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});

    // Fixed path values, so that operations reach existing data. Two operations are
    // left to crates/http/tests/api.rs: generating up to the schema's 10,000,000
    // triplets (the coverage phase tries the bounds) takes minutes in a debug build,
    // and the registration stream never ends by design.
    let config = d.join("schemathesis.toml");
    std::fs::write(
        &config,
        r#"
[parameters]
"path.pid" = "P1"
"path.unique" = "device-1"
"path.name" = "nobody"

[[operations]]
include-path = "/products/{pid}/pool/generate"
enabled = false

[[operations]]
include-path = "/registrations/stream"
enabled = false
"#,
    )
    .unwrap();
    let secs = std::env::var("DYNREG_TEST_SCHEMATHESIS_SECS").unwrap_or_else(|_| "60".into());
    let out = Command::new(&program)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{http}/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing", "--max-time", &secs])
        .args(["--seed", "7"])
        .current_dir(d)
        .output()
        .unwrap();
    common::sigterm(&child);
    let _ = child.wait();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(report.contains("passed"), "{report}");
    // What was tried, for the log.
    let summary = report.find("SUMMARY").map_or("", |i| &report[i..]);
    let _ = writeln!(std::io::stderr(), "{summary}");
}

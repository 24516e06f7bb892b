//! The web console end to end in headless Chromium: Debian's `chromium` driven by
//! `playwright-core` from npm (`tests/console/e2e.mjs`; never a downloaded browser).
//! This test starts `dynreg serve`, makes an admin and a read token, runs the script,
//! and registers a device with the SDK (`dynreg register`) when the script asks. The
//! script signs in, creates a product and copies its secret, generates and imports
//! pools, watches the registration appear on the dashboard without a reload, finds
//! the device by barcode and revokes it, checks every page at 390 px wide, and checks
//! that a read token sees no button it cannot use and cannot revoke. It saves a
//! screenshot of each page into docs/console/.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or DYNREG_TEST_CHROMIUM) and
//! `npm ci` in tests/console (`.ci/run` does all three); without them the test says
//! SKIPPED (under CI=true it fails).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// What the test needs, or why it cannot run.
fn tools(script_dir: &Path) -> Result<PathBuf, String> {
    let chromium = std::env::var_os("DYNREG_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.is_file() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set DYNREG_TEST_CHROMIUM)",
            chromium.display()
        ));
    }
    if !on_path("node") {
        return Err("node is not installed".into());
    }
    if !script_dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is not installed (npm ci in {})",
            script_dir.display()
        ));
    }
    Ok(chromium)
}

#[test]
#[cfg_attr(
    no_chromium,
    ignore = "no Chromium, node or playwright-core (apt-get install chromium; npm ci in crates/cli/tests/console)"
)]
fn the_console_signs_in_manages_products_and_devices_and_shows_registrations_live() {
    let test = "the_console_end_to_end";
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let chromium = match tools(&script_dir) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why}"
            );
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            return;
        }
    };
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let token = |name: &str, scope: &str| {
        common::json(d, &["token", "create", "--name", name, "--scope", scope])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (admin, read) = (
        token("console-admin", "admin"),
        token("console-reader", "read"),
    );
    let mut server = common::bin()
        .args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::stderr_lines(&mut server);
    let lines = common::wait_for(&log, "dynreg serving registrations");
    std::thread::spawn(move || while log.recv().is_ok() {});
    let serving: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let mqtt_port = serving["mqtt"]
        .as_str()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let http = serving["http"].as_str().unwrap().to_owned();

    let mut node = Command::new("node")
        .arg(script_dir.join("e2e.mjs"))
        .env("BASE_URL", format!("http://{http}"))
        .env("ADMIN_TOKEN", &admin)
        .env("READ_TOKEN", &read)
        .env("CHROMIUM", &chromium)
        .env("SHOTS", &shots)
        .current_dir(&script_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_script = node.stdin.take().unwrap();
    let mut ok = false;
    for line in BufReader::new(node.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("e2e: {line}");
        if let Some(rest) = line.strip_prefix("REGISTER ") {
            let [pid, secret, barcode]: [&str; 3] =
                rest.split(' ').collect::<Vec<_>>().try_into().unwrap();
            let out = common::bin()
                .args(["--json", "register", "--port", &mqtt_port, "--pid", pid])
                .args(["--unique", "console-lamp-1", "--barcode", barcode])
                .env("DYNREG_SECRET", secret)
                .current_dir(d)
                .output()
                .unwrap();
            let reply = if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                format!("REGISTERED {}\n", v["uuid"].as_str().unwrap())
            } else {
                format!("FAILED {}\n", String::from_utf8_lossy(&out.stderr).trim())
            };
            to_script.write_all(reply.as_bytes()).unwrap();
        }
        ok |= line == "OK";
    }
    drop(to_script);
    let status = node.wait().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        status.success() && ok,
        "the console's end-to-end script failed"
    );
}

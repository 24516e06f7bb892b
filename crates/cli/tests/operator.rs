//! The operator's traps (issue: operator safety): secret files, claimed outputs,
//! interrupted runs, the wrong store, database errors, imports, lookups, rotation,
//! product changes, withdrawal, environments.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

/// `dynreg` in `dir`, with no data dir given (the config file or the default decides).
fn at(dir: &Path, args: &[&str]) -> Output {
    common::bin()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run dynreg")
}

/// `dynreg --data-dir data ARGS` in `dir`.
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--data-dir", "data"];
    a.extend_from_slice(args);
    at(dir, &a)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).expect("one JSON document")
}

/// The stderr of a run that must exit with `code`.
fn fails_with(o: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    err
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `dynreg ARGS` through `sh` with umask 000, so that only dynreg's own modes count.
fn with_umask_000(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_dynreg"))
        .args(["--data-dir", "data"])
        .args(args)
        .current_dir(dir)
        .env_remove("DYNREG_DATA_DIR")
        .env_remove("DYNREG_MASTER_KEY")
        .env_remove("DYNREG_CONFIG");
    c.output().unwrap()
}

fn product(dir: &Path, extra: &[&str]) -> Value {
    let mut a = vec!["--json", "product", "create", "--name", "Plug"];
    a.extend_from_slice(extra);
    json(&run(dir, &a))
}

#[test]
fn files_with_secrets_are_private_whatever_the_umask() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    product(d, &["--pid", "plug", "--mode", "generate"]);
    for (args, file) in [
        (
            vec![
                "pool", "generate", "--pid", "plug", "--count", "3", "--out", "pool.csv",
            ],
            "pool.csv",
        ),
        (
            vec!["device", "bulk-load", "--pid", "plug", "--count", "2"],
            "",
        ),
        (
            vec![
                "device",
                "export",
                "--pid",
                "plug",
                "--with-secrets",
                "--out",
                "devices.csv",
            ],
            "devices.csv",
        ),
        (
            vec![
                "product",
                "export",
                "plug",
                "--with-secret",
                "--out",
                "plug.json",
            ],
            "plug.json",
        ),
    ] {
        ok(&with_umask_000(d, &args));
        if !file.is_empty() {
            assert_eq!(mode(&d.join(file)), 0o600, "{file}");
        }
    }
    // No partial file is left beside a finished one.
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `pool generate --pid plug --count COUNT --out big.csv` in `dir`, started.
fn generate_into_big_csv(dir: &Path, count: &str) -> std::process::Child {
    common::bin()
        .args([
            "--data-dir",
            "data",
            "pool",
            "generate",
            "--pid",
            "plug",
            "--count",
        ])
        .args([count, "--out", "big.csv"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_generators_racing_for_one_file_one_wins_and_the_loser_commits_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    product(d, &["--pid", "plug"]);
    let (big, small) = (
        generate_into_big_csv(d, "20000"),
        generate_into_big_csv(d, "10"),
    );
    let (big, small) = (
        big.wait_with_output().unwrap(),
        small.wait_with_output().unwrap(),
    );
    let (winner, loser, rows) = match (big.status.success(), small.status.success()) {
        (true, false) => (big, small, 20_000),
        (false, true) => (small, big, 10),
        other => panic!(
            "exactly one must win: {other:?}\n{}\n{}",
            String::from_utf8_lossy(&big.stderr),
            String::from_utf8_lossy(&small.stderr)
        ),
    };
    drop(winner);
    let err = fails_with(&loser, 1);
    assert!(err.contains("big.csv exists"), "names the path: {err}");
    let csv = std::fs::read_to_string(d.join("big.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows + 1, "the winner's file, whole");
    let stats = json(&run(d, &["--json", "pool", "stats", "--pid", "plug"]));
    assert_eq!(
        stats["free"].as_u64(),
        Some(rows as u64),
        "nothing of the loser"
    );
}

#[test]
fn sigterm_during_generate_leaves_no_file_behind() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    product(d, &["--pid", "plug"]);
    let child = generate_into_big_csv(d, "2000000");
    // Wait until the output is claimed, then a little, then stop it.
    let start = Instant::now();
    while !d.join(".big.csv.partial").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(common::sigterm(&child));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted: removed"), "{err}");
    assert!(!d.join("big.csv").exists(), "the claim is removed");
    assert!(
        !d.join(".big.csv.partial").exists(),
        "the partial file is removed"
    );
}

#[test]
fn reading_commands_refuse_a_missing_data_dir_and_name_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for args in [
        vec!["--data-dir", "tpyo", "product", "list"],
        vec!["--data-dir", "tpyo", "device", "list"],
        vec!["--data-dir", "tpyo", "pool", "stats", "--pid", "x"],
    ] {
        let err = fails_with(&at(d, &args), 1);
        assert!(
            err.contains("data dir tpyo does not exist") && err.contains("dynreg init"),
            "{err}"
        );
        assert!(!d.join("tpyo").exists(), "nothing created");
    }
    // A data dir without a database is refused too.
    std::fs::create_dir(d.join("empty")).unwrap();
    let err = fails_with(&at(d, &["--data-dir", "empty", "product", "list"]), 1);
    assert!(err.contains("empty holds no dynreg database"), "{err}");
    assert!(!d.join("empty/master.key").exists());
    // A file where the data dir should be.
    std::fs::write(d.join("plug.csv"), "x").unwrap();
    let err = fails_with(&at(d, &["--data-dir", "plug.csv", "product", "list"]), 1);
    assert!(
        err.contains("data dir plug.csv is a file, not a directory"),
        "{err}"
    );
    // `init` creates one (and says where); then reading works.
    let out = ok(&at(d, &["--data-dir", "new", "init"]));
    assert!(out.contains("store created: new/dynreg.sqlite3"), "{out}");
    assert!(ok(&at(d, &["--data-dir", "new", "init"])).contains("a store exists"));
    let o = at(d, &["--data-dir", "new", "product", "list"]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("store: new/dynreg.sqlite3"),
        "says which store"
    );
}

#[test]
fn every_command_reads_the_config_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("dynreg.toml"),
        "data_dir = \"plant-store\"\nmaster_key_file = \"keys/plant.key\"\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("keys")).unwrap();
    let o = at(
        d,
        &[
            "--json", "product", "create", "--name", "Plug", "--pid", "plug",
        ],
    );
    ok(&o);
    assert!(d.join("plant-store/dynreg.sqlite3").exists());
    assert!(d.join("keys/plant.key").exists(), "the configured key file");
    assert!(!d.join("dynreg-data").exists(), "not the default");
    let o = at(d, &["product", "list"]);
    assert!(ok(&o).contains("plug"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("store: plant-store/dynreg.sqlite3 (data dir from data_dir in the config file, config dynreg.toml)"),
        "{err}"
    );
    // --config names another file, read the same way by every command.
    std::fs::write(d.join("other.toml"), "data_dir = \"other-store\"\n").unwrap();
    let err = fails_with(&at(d, &["--config", "other.toml", "device", "list"]), 1);
    assert!(err.contains("data dir other-store does not exist"), "{err}");
    // A key in the file that is not known is named.
    std::fs::write(d.join("bad.toml"), "data_dri = \"x\"\n").unwrap();
    let err = fails_with(&at(d, &["--config", "bad.toml", "product", "list"]), 1);
    assert!(err.contains("data_dri"), "{err}");
}

#[test]
fn database_errors_name_the_database() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/dynreg.sqlite3"), vec![b'x'; 8192]).unwrap();
    std::fs::write(d.join("data/master.key"), "00".repeat(32)).unwrap();
    let err = fails_with(&run(d, &["product", "list"]), 1);
    assert!(
        err.contains("database data/dynreg.sqlite3") && err.contains("not a database"),
        "{err}"
    );
    // A database this user cannot write is refused before anything is printed. Root
    // writes read-only files anyway, so as root the command runs as `nobody`.
    let t2 = tempfile::tempdir().unwrap();
    let d2 = t2.path();
    product(d2, &["--pid", "plug"]);
    let db = d2.join("data/dynreg.sqlite3");
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::read_to_string(d2.join("data/master.key")).unwrap();
    let root = std::fs::OpenOptions::new().write(true).open(&db).is_ok()
        && Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut c = if root {
        for dir in [d2, &d2.join("data")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_dynreg"));
        c
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_dynreg"))
    };
    let o = c
        .args(["--data-dir", "data", "product", "list"])
        .env("DYNREG_MASTER_KEY", key.trim())
        .env_remove("DYNREG_DATA_DIR")
        .env_remove("DYNREG_CONFIG")
        .current_dir(d2)
        .output()
        .unwrap();
    let err = fails_with(&o, 1);
    assert!(o.stdout.is_empty(), "no table before the error");
    assert!(
        err.contains("database data/dynreg.sqlite3 cannot be written"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "said once: {err}");
}

#[test]
fn serve_names_the_address_it_cannot_bind_and_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let err = fails_with(
        &at(d, &["--data-dir", "fresh", "serve", "--listen", &addr]),
        1,
    );
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen"),
        "{err}"
    );
    assert!(!err.contains("TLS") && !err.contains("tls"), "{err}");
    assert!(!d.join("fresh").exists(), "nothing created");
}

#[test]
fn rotation_with_grace_update_delete_export_import() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = product(d, &["--pid", "plug", "--mode", "generate"]);
    let old = p["secret"].as_str().unwrap().to_owned();
    // Rotation keeps the old secret for the grace (default 90 days).
    let r = json(&run(d, &["--json", "product", "rotate-secret", "plug"]));
    assert_ne!(r["secret"], old.as_str());
    let shown = ok(&run(d, &["product", "show", "plug"]));
    assert!(
        shown.contains("previous secret") && shown.contains("works until"),
        "{shown}"
    );
    ok(&run(d, &["product", "retire-secret", "plug"]));
    assert!(ok(&run(d, &["product", "show", "plug"])).contains("retired"));
    let err = fails_with(&run(d, &["product", "retire-secret", "plug"]), 1);
    assert!(err.contains("nothing to retire"), "{err}");
    let err = fails_with(
        &run(d, &["product", "rotate-secret", "plug", "--grace", "soon"]),
        2,
    );
    assert!(err.contains("--grace"), "{err}");

    // Every field of a product can change.
    let u = json(&run(
        d,
        &[
            "--json",
            "product",
            "update",
            "plug",
            "--name",
            "Smart plug",
            "--mode",
            "pool-then-generate",
            "--mac-range",
            "02:00:00:00:00:00-02:00:00:00:00:FF",
            "--ts-window",
            "60",
            "--reregistration",
            "never",
        ],
    ));
    assert_eq!(
        (
            u["name"].as_str(),
            u["mode"].as_str(),
            u["mac_range"].as_str(),
            u["ts_window"].as_u64(),
            u["reregistration"].as_str()
        ),
        (
            Some("Smart plug"),
            Some("pool-then-generate"),
            Some("02:00:00:00:00:00-02:00:00:00:00:FF"),
            Some(60),
            Some("never")
        )
    );
    let err = fails_with(
        &run(d, &["product", "update", "plug", "--ts-window", "0"]),
        1,
    );
    assert!(err.contains("ts window 0"), "{err}");

    // Export the definition and import it into another store (the formal one).
    ok(&run(
        d,
        &[
            "product",
            "export",
            "plug",
            "--with-secret",
            "--out",
            "plug.json",
        ],
    ));
    let def: Value = serde_json::from_slice(&std::fs::read(d.join("plug.json")).unwrap()).unwrap();
    assert!(def.get("secret").is_some());
    let imported = json(&at(
        d,
        &[
            "--data-dir",
            "formal",
            "--json",
            "product",
            "import",
            "plug.json",
        ],
    ));
    assert_eq!(
        (imported["pid"].as_str(), imported["mac_range"].as_str()),
        (Some("plug"), Some("02:00:00:00:00:00-02:00:00:00:00:FF"))
    );
    let here = json(&run(
        d,
        &["--json", "product", "show", "plug", "--reveal-secret"],
    ));
    assert_eq!(
        imported["secret"], here["secret"],
        "the same secret, as asked"
    );
    let no_secret = ok(&run(d, &["product", "export", "plug"]));
    assert!(!no_secret.contains("secret"), "{no_secret}");
    std::fs::write(d.join("plug2.json"), &no_secret).unwrap();
    let fresh = json(&at(
        d,
        &[
            "--data-dir",
            "formal",
            "--json",
            "product",
            "import",
            "plug2.json",
            "--pid",
            "plug-2",
        ],
    ));
    assert_ne!(fresh["secret"], here["secret"], "a new secret without one");
    let err = fails_with(
        &run(d, &["product", "export", "plug", "--out", "plug.json"]),
        1,
    );
    assert!(err.contains("plug.json exists"), "{err}");

    // Delete: refused with devices unless forced; asks unless --yes.
    ok(&run(
        d,
        &["device", "bulk-load", "--pid", "plug", "--count", "2"],
    ));
    let err = fails_with(&run(d, &["product", "delete", "plug", "--yes"]), 1);
    assert!(err.contains("2 registered devices"), "{err}");
    let err = fails_with(&run(d, &["product", "delete", "plug", "--force"]), 2);
    assert!(err.contains("--yes"), "no terminal to ask on: {err}");
    let gone = json(&run(
        d,
        &["--json", "product", "delete", "plug", "--force", "--yes"],
    ));
    assert_eq!(gone["devices"], 2);
    fails_with(&run(d, &["product", "show", "plug"]), 1);
}

#[test]
fn withdraw_lookups_since_and_history_after_reset() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    product(
        d,
        &[
            "--pid",
            "plug",
            "--mac-range",
            "02:00:00:00:00:00-02:00:00:00:00:FF",
        ],
    );
    ok(&run(
        d,
        &[
            "pool",
            "generate",
            "--pid",
            "plug",
            "--count",
            "5",
            "--barcode-prefix",
            "PL-",
            "--out",
            "pool.csv",
        ],
    ));
    let csv = std::fs::read_to_string(d.join("pool.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Withdraw two by barcode and one by uuid from a file.
    std::fs::write(d.join("leaked.csv"), format!("uuid\n{}\n", rows[2][0])).unwrap();
    let err = fails_with(
        &run(
            d,
            &["pool", "withdraw", "--pid", "plug", "--barcode", rows[0][3]],
        ),
        2,
    );
    assert!(err.contains("add --yes"), "{err}");
    let err = fails_with(
        &run(
            d,
            &[
                "pool",
                "withdraw",
                "--pid",
                "plug",
                "--barcode",
                "PL-nope",
                "--yes",
            ],
        ),
        1,
    );
    assert!(
        err.contains("no triplet with barcode `PL-nope`") && err.contains("nothing was withdrawn"),
        "{err}"
    );
    let w = json(&run(
        d,
        &[
            "--json",
            "pool",
            "withdraw",
            "--pid",
            "plug",
            "--barcode",
            rows[0][3],
            "--barcode",
            rows[1][3],
            "--file",
            "leaked.csv",
            "--yes",
        ],
    ));
    assert_eq!(w["withdrawn"], 3);
    let stats = json(&run(d, &["--json", "pool", "stats", "--pid", "plug"]));
    assert_eq!(
        (stats["free"].as_u64(), stats["withdrawn"].as_u64()),
        (Some(2), Some(3))
    );

    // A device registered from the pool, found by what a returns desk has.
    ok(&run(d, &["product", "update", "plug", "--mode", "pool"]));
    ok(&run(
        d,
        &["device", "bulk-load", "--pid", "plug", "--count", "1"],
    ));
    let dev = json(&run(
        d,
        &[
            "--json", "device", "show", "--pid", "plug", "--unique", "bulk-0",
        ],
    ));
    let uuid = dev["uuid"].as_str().unwrap().to_owned();
    let by_mac_missing = run(d, &["device", "show", "--mac", "02-00-00-00-00-AA"]);
    assert!(fails_with(&by_mac_missing, 1).contains("no device holds a triplet with MAC"));
    // --since.
    let all = json(&run(d, &["--json", "device", "list", "--since", "1h"]));
    assert_eq!(all.as_array().unwrap().len(), 1);
    let none = json(&run(
        d,
        &["--json", "device", "list", "--since", "2100-01-01"],
    ));
    assert_eq!(none.as_array().unwrap().len(), 0);
    let err = fails_with(&run(d, &["device", "list", "--since", "yesterday"]), 2);
    assert!(
        err.contains("--since") && err.contains("not a time"),
        "{err}"
    );

    // After revoke and reset, the old triplet stays findable with its holder.
    ok(&run(
        d,
        &["device", "revoke", "--pid", "plug", "--unique", "bulk-0"],
    ));
    ok(&run(
        d,
        &["device", "reset", "--pid", "plug", "--unique", "bulk-0"],
    ));
    let old = json(&run(d, &["--json", "device", "show", "--uuid", &uuid]));
    assert_eq!(old["state"], "revoked");
    assert_eq!(old["history"][0]["unique"], "bulk-0");
    assert!(old["history"][0]["reset_at"].is_string());
    let human = ok(&run(d, &["device", "show", "--uuid", &uuid]));
    assert!(human.contains("held by bulk-0 of plug"), "{human}");
}

#[test]
fn json_errors_are_json_on_stderr() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    product(d, &["--pid", "plug"]);
    let o = run(d, &["--json", "product", "show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert!(e["error"].as_str().unwrap().contains("unknown pid `nope`"));
    assert_eq!(e["exit"], 1);
    // Usage errors from the parser too.
    let o = run(d, &["--json", "product", "create", "--mode", "pools"]);
    assert_eq!(o.status.code(), Some(2));
    let e: Value = serde_json::from_slice(&o.stderr).unwrap();
    assert!(e["error"].as_str().unwrap().contains("--mode"));
    // Commands that write CSV say so in their help.
    let help = ok(&run(d, &["pool", "generate", "--help"]));
    assert!(help.contains("CSV even under"), "{help}");
}

#[test]
fn demo_with_the_product_disabled_says_so() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // Starts `serve --demo`, stops it once it serves, and returns what it printed.
    let demo = || {
        let mut child = common::bin()
            .args(["--data-dir", "data", "serve", "--demo", "--listen", &listen])
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = common::stderr_lines(&mut child);
        common::wait_for(&rx, "dynreg serving");
        common::sigterm(&child);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = demo();
    let pid = printed
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    ok(&run(d, &["product", "disable", &pid]));
    let printed = demo();
    assert!(
        printed.contains(&format!("demo product {pid} is disabled"))
            && printed.contains(&format!("dynreg product enable {pid}")),
        "{printed}"
    );
}

#[test]
#[cfg_attr(no_python3, ignore = "python3 is not installed")]
fn bench_run_py_runs_the_binary_cargo_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = match Command::new("python3")
        .arg(root.join("bench/run.py"))
        .arg("--print-bin")
        .env("CARGO_TARGET_DIR", "some-target")
        .env_remove("DYNREG_BIN")
        .current_dir(elsewhere.path())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED bench_run_py_runs_the_binary_cargo_builds: no python3 ({e})"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Cargo resolves a relative CARGO_TARGET_DIR against the workspace it builds in.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        root.join("some-target/release/dynreg")
            .display()
            .to_string()
    );
}

/// `dynreg serve` on a free loopback port in `dir` (store `data`), with its log.
struct Serve {
    child: std::process::Child,
    port: u16,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = common::bin()
        .args(["--data-dir", "data", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::stderr_lines(&mut child);
    common::wait_for(&log, "dynreg serving");
    Serve { child, port, log }
}

fn register(dir: &Path, s: &Serve, secret: &str, unique: &str) -> Output {
    common::bin()
        .args([
            "--json",
            "register",
            "--pid",
            "plug",
            "--attempts",
            "1",
            "--unique",
            unique,
        ])
        .args(["--port", &s.port.to_string()])
        .env("DYNREG_SECRET", secret)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_served_rotation_grace_and_a_returns_desk_lookup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = product(d, &["--pid", "plug", "--mode", "pool"]);
    let old = p["secret"].as_str().unwrap().to_owned();
    std::fs::write(
        d.join("pool.csv"),
        "uuid,secret,mac,barcode\nu-1,s-1,02-1a-00-00-00-01,BOX-1\nu-2,s-2,021A00000002,BOX-2\nu-3,s-3,02:1a:00:00:00:03,BOX-3\n",
    )
    .unwrap();
    ok(&run(d, &["pool", "import", "--pid", "plug", "pool.csv"]));
    let s = serve(d);
    // Rotate with a grace: a device flashed with the old secret still registers.
    let new = json(&run(
        d,
        &[
            "--json",
            "product",
            "rotate-secret",
            "plug",
            "--grace",
            "1h",
        ],
    ))["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(2100)); // the server's product cache
    let a = json(&register(d, &s, &old, "old-flash"));
    let b = json(&register(d, &s, &new, "new-flash"));
    assert_ne!(a["uuid"], b["uuid"]);
    // Retired: the old secret is refused, and the log says why.
    ok(&run(d, &["product", "retire-secret", "plug"]));
    std::thread::sleep(Duration::from_millis(2100));
    let refused = register(d, &s, &old, "late-old-flash");
    assert_eq!(refused.status.code(), Some(3));
    common::wait_for(&s.log, "signed with the previous secret of product plug");
    // The returns desk has a box label or a MAC in any spelling.
    let by_barcode = json(&run(d, &["--json", "device", "show", "--barcode", "BOX-1"]));
    assert_eq!(
        (by_barcode["unique"].as_str(), by_barcode["mac"].as_str()),
        (Some("old-flash"), Some("02:1A:00:00:00:01"))
    );
    let by_mac = json(&run(
        d,
        &["--json", "device", "show", "--mac", "021a00000002"],
    ));
    assert_eq!(by_mac["unique"], "new-flash");
    let err = fails_with(
        &run(
            d,
            &["device", "show", "--barcode", "BOX-3", "--pid", "plug"],
        ),
        1,
    );
    assert!(
        err.contains("no device holds a triplet with barcode `BOX-3` of product `plug`"),
        "{err}"
    );
}

#[test]
fn expected_devices_are_listed_from_a_csv_shown_counted_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = product(
        d,
        &[
            "--pid",
            "lst",
            "--mode",
            "generate",
            "--admission",
            "listed",
        ],
    );
    assert_eq!(p["pid"], "lst");
    let shown = json(&run(d, &["--json", "product", "show", "lst"]));
    assert_eq!(shown["admission"], "listed", "{shown}");
    // A bad line is named with the file, and nothing is listed.
    std::fs::write(
        d.join("bad.csv"),
        "unique,barcode,mac\nu1,B1,\nu2,B2,not-a-mac\n",
    )
    .unwrap();
    let e = fails_with(&run(d, &["device", "expect", "--pid", "lst", "bad.csv"]), 1);
    assert!(e.contains("bad.csv line 3: mac of `u2`"), "{e}");
    let n = json(&run(
        d,
        &["--json", "device", "expected", "--pid", "lst", "--count"],
    ));
    assert_eq!(n["expected"], 0);
    // A good file, with or without a header.
    std::fs::write(d.join("good.csv"), "u1,B1,0A:00:00:00:00:01\nu2\nu3,B3\n").unwrap();
    let out = json(&run(
        d,
        &["--json", "device", "expect", "--pid", "lst", "good.csv"],
    ));
    assert_eq!(
        (out["listed_now"].as_u64(), out["listed"].as_u64()),
        (Some(3), Some(3))
    );
    let list = json(&run(
        d,
        &["--json", "device", "expected", "--pid", "lst", "--waiting"],
    ));
    let uniques: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unique"].as_str().unwrap())
        .collect();
    assert_eq!(uniques, ["u1", "u2", "u3"]);
    assert_eq!(list[0]["mac"], "0A:00:00:00:00:01");
    // Listed again: the barcode replaced, still three.
    std::fs::write(d.join("again.csv"), "unique,barcode\nu2,B2\n").unwrap();
    let out = json(&run(
        d,
        &["--json", "device", "expect", "--pid", "lst", "again.csv"],
    ));
    assert_eq!(out["listed"], 3);
    let text = ok(&run(d, &["device", "expected", "--pid", "lst"]));
    assert!(text.contains("u2") && text.contains("B2"), "{text}");
    // Removed, and counted in `product show`.
    let out = json(&run(
        d,
        &[
            "--json", "device", "unexpect", "--pid", "lst", "u3", "nobody",
        ],
    ));
    assert_eq!(out["removed"], 1);
    let shown = json(&run(d, &["--json", "product", "show", "lst"]));
    assert_eq!(
        (
            shown["pool"]["expected"].as_u64(),
            shown["pool"]["expected_waiting"].as_u64()
        ),
        (Some(2), Some(2)),
        "{shown}"
    );
    // An unknown product is named.
    let e = fails_with(
        &run(d, &["device", "expect", "--pid", "nope", "good.csv"]),
        1,
    );
    assert!(e.contains("unknown pid `nope`"), "{e}");
    // The audit log has the upload and the removal.
    let audit = ok(&run(d, &["audit", "list", "--pid", "lst"]));
    assert!(
        audit.contains("expected.uploaded") && audit.contains("expected.removed"),
        "{audit}"
    );
}

//! Every command on a PostgreSQL store (`--database-url`), and two `dynreg serve`
//! processes on one database taking the same devices at once. SKIPPED without a
//! server (see `dynreg_testkit::pg`).

use std::collections::HashSet;
use std::process::{Child, Output, Stdio};

use serde_json::Value;

mod common;
use dynreg_testkit::pg as pgtest;

fn run(url: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    common::bin()
        .args(["--database-url", url])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// `pool stats` of `pid` on the database, as JSON.
fn stats(url: &str, dir: &std::path::Path, pid: &str) -> Value {
    ok(&run(
        url,
        dir,
        &[
            "--json",
            "--master-key-file",
            "k",
            "pool",
            "stats",
            "--pid",
            pid,
        ],
    ))
}

fn err(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
fn operator_commands_run_on_postgres_and_name_its_mistakes() {
    let Some(db) = pgtest::TestDb::create("operator_commands_run_on_postgres") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let url = db.url.as_str();
    // No master key: there is no data dir to keep one in.
    let e = err(&run(url, d, &["product", "list"]));
    assert!(
        e.contains("--master-key-file") && e.contains("DYNREG_MASTER_KEY"),
        "{e}"
    );
    // A database without dynreg's schema is named, and not changed by a reading command.
    let e = err(&run(url, d, &["--master-key-file", "k", "product", "list"]));
    assert!(
        e.contains("holds no dynreg store") && e.contains("dynreg init"),
        "{e}"
    );
    assert!(!d.join("k").exists());
    // init creates the schema and the key file.
    let out = ok(&run(url, d, &["--json", "--master-key-file", "k", "init"]));
    assert_eq!(out["schema_version"], 5);
    assert!(d.join("k").exists());
    let key = ["--master-key-file", "k"];
    let run_k = |args: &[&str]| run(url, d, &[&key[..], args].concat());
    ok(&run_k(&[
        "--json", "product", "create", "--name", "Lamp", "--pid", "lamp", "--mode", "pool",
    ]));
    ok(&run_k(&[
        "pool", "generate", "--pid", "lamp", "--count", "25", "--out", "pool.csv",
    ]));
    let stats = ok(&run_k(&["--json", "pool", "stats", "--pid", "lamp"]));
    assert_eq!(stats["free"], 25, "{stats}");
    assert_eq!(
        std::fs::read_to_string(d.join("pool.csv"))
            .unwrap()
            .lines()
            .count(),
        26
    );
    let migrated = ok(&run_k(&["--json", "migrate"]));
    assert_eq!(migrated["schema_version"], 5);
    // Another key is refused before anything is read; the password never shows.
    let wrong = common::bin()
        .args(["--database-url", url, "product", "list"])
        .env("DYNREG_MASTER_KEY", "11".repeat(32))
        .current_dir(d)
        .output()
        .unwrap();
    let e = err(&wrong);
    assert!(e.contains("do not decrypt"), "{e}");
    let unreachable = run(
        "postgres://dynreg:s3cret@127.0.0.1:1/x?sslmode=disable",
        d,
        &["--master-key-file", "k", "product", "list"],
    );
    let e = err(&unreachable);
    assert!(
        e.contains("cannot connect to PostgreSQL at postgres://dynreg:***@127.0.0.1:1/x"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(url: &str, dir: &std::path::Path) -> Server {
    serve_store(&["--database-url", url, "--master-key-file", "k"], dir)
}

fn serve_store(store: &[&str], dir: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = common::bin()
        .args(store)
        .arg("serve")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--connections-per-ip",
            "0",
        ])
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    common::wait_for(&rx, "dynreg serving");
    Server(child, port)
}

#[test]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
fn two_serve_processes_on_one_database_take_the_same_devices_at_once() {
    let Some(db) = pgtest::TestDb::create("two_serve_processes_on_one_database") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let url = db.url.as_str();
    ok(&run(url, d, &["--master-key-file", "k", "init"]));
    let p = ok(&run(
        url,
        d,
        &[
            "--json",
            "--master-key-file",
            "k",
            "product",
            "create",
            "--name",
            "Plug",
            "--pid",
            "plug",
            "--mode",
            "pool",
        ],
    ));
    ok(&run(
        url,
        d,
        &[
            "--master-key-file",
            "k",
            "pool",
            "generate",
            "--pid",
            "plug",
            "--count",
            "400",
            "--out",
            "pool.csv",
        ],
    ));
    let secret = p["secret"].as_str().unwrap().to_owned();
    let (one, two) = (serve(url, d), serve(url, d));
    // The same 300 devices through both servers at once: a CSV each, registered by
    // `dynreg register --batch` with 30 connections at a time.
    let csv: String = std::iter::once("unique\n".to_owned())
        .chain((0..300).map(|i| format!("dev{i:03}\n")))
        .collect();
    std::fs::write(d.join("devices.csv"), csv).unwrap();
    let batch = |s: &Server, out: &str| {
        common::bin()
            .args(["register", "--port", &s.1.to_string(), "--pid", "plug"])
            .args(["--batch", "devices.csv"])
            .args(["--concurrency", "30", "--out", out, "--timeout", "10"])
            .env("DYNREG_SECRET", &secret)
            .current_dir(d)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (batch(&one, "a.csv"), batch(&two, "b.csv"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    // unique, barcode, result, pid, uuid, secret, mac, error
    let read = |f: &str| -> Vec<String> {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                assert_eq!(c[2], "registered", "{l}");
                [c[0], c[4], c[5]].join(",")
            })
            .collect()
    };
    let (ra, rb) = (read("a.csv"), read("b.csv"));
    assert_eq!((ra.len(), rb.len()), (300, 300));
    // Each device got the same triplet from both servers, and no triplet went to two
    // devices.
    let (mut a_sorted, mut b_sorted) = (ra, rb);
    a_sorted.sort();
    b_sorted.sort();
    assert_eq!(a_sorted, b_sorted);
    let uuid_col = |rows: &[String]| -> HashSet<String> {
        rows.iter()
            .map(|r| r.split(',').nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(uuid_col(&a_sorted).len(), 300, "a triplet was bound twice");
    let stats = stats(url, d, "plug");
    assert_eq!(
        (stats["bound"].as_u64(), stats["free"].as_u64()),
        (Some(300), Some(100)),
        "{stats}"
    );
}

/// Registers `uniques` of product `plug` through `s`; the result rows
/// (unique, uuid, secret), sorted.
fn register_batch(
    s: &Server,
    dir: &std::path::Path,
    secret: &str,
    uniques: &[&str],
    out: &str,
) -> Vec<String> {
    let csv = format!("unique\n{}\n", uniques.join("\n"));
    std::fs::write(dir.join(format!("{out}.in")), csv).unwrap();
    let o = common::bin()
        .args(["register", "--port", &s.1.to_string(), "--pid", "plug"])
        .args([
            "--batch",
            &format!("{out}.in"),
            "--out",
            out,
            "--timeout",
            "10",
        ])
        .env("DYNREG_SECRET", secret)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut rows: Vec<String> = std::fs::read_to_string(dir.join(out))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            assert_eq!(c[2], "registered", "{l}");
            [c[0], c[4], c[5]].join(",")
        })
        .collect();
    rows.sort();
    rows
}

#[test]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
fn store_copy_moves_a_sqlite_store_to_an_empty_database() {
    let Some(db) = pgtest::TestDb::create("store_copy_moves_a_sqlite_store") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let url = db.url.as_str();
    let lite = |args: &[&str]| {
        common::bin()
            .args(["--data-dir", "data"])
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let p = ok(&lite(&[
        "--json", "product", "create", "--name", "Plug", "--pid", "plug", "--mode", "pool",
    ]));
    let secret = p["secret"].as_str().unwrap().to_owned();
    ok(&lite(&[
        "pool", "generate", "--pid", "plug", "--count", "40", "--out", "pool.csv",
    ]));
    let devices = ["a", "b", "c", "d", "e"];
    let before = {
        let s = serve_store(&["--data-dir", "data"], d);
        register_batch(&s, d, &secret, &devices, "before.csv")
    };
    // One device revoked and reset: its history is copied too.
    ok(&lite(&[
        "device", "revoke", "--pid", "plug", "--unique", "e",
    ]));
    ok(&lite(&[
        "device", "reset", "--pid", "plug", "--unique", "e",
    ]));

    // Copy with the data dir's own key (the secrets stay sealed under it).
    let copied = ok(&lite(&["--json", "store", "copy", "--to", url]));
    assert_eq!(copied["copied"]["products"], 1, "{copied}");
    assert_eq!(copied["copied"]["triplets"], 40, "{copied}");
    assert_eq!(copied["copied"]["registrations"], 4, "{copied}");
    assert_eq!(copied["copied"]["device_history"], 1, "{copied}");
    // A second copy is refused: the target is not empty.
    let e = err(&lite(&["store", "copy", "--to", url]));
    assert!(
        e.contains("is not empty") && e.contains("1 products"),
        "{e}"
    );

    // Served from PostgreSQL, the devices get their triplets back, and the pool goes on.
    std::fs::copy(d.join("data/master.key"), d.join("k")).unwrap();
    let s = serve(url, d);
    let after = register_batch(&s, d, &secret, &devices[..4], "after.csv");
    assert_eq!(after, before[..4].to_vec());
    let fresh = register_batch(&s, d, &secret, &["f"], "fresh.csv");
    assert!(
        !before
            .iter()
            .any(|r| r.split(',').nth(1) == fresh[0].split(',').nth(1))
    );
    let stats = stats(url, d, "plug");
    assert_eq!(
        (stats["bound"].as_u64(), stats["devices"].as_u64()),
        (Some(5), Some(5)),
        "{stats}"
    );
    // The reset device's old triplet keeps its history of who held it.
    let old_uuid = before[4].split(',').nth(1).unwrap();
    let shown = run(
        url,
        d,
        &[
            "--json",
            "--master-key-file",
            "k",
            "device",
            "show",
            "--uuid",
            old_uuid,
        ],
    );
    let text = String::from_utf8_lossy(&shown.stdout).into_owned()
        + &String::from_utf8_lossy(&shown.stderr);
    assert!(text.contains("reset") && text.contains("\"e\""), "{text}");
}

/// `dynreg bench` of `n` devices of `pid` at once against `s`, every one signing second
/// `ts`: its JSON report.
fn bench_one_second(s: &Server, secret: &str, pid: &str, n: u64, ts: u64) -> Value {
    let out = common::bin()
        .args(["--json", "bench", "--port", &s.1.to_string(), "--pid", pid])
        .args(["-n", &n.to_string(), "-c", &n.to_string()])
        .args(["--sign-ts", &ts.to_string(), "--unique-prefix", "line-"])
        .args(["--timeout", "60"])
        .env("DYNREG_SECRET", secret)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[cfg_attr(
    no_postgres,
    ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one"
)]
fn five_hundred_devices_signing_one_second_register_and_reregister_at_the_defaults() {
    let Some(db) = pgtest::TestDb::create("five_hundred_devices_one_second") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let url = db.url.as_str();
    ok(&run(url, d, &["--master-key-file", "k", "init"]));
    let p = ok(&run(
        url,
        d,
        &[
            "--json",
            "--master-key-file",
            "k",
            "product",
            "create",
            "--name",
            "Line",
            "--pid",
            "line",
            "--mode",
            "generate",
        ],
    ));
    let secret = p["secret"].as_str().unwrap().to_owned();
    let s = serve(url, d);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A factory line: 500 devices of one product, every one signing the same second
    // (one credential), all at once; then the whole line re-registers at once.
    for round in ["register", "re-register"] {
        let report = bench_one_second(&s, &secret, "line", 500, ts);
        assert_eq!(report["completed"], 500, "{round}: {report}");
    }
    let stats = ok(&run(
        url,
        d,
        &[
            "--json",
            "--master-key-file",
            "k",
            "product",
            "show",
            "line",
        ],
    ));
    assert_eq!(
        (
            stats["pool"]["devices"].as_u64(),
            stats["pool"]["reregistrations"].as_u64()
        ),
        (Some(500), Some(500)),
        "{stats}"
    );
}

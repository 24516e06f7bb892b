//! The `dynreg` binary's operator commands, end to end, in a temporary data dir.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn dynreg(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynreg"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .current_dir(dir)
        .env_remove("DYNREG_MASTER_KEY")
        .env_remove("DYNREG_DATA_DIR")
        .output()
        .expect("run dynreg")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = dynreg(dir, args);
    assert!(
        out.status.success(),
        "dynreg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &a)).expect("one JSON document")
}

/// Runs a command that must fail and returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = dynreg(dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "dynreg {args:?} should fail with 1"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn product_lifecycle() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = json(
        d,
        &["product", "create", "--name", "Lamp", "--mode", "generate"],
    );
    let pid = p["pid"].as_str().unwrap().to_owned();
    let secret = p["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32);
    // The secret is not shown unless asked for.
    let shown = json(d, &["product", "show", &pid]);
    assert!(shown.get("secret").is_none());
    assert!(!ok(d, &["product", "list"]).contains(&secret));
    let revealed = json(d, &["product", "show", &pid, "--reveal-secret"]);
    assert_eq!(revealed["secret"], secret.as_str());
    ok(d, &["product", "disable", &pid]);
    assert_eq!(json(d, &["product", "show", &pid])["enabled"], false);
    ok(d, &["product", "enable", &pid]);
    let rotated = json(d, &["product", "rotate-secret", &pid]);
    assert_ne!(rotated["secret"], secret.as_str());
    let list = json(d, &["product", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(fails(d, &["product", "show", "nope"]).contains("unknown pid `nope`"));
    assert!(fails(d, &["product", "create", "--name", "x", "--pid", &pid]).contains("exists"));
    assert!(fails(d, &["product", "create", "--name", "x", "--pid", "a/b"]).contains("not valid"));
    // Bad flag values are usage errors (exit 2) that name the flag.
    let out = dynreg(d, &["product", "create", "--name", "x", "--mode", "pools"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mode"));
}

#[test]
fn reregistration_policy_and_quota() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = json(d, &["product", "create", "--name", "Lamp", "--pid", "lamp"]);
    assert_eq!(p["reregistration"], "window:1d", "the default policy");
    assert_eq!(p["quota"], Value::Null);
    let p = json(
        d,
        &[
            "product",
            "create",
            "--name",
            "Plug",
            "--pid",
            "plug",
            "--reregistration",
            "never",
            "--quota",
            "100",
        ],
    );
    assert_eq!(
        (p["reregistration"].as_str(), p["quota"].as_u64()),
        (Some("never"), Some(100))
    );
    let u = json(
        d,
        &[
            "product",
            "update",
            "lamp",
            "--reregistration",
            "window:90m",
            "--quota",
            "5",
        ],
    );
    assert_eq!(
        (u["reregistration"].as_str(), u["quota"].as_u64()),
        (Some("window:90m"), Some(5))
    );
    assert_eq!(u["pool"]["reregistrations"], 0);
    let u = json(d, &["product", "update", "lamp", "--no-quota"]);
    assert_eq!(u["quota"], Value::Null);
    let shown = ok(d, &["product", "show", "lamp"]);
    assert!(shown.contains("window:90m"), "{shown}");
    let out = dynreg(d, &["product", "update", "lamp"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to change"), "{err}");
    let out = dynreg(
        d,
        &[
            "product",
            "create",
            "--name",
            "X",
            "--reregistration",
            "sometimes",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--reregistration") && err.contains("window:"),
        "{err}"
    );
}

#[test]
fn pool_generate_import_export() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        d,
        &[
            "product",
            "create",
            "--name",
            "Lamp",
            "--pid",
            "lamp",
            "--mac-range",
            "02:00:00:00:00:00-02:00:00:00:00:09",
        ],
    );
    ok(
        d,
        &[
            "pool",
            "generate",
            "--pid",
            "lamp",
            "--count",
            "4",
            "--barcode-prefix",
            "L",
            "--out",
            "a.csv",
        ],
    );
    let csv = std::fs::read_to_string(d.join("a.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "uuid,secret,mac,barcode");
    assert_eq!(lines.len(), 5);
    assert!(lines[1].contains(",02:00:00:00:00:00,L"));
    // An existing file is never overwritten.
    assert!(
        fails(
            d,
            &[
                "pool", "generate", "--pid", "lamp", "--count", "1", "--out", "a.csv"
            ]
        )
        .contains("exists")
    );
    // MAC range overflow and count out of range are refused and add nothing.
    assert!(
        fails(
            d,
            &[
                "pool", "generate", "--pid", "lamp", "--count", "7", "--out", "b.csv"
            ]
        )
        .contains("MAC range overflow")
    );
    assert!(!d.join("b.csv").exists());
    assert!(
        fails(d, &["pool", "generate", "--pid", "lamp", "--count", "0"]).contains("out of range")
    );
    assert!(
        fails(d, &["pool", "generate", "--pid", "nope", "--count", "1"]).contains("unknown pid")
    );
    // Without --out the CSV goes to stdout.
    let stdout = ok(d, &["pool", "generate", "--pid", "lamp", "--count", "1"]);
    assert!(stdout.starts_with("uuid,secret,mac,barcode\n"));
    assert_eq!(json(d, &["pool", "stats", "--pid", "lamp"])["free"], 5);

    let write = |name: &str, body: &str| std::fs::write(d.join(name), body).unwrap();
    write(
        "dup.csv",
        "uuid,secret,mac,barcode\nx1,s,,b1\nx2,s,,b2\nx1,s,,b3\n",
    );
    assert!(
        fails(d, &["pool", "import", "--pid", "lamp", "dup.csv"])
            .contains("dup.csv line 4: duplicate uuid `x1` (first on line 2)")
    );
    write("short.csv", "uuid,secret,mac,barcode\nx1,s,,b1\nx2,s\n");
    assert!(
        fails(d, &["pool", "import", "--pid", "lamp", "short.csv"])
            .contains("short.csv line 3: 2 fields where the header has 4")
    );
    write("hdr.csv", "uuid,secrt\nx1,s\n");
    assert!(
        fails(d, &["pool", "import", "--pid", "lamp", "hdr.csv"])
            .contains("unknown column `secrt`")
    );
    let first_uuid = lines[1].split(',').next().unwrap();
    write(
        "clash.csv",
        &format!("uuid,secret\nnew1,s\n{first_uuid},s\n"),
    );
    let err = fails(d, &["pool", "import", "--pid", "lamp", "clash.csv"]);
    assert!(
        err.contains("clash.csv line 3: uuid") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(
        json(d, &["pool", "stats", "--pid", "lamp"])["free"],
        5,
        "all or nothing"
    );
    write(
        "good.csv",
        "uuid,secret,mac,barcode\nn1,s1,,g1\nn2,s2,02-00-00-00-00-06,g2\n",
    );
    assert_eq!(
        json(d, &["pool", "import", "--pid", "lamp", "good.csv"])["imported"],
        2
    );
    let stats = json(d, &["pool", "stats", "--pid", "lamp"]);
    assert_eq!(stats["free"], 7);
    assert_eq!(
        stats["mac_left"], 2,
        "n1 had no MAC and got one from the range, past the imported ...:06"
    );

    ok(
        d,
        &[
            "pool", "export", "--pid", "lamp", "--state", "free", "--out", "all.csv",
        ],
    );
    let all = std::fs::read_to_string(d.join("all.csv")).unwrap();
    assert_eq!(all.lines().count(), 8);
    assert!(
        all.contains("n2,s2,02:00:00:00:00:06,g2"),
        "stored in canonical form"
    );
}

#[test]
fn devices_list_revoke_reset_export() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        d,
        &[
            "product", "create", "--name", "G", "--pid", "g", "--mode", "generate",
        ],
    );
    assert_eq!(
        json(d, &["device", "bulk-load", "--pid", "g", "--count", "5"])["loaded"],
        5
    );
    let list = json(d, &["device", "list", "--pid", "g"]);
    assert_eq!(list.as_array().unwrap().len(), 5);
    assert!(list[0].get("secret").is_none());
    let one = json(
        d,
        &[
            "device",
            "show",
            "--pid",
            "g",
            "--unique",
            "bulk-3",
            "--reveal-secret",
        ],
    );
    assert_eq!(one["secret"].as_str().unwrap().len(), 32);
    let uuid = one["uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        json(d, &["device", "show", "--uuid", &uuid])["unique"],
        "bulk-3"
    );
    assert!(
        fails(d, &["device", "reset", "--pid", "g", "--unique", "bulk-3"])
            .contains("revoke it first")
    );
    ok(d, &["device", "revoke", "--pid", "g", "--unique", "bulk-3"]);
    assert!(
        fails(d, &["device", "revoke", "--pid", "g", "--unique", "bulk-3"])
            .contains("already revoked")
    );
    assert_eq!(
        json(d, &["device", "list", "--revoked"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(d, &["device", "reset", "--pid", "g", "--unique", "bulk-3"]);
    assert!(
        fails(d, &["device", "show", "--pid", "g", "--unique", "bulk-3"]).contains("no device")
    );
    let stats = json(d, &["pool", "stats", "--pid", "g"]);
    assert_eq!(
        (stats["devices"].as_u64(), stats["revoked"].as_u64()),
        (Some(4), Some(1))
    );
    let csv = ok(d, &["device", "export", "--pid", "g"]);
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.starts_with(
        "pid,unique,uuid,mac,barcode,registered_at,last_seen_at,revoked_at,from_pid\n"
    ));
    let with = ok(d, &["device", "export", "--pid", "g", "--with-secrets"]);
    assert!(with.lines().next().unwrap().ends_with(",secret"));
}

#[test]
fn master_key_sources() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("k"), "ab".repeat(32)).unwrap();
    ok(
        d,
        &[
            "--master-key-file",
            "k",
            "product",
            "create",
            "--name",
            "x",
            "--pid",
            "x",
        ],
    );
    assert!(
        !d.join("data/master.key").exists(),
        "a given key file is used, none generated"
    );
    // Without the key the data dir refuses to open, and says why.
    let err = fails(d, &["product", "list"]);
    assert!(
        err.contains("master key") && err.contains("missing"),
        "{err}"
    );
    let err = fails(d, &["--master-key-file", "nope", "product", "list"]);
    assert!(
        err.contains("its master key nope is missing"),
        "a key file named for an existing store is never generated: {err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dynreg"))
        .args(["--data-dir", "data", "--json", "product", "list"])
        .current_dir(d)
        .env("DYNREG_MASTER_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dynreg"))
        .args(["--data-dir", "data", "product", "list"])
        .current_dir(d)
        .env("DYNREG_MASTER_KEY", "cd".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not decrypt"));
}

#[test]
fn tokens_and_the_audit_log() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let p = json(d, &["product", "create", "--name", "Lamp", "--pid", "lamp"]);
    assert_eq!(p["pid"], "lamp");
    ok(
        d,
        &[
            "pool", "generate", "--pid", "lamp", "--count", "3", "--out", "p.csv",
        ],
    );
    ok(d, &["product", "disable", "lamp"]);
    let created = json(
        d,
        &["token", "create", "--name", "platform", "--scope", "read"],
    );
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("dynreg_"), "{created}");
    assert_eq!(created["scope"], "read");
    // Without --json the token alone is on stdout, for scripts.
    let plain = ok(d, &["token", "create", "--name", "ops", "--scope", "admin"]);
    assert!(plain.trim().starts_with("dynreg_") && plain.lines().count() == 1);
    assert!(fails(d, &["token", "create", "--name", "ops", "--scope", "read"]).contains("exists"));
    let out = dynreg(d, &["token", "create", "--name", "x", "--scope", "root"]);
    assert_eq!(out.status.code(), Some(2), "a bad scope is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scope"));
    ok(d, &["token", "revoke", "platform"]);
    let list = json(d, &["token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list[0]["revoked_at"].is_u64() && list[1]["revoked_at"].is_null());
    assert!(!list.to_string().contains(token), "tokens are never listed");
    assert!(fails(d, &["token", "revoke", "platform"]).contains("no token named"));

    // Every action above, newest first, by the CLI's user.
    let audit = json(d, &["audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.revoked",
            "token.created",
            "token.created",
            "product.disabled",
            "pool.generated",
            "product.created"
        ]
    );
    assert!(audit[0]["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(audit[4]["detail"], r#"{"count":3}"#);
    let pool = json(d, &["audit", "list", "--pid", "lamp", "--action", "pool."]);
    assert_eq!(pool.as_array().unwrap().len(), 1);
    assert!(ok(d, &["audit", "list"]).contains("product.created"));
    let out = dynreg(d, &["audit", "list", "--since", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn database_writers_out_of_range_are_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (value, want) in [
        ("0", "database_writers = 0 is out of range: use 1 to 64"),
        ("many", "invalid value 'many' for '--database-writers <N>'"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dynreg"))
            .args(["--data-dir", "data", "product", "list"])
            .current_dir(d)
            .env_remove("DYNREG_MASTER_KEY")
            .env_remove("DYNREG_DATA_DIR")
            .env("DYNREG_DATABASE_WRITERS", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{value}: {err}"
        );
    }
    std::fs::write(d.join("dynreg.toml"), "database_writers = 65\n").unwrap();
    let err = fails(d, &["product", "list"]);
    assert!(
        err.contains("database_writers = 65 is out of range")
            && err.contains("flag --database-writers, env DYNREG_DATABASE_WRITERS"),
        "{err}"
    );
    // The flag wins over the file, and a value in range is taken.
    let out = dynreg(d, &["--database-writers", "3", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

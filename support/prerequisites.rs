//! The build script of the crates whose tests need a service or a program that a
//! fresh machine lacks (their Cargo.toml point here).
//!
//! It looks for each prerequisite when the tests are built and, for each one missing,
//! sets a cfg that marks the tests needing it ignored, with the reason
//! (`#[cfg_attr(no_postgres, ignore = "...")]`): `cargo test` then counts them as
//! "ignored" in its summary and names the reason, instead of counting them passed.
//! Under `CI=true` nothing is ignored: CI provides everything, and a test whose
//! prerequisite is missing fails there.
//!
//! | cfg | missing |
//! |---|---|
//! | `no_mosquitto`, `no_mosquitto_rr` | Mosquitto's broker, its `mosquitto_rr` client |
//! | `no_postgres` | a PostgreSQL server at `DYNREG_TEST_DATABASE_URL` (default 127.0.0.1:5432) |
//! | `no_pg_programs` | `initdb` and `pg_ctl` (`DYNREG_PG_BIN`, /usr/lib/postgresql/*/bin, PATH) |
//! | `no_rabbitmq_cluster` | the cluster `support/rabbitmq-cluster.sh` starts and describes in `DYNREG_TEST_*` |
//! | `no_chromium` | Chromium, node and playwright-core (`npm ci` in crates/cli/tests/console) |
//! | `no_schemathesis` | schemathesis (`DYNREG_TEST_SCHEMATHESIS`, or on PATH) |
//! | `no_python3` | python3 |
//!
//! Cargo runs this again when PATH, a directory on it, or a variable named here
//! changes (an install, a cluster started), or when PostgreSQL's socket directory
//! does (a server started or stopped). A test also checks at run time, and says
//! SKIPPED when what the build saw is gone.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CFGS: [&str; 8] = [
    "no_mosquitto",
    "no_mosquitto_rr",
    "no_postgres",
    "no_pg_programs",
    "no_rabbitmq_cluster",
    "no_chromium",
    "no_schemathesis",
    "no_python3",
];

const RABBITMQ_VARS: [&str; 6] = [
    "DYNREG_TEST_RABBITMQ_MQTT",
    "DYNREG_TEST_AMQP_URL",
    "DYNREG_TEST_AMQP_URL_2",
    "DYNREG_TEST_RABBITMQ_HOOK",
    "DYNREG_TEST_RABBITMQ_HOOK_TOKEN",
    "DYNREG_TEST_RABBITMQ_CTL",
];

fn main() {
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in ["CI", "PATH", "DYNREG_TEST_DATABASE_URL", "DYNREG_PG_BIN"]
        .into_iter()
        .chain(RABBITMQ_VARS)
        .chain(["DYNREG_TEST_CHROMIUM", "DYNREG_TEST_SCHEMATHESIS"])
    {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        return;
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", d.display());
    }
    let on_path = |program: &str| dirs.iter().any(|d| d.join(program).is_file());
    let missing = |cfg: &str, absent: bool| {
        if absent {
            println!("cargo::rustc-cfg={cfg}");
        }
    };
    missing("no_mosquitto", !on_path("mosquitto"));
    missing("no_mosquitto_rr", !on_path("mosquitto_rr"));
    missing("no_postgres", !postgres_answers());
    missing("no_pg_programs", !pg_programs(&dirs));
    missing(
        "no_rabbitmq_cluster",
        RABBITMQ_VARS
            .iter()
            .any(|v| std::env::var(v).map_or(true, |x| x.is_empty())),
    );
    missing("no_chromium", !chromium(&on_path));
    missing(
        "no_schemathesis",
        std::env::var("DYNREG_TEST_SCHEMATHESIS").is_err() && !on_path("schemathesis"),
    );
    missing("no_python3", !on_path("python3"));
}

/// Whether a PostgreSQL server accepts TCP connections where the tests look for one.
fn postgres_answers() -> bool {
    let socket_dir = Path::new("/var/run/postgresql");
    if socket_dir.is_dir() {
        println!("cargo::rerun-if-changed={}", socket_dir.display());
    }
    let url = std::env::var("DYNREG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // host[:port] of postgres://[user@]host[:port]/...
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(h, _)| !h.ends_with(':'))
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    hostport.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
    })
}

/// Whether `initdb` and `pg_ctl` can be found as the outage test finds them.
fn pg_programs(path: &[PathBuf]) -> bool {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(d) = std::env::var("DYNREG_PG_BIN") {
        return has(Path::new(&d));
    }
    let versions = Path::new("/usr/lib/postgresql");
    if versions.is_dir() {
        println!("cargo::rerun-if-changed={}", versions.display());
    }
    std::fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| has(&e.path().join("bin")))
        || path.iter().any(|d| has(d))
}

/// Whether the browser test's tools are there: Chromium, node, playwright-core.
fn chromium(on_path: &dyn Fn(&str) -> bool) -> bool {
    let chromium = std::env::var_os("DYNREG_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let scripts = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("tests/console");
    if scripts.is_dir() {
        println!("cargo::rerun-if-changed={}", scripts.display());
    }
    chromium.is_file() && on_path("node") && scripts.join("node_modules/playwright-core").is_dir()
}

//! A PostgreSQL database of its own for one test, for every crate's PostgreSQL tests.
//!
//! The server is the one `DYNREG_TEST_DATABASE_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a role allowed to create
//! databases); each test gets a new database there, dropped when the test ends. Without
//! a reachable server the test says `SKIPPED` on stderr (which `cargo test` shows and
//! `.ci/run` counts) and does nothing; under `CI=true` it fails instead.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server tests use when `DYNREG_TEST_DATABASE_URL` is not set.
pub const DEFAULT_TEST_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// A database created for one test; dropped (with its connections) when this is.
#[derive(Debug)]
pub struct TestDb {
    /// The URL of the test's database.
    pub url: String,
    admin_url: String,
    name: String,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn admin_url() -> String {
    std::env::var("DYNREG_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_SERVER.to_owned())
}

/// `url` with its database name replaced by `name` (URL form only).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl TestDb {
    /// A new empty database for the test `test`, or `None` (after saying SKIPPED) when
    /// no PostgreSQL server is reachable.
    pub fn create(test: &str) -> Option<Self> {
        std::thread::scope(|s| s.spawn(|| Self::create_here(test)).join())
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn create_here(test: &str) -> Option<Self> {
        let admin_url = admin_url();
        let mut client = match postgres::Client::connect(&admin_url, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("{test}: no PostgreSQL at {admin_url} ({e}); CI runs every test");
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no PostgreSQL at {admin_url} ({e}); set DYNREG_TEST_DATABASE_URL, or run .ci/run, which starts one"
                );
                return None;
            }
        };
        let name = format!(
            "dynreg_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("{test}: cannot create database {name}: {e}"));
        Some(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // On a thread of its own: the blocking client cannot run inside an async test.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(mut c) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
                    let _ = c.batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ));
                }
            });
        });
    }
}

/// A random master key, as 64 hex digits.
pub fn random_key() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random bytes");
    key.iter().map(|b| format!("{b:02x}")).collect()
}

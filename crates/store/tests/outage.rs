//! PostgreSQL going away under load: a throwaway server of the test's own (`initdb` +
//! `pg_ctl` from the installed PostgreSQL, on a free port) is killed with SIGKILL while
//! devices register, and started again. Meanwhile registrations get the retryable
//! status and nothing else; afterwards the store serves again by itself, and every
//! registration that was acknowledged is in the database.
//!
//! SKIPPED without PostgreSQL's programs (`DYNREG_PG_BIN` names their directory;
//! else `/usr/lib/postgresql/*/bin`, else `PATH`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynreg_proto::{RegisterRequest, Status};
use dynreg_registrar::conformance::product;
use dynreg_registrar::{Device, Registrar, SourceMode};
use dynreg_store::{Operator, PgStore};

const NOW: u64 = 1_700_000_000;

fn pg_bin() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(d) = std::env::var("DYNREG_PG_BIN") {
        return Some(PathBuf::from(d)).filter(|d| has(d));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has(d))
        .collect();
    versions.sort();
    versions
        .pop()
        .or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has(d)))
}

/// A PostgreSQL server in a temporary directory, run by the `postgres` user when the
/// test runs as root (initdb refuses root).
struct Server {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_root: bool,
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_root {
            assert!(
                Command::new("chown")
                    .args(["postgres"])
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Self {
            bin,
            dir,
            port,
            as_root,
        };
        let out = s
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(s.data())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    fn start(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL to the postmaster and every process it started.
    fn kill9(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut victims = vec![pid];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let ppid: Option<u32> = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(pid) {
                victims.extend(
                    entry
                        .file_name()
                        .to_str()
                        .and_then(|p| p.parse::<u32>().ok()),
                );
            }
        }
        let list: Vec<String> = victims.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-9").args(&list).status();
        // Wait until they are gone (the port is free and no child holds shared memory).
        let deadline = Instant::now() + Duration::from_secs(10);
        while victims
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(Instant::now() < deadline, "postgres did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_pg_programs,
    ignore = "initdb and pg_ctl not found (apt-get install postgresql, or set DYNREG_PG_BIN)"
)]
async fn a_killed_database_costs_retries_and_no_acknowledged_registration() {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs every test: initdb and pg_ctl not found"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_killed_database_costs_retries_and_no_acknowledged_registration: initdb and pg_ctl not found (apt-get install postgresql, or set DYNREG_PG_BIN)"
        );
        return;
    };
    let (server, store) = tokio::task::block_in_place(|| {
        let server = Server::init(bin);
        server.start();
        let mut config = common::pg_config(&server.url(), &common::pgtest::random_key());
        config.connect_timeout = Duration::from_secs(1);
        let store = PgStore::open(&config).unwrap();
        store
            .insert_product(&product("G", SourceMode::Generate))
            .unwrap();
        (server, store)
    });
    let r = Arc::new(Registrar::new(store.clone()));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<Status>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for caller in 0..16 {
        let (r, acked, refused, stop) = (r.clone(), acked.clone(), refused.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let req = RegisterRequest::new("1", NOW);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let unique = format!("c{caller}-{i}");
                i += 1;
                match r
                    .commit_registration(
                        NOW,
                        Device {
                            pid: "G",
                            unique: &unique,
                        },
                        &req,
                    )
                    .await
                {
                    Ok(done) => acked.lock().unwrap().push((unique, done.triplet.uuid)),
                    Err(status) => {
                        refused.lock().unwrap().push(status);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let count = |v: &Arc<Mutex<Vec<(String, String)>>>| v.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = count(&acked);
    assert!(before > 0, "registrations go through before the outage");
    tokio::task::block_in_place(|| server.kill9());
    // Down for a while: longer than the product cache's 2 s, so that lookups fail too.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let during = refused.lock().unwrap().len();
    assert!(
        during > 0,
        "registrations are refused while the database is down"
    );
    tokio::task::block_in_place(|| server.start());
    // Service resumes by itself.
    let resumed_at = count(&acked);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&acked) < resumed_at + 200 {
        assert!(Instant::now() < deadline, "registrations did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await.unwrap();
    }
    // Every refusal was the retryable one.
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.iter().all(|s| *s == Status::TemporarilyUnavailable),
        "{:?}",
        refused
            .iter()
            .filter(|s| **s != Status::TemporarilyUnavailable)
            .collect::<Vec<_>>()
    );
    // Every acknowledged registration is in the database, with the triplet it was given.
    let acked = acked.lock().unwrap().clone();
    tokio::task::block_in_place(|| {
        for (unique, uuid) in &acked {
            let d = store
                .device("G", unique)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {unique} is not stored"));
            assert_eq!(&d.triplet.uuid, uuid);
        }
        println!(
            "{} registrations acknowledged ({before} before the kill), {} refused with the retryable status",
            acked.len(),
            refused.len()
        );
        store.close().unwrap();
    });
    drop(server);
}

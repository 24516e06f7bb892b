//! Crash safety: a child process registers devices in a loop, printing each
//! registration once the store has committed it, and is killed with SIGKILL at random
//! moments, several times. Afterwards every registration it printed is in the store
//! with the triplet it printed, and no triplet is bound twice.
//!
//! The child is this test binary itself, re-run with `DYNREG_CRASH_CHILD` set, which
//! makes the otherwise idle `crash_child` test run the loop.

use dynreg_store::Operator;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynreg_proto::RegisterRequest;
use dynreg_registrar::conformance::product;
use dynreg_registrar::{Device, Registrar, SourceMode, generate};
use dynreg_store::{DeviceFilter, SqliteConfig, SqliteStore};

const CHILD_ENV: &str = "DYNREG_CRASH_CHILD";
const NOW: u64 = 1_700_000_000;
const RUNS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // only runs as the child of `killed_writer_loses_nothing_it_confirmed`
    };
    let run = std::env::var("DYNREG_CRASH_RUN").unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(Path::new(&dir))).unwrap();
    let registrar = Arc::new(Registrar::new(store));
    // 16 concurrent registrars, so that kills land inside group commits.
    let mut handles = Vec::new();
    for task in 0..16 {
        let r = registrar.clone();
        let run = run.clone();
        handles.push(tokio::spawn(async move {
            for i in 0.. {
                let unique = format!("r{run}-t{task}-{i}");
                let req = RegisterRequest::new("1", NOW);
                let out = r
                    .commit_registration(
                        NOW,
                        Device {
                            pid: "P",
                            unique: &unique,
                        },
                        &req,
                    )
                    .await
                    .unwrap();
                println!("OK {unique} {}", out.triplet.uuid);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[test]
fn killed_writer_loses_nothing_it_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = SqliteStore::open(&SqliteConfig::new(&data)).unwrap();
        store
            .insert_product(&product("P", SourceMode::PoolThenGenerate))
            .unwrap();
        let pool = dynreg_registrar::conformance::pool("P", 2_000);
        store.import_pool("P", pool, Arc::new(|_| {})).unwrap();
        store.close().unwrap();
    }

    let mut confirmed: HashMap<String, String> = HashMap::new();
    for run in 0..RUNS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &data)
            .env("DYNREG_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after 150..=650 ms of registering.
        let wait = Duration::from_millis(150 + u64::from(generate::bytes::<1>()[0]) * 2);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        let started = Instant::now();
        while started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut n = 0;
        for line in lines {
            // Only whole lines count: a line cut by the kill has no uuid after the unique.
            let mut parts = line.split(' ');
            if let (Some("OK"), Some(unique), Some(uuid), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                if uuid.len() >= 4 {
                    confirmed.insert(unique.to_owned(), uuid.to_owned());
                    n += 1;
                }
            }
        }
        eprintln!("run {run}: killed after {wait:?}, {n} registrations confirmed");
    }
    assert!(
        confirmed.len() > 50,
        "the child confirmed only {} registrations",
        confirmed.len()
    );

    let store = SqliteStore::open(&SqliteConfig::new(&data)).unwrap();
    for (unique, uuid) in &confirmed {
        let reg = store
            .device("P", unique)
            .unwrap()
            .unwrap_or_else(|| panic!("confirmed registration {unique} was lost"));
        assert_eq!(&reg.triplet.uuid, uuid, "{unique} changed triplet");
    }
    let all = store.list_devices(&DeviceFilter::default()).unwrap();
    let distinct: HashSet<&str> = all.iter().map(|r| r.triplet.uuid.as_str()).collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "a triplet is bound to two devices"
    );
    let stats = store.pool_stats("P").unwrap();
    assert_eq!(stats.devices, all.len() as u64);
    assert_eq!(
        stats.bound,
        all.len() as u64,
        "bound triplets and registrations agree"
    );
    assert!(all.len() >= confirmed.len());
}

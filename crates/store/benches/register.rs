//! Durable registrations per second through the registrar and a store, with 64
//! concurrent callers, on an empty store and with 1,000,000 devices already stored.
//!
//! Run: `cargo bench -p dynreg-store --bench register` (SQLite), or with
//! `BENCH_STORE=postgres` on a new database of the server that
//! `DYNREG_TEST_DATABASE_URL` names (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! `BENCH_N` registrations per round, 3 rounds per figure, default 100,000;
//! `BENCH_PRELOAD` devices loaded before the second measurement, default 1,000,000;
//! `BENCH_WRITERS` PostgreSQL writer threads (default `dynreg_store::DEFAULT_WRITERS`, 2).
//!
//! Each registration is acknowledged only after its transaction is committed durably
//! (SQLite: `synchronous = FULL`; PostgreSQL: `synchronous_commit` as the server has it,
//! on by default, with fsync), exactly as `dynreg serve` replies. After each bulk setup
//! step SQLite's WAL is checkpointed (PostgreSQL: `CHECKPOINT`), so that neither
//! measurement pays for copying the setup's hundreds of megabytes of WAL while it runs.

#![allow(missing_docs)]

use dynreg_store::Operator;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynreg_proto::RegisterRequest;
use dynreg_registrar::conformance::product;
use dynreg_registrar::{Device, Registrar, SourceMode, Store};
use dynreg_store::{KeySource, PgConfig, PgStore, SqliteConfig, SqliteStore, WriterStats};

use dynreg_testkit::pg as pgtest;

/// What the benchmark needs of a store besides registering.
trait Bench: Store + Operator + Clone {
    fn stats(&self) -> WriterStats;
    /// Makes the setup's writes cheap to build on (SQLite's WAL checkpoint).
    fn settle(&self) {}
}

impl Bench for SqliteStore {
    fn stats(&self) -> WriterStats {
        self.writer_stats()
    }
    fn settle(&self) {
        self.checkpoint().unwrap();
    }
}

impl Bench for PgStore {
    fn stats(&self) -> WriterStats {
        self.writer_stats()
    }
    fn settle(&self) {
        // Fresh statistics for the planner after the bulk load, and its WAL written
        // back before the measurement (as SQLite's checkpoint; skipped without the
        // right to ask for one).
        let _ = self.analyze();
        if let Err(e) = self.checkpoint() {
            println!("setup: no checkpoint ({e})");
        }
    }
}

const CALLERS: usize = 64;
const NOW: u64 = 1_700_000_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Registers `n` new devices of `pid` (uniques `<tag>-<i>`) from 64 concurrent callers.
async fn measure<S: Bench>(
    r: &Arc<Registrar<S>>,
    store: &S,
    pid: &str,
    tag: &str,
    n: usize,
) -> (Duration, f64) {
    let before = store.stats();
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..CALLERS {
        let r = r.clone();
        let (pid, tag) = (pid.to_owned(), tag.to_owned());
        handles.push(tokio::spawn(async move {
            let req = RegisterRequest::new("1", NOW);
            let mut i = c;
            while i < n {
                let unique = format!("{tag}-{i}");
                r.commit_registration(
                    NOW,
                    Device {
                        pid: &pid,
                        unique: &unique,
                    },
                    &req,
                )
                .await
                .expect("registration succeeds");
                i += CALLERS;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let took = start.elapsed();
    let after = store.stats();
    let batch = (after.jobs - before.jobs) as f64 / (after.batches - before.batches).max(1) as f64;
    (took, batch)
}

/// Runs `ROUNDS` measurements of `n` fresh registrations each and prints the median,
/// min and max rate; returns the median.
fn rounds<S: Bench>(
    rt: &tokio::runtime::Runtime,
    r: &Arc<Registrar<S>>,
    store: &S,
    pid: &str,
    tag: &str,
    n: usize,
    label: &str,
) -> f64 {
    let mut rates = Vec::new();
    let mut batches = Vec::new();
    for round in 0..ROUNDS {
        let (took, batch) = rt.block_on(measure(r, store, pid, &format!("{tag}-{round}"), n));
        rates.push(n as f64 / took.as_secs_f64());
        batches.push(batch);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "{label:<40} median {median:>7.0} reg/s  (min {:>7.0}, max {:>7.0}; {ROUNDS} x {n} regs; mean group commit {:.1} regs/fsync)",
        rates[0],
        rates[rates.len() - 1],
        batches.iter().sum::<f64>() / batches.len() as f64
    );
    median
}

const ROUNDS: usize = 3;

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    if std::env::var("BENCH_STORE").as_deref() == Ok("postgres") {
        let Some(db) = pgtest::TestDb::create("register bench") else {
            return;
        };
        let mut config = PgConfig::new(&db.url, KeySource::Hex(pgtest::random_key()));
        config.writers = env_u64("BENCH_WRITERS", dynreg_store::DEFAULT_WRITERS as u64) as usize;
        let store = PgStore::open(&config).unwrap();
        println!(
            "PostgreSQL store, {} writer threads (batches of up to {})",
            config.writers, config.max_batch
        );
        run(&store);
    } else {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("data"))).unwrap();
        println!("SQLite store (WAL, synchronous=FULL), 1 writer thread");
        run(&store);
    }
}

fn run<S: Bench>(store: &S) {
    let n = env_u64("BENCH_N", 100_000) as usize;
    let preload = env_u64("BENCH_PRELOAD", 1_000_000);
    store
        .insert_product(&product("G", SourceMode::Generate))
        .unwrap();
    store
        .insert_product(&product("P", SourceMode::Pool))
        .unwrap();
    let t = Instant::now();
    let pool = (2 * ROUNDS * n) as u64;
    store
        .generate_pool("P", pool, "", NOW, Arc::new(|_| {}))
        .unwrap();
    store.settle();
    println!(
        "setup: pool of {pool} triplets generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = Arc::new(Registrar::new(store.clone()));
    println!("{CALLERS} concurrent callers, durable, 2 tokio workers");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let (gen_on, pool_on) = (only != "pool", only != "generate");
    let mut empty_g = 0.0;
    let mut empty_p = 0.0;
    if gen_on {
        empty_g = rounds(
            &rt,
            &r,
            store,
            "G",
            "empty-g",
            n,
            "generate mode, empty store",
        );
    }
    if pool_on {
        empty_p = rounds(&rt, &r, store, "P", "empty-p", n, "pool mode, empty store");
    }

    let t = Instant::now();
    let half = preload / 2;
    store.bulk_load("G", 0, half, NOW, &|_| {}).unwrap();
    store
        .bulk_load("P", half, preload - half, NOW, &|_| {})
        .unwrap();
    store.settle();
    let total = store.pool_stats("G").unwrap().devices + store.pool_stats("P").unwrap().devices;
    println!(
        "setup: bulk-loaded {preload} devices in {:.1} s ({total} devices now stored)",
        t.elapsed().as_secs_f64()
    );

    if gen_on {
        let label = format!("generate mode, {total} stored");
        let full_g = rounds(&rt, &r, store, "G", "full-g", n, &label);
        println!("ratio stored/empty, generate mode: {:.2}", full_g / empty_g);
    }
    if pool_on {
        let label = format!("pool mode, {total} stored");
        let full_p = rounds(&rt, &r, store, "P", "full-p", n, &label);
        println!("ratio stored/empty, pool mode: {:.2}", full_p / empty_p);
    }
    store.close().unwrap();
}

//! What the CONNECT decision costs: `Registrar::authenticate` over the in-memory store
//! at the defaults (parse, product lookup, ts window, HMAC-SHA256, the record of shared
//! credentials, ban bookkeeping), and what the record adds on its own:
//! `SharedCredentials::record` with a million credentials remembered (its bound, so
//! every fresh credential also evicts one), for a fresh credential and for one that
//! 64 uniques already share.
//!
//! Run: `cargo bench -p dynreg-registrar --bench connect`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_registrar::conformance::{Fixture, product};
use dynreg_registrar::memory::MemoryStore;
use dynreg_registrar::sharing::{CredentialUse, SharedCredentials};
use dynreg_registrar::{Connect, Registrar, SourceMode};

const NOW: u64 = 1_700_000_000;

fn use_of<'a>(pw: &'a [u8], unique: &'a str, expires_at: u64) -> CredentialUse<'a> {
    CredentialUse {
        pid: "p",
        sign_method: SignMethod::HmacSha256,
        ts: NOW,
        password: pw,
        unique,
        expires_at,
    }
}

/// Resident memory of this process, bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn a_million_remembered() -> SharedCredentials {
    let before = rss();
    let record = SharedCredentials::with_capacity(1_000_000);
    for i in 0..1_000_000u64 {
        let pw = format!("{i:064x}");
        record.record(&use_of(pw.as_bytes(), "u", NOW + 900 + i % 900), NOW);
    }
    eprintln!(
        "shared credentials: 1,000,000 remembered in {} bytes of resident memory ({} bytes each)",
        rss().saturating_sub(before),
        rss().saturating_sub(before) / 1_000_000
    );
    record
}

fn record_with_a_million_remembered(c: &mut Criterion) {
    let record = a_million_remembered();
    let mut n = 2_000_000u64;
    let mut pw = [b'0'; 64];
    c.bench_function("shared_record_fresh_1m", |b| {
        b.iter(|| {
            // A fresh credential: the counter in hex (cheaper than formatting).
            n += 1;
            for (k, d) in pw[48..].iter_mut().enumerate() {
                *d = b"0123456789abcdef"[((n >> (60 - 4 * k)) & 0xf) as usize];
            }
            record.record(black_box(&use_of(&pw, "u", NOW + 1800)), NOW)
        });
    });
    // One credential shared by 64 uniques, presented again by one of them: the scan
    // of its remembered uniques.
    let uniques: Vec<String> = (0..64).map(|i| format!("dev{i}")).collect();
    let shared = [b'f'; 64];
    for u in &uniques {
        record.record(&use_of(&shared, u, NOW + 1800), NOW);
    }
    c.bench_function("shared_record_repeat_of_64_1m", |b| {
        b.iter(|| record.record(black_box(&use_of(&shared, &uniques[63], NOW + 1800)), NOW));
    });
}

fn authenticate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let peer = Some("127.0.0.1".parse().unwrap());
    for method in [SignMethod::HmacSha256, SignMethod::HmacSha256Bound] {
        let store = MemoryStore::new();
        store.put_product(product("p", SourceMode::Generate));
        let r = Registrar::new(store);
        // Signed beforehand: only the server's side is measured. 1,800 seconds of
        // devices, 8 of them each second.
        let creds: Vec<(String, String, String)> = (0..14_400u64)
            .map(|i| {
                let ts = NOW - 900 + i / 8;
                let unique = format!("u{i}");
                (
                    format!("register_p_{unique}"),
                    format!("p|signMethod={method},ts={ts}"),
                    sign(method, b"secret-of-p", "p", &unique, ts).to_string(),
                )
            })
            .collect();
        // The decision is async (a product lookup may go to the store); from the
        // cache it completes on its first poll, so a current-thread runtime's
        // block_on adds only its own bookkeeping.
        let mut i = 0;
        c.bench_function(&format!("authenticate_{method}"), |b| {
            b.iter(|| {
                i = (i + 1) % creds.len();
                let (client_id, username, password) = &creds[i];
                black_box(rt.block_on(r.authenticate(
                    NOW,
                    Connect {
                        client_id,
                        username: Some(username),
                        password: Some(password.as_bytes()),
                        peer,
                    },
                )))
                .unwrap();
            });
        });
    }
}

criterion_group!(benches, record_with_a_million_remembered, authenticate);
criterion_main!(benches);

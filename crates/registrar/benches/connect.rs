//! What the CONNECT decision costs: `Registrar::authenticate` over the in-memory store
//! without the replay guard (parse, product lookup, ts window, HMAC-SHA256, ban
//! bookkeeping), and what the guard adds: `ReplayGuard::claim` of a fresh credential
//! with a million credentials remembered (its bound, so every claim also evicts).
//! (A benchmark of `authenticate` with the guard on would soon present the same
//! credential twice: one product has only ~3,600 distinct credentials per window.)
//!
//! Run: `cargo bench -p dynreg-registrar --bench connect`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_registrar::conformance::{Fixture, product};
use dynreg_registrar::memory::MemoryStore;
use dynreg_registrar::replay::{CredentialUse, ReplayGuard};
use dynreg_registrar::{AuthPolicy, Connect, Registrar, SourceMode};

const NOW: u64 = 1_700_000_000;

fn claim_with_a_million_remembered(c: &mut Criterion) {
    let guard = ReplayGuard::with_capacity(1_000_000);
    let passwords: Vec<String> = (0..1_000_000u64).map(|i| format!("{i:064x}")).collect();
    for (i, pw) in passwords.iter().enumerate() {
        guard.claim(
            &CredentialUse {
                pid: "p",
                sign_method: SignMethod::HmacSha256,
                ts: NOW,
                password: pw.as_bytes(),
                unique: "u",
                expires_at: NOW + 900 + i as u64 % 900,
            },
            NOW,
        );
    }
    let mut n = 2_000_000u64;
    let mut pw = [b'0'; 64];
    c.bench_function("replay_guard_claim_full", |b| {
        b.iter(|| {
            // A fresh credential: the counter in hex (cheaper than formatting).
            n += 1;
            for (k, d) in pw[48..].iter_mut().enumerate() {
                *d = b"0123456789abcdef"[((n >> (60 - 4 * k)) & 0xf) as usize];
            }
            guard.claim(
                black_box(&CredentialUse {
                    pid: "p",
                    sign_method: SignMethod::HmacSha256,
                    ts: NOW,
                    password: &pw,
                    unique: "u",
                    expires_at: NOW + 1800,
                }),
                NOW,
            )
        });
    });
}

fn authenticate(c: &mut Criterion) {
    let store = MemoryStore::new();
    store.put_product(product("p", SourceMode::Generate));
    let r = Registrar::with_policy(
        store,
        AuthPolicy {
            replay_guard: false,
            ..AuthPolicy::default()
        },
    );
    // Signed beforehand: only the server's side is measured.
    let creds: Vec<(String, String, String)> = (0..1800u64)
        .map(|i| {
            let ts = NOW - 900 + i;
            (
                format!("register_p_u{i}"),
                format!("p|signMethod=hmacSha256,ts={ts}"),
                sign(SignMethod::HmacSha256, b"secret-of-p", "p", ts).to_string(),
            )
        })
        .collect();
    let peer = Some("127.0.0.1".parse().unwrap());
    // The decision is async (a product lookup may go to the store); from the cache it
    // completes on its first poll, so a current-thread runtime's block_on adds only
    // its own bookkeeping.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut i = 0;
    c.bench_function("authenticate_guard_off", |b| {
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

criterion_group!(benches, claim_with_a_million_remembered, authenticate);
criterion_main!(benches);

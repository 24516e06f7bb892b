//! Credential benchmarks: HMAC verify per sign method, and the full CONNECT check a
//! server does (parse clientId, parse username, check ts, HMAC-SHA256 verify).
//!
//! Run: `cargo bench -p dynreg-proto --bench credentials`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynreg_proto::credentials::{Credentials, SignMethod, sign, verify_password};

const SECRET: &[u8] = b"Zk3mQ8vR2tY6wP1n";
const PID: &str = "p7kq2x9d";
const TS: u64 = 1_626_197_189;
const UNIQUE: &str = "8f14e45fceea167a";

fn verify_per_method(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_password");
    for method in SignMethod::ALL {
        let password = sign(method, SECRET, PID, UNIQUE, TS);
        g.bench_function(method.name(), |b| {
            b.iter(|| {
                verify_password(
                    black_box(method),
                    black_box(SECRET),
                    black_box(PID),
                    black_box(UNIQUE),
                    black_box(TS),
                    black_box(password.as_bytes()),
                )
                .unwrap();
            });
        });
    }
    g.finish();
}

fn full_connect_check(c: &mut Criterion) {
    let client_id = "register_p7kq2x9d_8f14e45fceea167a";
    let username = "p7kq2x9d|signMethod=hmacSha256,ts=1626197189";
    let password = sign(SignMethod::HmacSha256, SECRET, PID, UNIQUE, TS);
    c.bench_function("connect_check_hmacSha256", |b| {
        b.iter(|| {
            let creds = Credentials::parse(black_box(client_id), black_box(username)).unwrap();
            creds
                .verify(
                    black_box(SECRET),
                    black_box(password.as_bytes()),
                    TS + 10,
                    900,
                )
                .unwrap();
            black_box(creds.unique);
        });
    });
    let upper = password.as_str().to_ascii_uppercase();
    c.bench_function("connect_check_refused_bad_signature", |b| {
        let mut wrong = upper.clone().into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        b.iter(|| {
            let creds = Credentials::parse(black_box(client_id), black_box(username)).unwrap();
            assert!(creds.verify(SECRET, black_box(&wrong), TS, 900).is_err());
        });
    });
}

criterion_group!(benches, verify_per_method, full_connect_check);
criterion_main!(benches);

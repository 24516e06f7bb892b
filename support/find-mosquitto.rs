//! The build script of dynreg-endpoint and dynreg-bench (their Cargo.toml point here).
//!
//! Finds Mosquitto's programs when the tests are built, so that the tests that need
//! them are marked ignored on a machine without them: `cargo test` then counts them
//! as "ignored" in its summary and names the reason, instead of passing them.
//!
//! Cargo runs this again when PATH or any directory on it changes (an install).

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_mosquitto)");
    println!("cargo::rustc-check-cfg=cfg(no_mosquitto_rr)");
    println!("cargo::rerun-if-env-changed=PATH");
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", d.display());
    }
    let found = |program: &str| dirs.iter().any(|d| d.join(program).is_file());
    if !found("mosquitto") {
        println!("cargo::rustc-cfg=no_mosquitto");
    }
    if !found("mosquitto_rr") {
        println!("cargo::rustc-cfg=no_mosquitto_rr");
    }
}

//! The registrar's rule suite, against the PostgreSQL store (each rule in a database of
//! its own; SKIPPED without a server, see `support/pgtest.rs`).

mod common;

dynreg_registrar::conformance_tests!(optional common::TempStore::postgres);

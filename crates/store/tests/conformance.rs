//! The registrar's rule suite, against the SQLite store.

mod common;

dynreg_registrar::conformance_tests!(common::TempStore::new());

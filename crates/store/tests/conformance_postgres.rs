//! The registrar's rule suite, against the PostgreSQL store (each rule in a database of
//! its own; SKIPPED without a server, see `dynreg_testkit::pg`).

mod common;

dynreg_registrar::conformance_tests!(
    #[cfg_attr(no_postgres, ignore = "no PostgreSQL server at DYNREG_TEST_DATABASE_URL (default 127.0.0.1:5432); .ci/run starts one")]
    optional common::TempStore::postgres
);

//! PostgreSQL's errors in words and as the registrar's kinds: a lost connection
//! (retried after a reconnect), a conflict, or unavailable.

use dynreg_registrar::{StoreError, StoreErrorKind};
use postgres::error::SqlState;

/// A PostgreSQL error in words: the server's message and detail, or the client's error
/// and its cause.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str(": ");
            s.push_str(detail);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Whether `e` means the connection is gone (or the server is going away), so that it
/// must be opened again.
pub(super) fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
    }
}

/// Maps a PostgreSQL error to the registrar's view of it (kind and message), keeping it
/// as the source.
pub(crate) fn classify(e: postgres::Error) -> StoreError {
    StoreError::new(kind_of(&e), describe(&e)).with_source(e)
}

/// What kind of failure a PostgreSQL error is.
pub(crate) fn kind_of(e: &postgres::Error) -> StoreErrorKind {
    if connection_lost(e) {
        StoreErrorKind::Unavailable
    } else {
        match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION =>
            {
                StoreErrorKind::Conflict
            }
            Some(c)
                if [
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::QUERY_CANCELED,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::LOCK_NOT_AVAILABLE,
                ]
                .contains(c) =>
            {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Backend,
        }
    }
}

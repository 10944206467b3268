//! PostgreSQL's errors as the crate's: each SQLSTATE class as a
//! [`DbKind`], with a message that says what to do. A lost connection, a
//! server shutting down or not yet accepting connections is
//! [`DbKind::NoConnection`]: the database's trouble, never a credential's
//! (callers see 503 `store_unavailable`, exit 5).

use crate::error::{DbError, DbKind, Error};

/// Turns the driver's errors into the crate's.
pub(super) fn pg_err(e: postgres::Error) -> Error {
    let kind = kind_of(&e);
    let err = DbError::caused_by(kind, e).with_message(hint(kind));
    match kind {
        DbKind::DiskFull => Error::DiskFull(err),
        _ => Error::Db(err),
    }
}

/// No connection could be had from the pool within the timeout.
pub(super) fn pool_err(e: r2d2::Error) -> Error {
    Error::Db(
        DbError::caused_by(DbKind::NoConnection, e.to_string())
            .with_message(hint(DbKind::NoConnection)),
    )
}

/// What kind of trouble a driver error is.
pub(super) fn kind_of(e: &postgres::Error) -> DbKind {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: the socket closed, an I/O error, a
        // connection that could not be made, a timeout.
        return DbKind::NoConnection;
    };
    kind_of_state(db.code().code())
}

/// The kind of a SQLSTATE (a pure table; see the tests).
pub(super) fn kind_of_state(state: &str) -> DbKind {
    match state {
        // The server is going away or not there yet: a failover, a restart.
        "57P01" | "57P02" | "57P03" | "57P05" => DbKind::NoConnection,
        "53100" => DbKind::DiskFull,
        // statement_timeout, lock_timeout, serialization failure, deadlock.
        "57014" | "55P03" | "40001" | "40P01" => DbKind::Busy,
        // A standby (hot standby after a failover that has not finished).
        "25006" => DbKind::ReadOnly,
        "3D000" | "42501" => DbKind::CannotOpen,
        "3F000" | "42P01" | "42703" => DbKind::Schema,
        s if s.starts_with("08") => DbKind::NoConnection,
        s if s.starts_with("28") => DbKind::CannotOpen,
        s if s.starts_with("53") || s.starts_with("58") => DbKind::Io,
        s if s.starts_with("XX") => DbKind::Corrupt,
        _ => DbKind::Other,
    }
}

/// What to do about a kind of error; empty where the server's message says
/// it all.
fn hint(kind: DbKind) -> &'static str {
    match kind {
        DbKind::NoConnection => {
            "the PostgreSQL server cannot be reached (down, restarting or failing over); \
             retry: nothing was lost"
        }
        DbKind::Busy => "the statement timed out or was cancelled; retry",
        DbKind::ReadOnly => "the server is read-only (a standby?); point --db at the primary",
        DbKind::CannotOpen => "the database or schema cannot be used with these credentials",
        DbKind::Schema => "the database's schema is not tokenwarden's; run `tokenwarden init`",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLSTATEs map to the kinds that decide what callers see.
    #[test]
    fn sqlstates_map_to_kinds() {
        for (state, kind) in [
            ("08006", DbKind::NoConnection),
            ("08001", DbKind::NoConnection),
            ("57P01", DbKind::NoConnection),
            ("57P03", DbKind::NoConnection),
            ("53100", DbKind::DiskFull),
            ("53200", DbKind::Io),
            ("57014", DbKind::Busy),
            ("40001", DbKind::Busy),
            ("25006", DbKind::ReadOnly),
            ("28P01", DbKind::CannotOpen),
            ("3F000", DbKind::Schema),
            ("XX001", DbKind::Corrupt),
            ("23505", DbKind::Other),
        ] {
            assert_eq!(kind_of_state(state), kind, "{state}");
        }
    }
}

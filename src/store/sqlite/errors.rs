//! SQLite's errors as the crate's: each result code as a [`DbKind`], with
//! a message that says what to do.

use crate::error::{DbError, DbKind, Error};
use crate::seal::SealError;
use rusqlite::{ffi, ErrorCode};

/// SQLite's own "database is locked" error, for a write that could not get
/// this process's turn within the busy timeout.
pub(super) fn busy() -> Error {
    db_err(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_BUSY),
        Some("database is locked".into()),
    ))
}

/// Turns SQLite's errors into the crate's: [`Error::DiskFull`] when the
/// disk is full, else [`Error::Db`] with what to do.
pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    let kind = kind_of(&e);
    let err = DbError::caused_by(kind, e).with_message(hint(kind));
    match kind {
        DbKind::DiskFull => Error::DiskFull(err),
        _ => Error::Db(err),
    }
}

/// A sealed column value that does not open with the key:
/// `credential '{id}', {column}: …`.
pub(super) fn sealed(id: &str, column: &str, e: SealError) -> Error {
    Error::Db(
        DbError::caused_by(DbKind::Sealed, e).with_context(format!("credential '{id}', {column}")),
    )
}

/// What kind of trouble a SQLite error is.
pub(super) fn kind_of(e: &rusqlite::Error) -> DbKind {
    match e {
        // No room to grow the -shm file.
        rusqlite::Error::SqliteFailure(f, _) if f.extended_code == ffi::SQLITE_IOERR_SHMSIZE => {
            DbKind::DiskFull
        }
        _ => match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => DbKind::DiskFull,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DbKind::Busy,
            Some(ErrorCode::ReadOnly) => DbKind::ReadOnly,
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => DbKind::Corrupt,
            Some(ErrorCode::CannotOpen) => DbKind::CannotOpen,
            Some(ErrorCode::SystemIoFailure) => DbKind::Io,
            _ => DbKind::Other,
        },
    }
}

/// What to do about a kind of SQLite error; empty where SQLite's own
/// message says it all (and for a full disk, which
/// [`Error::DiskFull`] says).
fn hint(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Busy => {
            "the database stayed locked by another process past the busy timeout; retry"
        }
        DbKind::ReadOnly => {
            "the database is read-only; check the file's and its directory's permissions"
        }
        DbKind::Corrupt => "the file is not a tokenwarden database, or it is corrupt",
        DbKind::CannotOpen => "the database file cannot be opened",
        DbKind::Io => "an I/O error hit the database file",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: i32, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message.into()))
    }

    /// Each SQLite condition's message, codes and kind, pinned, with
    /// SQLite's error kept beneath.
    #[test]
    fn each_sqlite_condition_says_what_to_do() {
        let cases = [
            (
                failure(ffi::SQLITE_BUSY, "database is locked"),
                "database: the database stayed locked by another process past the busy \
                 timeout; retry (database is locked)",
                "database",
                DbKind::Busy,
            ),
            (
                failure(ffi::SQLITE_LOCKED, "database table is locked"),
                "database: the database stayed locked by another process past the busy \
                 timeout; retry (database table is locked)",
                "database",
                DbKind::Busy,
            ),
            (
                failure(ffi::SQLITE_READONLY, "attempt to write a readonly database"),
                "database: the database is read-only; check the file's and its directory's \
                 permissions (attempt to write a readonly database)",
                "database",
                DbKind::ReadOnly,
            ),
            (
                failure(ffi::SQLITE_NOTADB, "file is not a database"),
                "database: the file is not a tokenwarden database, or it is corrupt (file is \
                 not a database)",
                "database",
                DbKind::Corrupt,
            ),
            (
                failure(ffi::SQLITE_CORRUPT, "database disk image is malformed"),
                "database: the file is not a tokenwarden database, or it is corrupt (database \
                 disk image is malformed)",
                "database",
                DbKind::Corrupt,
            ),
            (
                failure(ffi::SQLITE_CANTOPEN, "unable to open database file"),
                "database: the database file cannot be opened (unable to open database file)",
                "database",
                DbKind::CannotOpen,
            ),
            (
                failure(ffi::SQLITE_IOERR_FSYNC, "disk I/O error"),
                "database: an I/O error hit the database file (disk I/O error)",
                "database",
                DbKind::Io,
            ),
            (
                failure(ffi::SQLITE_FULL, "database or disk is full"),
                "database: the disk is full; free some space and retry (nothing was written) \
                 (database or disk is full)",
                "disk_full",
                DbKind::DiskFull,
            ),
            (
                failure(ffi::SQLITE_IOERR_SHMSIZE, "disk I/O error"),
                "database: the disk is full; free some space and retry (nothing was written) \
                 (disk I/O error)",
                "disk_full",
                DbKind::DiskFull,
            ),
            (
                failure(
                    ffi::SQLITE_CONSTRAINT_UNIQUE,
                    "UNIQUE constraint failed: t.x",
                ),
                "database: UNIQUE constraint failed: t.x",
                "database",
                DbKind::Other,
            ),
            (
                rusqlite::Error::QueryReturnedNoRows,
                "database: Query returned no rows",
                "database",
                DbKind::Other,
            ),
        ];
        for (e, message, code, kind) in cases {
            let e = db_err(e);
            assert_eq!(e.to_string(), message, "{e:?}");
            assert_eq!((e.exit_code(), e.code()), (1, code), "{e:?}");
            let (Error::Db(db) | Error::DiskFull(db)) = &e else {
                panic!("not a database error: {e:?}");
            };
            assert_eq!(db.kind(), kind, "{e:?}");
            let below = std::error::Error::source(db).expect("SQLite's error is kept");
            assert!(below.downcast_ref::<rusqlite::Error>().is_some(), "{e:?}");
        }
        let e = busy();
        assert_eq!(
            e.to_string(),
            "database: the database stayed locked by another process past the busy timeout; \
             retry (database is locked)"
        );
    }
}

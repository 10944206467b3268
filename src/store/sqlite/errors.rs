//! SQLite's errors as the crate's: messages that say what to do.

use crate::error::Error;
use rusqlite::ErrorCode;

/// The same database error again, for each op of a batch that failed as a
/// whole (the store fails only with these two).
pub(super) fn copy_of(e: &Error) -> Error {
    match e {
        Error::DiskFull(m) => Error::DiskFull(m.clone()),
        Error::Db(m) => Error::Db(m.clone()),
        other => Error::Db(other.to_string()),
    }
}

/// SQLite's own "database is locked" error, for a write that could not get
/// this process's turn within the busy timeout.
pub(super) fn busy() -> Error {
    db_err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("database is locked".into()),
    ))
}

/// Turns SQLite's errors into messages that say what to do.
pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    /// SQLITE_IOERR_SHMSIZE: no room to grow the -shm file.
    const IOERR_SHMSIZE: i32 = 4874;
    let extended = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    };
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => return Error::DiskFull(e.to_string()),
        _ if extended == Some(IOERR_SHMSIZE) => return Error::DiskFull(e.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database stayed locked by another process past the busy timeout; retry"
        }
        Some(ErrorCode::ReadOnly) => {
            "the database is read-only; check the file's and its directory's permissions"
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            "the file is not a tokenwarden database, or it is corrupt"
        }
        Some(ErrorCode::CannotOpen) => "the database file cannot be opened",
        Some(ErrorCode::SystemIoFailure) => "an I/O error hit the database file",
        _ => "",
    };
    if hint.is_empty() {
        Error::Db(e.to_string())
    } else {
        Error::Db(format!("{hint} ({e})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: i32, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message.into()))
    }

    /// Each SQLite condition's message and codes, pinned.
    #[test]
    fn each_sqlite_condition_says_what_to_do() {
        let cases = [
            (
                failure(ffi::SQLITE_BUSY, "database is locked"),
                "database: the database stayed locked by another process past the busy \
                 timeout; retry (database is locked)",
                "database",
            ),
            (
                failure(ffi::SQLITE_LOCKED, "database table is locked"),
                "database: the database stayed locked by another process past the busy \
                 timeout; retry (database table is locked)",
                "database",
            ),
            (
                failure(ffi::SQLITE_READONLY, "attempt to write a readonly database"),
                "database: the database is read-only; check the file's and its directory's \
                 permissions (attempt to write a readonly database)",
                "database",
            ),
            (
                failure(ffi::SQLITE_NOTADB, "file is not a database"),
                "database: the file is not a tokenwarden database, or it is corrupt (file is \
                 not a database)",
                "database",
            ),
            (
                failure(ffi::SQLITE_CORRUPT, "database disk image is malformed"),
                "database: the file is not a tokenwarden database, or it is corrupt (database \
                 disk image is malformed)",
                "database",
            ),
            (
                failure(ffi::SQLITE_CANTOPEN, "unable to open database file"),
                "database: the database file cannot be opened (unable to open database file)",
                "database",
            ),
            (
                failure(ffi::SQLITE_IOERR_FSYNC, "disk I/O error"),
                "database: an I/O error hit the database file (disk I/O error)",
                "database",
            ),
            (
                failure(ffi::SQLITE_FULL, "database or disk is full"),
                "database: the disk is full; free some space and retry (nothing was written) \
                 (database or disk is full)",
                "disk_full",
            ),
            (
                failure(ffi::SQLITE_IOERR_SHMSIZE, "disk I/O error"),
                "database: the disk is full; free some space and retry (nothing was written) \
                 (disk I/O error)",
                "disk_full",
            ),
            (
                failure(
                    ffi::SQLITE_CONSTRAINT_UNIQUE,
                    "UNIQUE constraint failed: t.x",
                ),
                "database: UNIQUE constraint failed: t.x",
                "database",
            ),
            (
                rusqlite::Error::QueryReturnedNoRows,
                "database: Query returned no rows",
                "database",
            ),
        ];
        for (e, message, code) in cases {
            let e = db_err(e);
            assert_eq!(e.to_string(), message, "{e:?}");
            assert_eq!((e.exit_code(), e.code()), (1, code), "{e:?}");
        }
        let e = busy();
        assert_eq!(
            e.to_string(),
            "database: the database stayed locked by another process past the busy timeout; \
             retry (database is locked)"
        );
    }
}

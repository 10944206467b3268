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

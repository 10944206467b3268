//! Opening a database file: permissions, pragmas, and migrations keyed by
//! `PRAGMA user_version`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::Connection;

use crate::error::{DbError, DbKind, Error, IoError, Result};

/// Each entry takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../schema.sql"),
    include_str!("../../../migrations/0002_lease_clock_and_fingerprints.sql"),
    include_str!("../../../migrations/0003_pools_cooldowns_notifications.sql"),
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates the file with mode 0600 if it does not exist, so no other user
/// can ever read it; SQLite gives its -wal and -shm files the same mode.
///
/// The descriptor this opens is closed at once, and closing a descriptor
/// drops every SQLite lock the process holds on that file (POSIX advisory
/// locks belong to the process). So it only ever opens a file it creates
/// itself (`O_EXCL`: an existing database, which a connection of this
/// process may have open and locked, is never opened here), and creating
/// files takes turns within the process, so another store of this process
/// cannot open the new file between its creation and that close (stores
/// open their connection only after this returns).
pub fn create_private(path: &Path) -> Result<()> {
    static CREATING: parking_lot::Mutex<()> = parking_lot::const_mutex(());
    let _turn = CREATING.lock();
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let missing = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            );
            return Err(IoError::with_path("cannot create database", path, missing).into());
        }
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => {
            drop(file);
            Ok(())
        }
        // Created meanwhile by another process: nothing was opened.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::with_path("cannot create database", path, e).into()),
    }
}

/// Warns when others can read the database file (its tokens) or replace
/// it (a directory others can write, without the sticky bit). A directory
/// others can merely list is common (a home directory) and only noted.
pub fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode());
    if let Some(m) = mode(path).filter(|m| m & 0o077 != 0) {
        log::warn!(
            "database {} is readable by others (mode {:o}); run `chmod 600` on it",
            path.display(),
            m & 0o777
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match mode(dir) {
        Some(m) if m & 0o022 != 0 && m & 0o1000 == 0 => log::warn!(
            "the database's directory {} is writable by others (mode {:o}): they could replace it",
            dir.display(),
            m & 0o777
        ),
        Some(m) if m & 0o044 != 0 => log::info!(
            "the database's directory {} is readable by others (mode {:o})",
            dir.display(),
            m & 0o777
        ),
        _ => {}
    }
}

/// Per-connection settings: every pooled connection runs this.
pub fn configure(conn: &Connection, busy_timeout_ms: u64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(busy_timeout_ms))?;
    // FULL: a rotated refresh token must survive a power cut once committed,
    // or the login is burnt. Writes are rare (one per refresh), reads are not
    // affected.
    conn.execute_batch(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA cache_size = -256;",
    )
}

/// Brings the file at `conn` to [`VERSION`], refusing files that are not
/// tokenwarden databases or come from a newer release.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let shown = path.display();
    let err = |e: rusqlite::Error| match super::errors::db_err(e) {
        Error::Db(d) => Error::Db(d.with_context(shown.to_string())),
        other => other,
    };
    // Read-only checks first: nothing is written to a file that is refused,
    // and an up-to-date database is opened without taking a write lock.
    let version = |c: &Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    let found = version(conn).map_err(err)?;
    if found > VERSION {
        return Err(Error::Db(DbError::new(
            DbKind::Schema,
            format!(
                "{shown} has schema version {found}, newer than this build's {VERSION}; \
                 upgrade tokenwarden"
            ),
        )));
    }
    if found == 0 {
        let foreign: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if foreign > 0 {
            return Err(Error::Db(DbError::new(
                DbKind::Schema,
                format!("{shown} holds tables of another application; pass another --db"),
            )));
        }
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("{shown}: journal mode is {mode}, not WAL");
        }
    }
    if found == VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    // Another process may have migrated while this one waited for the lock.
    let current = version(&tx).map_err(err)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| {
            let step = format!("migrating {shown} to schema version {}", i + 1);
            Error::Db(DbError::caused_by(super::errors::kind_of(&e), e).with_context(step))
        })?;
    }
    if current < VERSION {
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(err)?;
    }
    tx.commit().map_err(err)
}

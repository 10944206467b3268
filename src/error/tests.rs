//! Every variant's message, exit code and API code, pinned: these are what
//! users, scripts and API clients see, so a change to any of them is a
//! change to the interface.

use super::*;
use std::error::Error as _;

fn os(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

/// (error, its message, its exit code, its API code)
fn table() -> Vec<(Error, &'static str, i32, &'static str)> {
    let mut rows = vec![
        (
            Error::NotFound("a".into()),
            "unknown credential 'a'; `tokenwarden list` shows the ids there are",
            3,
            "not_found",
        ),
        (
            Error::Dead {
                id: "a".into(),
                provider: crate::credential::ProviderKind::Claude,
                reason: "invalid_grant".into(),
            },
            "credential 'a' is dead (invalid_grant): sign in again with `tokenwarden login claude \
             --id a` (or import a newer login file with --replace), or retry with \
             `tokenwarden refresh a --force`",
            4,
            "credential_dead",
        ),
        (
            // An id that starts with '-': both commands run as printed.
            Error::Dead {
                id: "-d".into(),
                provider: crate::credential::ProviderKind::Codex,
                reason: "invalid_grant".into(),
            },
            "credential '-d' is dead (invalid_grant): sign in again with `tokenwarden login codex \
             --id=-d` (or import a newer login file with --replace), or retry with \
             `tokenwarden refresh --force -- -d`",
            4,
            "credential_dead",
        ),
        (
            Error::Unavailable {
                id: "a".into(),
                message: "upstream answered 503".into(),
                retry_after_s: 7,
            },
            "credential 'a' is temporarily unavailable: upstream answered 503; retry in 7 s",
            5,
            "unavailable",
        ),
        (
            Error::BadInput("--token is empty".into()),
            "--token is empty",
            2,
            "bad_request",
        ),
        (
            Error::Exists("a".into()),
            "credential 'a' already exists; pass --replace (HTTP: ?replace=1) to overwrite it",
            1,
            "exists",
        ),
        (
            Error::Config("pool size must be at least 1".into()),
            "configuration: pool size must be at least 1",
            2,
            "config_error",
        ),
        (
            Error::EmptyPool("p".into()),
            "pool 'p' has no members; add one with `tokenwarden pool add ID p` \
             (or `tokenwarden import FILE --pool p`)",
            3,
            "pool_empty",
        ),
        (
            Error::PoolUnavailable {
                pool: "p".into(),
                members: "a: dead, b: cooling down".into(),
                retry_after_s: Some(9),
            },
            "pool 'p' has no usable member right now: a: dead, b: cooling down; retry in 9 s",
            5,
            "pool_unavailable",
        ),
        (
            Error::PoolUnavailable {
                pool: "p".into(),
                members: "a: dead".into(),
                retry_after_s: None,
            },
            "pool 'p' has no usable member right now: a: dead; every member needs a human \
             (`tokenwarden list --pool NAME` shows why)",
            5,
            "pool_unavailable",
        ),
        (
            Error::NoQuota("a".into()),
            "no quota snapshot for 'a' yet; fetch one with `tokenwarden quota a --refresh`",
            1,
            "no_quota",
        ),
        (
            Error::QuotaUnsupported {
                id: "a".into(),
                provider: "google".into(),
            },
            "credential 'a' is a google credential, which has no quota endpoint",
            1,
            "quota_unsupported",
        ),
        (
            Error::RefreshInProgress {
                id: "a".into(),
                retry_after_s: 3,
            },
            "credential 'a' is being refreshed right now; changing it mid-refresh could get its \
             refresh token sent twice and the login revoked. Nothing was changed; retry in 3 s \
             (if it stays so, another tokenwarden process is refreshing it, or one that crashed \
             left it: `tokenwarden token a` settles that)",
            1,
            "refresh_in_progress",
        ),
        (
            Error::SpentToken {
                id: "b".into(),
                spent_by: "a".into(),
                at: "2025-01-01T00:00:00Z".into(),
                how: Spent::Rotated,
            },
            "refusing to import 'b': its refresh token is spent, it was rotated away by a refresh \
             of credential 'a' at 2025-01-01T00:00:00Z. Providers that rotate refresh tokens \
             treat a spent one that comes back as stolen and revoke the whole login, so \
             importing it would log out every copy of that account. 'b' was not imported; \
             import a newer file (while 'a' exists, `tokenwarden export a --format codex` writes \
             its current token) or log in again",
            1,
            "refresh_token_spent",
        ),
        (
            Error::TokenHeldElsewhere {
                id: "b".into(),
                holder: "a".into(),
            },
            "refusing to import 'b': credential 'a' already holds this refresh token. Under two \
             ids it would be refreshed twice, and the second refresh is reuse: the provider \
             revokes the login. 'b' was not imported; use 'a' (`tokenwarden token a`), or move \
             it: `tokenwarden delete a`, then import again",
            1,
            "refresh_token_in_use",
        ),
        (
            Error::InRecord {
                index: 1,
                imported: 0,
                source: Box::new(Error::TokenHeldElsewhere {
                    id: "h2".into(),
                    holder: "a".into(),
                }),
            },
            "record 2 of the array: refusing to import 'h2': credential 'a' already holds this \
             refresh token. Under two ids it would be refreshed twice, and the second refresh is \
             reuse: the provider revokes the login. 'h2' was not imported; use 'a' (`tokenwarden \
             token a`), or move it: `tokenwarden delete a`, then import again; nothing was \
             imported",
            1,
            "refresh_token_in_use",
        ),
        (
            Error::InRecord {
                index: 2,
                imported: 2,
                source: Box::new(Error::BadInput("bad credential id".into())),
            },
            "record 3 of the array: bad credential id; the 2 records before it were imported",
            2,
            "bad_request",
        ),
        (
            Error::PartlyImported {
                refused: 3,
                imported: 9_998,
                total: 10_001,
            },
            "3 of 10001 records were refused (each is named above); the other 9998 were \
             imported. Fix or remove the refused ones and import them again",
            1,
            "partly_imported",
        ),
        (
            Error::PartlyImported {
                refused: 2,
                imported: 0,
                total: 2,
            },
            "2 of 2 records were refused (each is named above); none was imported. Fix or \
             remove the refused ones and import them again",
            1,
            "partly_imported",
        ),
        (
            Error::DiskFull(DbError::caused_by(
                DbKind::DiskFull,
                "database or disk is full",
            )),
            "database: the disk is full; free some space and retry (nothing was written) \
             (database or disk is full)",
            1,
            "disk_full",
        ),
    ];
    // The database's own conditions (SQLite's are pinned in
    // store/sqlite/errors.rs, code by code), and broken invariants.
    let database = vec![
        (
            Error::Db(
                DbError::caused_by(DbKind::NoConnection, "timed out waiting for connection")
                    .with_context("no database connection"),
            ),
            "database: no database connection: timed out waiting for connection",
        ),
        (
            Error::Db(DbError::new(
                DbKind::Schema,
                "/d/t.db has schema version 99, newer than this build's 3; upgrade tokenwarden",
            )),
            "database: /d/t.db has schema version 99, newer than this build's 3; upgrade \
             tokenwarden",
        ),
        (
            Error::Db(DbError::new(
                DbKind::Schema,
                "/d/t.db holds tables of another application; pass another --db",
            )),
            "database: /d/t.db holds tables of another application; pass another --db",
        ),
        (
            Error::Db(
                DbError::caused_by(DbKind::Other, "near \"x\": syntax error")
                    .with_context("migrating /d/t.db to schema version 2"),
            ),
            "database: migrating /d/t.db to schema version 2: near \"x\": syntax error",
        ),
        (
            Error::Db(
                DbError::caused_by(DbKind::Sealed, crate::seal::SealError::Open)
                    .with_context("credential 'a', refresh_token"),
            ),
            "database: credential 'a', refresh_token: a sealed value does not open with this \
             key (wrong key, or the value was altered)",
        ),
        (
            Error::Db(DbError::new(
                DbKind::Corrupt,
                "the refresh-token fingerprint key in the database's meta table is not base64",
            )),
            "database: the refresh-token fingerprint key in the database's meta table is not \
             base64",
        ),
        // Broken invariants.
        (
            Error::Internal("updated row vanished"),
            "database: updated row vanished",
        ),
        (
            Error::Internal("imported row vanished"),
            "database: imported row vanished",
        ),
        (
            Error::Internal("replaced row vanished"),
            "database: replaced row vanished",
        ),
        (
            // Was "database: a: served row has no access token": the id is
            // logged now, as a fixed string cannot hold it.
            Error::Internal("served row has no access token"),
            "database: served row has no access token",
        ),
        (
            Error::Internal("the write failed unexpectedly; retry"),
            "database: the write failed unexpectedly; retry",
        ),
    ];
    // Files, sockets, threads, randomness.
    let io = vec![
        (
            IoError::with_path("cannot read", "/d/in.json", os(2)).into(),
            "cannot read /d/in.json: No such file or directory (os error 2)",
        ),
        (
            IoError::with_path("cannot read key file", "/d/key", os(2)).into(),
            "cannot read key file /d/key: No such file or directory (os error 2)",
        ),
        (
            IoError::with_path("cannot write", "/d/out.json", os(13)).into(),
            "cannot write /d/out.json: Permission denied (os error 13)",
        ),
        (
            IoError::with_path(
                "cannot create database",
                "/d/x/t.db",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "directory /d/x does not exist",
                ),
            )
            .into(),
            "cannot create database /d/x/t.db: directory /d/x does not exist",
        ),
        (
            IoError::with_path("cannot create database", "/d/t.db", os(13)).into(),
            "cannot create database /d/t.db: Permission denied (os error 13)",
        ),
        (
            IoError::new(format!("cannot listen on {}", "127.0.0.1:1"), os(98)).into(),
            "cannot listen on 127.0.0.1:1: Address already in use (os error 98)",
        ),
        (
            IoError::new("cannot start the signal thread", os(11)).into(),
            "cannot start the signal thread: Resource temporarily unavailable (os error 11)",
        ),
        (
            IoError::new(
                "no randomness from the OS",
                getrandom::Error::UNSUPPORTED.to_string(),
            )
            .into(),
            "no randomness from the OS: getrandom: this target is not supported",
        ),
        (
            // A JSON printer's failure: the source alone.
            IoError::new("", serde_json::from_str::<u8>("x").unwrap_err()).into(),
            "expected value at line 1 column 1",
        ),
    ];
    // A database out of reach is the store's passing trouble, not the
    // credential's: 503 `store_unavailable` / exit 5, like `unavailable`.
    rows.extend(database.into_iter().map(|(e, m)| match &e {
        Error::Db(d) if d.kind() == DbKind::NoConnection => (e, m, 5, "store_unavailable"),
        _ => (e, m, 1, "database"),
    }));
    rows.extend(io.into_iter().map(|(e, m)| (e, m, 1, "io")));
    rows
}

#[test]
fn every_message_and_code_is_pinned() {
    for (e, message, exit, code) in table() {
        assert_eq!(e.to_string(), message, "{e:?}");
        assert_eq!((e.exit_code(), e.code()), (exit, code), "{e:?}");
    }
}

/// A clone says the same, and keeps its kind and source.
#[test]
fn errors_clone_whole() {
    for (e, message, _, _) in table() {
        let copy = e.clone();
        assert_eq!(copy.to_string(), message);
        assert_eq!(
            copy.source().map(|s| s.to_string()),
            e.source().map(|s| s.to_string())
        );
    }
}

/// A database error's source is its [`DbError`], whose source is the
/// backend's own error.
#[test]
fn database_errors_keep_their_kind_and_source() {
    let e = Error::Db(
        DbError::caused_by(DbKind::Busy, os(11))
            .with_message("retry")
            .with_context("/d/t.db"),
    );
    let Error::Db(db) = &e else { unreachable!() };
    assert_eq!(db.kind(), DbKind::Busy);
    let db = e.source().expect("Db has a source");
    assert!(db.downcast_ref::<DbError>().is_some());
    let below = db.source().expect("DbError keeps the backend's error");
    assert_eq!(
        below
            .downcast_ref::<std::io::Error>()
            .map(|e| e.raw_os_error()),
        Some(Some(11))
    );
    assert!(
        Error::DiskFull(DbError::caused_by(DbKind::DiskFull, os(28)))
            .source()
            .is_some()
    );
    assert!(Error::Db(DbError::new(DbKind::Schema, "x"))
        .source()
        .is_some());
    assert!(Error::Internal("x").source().is_none());
}

/// Contexts read outermost first.
#[test]
fn contexts_nest_outermost_first() {
    let e = DbError::caused_by(DbKind::Other, "boom")
        .with_context("inner")
        .with_context("outer");
    assert_eq!(e.to_string(), "outer: inner: boom");
}

/// An I/O error's source is the `io::Error` itself, and its path is kept.
#[test]
fn io_errors_keep_their_path_and_source() {
    let e = Error::from(IoError::with_path("cannot read", "/d/in.json", os(2)));
    let Error::Io(io) = &e else { unreachable!() };
    assert_eq!(io.path(), Some(Path::new("/d/in.json")));
    assert_eq!(io.io_kind(), Some(std::io::ErrorKind::NotFound));
    let source = e.source().expect("Io has a source");
    assert_eq!(
        source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotFound)
    );
    let thread = IoError::new("cannot start the exit thread", os(11));
    assert_eq!(thread.path(), None);
}

/// The sites themselves say what the table pins: a database in a missing
/// directory, a file that cannot be written.
#[test]
fn the_sites_say_what_the_table_pins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("gone");
    let db = missing.join("t.db");
    let Err(e) = crate::Warden::open(&db, crate::Config::default()) else {
        panic!("opened a database in a missing directory");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create database {}: directory {} does not exist",
            db.display(),
            missing.display()
        )
    );
    assert_eq!((e.exit_code(), e.code()), (1, "io"));
    let Error::Io(io) = &e else { unreachable!() };
    assert_eq!(io.path(), Some(db.as_path()));
    assert_eq!(io.io_kind(), Some(std::io::ErrorKind::NotFound));

    let out = missing.join("out.json");
    let e = crate::cli::write_private(&out, b"{}").expect_err("no directory to write in");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: No such file or directory (os error 2)",
            out.display()
        )
    );
}

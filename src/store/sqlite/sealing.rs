//! Encryption at rest in the store: which columns are sealed, the key check
//! at open, and converting a whole database (`encrypt`, `rekey`) in one
//! transaction — so a crash leaves it entirely before or entirely after.

use std::path::Path;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::errors::{db_err, sealed};
use super::fingerprint;
use super::schema;
use crate::error::{Error, Result};
use crate::seal::{is_sealed, Sealer};
pub(crate) use crate::store::codec::{Codec, SECRET_COLUMNS};

use crate::store::codec::KEY_CHECK as CHECK;

fn key_check(conn: &rusqlite::Connection) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
        r.get(0)
    })
    .optional()
    .map_err(db_err)
}

fn verify(sealer: &Sealer, check: &str, path: &Path) -> Result<()> {
    match sealer.open("", "key_check", check) {
        Ok(v) if v == CHECK => Ok(()),
        _ => Err(Error::Config(format!(
            "the encryption key does not open {}; use the key it was encrypted with",
            path.display()
        ))),
    }
}

/// Refuses a key that does not fit the database; seals a new, empty
/// database with the key it is first opened with.
pub(super) fn check_key(
    conn: &mut rusqlite::Connection,
    path: &Path,
    sealer: Option<&Sealer>,
) -> Result<()> {
    let shown = path.display();
    match (sealer, key_check(conn)?) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::Config(format!(
            "{shown} is encrypted; set TOKENWARDEN_ENCRYPTION_KEY or pass --encryption-key-file"
        ))),
        (Some(s), Some(check)) => verify(s, &check, path),
        (Some(s), None) => {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let rows: i64 = tx
                .query_row("SELECT count(*) FROM credentials", [], |r| r.get(0))
                .map_err(db_err)?;
            if rows > 0 {
                return Err(Error::Config(format!(
                    "{shown} is not encrypted; run `tokenwarden encrypt` to seal it with this key"
                )));
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                [s.seal("", "key_check", CHECK)],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        }
    }
}

/// Rewrites every secret column of every row through `convert`, and the
/// key check to `new`, in one transaction. Returns the rows converted.
fn convert_all(
    path: &Path,
    busy_ms: u64,
    expect_encrypted: Option<&Sealer>,
    convert: impl Fn(&str, &str, String) -> Result<String>,
    new: &Sealer,
) -> Result<usize> {
    schema::create_private(path)?;
    let mut conn = rusqlite::Connection::open(path).map_err(db_err)?;
    schema::configure(&conn, busy_ms).map_err(db_err)?;
    schema::migrate(&mut conn, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    match (expect_encrypted, key_check(&tx)?) {
        (None, Some(_)) => {
            return Err(Error::Config(format!(
                "{} is already encrypted; use `tokenwarden rekey` to change its key",
                path.display()
            )))
        }
        (Some(_), None) => {
            return Err(Error::Config(format!(
                "{} is not encrypted; use `tokenwarden encrypt`",
                path.display()
            )))
        }
        (Some(old), Some(check)) => verify(old, &check, path)?,
        (None, None) => {}
    }
    // A refresh in flight (or one whose owner may still be committing
    // after its lease ran out) writes with the key it opened the database
    // with: converting under it would leave that commit unreadable, or
    // refuse it and lose the rotated token. Refused instead; the check and
    // the conversion are one write transaction, so no claim slips between.
    let refreshing: Option<String> = tx
        .query_row(
            "SELECT id FROM credentials WHERE state = 'refreshing' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    if let Some(id) = refreshing {
        return Err(Error::RefreshInProgress {
            id,
            retry_after_s: 1,
        });
    }
    let select = format!(
        "SELECT id, {} FROM credentials",
        SECRET_COLUMNS.map(|(_, c)| c).join(", ")
    );
    let rows: Vec<(String, Vec<Option<String>>)> = {
        let mut stmt = tx.prepare(&select).map_err(db_err)?;
        let mapped = stmt
            .query_map([], |r| {
                let values = (1..=SECRET_COLUMNS.len())
                    .map(|i| r.get(i))
                    .collect::<rusqlite::Result<Vec<Option<String>>>>()?;
                Ok((r.get(0)?, values))
            })
            .map_err(db_err)?;
        mapped.collect::<rusqlite::Result<_>>().map_err(db_err)?
    };
    let update = format!(
        "UPDATE credentials SET {} WHERE id = ?1",
        SECRET_COLUMNS
            .iter()
            .enumerate()
            .map(|(n, (_, c))| format!("{c} = ?{}", n + 2))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (id, values) in &rows {
        let mut sealed = Vec::with_capacity(values.len());
        for ((_, column), value) in SECRET_COLUMNS.iter().zip(values) {
            sealed.push(match value {
                Some(v) => Some(convert(id, column, v.clone())?),
                None => None,
            });
        }
        tx.execute(
            &update,
            params![id, sealed[0], sealed[1], sealed[2], sealed[3], sealed[4]],
        )
        .map_err(db_err)?;
    }
    // The refresh-token fingerprint key is sealed like a column.
    fingerprint::convert_key(&tx, &convert)?;
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('key_check', ?1)",
        [new.seal("", "key_check", CHECK)],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(rows.len())
}

/// Seals every secret of a plain database with `key`, in one transaction.
/// Stop other tokenwarden processes first: one still running without the
/// key would write plain values again.
pub fn encrypt_in_place(path: &Path, busy_timeout_ms: u64, key: &Sealer) -> Result<usize> {
    convert_all(
        path,
        busy_timeout_ms,
        None,
        |id, col, v| {
            Ok(if is_sealed(&v) {
                v
            } else {
                key.seal(id, col, &v)
            })
        },
        key,
    )
}

/// Re-seals every secret from `old` to `new`, in one transaction.
pub fn rekey(path: &Path, busy_timeout_ms: u64, old: &Sealer, new: &Sealer) -> Result<usize> {
    convert_all(
        path,
        busy_timeout_ms,
        Some(old),
        |id, col, v| {
            let plain = if is_sealed(&v) {
                old.open(id, col, &v).map_err(|e| sealed(id, col, e))?
            } else {
                v
            };
            Ok(new.seal(id, col, &plain))
        },
        new,
    )
}

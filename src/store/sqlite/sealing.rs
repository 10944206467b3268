//! Encryption at rest in the store: which columns are sealed, the key check
//! at open, and converting a whole database (`encrypt`, `rekey`) in one
//! transaction — so a crash leaves it entirely before or entirely after.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::errors::{db_err, sealed};
use super::fingerprint::{self, FpKey};
use super::schema;
use crate::error::{Error, Result};
use crate::seal::{is_sealed, Sealer};
use crate::secret::Secret;

/// The secret columns, by their index in the store's column list.
const SECRET_COLUMNS: [(usize, &str); 5] = [
    (4, "access_token"),
    (5, "refresh_token"),
    (6, "id_token"),
    (10, "client_secret"),
    (14, "api_key"),
];

/// The plain text sealed as the key check.
const CHECK: &str = "tokenwarden";

/// The column name of index `i` (for the associated data).
pub(super) fn column(i: usize) -> &'static str {
    SECRET_COLUMNS
        .iter()
        .find(|(idx, _)| *idx == i)
        .map_or("?", |(_, name)| name)
}

/// Seals on write and opens on read, or passes values through when the
/// database is not encrypted; and fingerprints refresh tokens with the
/// database's key (see [`super::fingerprint`]). The key is loaded at open,
/// or — for a store opened with its start-up writes deferred
/// ([`super::Startup::Deferred`]) — before its first write: reads never
/// need it.
#[derive(Clone)]
pub(super) struct Codec(Option<Arc<Sealer>>, Arc<OnceLock<FpKey>>);

impl Codec {
    pub(super) fn new(sealer: Option<Arc<Sealer>>, fingerprints: Option<FpKey>) -> Codec {
        let key = OnceLock::new();
        if let Some(k) = fingerprints {
            let _ = key.set(k);
        }
        Codec(sealer, Arc::new(key))
    }

    /// The sealer, if the database is encrypted.
    pub(super) fn sealer(&self) -> Option<&Sealer> {
        self.0.as_deref()
    }

    /// Whether the fingerprint key is loaded.
    pub(super) fn has_fingerprints(&self) -> bool {
        self.1.get().is_some()
    }

    /// Sets the fingerprint key loaded before a first write (a key loaded
    /// already stays: it is the database's one key either way).
    pub(super) fn set_fingerprints(&self, key: FpKey) {
        let _ = self.1.set(key);
    }

    pub(super) fn seal(&self, id: &str, column: &str, plain: &str) -> String {
        match &self.0 {
            Some(s) => s.seal(id, column, plain),
            None => plain.to_owned(),
        }
    }

    /// The keyed fingerprint of a refresh token.
    pub(super) fn fingerprint(&self, refresh_token: &str) -> Result<String> {
        Ok(self.fingerprints()?.fingerprint(refresh_token))
    }

    /// The fingerprint key, for the writes that keep fingerprints current.
    /// Every write connection comes from `Sqlite::writer`, which loads it
    /// first, so it is missing only if that rule was broken.
    pub(super) fn fingerprints(&self) -> Result<&FpKey> {
        self.1.get().ok_or(Error::Internal(
            "the fingerprint key was not loaded before a write",
        ))
    }

    /// Opens a stored value. A plain value in an encrypted database (written
    /// by a process without the key) is accepted as it is.
    pub(super) fn open(
        &self,
        id: &str,
        column: &str,
        stored: String,
        idx: usize,
    ) -> rusqlite::Result<Secret> {
        match (&self.0, is_sealed(&stored)) {
            (Some(s), true) => s.open(id, column, &stored).map(Secret::new).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    idx,
                    rusqlite::types::Type::Text,
                    e.into(),
                )
            }),
            (None, true) => Err(rusqlite::Error::FromSqlConversionFailure(
                idx,
                rusqlite::types::Type::Text,
                "the value is encrypted and no key is configured".into(),
            )),
            (_, false) => Ok(Secret::new(stored)),
        }
    }
}

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

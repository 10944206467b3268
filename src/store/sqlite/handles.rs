//! Facade handles: the hashes of the opaque tokens Codex CLIs present,
//! which credential each stands for, and their use and revocation.

use rusqlite::{params, ErrorCode, OptionalExtension, Row};

use super::conn::Sync;
use super::errors::db_err;
use super::pools::append_side_event;
use super::Sqlite;
use crate::error::{Error, Result};
use crate::store::sidedata::handle_revoked_reason;
use crate::store::HandleRow;

fn read_handle(r: &Row) -> rusqlite::Result<HandleRow> {
    Ok(HandleRow {
        hash: r.get(0)?,
        credential_id: r.get(1)?,
        label: r.get(2)?,
        created_ms: r.get(3)?,
        last_used_ms: r.get(4)?,
        served_token: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

const HANDLE_COLUMNS: &str =
    "hash, credential_id, label, created_ms, last_used_ms, served_token, revoked_ms";

/// Records a new handle for `credential_id`.
pub(super) fn insert_handle(
    db: &Sqlite,
    hash: &str,
    credential_id: &str,
    label: &str,
    now_ms: i64,
) -> Result<()> {
    db.writer(Sync::Full)?
        .execute(
            "INSERT INTO handles (hash, credential_id, label, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![hash, credential_id, label, now_ms],
        )
        .map(drop)
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => Error::NotFound(credential_id.to_owned()),
            _ => db_err(e),
        })
}

/// The handle with this hash.
pub(super) fn handle(db: &Sqlite, hash: &str) -> Result<Option<HandleRow>> {
    db.conn()?
        .prepare_cached(&format!(
            "SELECT {HANDLE_COLUMNS} FROM handles WHERE hash = ?1"
        ))
        .and_then(|mut s| s.query_row([hash], read_handle).optional())
        .map_err(db_err)
}

/// A credential's handles, oldest first.
pub(super) fn handles(db: &Sqlite, credential_id: &str) -> Result<Vec<HandleRow>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {HANDLE_COLUMNS} FROM handles WHERE credential_id = ?1 ORDER BY created_ms, hash"
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map([credential_id], read_handle)
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

/// Revokes the handles whose hash starts with `hash_prefix` (at least 12
/// hex digits, so one handle is meant); returns how many.
pub(super) fn revoke_handles(
    db: &Sqlite,
    hash_prefix: &str,
    actor: &str,
    now_ms: i64,
) -> Result<usize> {
    db.write_tx(Sync::Full, |tx| {
        let revoked: Vec<(String, String)> = tx
            .prepare(
                "UPDATE handles SET revoked_ms = ?2 WHERE substr(hash, 1, length(?1)) = ?1 \
                 AND revoked_ms IS NULL RETURNING hash, credential_id",
            )
            .and_then(|mut st| {
                st.query_map(params![hash_prefix, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(db_err)?;
        for (hash, id) in &revoked {
            match append_side_event(tx, id, &handle_revoked_reason(hash), actor, now_ms) {
                // A handle may outlive its credential: nothing to note it on.
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(revoked.len())
    })
}

/// Notes that a client was answered with the token whose fingerprint is
/// `served_token`.
pub(super) fn touch_handle(db: &Sqlite, hash: &str, now_ms: i64, served_token: &str) -> Result<()> {
    db.writer(Sync::Full)?
        .prepare_cached("UPDATE handles SET last_used_ms = ?2, served_token = ?3 WHERE hash = ?1")
        .and_then(|mut s| s.execute(params![hash, now_ms, served_token]))
        .map(drop)
        .map_err(db_err)
}

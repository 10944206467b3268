//! Facade handles: hashes of the opaque tokens Codex CLIs present.

use postgres::Row;

use super::errors::pg_err;
use super::pools::append_side_event;
use super::Postgres;
use crate::error::{Error, Result};
use crate::store::sidedata::handle_revoked_reason;
use crate::store::HandleRow;

const HANDLE_COLUMNS: &str =
    "hash, credential_id, label, created_ms, last_used_ms, served_token, revoked_ms";

fn read_handle(r: &Row) -> Result<HandleRow> {
    Ok(HandleRow {
        hash: r.try_get(0).map_err(pg_err)?,
        credential_id: r.try_get(1).map_err(pg_err)?,
        label: r.try_get(2).map_err(pg_err)?,
        created_ms: r.try_get(3).map_err(pg_err)?,
        last_used_ms: r.try_get(4).map_err(pg_err)?,
        served_token: r.try_get(5).map_err(pg_err)?,
        revoked_ms: r.try_get(6).map_err(pg_err)?,
    })
}

pub(super) fn insert_handle(
    db: &Postgres,
    hash: &str,
    credential_id: &str,
    label: &str,
    now_ms: i64,
) -> Result<()> {
    let mut conn = db.conn()?;
    conn.client
        .execute(
            "INSERT INTO handles (hash, credential_id, label, created_ms) VALUES ($1, $2, $3, $4)",
            &[&hash, &credential_id, &label, &now_ms],
        )
        .map(drop)
        .map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
            // foreign_key_violation: no such credential.
            Some("23503") => Error::NotFound(credential_id.to_owned()),
            _ => pg_err(e),
        })
}

pub(super) fn handle(db: &Postgres, hash: &str) -> Result<Option<HandleRow>> {
    let sql = format!("SELECT {HANDLE_COLUMNS} FROM handles WHERE hash = $1");
    db.read(|c| c.client.query_opt(sql.as_str(), &[&hash]))?
        .as_ref()
        .map(read_handle)
        .transpose()
}

pub(super) fn handles(db: &Postgres, credential_id: &str) -> Result<Vec<HandleRow>> {
    let sql = format!(
        "SELECT {HANDLE_COLUMNS} FROM handles WHERE credential_id = $1 ORDER BY created_ms, hash"
    );
    db.read(|c| c.client.query(sql.as_str(), &[&credential_id]))?
        .iter()
        .map(read_handle)
        .collect()
}

pub(super) fn revoke_handles(
    db: &Postgres,
    hash_prefix: &str,
    actor: &str,
    now_ms: i64,
) -> Result<usize> {
    db.write_tx(|tx| {
        let revoked: Vec<(String, String)> = tx
            .query(
                "UPDATE handles SET revoked_ms = $2 WHERE substr(hash, 1, length($1)) = $1 \
                 AND revoked_ms IS NULL RETURNING hash, credential_id",
                &[&hash_prefix, &now_ms],
            )
            .map_err(pg_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
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

pub(super) fn touch_handle(
    db: &Postgres,
    hash: &str,
    now_ms: i64,
    served_token: &str,
) -> Result<()> {
    let mut conn = db.conn()?;
    conn.client
        .execute(
            "UPDATE handles SET last_used_ms = $2, served_token = $3 WHERE hash = $1",
            &[&hash, &now_ms, &served_token],
        )
        .map(drop)
        .map_err(pg_err)
}

//! Quota snapshots: recording one (pruning old history), and the newest per
//! credential.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Row};

use super::conn::Sync;
use super::errors::db_err;
use super::Sqlite;
use crate::error::Result;
use crate::provider::usage::Quota;
use crate::store::QuotaRow;

/// Largest quota answer body kept verbatim.
const QUOTA_BODY_CAP: usize = 64 * 1024;

fn read_quota(r: &Row) -> rusqlite::Result<QuotaRow> {
    let status: String = r.get(2)?;
    let windows: Option<String> = r.get(6)?;
    let credits: Option<String> = r.get(7)?;
    // Written by this module as JSON; unreadable values read as absent.
    let quota = (status == "ok").then(|| Quota {
        plan_type: r.get(4).ok().flatten(),
        limit_reached: r.get::<_, Option<bool>>(5).ok().flatten(),
        windows: windows
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        credits: credits.and_then(|c| serde_json::from_str(&c).ok()),
    });
    Ok(QuotaRow {
        credential_id: r.get(0)?,
        fetched_at_ms: r.get(1)?,
        status,
        http_status: r.get(3)?,
        quota,
        error_message: r.get(8)?,
    })
}

const QUOTA_COLUMNS: &str = "credential_id, fetched_at_ms, status, http_status, plan_type, \
    limit_reached, windows, credits, error_message";

/// Records a quota snapshot (with the raw answer, capped) and prunes
/// that credential's snapshots older than `keep_since_ms`, always
/// keeping the newest.
pub(super) fn insert_quota(
    db: &Sqlite,
    q: &QuotaRow,
    body: Option<&[u8]>,
    keep_since_ms: i64,
) -> Result<()> {
    db.write_tx(Sync::Full, |tx| {
        let quota = q.quota.as_ref();
        let body =
            body.map(|b| String::from_utf8_lossy(&b[..b.len().min(QUOTA_BODY_CAP)]).into_owned());
        tx.prepare_cached(
            "INSERT INTO quota_snapshots (credential_id, fetched_at_ms, status, http_status, \
         plan_type, limit_reached, windows, credits, error_message, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut st| {
            st.execute(params![
                q.credential_id,
                q.fetched_at_ms,
                q.status,
                q.http_status,
                quota.and_then(|q| q.plan_type.as_deref()),
                quota.and_then(|q| q.limit_reached),
                // Serialising plain structs of numbers and strings cannot fail.
                quota.and_then(|q| serde_json::to_string(&q.windows).ok()),
                quota
                    .and_then(|q| q.credits.as_ref())
                    .and_then(|c| serde_json::to_string(c).ok()),
                q.error_message,
                body,
            ])
        })
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM quota_snapshots WHERE credential_id = ?1 AND fetched_at_ms < ?2 \
         AND seq < (SELECT max(seq) FROM quota_snapshots WHERE credential_id = ?1)",
            params![q.credential_id, keep_since_ms],
        )
        .map_err(db_err)?;
        Ok(())
    })
}

/// The newest quota snapshot of a credential.
pub(super) fn latest_quota(db: &Sqlite, id: &str) -> Result<Option<QuotaRow>> {
    latest_on(&*db.conn()?, id)
}

/// [`latest_quota`] on a connection the caller holds (inside its read).
pub(super) fn latest_on(conn: &rusqlite::Connection, id: &str) -> Result<Option<QuotaRow>> {
    conn.prepare_cached(&format!(
        "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE credential_id = ?1 \
             ORDER BY seq DESC LIMIT 1"
    ))
    .and_then(|mut s| s.query_row([id], read_quota).optional())
    .map_err(db_err)
}

/// The newest quota snapshot of every credential that has one.
pub(super) fn latest_quotas(db: &Sqlite) -> Result<HashMap<String, QuotaRow>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE seq IN \
             (SELECT max(seq) FROM quota_snapshots GROUP BY credential_id)"
        ))
        .map_err(db_err)?;
    let rows = stmt.query_map([], read_quota).map_err(db_err)?;
    rows.map(|r| r.map(|q| (q.credential_id.clone(), q)))
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)
}

/// How many quota snapshots a credential has (history depth).
pub(super) fn quota_history_len(db: &Sqlite, id: &str) -> Result<i64> {
    db.conn()?
        .query_row(
            "SELECT count(*) FROM quota_snapshots WHERE credential_id = ?1",
            [id],
            |r| r.get(0),
        )
        .map_err(db_err)
}

/// A credential's newest `limit` snapshots, oldest first.
pub(super) fn quota_history(db: &Sqlite, id: &str, limit: u32) -> Result<Vec<QuotaRow>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {QUOTA_COLUMNS} FROM (SELECT * FROM quota_snapshots WHERE credential_id = ?1 \
             ORDER BY seq DESC LIMIT ?2) ORDER BY seq"
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![id, limit], read_quota)
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

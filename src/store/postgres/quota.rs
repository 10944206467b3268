//! Quota snapshots: recording one (pruning old history), and the newest
//! per credential. The JSON columns are written as SQLite's are.

use std::collections::HashMap;

use postgres::Row;

use super::errors::pg_err;
use super::Postgres;
use crate::error::Result;
use crate::provider::usage::Quota;
use crate::store::QuotaRow;

/// Largest quota answer body kept verbatim (as on SQLite).
const QUOTA_BODY_CAP: usize = 64 * 1024;

pub(super) const QUOTA_COLUMNS: &str =
    "credential_id, fetched_at_ms, status, http_status, plan_type, \
    limit_reached, windows, credits, error_message";

fn read_quota(r: &Row) -> Result<QuotaRow> {
    read_quota_at(r, 0)
}

/// A snapshot read with [`QUOTA_COLUMNS`] starting at column `at`.
pub(super) fn read_quota_at(r: &Row, at: usize) -> Result<QuotaRow> {
    let status: String = r.try_get(at + 2).map_err(pg_err)?;
    let windows: Option<String> = r.try_get(at + 6).map_err(pg_err)?;
    let credits: Option<String> = r.try_get(at + 7).map_err(pg_err)?;
    let quota = (status == "ok").then(|| Quota {
        plan_type: r.try_get(at + 4).ok().flatten(),
        limit_reached: r.try_get::<_, Option<bool>>(at + 5).ok().flatten(),
        windows: windows
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        credits: credits.and_then(|c| serde_json::from_str(&c).ok()),
    });
    let http: Option<i32> = r.try_get(at + 3).map_err(pg_err)?;
    Ok(QuotaRow {
        credential_id: r.try_get(at).map_err(pg_err)?,
        fetched_at_ms: r.try_get(at + 1).map_err(pg_err)?,
        status,
        http_status: http.and_then(|h| u16::try_from(h).ok()),
        quota,
        error_message: r.try_get(at + 8).map_err(pg_err)?,
    })
}

pub(super) fn insert_quota(
    db: &Postgres,
    q: &QuotaRow,
    body: Option<&[u8]>,
    keep_since_ms: i64,
) -> Result<()> {
    let quota = q.quota.as_ref();
    let body =
        body.map(|b| String::from_utf8_lossy(&b[..b.len().min(QUOTA_BODY_CAP)]).replace('\0', ""));
    let windows = quota.and_then(|q| serde_json::to_string(&q.windows).ok());
    let credits = quota
        .and_then(|q| q.credits.as_ref())
        .and_then(|c| serde_json::to_string(c).ok());
    db.write_tx(|tx| {
        tx.execute(
            "INSERT INTO quota_snapshots (credential_id, fetched_at_ms, status, http_status, \
             plan_type, limit_reached, windows, credits, error_message, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &q.credential_id,
                &q.fetched_at_ms,
                &q.status,
                &q.http_status.map(i32::from),
                &quota.and_then(|q| q.plan_type.as_deref()),
                &quota.and_then(|q| q.limit_reached),
                &windows,
                &credits,
                &q.error_message,
                &body,
            ],
        )
        .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM quota_snapshots WHERE credential_id = $1 AND fetched_at_ms < $2 \
             AND seq < (SELECT max(seq) FROM quota_snapshots WHERE credential_id = $1)",
            &[&q.credential_id, &keep_since_ms],
        )
        .map_err(pg_err)?;
        Ok(())
    })
}

/// The newest snapshot of credential `id`.
fn latest_sql() -> String {
    format!(
        "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE credential_id = $1 \
         ORDER BY seq DESC LIMIT 1"
    )
}

pub(super) fn latest_quota(db: &Postgres, id: &str) -> Result<Option<QuotaRow>> {
    let sql = latest_sql();
    db.read(|c| c.client.query_opt(sql.as_str(), &[&id]))?
        .as_ref()
        .map(read_quota)
        .transpose()
}

pub(super) fn latest_quotas(db: &Postgres) -> Result<HashMap<String, QuotaRow>> {
    let sql = format!(
        "SELECT {QUOTA_COLUMNS} FROM quota_snapshots WHERE seq IN \
         (SELECT max(seq) FROM quota_snapshots GROUP BY credential_id)"
    );
    db.read(|c| c.client.query(sql.as_str(), &[]))?
        .iter()
        .map(|r| read_quota(r).map(|q| (q.credential_id.clone(), q)))
        .collect()
}

pub(super) fn quota_history_len(db: &Postgres, id: &str) -> Result<i64> {
    db.read(|c| {
        c.client
            .query_one(
                "SELECT count(*) FROM quota_snapshots WHERE credential_id = $1",
                &[&id],
            )
            .map(|r| r.get(0))
    })
}

/// A credential's newest `limit` snapshots, oldest first.
pub(super) fn quota_history(db: &Postgres, id: &str, limit: u32) -> Result<Vec<QuotaRow>> {
    let sql = format!(
        "SELECT {QUOTA_COLUMNS} FROM (SELECT * FROM quota_snapshots WHERE credential_id = $1 \
         ORDER BY seq DESC LIMIT $2) AS newest ORDER BY seq"
    );
    let limit = i64::from(limit);
    db.read(|c| c.client.query(sql.as_str(), &[&id, &limit]))?
        .iter()
        .map(read_quota)
        .collect()
}

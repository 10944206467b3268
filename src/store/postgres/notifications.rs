//! The notifications outbox on PostgreSQL: rows written inside the
//! transaction of the change they tell of, taken by deliverers on any box
//! under a hold (`FOR UPDATE SKIP LOCKED`: two deliverers never take the
//! same row at once), and marked with what each attempt came to. The rules
//! are SQLite's (`sqlite/notifications.rs`).

use postgres::{GenericClient, Row};

use super::errors::pg_err;
use super::Postgres;
use crate::error::{DbError, DbKind, Error, Result};
use crate::store::sidedata::NOTIFICATION_COLUMNS;
use crate::store::{Delivery, Notice, NotificationCounts, NotificationRow};

/// Writes `n` to the outbox inside the caller's transaction; an event id
/// already there is left as it is (the same event, written twice).
pub(super) fn insert_notice(tx: &mut impl GenericClient, n: &Notice) -> Result<()> {
    tx.execute(
        "INSERT INTO notifications \
         (event_id, kind, credential_id, created_ms, payload, next_attempt_ms) \
         VALUES ($1, $2, $3, $4, $5, $4) ON CONFLICT (event_id) DO NOTHING",
        &[&n.event_id, &n.kind, &n.credential_id, &n.at_ms, &n.payload],
    )
    .map(drop)
    .map_err(pg_err)
}

/// A row read with [`NOTIFICATION_COLUMNS`].
fn read(r: &Row) -> Result<NotificationRow> {
    let attempts: i64 = r.try_get(6).map_err(pg_err)?;
    Ok(NotificationRow {
        seq: r.try_get(0).map_err(pg_err)?,
        notice: Notice {
            event_id: r.try_get(1).map_err(pg_err)?,
            kind: r.try_get(2).map_err(pg_err)?,
            credential_id: r.try_get(3).map_err(pg_err)?,
            at_ms: r.try_get(4).map_err(pg_err)?,
            payload: r.try_get(5).map_err(pg_err)?,
        },
        attempts: u32::try_from(attempts).map_err(|_| {
            Error::Db(DbError::new(
                DbKind::Corrupt,
                format!("notification attempts out of range: {attempts}"),
            ))
        })?,
        next_attempt_ms: r.try_get(7).map_err(pg_err)?,
        delivered_ms: r.try_get(8).map_err(pg_err)?,
        failed_ms: r.try_get(9).map_err(pg_err)?,
        last_error: r.try_get(10).map_err(pg_err)?,
    })
}

pub(super) fn take_notifications(
    db: &Postgres,
    now_ms: i64,
    hold_until_ms: i64,
    limit: u32,
) -> Result<Vec<NotificationRow>> {
    let returning = NOTIFICATION_COLUMNS
        .split(',')
        .map(|c| format!("n.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE notifications n SET next_attempt_ms = $2, attempts = n.attempts + 1 \
         FROM (SELECT seq FROM notifications WHERE delivered_ms IS NULL AND failed_ms IS NULL \
               AND next_attempt_ms <= $1 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) due \
         WHERE n.seq = due.seq RETURNING {returning}"
    );
    let mut rows = db.write_tx(|tx| {
        tx.query(sql.as_str(), &[&now_ms, &hold_until_ms, &i64::from(limit)])
            .map_err(pg_err)?
            .iter()
            .map(read)
            .collect::<Result<Vec<_>>>()
    })?;
    rows.sort_by_key(|r| r.seq);
    Ok(rows)
}

pub(super) fn notification_delivery(
    db: &Postgres,
    event_id: &str,
    delivery: Delivery<'_>,
    now_ms: i64,
) -> Result<()> {
    db.write_tx(|tx| {
        match delivery {
            Delivery::Delivered => tx.execute(
                "UPDATE notifications SET delivered_ms = $2, last_error = NULL \
                 WHERE event_id = $1",
                &[&event_id, &now_ms],
            ),
            Delivery::Retry { at_ms, error } => tx.execute(
                "UPDATE notifications SET next_attempt_ms = $2, last_error = $3 \
                 WHERE event_id = $1 AND delivered_ms IS NULL",
                &[&event_id, &at_ms, &error],
            ),
            Delivery::GiveUp { error } => tx.execute(
                "UPDATE notifications SET failed_ms = $2, last_error = $3 \
                 WHERE event_id = $1 AND delivered_ms IS NULL",
                &[&event_id, &now_ms, &error],
            ),
        }
        .map(drop)
        .map_err(pg_err)
    })
}

pub(super) fn notifications(
    db: &Postgres,
    pending_only: bool,
    limit: u32,
) -> Result<Vec<NotificationRow>> {
    let sql = format!(
        "SELECT * FROM (SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE NOT $1 \
         OR (delivered_ms IS NULL AND failed_ms IS NULL) ORDER BY seq DESC LIMIT $2) t \
         ORDER BY seq"
    );
    db.read(|c| {
        c.client
            .query(sql.as_str(), &[&pending_only, &i64::from(limit)])
    })?
    .iter()
    .map(read)
    .collect()
}

pub(super) fn notification_counts(db: &Postgres) -> Result<NotificationCounts> {
    let r = db.read(|c| {
        c.client.query_one(
            "SELECT count(*) FILTER (WHERE delivered_ms IS NULL AND failed_ms IS NULL), \
             count(delivered_ms), count(failed_ms) FROM notifications",
            &[],
        )
    })?;
    // Counts are never negative.
    let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok(NotificationCounts {
        pending: n(0),
        delivered: n(1),
        failed: n(2),
    })
}

//! The notifications outbox: rows written inside the transaction of the
//! change they tell of, taken by deliverers under a hold, and marked with
//! what each attempt came to.

use rusqlite::{params, Connection, Row};

use super::conn::Sync;
use super::errors::db_err;
use super::Sqlite;
use crate::error::Result;
use crate::store::sidedata::NOTIFICATION_COLUMNS;
use crate::store::{Delivery, Notice, NotificationCounts, NotificationRow};

/// Writes `n` to the outbox inside the caller's transaction; an event id
/// already there is left as it is (the same event, written twice).
pub(super) fn insert_notice(conn: &Connection, n: &Notice) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO notifications \
         (event_id, kind, credential_id, created_ms, payload, next_attempt_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            n.event_id,
            n.kind,
            n.credential_id,
            n.at_ms,
            n.payload
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn read(r: &Row) -> rusqlite::Result<NotificationRow> {
    Ok(NotificationRow {
        seq: r.get(0)?,
        notice: Notice {
            event_id: r.get(1)?,
            kind: r.get(2)?,
            credential_id: r.get(3)?,
            at_ms: r.get(4)?,
            payload: r.get(5)?,
        },
        attempts: r.get(6)?,
        next_attempt_ms: r.get(7)?,
        delivered_ms: r.get(8)?,
        failed_ms: r.get(9)?,
        last_error: r.get(10)?,
    })
}

pub(super) fn take_notifications(
    db: &Sqlite,
    now_ms: i64,
    hold_until_ms: i64,
    limit: u32,
) -> Result<Vec<NotificationRow>> {
    db.write_tx(Sync::Full, |tx| {
        let rows: Vec<NotificationRow> = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE delivered_ms IS NULL \
                     AND failed_ms IS NULL AND next_attempt_ms <= ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![now_ms, limit], read)
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
        };
        let mut hold = tx
            .prepare_cached(
                "UPDATE notifications SET next_attempt_ms = ?2, attempts = attempts + 1 \
                 WHERE seq = ?1",
            )
            .map_err(db_err)?;
        for r in &rows {
            hold.execute(params![r.seq, hold_until_ms])
                .map_err(db_err)?;
        }
        Ok(rows
            .into_iter()
            .map(|r| NotificationRow {
                attempts: r.attempts + 1,
                next_attempt_ms: hold_until_ms,
                ..r
            })
            .collect())
    })
}

pub(super) fn notification_delivery(
    db: &Sqlite,
    event_id: &str,
    delivery: Delivery<'_>,
    now_ms: i64,
) -> Result<()> {
    db.write_tx(Sync::Full, |tx| {
        match delivery {
            Delivery::Delivered => tx.execute(
                "UPDATE notifications SET delivered_ms = ?2, last_error = NULL \
                 WHERE event_id = ?1",
                params![event_id, now_ms],
            ),
            Delivery::Retry { at_ms, error } => tx.execute(
                "UPDATE notifications SET next_attempt_ms = ?2, last_error = ?3 \
                 WHERE event_id = ?1 AND delivered_ms IS NULL",
                params![event_id, at_ms, error],
            ),
            Delivery::GiveUp { error } => tx.execute(
                "UPDATE notifications SET failed_ms = ?2, last_error = ?3 \
                 WHERE event_id = ?1 AND delivered_ms IS NULL",
                params![event_id, now_ms, error],
            ),
        }
        .map_err(db_err)?;
        Ok(())
    })
}

pub(super) fn notifications(
    db: &Sqlite,
    pending_only: bool,
    limit: u32,
) -> Result<Vec<NotificationRow>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT * FROM (SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE NOT ?1 \
             OR (delivered_ms IS NULL AND failed_ms IS NULL) ORDER BY seq DESC LIMIT ?2) \
             ORDER BY seq"
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![pending_only, limit], read)
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

pub(super) fn notification_counts(db: &Sqlite) -> Result<NotificationCounts> {
    db.conn()?
        .query_row(
            "SELECT count(*) FILTER (WHERE delivered_ms IS NULL AND failed_ms IS NULL), \
             count(delivered_ms), count(failed_ms) FROM notifications",
            [],
            |r| {
                // Counts are never negative.
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(NotificationCounts {
                    pending: n(0)?,
                    delivered: n(1)?,
                    failed: n(2)?,
                })
            },
        )
        .map_err(db_err)
}

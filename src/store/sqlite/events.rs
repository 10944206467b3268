//! The audit trail: the event row every change appends in its own
//! transaction, and reading a credential's events back.

use rusqlite::{params, Connection};

use super::errors::db_err;
use super::Sqlite;
use crate::error::Result;
use crate::store::EventRow;

/// What an event row records of a change.
pub(super) struct Change<'a> {
    pub(super) from: Option<&'a str>,
    pub(super) to: &'a str,
    pub(super) version: i64,
    pub(super) reason: &'a str,
}

pub(super) fn append_event(
    conn: &Connection,
    id: &str,
    change: &Change,
    actor: &str,
    at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (credential_id, at_ms, from_state, to_state, version, actor, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        at_ms,
        change.from,
        change.to,
        change.version,
        actor,
        change.reason
    ])
    .map(drop)
}

/// A credential's events, newest last; `limit` keeps the newest N.
pub(super) fn events(
    db: &Sqlite,
    id: &str,
    after: Option<i64>,
    limit: Option<u32>,
) -> Result<Vec<EventRow>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(if after.is_some() {
            "SELECT seq, credential_id, at_ms, from_state, to_state, version, actor, reason \
             FROM events WHERE credential_id = ?1 AND seq > ?3 ORDER BY seq LIMIT ?2"
        } else {
            "SELECT seq, credential_id, at_ms, from_state, to_state, version, actor, reason \
             FROM (SELECT * FROM events WHERE credential_id = ?1 ORDER BY seq DESC LIMIT ?2) \
             WHERE ?3 IS NULL ORDER BY seq"
        })
        .map_err(db_err)?;
    let limit = limit.map_or(-1, i64::from);
    let rows = stmt
        .query_map(params![id, limit, after], |r| {
            Ok(EventRow {
                seq: r.get(0)?,
                credential_id: r.get(1)?,
                at_ms: r.get(2)?,
                from: r.get(3)?,
                to: r.get(4)?,
                version: r.get(5)?,
                actor: r.get(6)?,
                reason: r.get(7)?,
            })
        })
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

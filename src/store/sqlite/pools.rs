//! Pools: memberships (with their event rows), the one read a pick needs,
//! and the record of what a pool handed out.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, Transaction};

use super::conn::Sync;
use super::cooldowns::read_cooldown;
use super::errors::db_err;
use super::events::{append_event, Change};
use super::rows::{read_row, Secrets, COLUMNS};
use super::Sqlite;
use crate::error::{Error, Result};
use crate::store::sidedata::{membership_reason, COOLDOWN_COLUMNS, STICKY_KEEP_MS};
use crate::store::{PoolMember, PoolRead};

/// The stored state and version of credential `id`, for an event row that
/// changes neither; [`Error::NotFound`] if there is none.
pub(super) fn state_of(tx: &Transaction<'_>, id: &str) -> Result<(String, i64)> {
    tx.query_row(
        "SELECT state, version FROM credentials WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db_err)?
    .ok_or_else(|| Error::NotFound(id.to_owned()))
}

/// An event row that records a change beside the state machine's (a pool
/// membership, a cooldown): the state and version as they are.
pub(super) fn append_side_event(
    tx: &Transaction<'_>,
    id: &str,
    reason: &str,
    actor: &str,
    now_ms: i64,
) -> Result<()> {
    let (state, version) = state_of(tx, id)?;
    let change = Change {
        from: Some(&state),
        to: &state,
        version,
        reason,
    };
    append_event(tx, id, &change, actor, now_ms).map_err(db_err)
}

pub(super) fn set_pool_member(
    db: &Sqlite,
    id: &str,
    pool: &str,
    member: bool,
    actor: &str,
    now_ms: i64,
) -> Result<bool> {
    db.write_tx(Sync::Full, |tx| {
        state_of(tx, id)?;
        let changed = if member {
            tx.execute(
                "INSERT OR IGNORE INTO pool_members (pool, credential_id, added_ms) \
                 VALUES (?1, ?2, ?3)",
                params![pool, id, now_ms],
            )
        } else {
            tx.execute(
                "DELETE FROM pool_members WHERE pool = ?1 AND credential_id = ?2",
                params![pool, id],
            )
        }
        .map_err(db_err)?;
        if changed == 0 {
            return Ok(false);
        }
        append_side_event(tx, id, &membership_reason(pool, member), actor, now_ms)?;
        Ok(true)
    })
}

pub(super) fn memberships(db: &Sqlite) -> Result<HashMap<String, Vec<String>>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached("SELECT credential_id, pool FROM pool_members ORDER BY credential_id, pool")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db_err)?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let (id, pool) = row.map_err(db_err)?;
        out.entry(id).or_default().push(pool);
    }
    Ok(out)
}

pub(super) fn pool(db: &Sqlite, pool: &str, sticky_key: Option<&str>) -> Result<PoolRead> {
    let conn = db.conn()?;
    // One read transaction: members, cooldowns, quotas and the sticky
    // choice are of one instant.
    conn.execute_batch("BEGIN").map_err(db_err)?;
    let read = (|| -> Result<PoolRead> {
        let mut members = Vec::new();
        {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, m.last_served_ms FROM pool_members m \
                     JOIN credentials c ON c.id = m.credential_id WHERE m.pool = ?1 ORDER BY c.id"
                ))
                .map_err(db_err)?;
            let width = COLUMNS.split(',').count();
            let mut rows = stmt.query([pool]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                members.push(PoolMember {
                    credential: read_row(r, &db.codec, Secrets::Drop).map_err(db_err)?,
                    cooldown: None,
                    quota: None,
                    last_served_ms: r.get(width).map_err(db_err)?,
                });
            }
        }
        for m in &mut members {
            let id = m.credential.id.as_str();
            m.cooldown = conn
                .prepare_cached(&format!(
                    "SELECT {COOLDOWN_COLUMNS} FROM cooldowns WHERE credential_id = ?1"
                ))
                .and_then(|mut s| s.query_row([id], read_cooldown).optional())
                .map_err(db_err)?;
            m.quota = super::quota::latest_on(&conn, id)?;
        }
        let sticky = match sticky_key {
            Some(key) => conn
                .prepare_cached(
                    "SELECT credential_id FROM pool_sticky WHERE pool = ?1 AND sticky_key = ?2",
                )
                .and_then(|mut s| s.query_row([pool, key], |r| r.get(0)).optional())
                .map_err(db_err)?,
            None => None,
        };
        Ok(PoolRead { members, sticky })
    })();
    // A read transaction: ending it cannot lose anything.
    let _ = conn.execute_batch("COMMIT");
    read
}

pub(super) fn pool_served(
    db: &Sqlite,
    pool: &str,
    id: &str,
    sticky_key: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    // NORMAL: losing this to a power cut only loses some load spreading.
    db.write_tx(Sync::Normal, |tx| {
        tx.prepare_cached(
            "UPDATE pool_members SET last_served_ms = ?3 WHERE pool = ?1 AND credential_id = ?2",
        )
        .and_then(|mut s| s.execute(params![pool, id, now_ms]))
        .map_err(db_err)?;
        if let Some(key) = sticky_key {
            tx.prepare_cached(
                "INSERT INTO pool_sticky (pool, sticky_key, credential_id, used_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pool, sticky_key) \
                 DO UPDATE SET credential_id = ?3, used_ms = ?4",
            )
            .and_then(|mut s| s.execute(params![pool, key, id, now_ms]))
            .map_err(db_err)?;
            tx.prepare_cached("DELETE FROM pool_sticky WHERE used_ms < ?1")
                .and_then(|mut s| s.execute([now_ms - STICKY_KEEP_MS]))
                .map_err(db_err)?;
        }
        Ok(())
    })
}

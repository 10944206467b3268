//! Pools on PostgreSQL: memberships (with their event rows), the one read
//! a pick needs (one REPEATABLE READ snapshot) and the record of what a
//! pool handed out. The rules are SQLite's (`sqlite/pools.rs`); what is
//! not SQL is shared in `store/sidedata.rs`.

use std::collections::HashMap;

use postgres::{IsolationLevel, Transaction};

use super::cooldowns::read_cooldown;
use super::errors::pg_err;
use super::imports::append_event;
use super::rows::decode;
use super::Postgres;
use crate::error::{Error, Result};
use crate::store::rowdata::{Secrets, COLUMNS};
use crate::store::sidedata::{membership_reason, COOLDOWN_COLUMNS, STICKY_KEEP_MS};
use crate::store::{PoolMember, PoolRead};

/// The stored state and version of credential `id`, locked for the rest of
/// the transaction; [`Error::NotFound`] if there is none.
pub(super) fn state_of(tx: &mut Transaction<'_>, id: &str) -> Result<(String, i64)> {
    tx.query_opt(
        "SELECT state, version FROM credentials WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .map_err(pg_err)?
    .map(|r| (r.get(0), r.get(1)))
    .ok_or_else(|| Error::NotFound(id.to_owned()))
}

/// An event row that records a change beside the state machine's (a pool
/// membership, a cooldown): the state and version as they are.
pub(super) fn append_side_event(
    tx: &mut Transaction<'_>,
    id: &str,
    reason: &str,
    actor: &str,
    now_ms: i64,
) -> Result<()> {
    let (state, version) = state_of(tx, id)?;
    append_event(
        tx,
        id,
        (Some(&state), &state, version, reason),
        actor,
        now_ms,
    )
}

pub(super) fn set_pool_member(
    db: &Postgres,
    id: &str,
    pool: &str,
    member: bool,
    actor: &str,
    now_ms: i64,
) -> Result<bool> {
    db.write_tx(|tx| {
        state_of(tx, id)?;
        let changed = if member {
            tx.execute(
                "INSERT INTO pool_members (pool, credential_id, added_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (pool, credential_id) DO NOTHING",
                &[&pool, &id, &now_ms],
            )
        } else {
            tx.execute(
                "DELETE FROM pool_members WHERE pool = $1 AND credential_id = $2",
                &[&pool, &id],
            )
        }
        .map_err(pg_err)?;
        if changed == 0 {
            return Ok(false);
        }
        append_side_event(tx, id, &membership_reason(pool, member), actor, now_ms)?;
        Ok(true)
    })
}

pub(super) fn memberships(db: &Postgres) -> Result<HashMap<String, Vec<String>>> {
    let rows = db.read(|c| {
        c.client.query(
            "SELECT credential_id, pool FROM pool_members ORDER BY credential_id, pool",
            &[],
        )
    })?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(out)
}

pub(super) fn pool(db: &Postgres, pool: &str, sticky_key: Option<&str>) -> Result<PoolRead> {
    let mut conn = db.conn()?;
    // One snapshot: members, cooldowns, quotas and the sticky choice are of
    // one instant.
    let mut tx = conn
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg_err)?;
    let width = COLUMNS.split(',').count();
    let rows = tx
        .query(
            format!(
                "SELECT {}, m.last_served_ms FROM pool_members m \
                 JOIN credentials c ON c.id = m.credential_id WHERE m.pool = $1 ORDER BY c.id",
                COLUMNS
                    .split(',')
                    .map(|c| format!("c.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .as_str(),
            &[&pool],
        )
        .map_err(pg_err)?;
    let mut members = Vec::with_capacity(rows.len());
    for r in &rows {
        members.push(PoolMember {
            credential: decode(db, r, Secrets::Drop)?,
            cooldown: None,
            quota: None,
            last_served_ms: r.try_get(width).map_err(pg_err)?,
        });
    }
    for m in &mut members {
        let id = m.credential.id.as_str();
        m.cooldown = tx
            .query_opt(
                format!("SELECT {COOLDOWN_COLUMNS} FROM cooldowns WHERE credential_id = $1")
                    .as_str(),
                &[&id],
            )
            .map_err(pg_err)?
            .as_ref()
            .map(read_cooldown)
            .transpose()?;
        m.quota = super::quota::latest_in(&mut tx, id)?;
    }
    let sticky = match sticky_key {
        Some(key) => tx
            .query_opt(
                "SELECT credential_id FROM pool_sticky WHERE pool = $1 AND sticky_key = $2",
                &[&pool, &key],
            )
            .map_err(pg_err)?
            .map(|r| r.get(0)),
        None => None,
    };
    // A read-only transaction: ending it cannot lose anything.
    tx.commit().map_err(pg_err)?;
    Ok(PoolRead { members, sticky })
}

pub(super) fn pool_served(
    db: &Postgres,
    pool: &str,
    id: &str,
    sticky_key: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    db.write_tx(|tx| {
        tx.execute(
            "UPDATE pool_members SET last_served_ms = $3 WHERE pool = $1 AND credential_id = $2",
            &[&pool, &id, &now_ms],
        )
        .map_err(pg_err)?;
        if let Some(key) = sticky_key {
            // A member deleted meanwhile: nothing to stick to.
            tx.execute(
                "INSERT INTO pool_sticky (pool, sticky_key, credential_id, used_ms) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM credentials WHERE id = $3) \
                 ON CONFLICT (pool, sticky_key) \
                 DO UPDATE SET credential_id = EXCLUDED.credential_id, used_ms = EXCLUDED.used_ms",
                &[&pool, &key, &id, &now_ms],
            )
            .map_err(pg_err)?;
            tx.execute(
                "DELETE FROM pool_sticky WHERE used_ms < $1",
                &[&(now_ms - STICKY_KEEP_MS)],
            )
            .map_err(pg_err)?;
        }
        Ok(())
    })
}

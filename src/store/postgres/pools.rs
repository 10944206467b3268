//! Pools on PostgreSQL: memberships (with their event rows), the one read
//! a pick needs (one statement: one snapshot, one round trip) and the record of what a
//! pool handed out. The rules are SQLite's (`sqlite/pools.rs`); what is
//! not SQL is shared in `store/sidedata.rs`.

use std::collections::HashMap;

use postgres::Transaction;

use super::cooldowns::read_cooldown_at;
use super::errors::pg_err;
use super::imports::append_event;
use super::quota::{read_quota_at, QUOTA_COLUMNS};
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

/// The pick's read as ONE statement (one snapshot, one round trip):
/// each member's row, when its pool last handed it out, its cooldown, its
/// newest quota snapshot, and the sticky key's member.
fn pool_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let prefixed = |table: &str, columns: &str| {
            columns
                .split(',')
                .map(|c| format!("{table}.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT {}, m.last_served_ms, {}, {}, \
             (SELECT credential_id FROM pool_sticky WHERE pool = $1 AND sticky_key = $2) \
             FROM pool_members m JOIN credentials c ON c.id = m.credential_id \
             LEFT JOIN cooldowns cd ON cd.credential_id = c.id \
             LEFT JOIN LATERAL (SELECT {QUOTA_COLUMNS} FROM quota_snapshots \
                 WHERE credential_id = c.id ORDER BY seq DESC LIMIT 1) q ON true \
             WHERE m.pool = $1 ORDER BY c.id",
            prefixed("c", COLUMNS),
            prefixed("cd", COOLDOWN_COLUMNS),
            prefixed("q", QUOTA_COLUMNS),
        )
    })
}

pub(super) fn pool(db: &Postgres, pool: &str, sticky_key: Option<&str>) -> Result<PoolRead> {
    let rows = db.read(|c| {
        let stmt = c.stmt(pool_sql())?;
        c.client.query(&stmt, &[&pool, &sticky_key])
    })?;
    let width = |columns: &str| columns.split(',').count();
    let served_at = width(COLUMNS);
    let cooldown_at = served_at + 1;
    let quota_at = cooldown_at + width(COOLDOWN_COLUMNS);
    let sticky_at = quota_at + width(QUOTA_COLUMNS);
    let mut read = PoolRead::default();
    for r in &rows {
        // A LEFT JOIN that found nothing: its key column is NULL.
        let present = |at: usize| -> Result<bool> {
            Ok(r.try_get::<_, Option<String>>(at)
                .map_err(pg_err)?
                .is_some())
        };
        read.members.push(PoolMember {
            credential: decode(db, r, Secrets::Drop)?,
            last_served_ms: r.try_get(served_at).map_err(pg_err)?,
            cooldown: match present(cooldown_at)? {
                true => Some(read_cooldown_at(r, cooldown_at)?),
                false => None,
            },
            quota: match present(quota_at)? {
                true => Some(read_quota_at(r, quota_at)?),
                false => None,
            },
        });
        read.sticky = r.try_get(sticky_at).map_err(pg_err)?;
    }
    Ok(read)
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

//! Account-level cooldowns on PostgreSQL: set and cleared with an event row
//! (and the notification they call for) in one transaction, the row locked
//! meanwhile. The decision is SQLite's, shared (`store/sidedata.rs`).

use postgres::Row;

use super::errors::pg_err;
use super::notifications::insert_notice;
use super::pools::{append_side_event, state_of};
use super::Postgres;
use crate::error::{DbError, DbKind, Error, Result};
use crate::store::sidedata::{cooldown_reason, COOLDOWN_COLUMNS};
use crate::store::{Cooldown, CooldownSource, CooldownWrite, Notice};

/// A row read with [`COOLDOWN_COLUMNS`].
fn read_cooldown(r: &Row) -> Result<Cooldown> {
    read_cooldown_at(r, 0)
}

/// A cooldown read with [`COOLDOWN_COLUMNS`] starting at column `at`.
pub(super) fn read_cooldown_at(r: &Row, at: usize) -> Result<Cooldown> {
    let source: String = r.try_get(at + 3).map_err(pg_err)?;
    Ok(Cooldown {
        credential_id: r.try_get(at).map_err(pg_err)?,
        until_ms: r.try_get(at + 1).map_err(pg_err)?,
        reason: r.try_get(at + 2).map_err(pg_err)?,
        source: CooldownSource::parse(&source).ok_or_else(|| {
            Error::Db(DbError::new(
                DbKind::Corrupt,
                format!("unknown cooldown source {source:?}"),
            ))
        })?,
        set_ms: r.try_get(at + 4).map_err(pg_err)?,
        actor: r.try_get(at + 5).map_err(pg_err)?,
    })
}

pub(super) fn cooldown(
    db: &Postgres,
    id: &str,
    change: CooldownWrite<'_>,
    notify: Option<&Notice>,
    actor: &str,
    now_ms: i64,
) -> Result<bool> {
    db.write_tx(|tx| {
        // Locks the credential row: two changes of one cooldown take turns.
        state_of(tx, id)?;
        let current = tx
            .query_opt(
                format!("SELECT {COOLDOWN_COLUMNS} FROM cooldowns WHERE credential_id = $1")
                    .as_str(),
                &[&id],
            )
            .map_err(pg_err)?
            .as_ref()
            .map(read_cooldown)
            .transpose()?;
        let Some(reason) = cooldown_reason(current.as_ref(), change) else {
            return Ok(false);
        };
        match change {
            CooldownWrite::Set {
                until_ms,
                reason,
                source,
            } => tx.execute(
                "INSERT INTO cooldowns (credential_id, until_ms, reason, source, set_ms, actor) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (credential_id) DO UPDATE SET \
                 until_ms = EXCLUDED.until_ms, reason = EXCLUDED.reason, \
                 source = EXCLUDED.source, set_ms = EXCLUDED.set_ms, actor = EXCLUDED.actor",
                &[&id, &until_ms, &reason, &source.as_str(), &now_ms, &actor],
            ),
            CooldownWrite::Clear { .. } => {
                tx.execute("DELETE FROM cooldowns WHERE credential_id = $1", &[&id])
            }
        }
        .map_err(pg_err)?;
        append_side_event(tx, id, &reason, actor, now_ms)?;
        if let Some(n) = notify {
            insert_notice(tx, n)?;
        }
        Ok(true)
    })
}

pub(super) fn cooldowns(db: &Postgres) -> Result<Vec<Cooldown>> {
    let sql = format!("SELECT {COOLDOWN_COLUMNS} FROM cooldowns ORDER BY credential_id");
    db.read(|c| c.client.query(sql.as_str(), &[]))?
        .iter()
        .map(read_cooldown)
        .collect()
}

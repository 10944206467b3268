//! Account-level cooldowns: set and cleared with an event row (and the
//! notification they call for) in one transaction.

use rusqlite::{params, OptionalExtension, Row};

use super::conn::Sync;
use super::errors::db_err;
use super::notifications::insert_notice;
use super::pools::{append_side_event, state_of};
use super::Sqlite;
use crate::error::Result;
use crate::store::sidedata::{cooldown_reason, COOLDOWN_COLUMNS};
use crate::store::{Cooldown, CooldownSource, CooldownWrite, Notice};

pub(super) fn read_cooldown(r: &Row) -> rusqlite::Result<Cooldown> {
    let source: String = r.get(3)?;
    Ok(Cooldown {
        credential_id: r.get(0)?,
        until_ms: r.get(1)?,
        reason: r.get(2)?,
        source: CooldownSource::parse(&source).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown cooldown source {source:?}").into(),
            )
        })?,
        set_ms: r.get(4)?,
        actor: r.get(5)?,
    })
}

fn select() -> String {
    format!("SELECT {COOLDOWN_COLUMNS} FROM cooldowns")
}

pub(super) fn cooldown(
    db: &Sqlite,
    id: &str,
    change: CooldownWrite<'_>,
    notify: Option<&Notice>,
    actor: &str,
    now_ms: i64,
) -> Result<bool> {
    db.write_tx(Sync::Full, |tx| {
        state_of(tx, id)?;
        let current = tx
            .prepare_cached(&format!("{} WHERE credential_id = ?1", select()))
            .and_then(|mut s| s.query_row([id], read_cooldown).optional())
            .map_err(db_err)?;
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (credential_id) DO UPDATE SET \
                 until_ms = ?2, reason = ?3, source = ?4, set_ms = ?5, actor = ?6",
                params![id, until_ms, reason, source.as_str(), now_ms, actor],
            ),
            CooldownWrite::Clear { .. } => {
                tx.execute("DELETE FROM cooldowns WHERE credential_id = ?1", [id])
            }
        }
        .map_err(db_err)?;
        append_side_event(tx, id, &reason, actor, now_ms)?;
        if let Some(n) = notify {
            insert_notice(tx, n)?;
        }
        Ok(true)
    })
}

pub(super) fn cooldowns(db: &Sqlite) -> Result<Vec<Cooldown>> {
    let conn = db.conn()?;
    let mut stmt = conn
        .prepare_cached(&format!("{} ORDER BY credential_id", select()))
        .map_err(db_err)?;
    let rows = stmt.query_map([], read_cooldown).map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

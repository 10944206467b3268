//! Deleting a credential: a guarded delete whose event stays, and which
//! spends the refresh token of a row left `refreshing` (as on SQLite).

use super::errors::pg_err;
use super::imports::{append_event as event_in, record_spent as spent_in};
use super::Postgres;
use crate::error::{Result, Spent};
use crate::state::State;
use crate::store::Deleted;

pub(super) fn delete(
    db: &Postgres,
    id: &str,
    version: i64,
    actor: &str,
    now_ms: i64,
) -> Result<Deleted> {
    db.write_tx(|tx| {
        let old = tx
            .query_opt(
                "SELECT state, version, refresh_fp FROM credentials WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(pg_err)?;
        let Some(old) = old else {
            return Ok(Deleted::NotFound);
        };
        let (state, current, fp): (String, i64, Option<String>) =
            (old.get(0), old.get(1), old.get(2));
        if current != version {
            return Ok(Deleted::Changed);
        }
        if state == State::Refreshing.as_str() {
            if let Some(fp) = fp {
                spent_in(tx, &fp, id, now_ms, Spent::DeletedInRefresh.as_str())?;
            }
        }
        tx.execute("DELETE FROM credentials WHERE id = $1", &[&id])
            .map_err(pg_err)?;
        event_in(
            tx,
            id,
            (Some(&state), "deleted", version + 1, "deleted"),
            actor,
            now_ms,
        )?;
        db.notify_in(tx, id, version + 1)?;
        Ok(Deleted::Done)
    })
}

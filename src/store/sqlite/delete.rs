//! Deleting a credential: a guarded delete whose event stays, and which
//! spends the refresh token of a row left `refreshing`.

use rusqlite::OptionalExtension;

use super::conn::Sync;
use super::errors::db_err;
use super::events::{append_event, Change};
use super::{fingerprint, Sqlite};
use crate::error::Result;
use crate::state::State;
use crate::store::Deleted;

/// Deletes a credential (its events stay) if it is still at `version`.
pub(super) fn delete(
    db: &Sqlite,
    id: &str,
    version: i64,
    actor: &str,
    now_ms: i64,
) -> Result<Deleted> {
    db.write_tx(Sync::Full, |tx| {
        let old: Option<(String, i64, Option<String>)> = tx
            .query_row(
                "SELECT state, version, refresh_fp FROM credentials WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((state, current, fp)) = old else {
            return Ok(Deleted::NotFound);
        };
        if current != version {
            return Ok(Deleted::Changed);
        }
        // Left `refreshing` (its lease over, or its owner gone): the
        // refresh token may have reached upstream and rotated, so it counts
        // as spent — an old file holding it must not come back under this
        // or another id.
        if state == State::Refreshing.as_str() {
            if let Some(fp) = fp {
                let reason = crate::error::Spent::DeletedInRefresh.as_str();
                fingerprint::record_spent(tx, &fp, id, now_ms, reason)?;
            }
        }
        tx.execute("DELETE FROM credentials WHERE id = ?1", [id])
            .map_err(db_err)?;
        let change = Change {
            from: Some(&state),
            to: "deleted",
            version: version + 1,
            reason: "deleted",
        };
        append_event(tx, id, &change, actor, now_ms).map_err(db_err)?;
        Ok(Deleted::Done)
    })
}

//! Reading a credential's audit trail back.

use super::errors::pg_err;
use super::Postgres;
use crate::error::Result;
use crate::store::EventRow;

pub(super) fn events(
    db: &Postgres,
    id: &str,
    after: Option<i64>,
    limit: Option<u32>,
) -> Result<Vec<EventRow>> {
    let limit = limit.map(i64::from);
    let rows = db.read(|c| match after {
        Some(after) => c.client.query(
            "SELECT seq, credential_id, at_ms, from_state, to_state, version, actor, reason \
             FROM events WHERE credential_id = $1 AND seq > $3 ORDER BY seq LIMIT $2",
            &[&id, &limit, &after],
        ),
        None => c.client.query(
            "SELECT * FROM (SELECT seq, credential_id, at_ms, from_state, to_state, version, \
             actor, reason FROM events WHERE credential_id = $1 ORDER BY seq DESC LIMIT $2) e \
             ORDER BY seq",
            &[&id, &limit],
        ),
    })?;
    rows.iter()
        .map(|r| {
            Ok(EventRow {
                seq: r.try_get(0).map_err(pg_err)?,
                credential_id: r.try_get(1).map_err(pg_err)?,
                at_ms: r.try_get(2).map_err(pg_err)?,
                from: r.try_get(3).map_err(pg_err)?,
                to: r.try_get(4).map_err(pg_err)?,
                version: r.try_get(5).map_err(pg_err)?,
                actor: r.try_get(6).map_err(pg_err)?,
                reason: r.try_get(7).map_err(pg_err)?,
            })
        })
        .collect()
}

//! [`Backend::apply`](crate::store::Backend::apply) on PostgreSQL: the
//! guarded UPDATE, the refresh-token fingerprint bookkeeping, the event row
//! and the cross-box wake-up, as ONE statement (data-modifying CTEs run in
//! one transaction: all of it commits or none) on a prepared statement —
//! one round trip per change. The notification the change calls for
//! (`Write::notify`) is inserted by the same statement, only when the guard
//! held; `failing_since_ms` is kept as on SQLite (set when `failures`
//! leaves 0, kept while above, NULL when the transition's failures is 0).
//!
//! The guard is the version read (`version = $v`) or the lease held
//! (`lease_id = $l`), as on SQLite; under READ COMMITTED a second writer
//! of the same row waits for the first to commit and then re-checks the
//! guard against the row as committed, so exactly one of two racing
//! compare-and-swaps matches. A write that puts a new lease on a row
//! refreshing under another (a takeover) also needs that lease to be over
//! on the server's own clock (`clock_timestamp()`): no box's clock, skewed
//! or estimated, can end another's lease early. Every lease is judged on
//! that clock whatever clock id it was written under (see
//! `rows::decode`) — one further away than `MAX_LEASE_MS`, which the pure
//! core counts as ended, is live here until the server's clock reaches it
//! (a server clock stepped back may have put a live lease there: callers
//! answer busy, never send twice); and none is taken over in the first
//! [`RESTART_GRACE_MS`] after the server started, so that an owner whose
//! commit a restart cut off lands it first.

use super::clock::SERVER_NOW_MS;
use super::errors::pg_err;
use super::rows::decode;
use super::Postgres;
use crate::credential::Credential;
use crate::error::{Error, Result, Spent};
use crate::state::Transition;
use crate::store::rowdata::{Secrets, Update, COLUMNS};
use crate::store::Write;

/// How long after the server (re)started no lease is taken over, in ms.
/// An owner whose commit the restart cut off holds rotated tokens that
/// exist nowhere else and retries every 2 s at most (plus a connect): a
/// box that took its lease over the moment the server was back would send
/// the refresh token those tokens replaced, and burn the login
/// (`attack14b::a_restart_between_the_answer_and_the_commit_with_another_box_asking_loses_nothing`).
/// A network cut between one box and a running server is not covered: an
/// owner cut off for longer than its lease loses the race (README,
/// "Several boxes").
const RESTART_GRACE_MS: i64 = 10_000;

/// The statement (its parameters are listed in [`apply`]).
fn sql(channel: &str) -> String {
    let returning = COLUMNS
        .split(',')
        .map(|c| format!("c.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rotated = Spent::Rotated.as_str();
    format!(
        "WITH o AS (SELECT id, refresh_fp AS old_fp FROM credentials WHERE id = $24 FOR UPDATE), \
         u AS (UPDATE credentials c SET state = $1, version = c.version + 1, resume_state = $2, \
             lease_owner = $3, lease_id = $4, lease_until_ms = $5, failures = $6, \
             next_attempt_at_ms = $7, dead_reason = $8, updated_ms = $9, \
             access_token = COALESCE($10, c.access_token), \
             refresh_token = COALESCE($11, c.refresh_token), \
             id_token = COALESCE($12, c.id_token), \
             expires_at_ms = COALESCE($13, c.expires_at_ms), \
             last_refresh_ms = COALESCE($14, c.last_refresh_ms), \
             account_id = COALESCE($15, c.account_id), email = COALESCE($16, c.email), \
             plan_type = COALESCE($17, c.plan_type), user_id = COALESCE($18, c.user_id), \
             organization_id = COALESCE($19, c.organization_id), \
             last_error_code = CASE WHEN $20 THEN $21 ELSE c.last_error_code END, \
             last_error_message = CASE WHEN $20 THEN $22 ELSE c.last_error_message END, \
             last_error_at_ms = CASE WHEN $20 THEN $23 ELSE c.last_error_at_ms END, \
             lease_clock = $27, \
             failing_since_ms = CASE WHEN $6::int8 = 0 THEN NULL WHEN c.failures = 0 THEN $9 \
                 ELSE COALESCE(c.failing_since_ms, $9) END, \
             refresh_fp = CASE WHEN $28::text IS NULL THEN c.refresh_fp \
                 WHEN EXISTS (SELECT 1 FROM credentials x WHERE x.refresh_fp = $28 AND x.id <> $24) \
                 THEN NULL ELSE $28 END \
           FROM o WHERE c.id = o.id \
             AND ($25::int8 IS NULL OR c.version = $25) \
             AND ($26::text IS NULL OR c.lease_id = $26) \
             AND (c.state <> 'refreshing' OR $4::text IS NULL \
                  OR c.lease_id IS NOT DISTINCT FROM $4 \
                  OR c.lease_until_ms IS NULL \
                  OR (c.lease_until_ms <= {SERVER_NOW_MS} \
                      AND (extract(epoch from pg_postmaster_start_time()) * 1000)::int8 \
                          + {RESTART_GRACE_MS} <= {SERVER_NOW_MS})) \
           RETURNING {returning}, o.old_fp), \
         s AS (INSERT INTO spent_tokens (fp, credential_id, spent_at_ms, reason) \
           SELECT old_fp, id, $9, '{rotated}' FROM u \
           WHERE $28::text IS NOT NULL AND old_fp IS NOT NULL AND old_fp <> $28 \
           ON CONFLICT (fp) DO NOTHING), \
         e AS (INSERT INTO events (credential_id, at_ms, from_state, to_state, version, actor, reason) \
           SELECT id, $9, $29, $1, version, $30, $31 FROM u), \
         nt AS (INSERT INTO notifications \
           (event_id, kind, credential_id, created_ms, payload, next_attempt_ms) \
           SELECT $32::text, $33::text, $34::text, $35::int8, $36::text, $35::int8 \
           FROM u WHERE $32::text IS NOT NULL \
           ON CONFLICT (event_id) DO NOTHING), \
         n AS (SELECT pg_notify('{channel}', id || ' ' || version) FROM u) \
         SELECT u.*, (SELECT count(*) FROM n) FROM u"
    )
}

/// Writes `t` if its guard still holds: `Ok(Some(row))` with the new row,
/// `Ok(None)` when another writer got there first (a lost CAS), having
/// written nothing.
pub(super) fn apply(
    db: &Postgres,
    id: &str,
    t: &Transition,
    write: Write<'_>,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>> {
    let u = Update::of(id, t, write, &db.codec, now_ms);
    let new_fp = match write.tokens {
        Some(tok) => Some(db.codec.fingerprint(tok.refresh_token.expose())?),
        None => None,
    };
    let from = t.from.as_str();
    // Written only if the guard held (`FROM u`), in the same statement.
    let notice = write.notify;
    let mut conn = db.conn()?;
    let stmt = conn.stmt(&db.apply_sql).map_err(pg_err)?;
    let rows = conn
        .client
        .query(
            &stmt,
            &[
                &u.state,
                &u.resume,
                &u.lease_owner,
                &u.lease_id,
                &u.lease_until_ms,
                &u.failures,
                &u.next_attempt_at_ms,
                &u.dead_reason,
                &now_ms,
                &u.access_token,
                &u.refresh_token,
                &u.id_token,
                &u.expires_at_ms,
                &u.last_refresh_ms,
                &u.account_id,
                &u.email,
                &u.plan_type,
                &u.user_id,
                &u.organization_id,
                &u.set_error,
                &u.error_code,
                &u.error_message,
                &u.error_at_ms,
                &id,
                &u.guard_version,
                &u.guard_lease,
                &u.lease_clock,
                &new_fp,
                &from,
                &actor,
                &t.reason,
                &notice.map(|n| n.event_id.as_str()),
                &notice.map(|n| n.kind.as_str()),
                &notice.and_then(|n| n.credential_id.as_deref()),
                &notice.map(|n| n.at_ms),
                &notice.map(|n| n.payload.as_str()),
            ],
        )
        .map_err(pg_err)?;
    match rows.as_slice() {
        [] => Ok(None),
        [row] => decode(db, row, Secrets::Keep).map(Some),
        _ => Err(Error::Internal(
            "a guarded update matched more than one row",
        )),
    }
}

/// The statement for a store whose notification channel is `channel`.
pub(super) fn statement(channel: &str) -> String {
    sql(channel)
}

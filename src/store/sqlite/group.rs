//! Group commit of [`Backend::apply`](crate::store::Backend::apply): the
//! calls of this process that arrive while one transaction commits are
//! written together by the next, each under its own guard and savepoint,
//! with one commit. Also the guarded UPDATE itself.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, TransactionBehavior};

use super::conn::Sync;
use super::errors::db_err;
use super::events::{append_event, Change};
use super::notifications::insert_notice;
use super::rows::select_one;
use super::sealing::Codec;
use super::{fingerprint, Sqlite};
use crate::credential::{Credential, LastError};
use crate::error::{Error, Result};
use crate::provider::Tokens;
use crate::state::{State, Transition};
use crate::store::rowdata::Update;
use crate::store::{ErrorUpdate, Notice, Write};

/// One [`Store::apply`] call, owned, waiting in the group-commit queue.
struct Op {
    id: String,
    t: Transition,
    tokens: Option<Tokens>,
    error: OwnedError,
    notify: Option<Notice>,
    actor: String,
    now_ms: i64,
    sync: Sync,
    result: Mutex<Option<Result<Option<Credential>>>>,
}

/// [`ErrorUpdate`], owned.
enum OwnedError {
    Keep,
    Clear,
    Set(LastError),
}

/// The queue of [`Store::apply`] calls and whether one is writing.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<GroupState>,
    /// Signalled when a batch is written.
    done: parking_lot::Condvar,
}

#[derive(Default)]
pub(super) struct GroupState {
    queue: Vec<Arc<Op>>,
    leading: bool,
}

/// The leader's batch. Dropped when it is written — or if writing it
/// panicked, when each op still without a result gets an error — it hands
/// the lead on and wakes the waiters.
struct Leading<'a> {
    group: &'a Group,
    batch: Vec<Arc<Op>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        for op in &self.batch {
            let mut result = op.result.lock();
            if result.is_none() {
                // Writing panicked: a bug, and the transaction rolled back,
                // so a retry may well land.
                *result = Some(Err(Error::Internal("the write failed unexpectedly; retry")));
            }
        }
        self.group.state.lock().leading = false;
        self.group.done.notify_all();
    }
}

/// Writes one op inside `tx`: the guarded UPDATE, the row as it now is and
/// the event row. `Ok(None)`, having written nothing, if the guard failed.
fn apply_op(tx: &Connection, codec: &Codec, op: &Op) -> Result<Option<Credential>> {
    let (id, t, actor, now_ms) = (op.id.as_str(), &op.t, op.actor.as_str(), op.now_ms);
    let write = Write {
        tokens: op.tokens.as_ref(),
        error: match &op.error {
            OwnedError::Keep => ErrorUpdate::Keep,
            OwnedError::Clear => ErrorUpdate::Clear,
            OwnedError::Set(e) => ErrorUpdate::Set(e),
        },
        notify: op.notify.as_ref(),
    };
    let u = Update::of(id, t, write, codec, now_ms);
    let changed = tx
        .prepare_cached(
            "UPDATE credentials SET state = ?1, version = version + 1, resume_state = ?2, \
             lease_owner = ?3, lease_id = ?4, lease_until_ms = ?5, failures = ?6, \
             next_attempt_at_ms = ?7, dead_reason = ?8, updated_ms = ?9, \
             access_token = COALESCE(?10, access_token), \
             refresh_token = COALESCE(?11, refresh_token), \
             id_token = COALESCE(?12, id_token), \
             expires_at_ms = COALESCE(?13, expires_at_ms), \
             last_refresh_ms = COALESCE(?14, last_refresh_ms), \
             account_id = COALESCE(?15, account_id), email = COALESCE(?16, email), \
             plan_type = COALESCE(?17, plan_type), user_id = COALESCE(?18, user_id), \
             organization_id = COALESCE(?19, organization_id), \
             last_error_code = CASE WHEN ?20 THEN ?21 ELSE last_error_code END, \
             last_error_message = CASE WHEN ?20 THEN ?22 ELSE last_error_message END, \
             last_error_at_ms = CASE WHEN ?20 THEN ?23 ELSE last_error_at_ms END, \
             lease_clock = ?27, \
             failing_since_ms = CASE WHEN ?6 = 0 THEN NULL WHEN failures = 0 THEN ?9 \
                 ELSE COALESCE(failing_since_ms, ?9) END \
             WHERE id = ?24 AND (?25 IS NULL OR version = ?25) AND (?26 IS NULL OR lease_id = ?26)",
        )
        .and_then(|mut s| {
            s.execute(params![
                u.state,
                u.resume,
                u.lease_owner,
                u.lease_id,
                u.lease_until_ms,
                u.failures,
                u.next_attempt_at_ms,
                u.dead_reason,
                now_ms,
                u.access_token,
                u.refresh_token,
                u.id_token,
                u.expires_at_ms,
                u.last_refresh_ms,
                u.account_id,
                u.email,
                u.plan_type,
                u.user_id,
                u.organization_id,
                u.set_error,
                u.error_code,
                u.error_message,
                u.error_at_ms,
                id,
                u.guard_version,
                u.guard_lease,
                u.lease_clock,
            ])
        })
        .map_err(db_err)?;
    if changed == 0 {
        return Ok(None);
    }
    // A new refresh token: the old one's fingerprint is spent, the new one's
    // current (same transaction).
    if let Some(tok) = write.tokens {
        fingerprint::rotated(
            tx,
            codec.fingerprints()?,
            id,
            tok.refresh_token.expose(),
            now_ms,
        )?;
    }
    let row = select_one(tx, id, codec)
        .map_err(db_err)?
        .ok_or(Error::Internal("updated row vanished"))?;
    let change = Change {
        from: Some(t.from.as_str()),
        to: t.to.as_str(),
        version: row.status.version,
        reason: &t.reason,
    };
    append_event(tx, id, &change, actor, now_ms).map_err(db_err)?;
    if let Some(n) = write.notify {
        insert_notice(tx, n)?;
    }
    Ok(Some(row))
}

/// Writes `t` if its guard still holds: `Ok(Some(row))` with the new row,
/// or `Ok(None)` when another writer got there first (a lost CAS).
///
/// Concurrent calls of this process are committed together (group
/// commit): while one transaction commits, the calls that arrive queue
/// up, and the next transaction writes them all, each under its own
/// guard and savepoint, with one commit (one fsync). Every call returns
/// only after the commit that holds its write, so nothing changes for a
/// caller but the wait.
pub(super) fn apply(
    db: &Sqlite,
    id: &str,
    t: &Transition,
    write: Write<'_>,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>> {
    // A fresh claim of the lease need not survive a power cut (see
    // [`Sync::Normal`]); everything else must. A takeover stays FULL.
    let claim = t.to == State::Refreshing && t.from != State::Refreshing;
    let op = Arc::new(Op {
        id: id.to_owned(),
        t: t.clone(),
        tokens: write.tokens.cloned(),
        error: match write.error {
            ErrorUpdate::Keep => OwnedError::Keep,
            ErrorUpdate::Clear => OwnedError::Clear,
            ErrorUpdate::Set(e) => OwnedError::Set(e.clone()),
        },
        notify: write.notify.cloned(),
        actor: actor.to_owned(),
        now_ms,
        sync: if claim { Sync::Normal } else { Sync::Full },
        result: Mutex::new(None),
    });
    let group = &db.group;
    let mut state = group.state.lock();
    state.queue.push(op.clone());
    loop {
        if let Some(result) = op.result.lock().take() {
            return result;
        }
        if !state.leading {
            // Lead: write everything queued so far, ours included.
            state.leading = true;
            let lead = Leading {
                group,
                batch: std::mem::take(&mut state.queue),
            };
            drop(state);
            // Claims first, in a transaction of their own that needs no
            // fsync, so that they are not kept waiting for the others'.
            // (The calls of one batch are all in flight at once: any
            // order of them is one a caller could have seen.)
            let (claims, others): (Vec<_>, Vec<_>) =
                lead.batch.iter().partition(|op| op.sync == Sync::Normal);
            if !claims.is_empty() {
                write_batch(db, &claims, Sync::Normal);
                if !others.is_empty() {
                    // Through the lock: a waiter that found no result
                    // before it was set is waiting by now.
                    drop(group.state.lock());
                    group.done.notify_all();
                }
            }
            if !others.is_empty() {
                write_batch(db, &others, Sync::Full);
            }
            drop(lead);
            state = group.state.lock();
            continue;
        }
        group.done.wait(&mut state);
    }
}

/// Writes `batch` in one transaction and hands each op its result.
fn write_batch(db: &Sqlite, batch: &[&Arc<Op>], sync: Sync) {
    match try_batch(db, batch, sync) {
        Ok(results) => {
            for (op, r) in batch.iter().zip(results) {
                *op.result.lock() = Some(r);
            }
        }
        Err(e) => {
            // Nothing was written: every op fails alike.
            for op in batch {
                *op.result.lock() = Some(Err(e.clone()));
            }
        }
    }
}

/// The ops' results if the transaction committed; a lost CAS or a
/// failed op writes nothing of its own.
fn try_batch(
    db: &Sqlite,
    batch: &[&Arc<Op>],
    sync: Sync,
) -> Result<Vec<Result<Option<Credential>>>> {
    let mut conn = db.writer(sync)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let codec = &db.codec;
    let mut results = Vec::with_capacity(batch.len());
    let mut wrote = false;
    if let [op] = batch {
        let r = apply_op(&tx, codec, op)?;
        wrote = r.is_some();
        results.push(Ok(r));
    } else {
        for op in batch {
            tx.execute_batch("SAVEPOINT op").map_err(db_err)?;
            match apply_op(&tx, codec, op) {
                Ok(r) => {
                    wrote |= r.is_some();
                    tx.execute_batch("RELEASE op").map_err(db_err)?;
                    results.push(Ok(r));
                }
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO op; RELEASE op")
                        .map_err(db_err)?;
                    results.push(Err(e));
                }
            }
        }
    }
    if wrote {
        tx.commit().map_err(db_err)?;
    }
    Ok(results)
}

//! The refresh protocol of DESIGN.md §4: the shell that feeds the pure state
//! machine with rows from the store and answers from upstream.
//!
//! A caller reads the row and asks [`state::decide`] what to do. To refresh
//! it must win a compare-and-swap into `refreshing`, which gives it a lease;
//! only the lease holder talks to the token endpoint, and its writes are
//! fenced by the lease id. Everyone else waits for the row to change: woken
//! by an in-process condvar when the owner is a thread of this process, and
//! by polling the row's version when it is another process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::clock;
use crate::config::Config;
use crate::credential::{Credential, LastError};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, RefreshOutcome};
use crate::provider::{self, Failure, Outcome, Permanence};
use crate::state::{self, Decision, Event, Lease, Need, Refusal};
use crate::store::{ErrorUpdate, Stamp, Store, Write};
use crate::upstream::{self, Upstream};

/// First and longest pause between two polls of a row another process is
/// refreshing.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(25);

/// Per-credential wake-ups for threads of this process. A hint only: the
/// row is the truth, and waiters re-read it whatever woke them.
#[derive(Default)]
pub(crate) struct Signals {
    map: Mutex<HashMap<String, Arc<Signal>>>,
}

#[derive(Default)]
struct Signal {
    generation: Mutex<u64>,
    cond: Condvar,
    /// Held by the one thread of this process trying to claim the lease;
    /// the others wait for it instead of racing it for the database's
    /// write lock (where losers sleep in SQLite's busy handler).
    claiming: Mutex<()>,
    /// Held by the waiter of this process that polls the row.
    poller: Mutex<()>,
    /// The last version a waiter of this process read, and when.
    polled: Mutex<Option<(Instant, Option<i64>)>>,
}

impl Signals {
    fn get(&self, id: &str) -> Arc<Signal> {
        let mut map = self.map.lock();
        match map.get(id) {
            Some(s) => s.clone(),
            None => map.entry(id.to_owned()).or_default().clone(),
        }
    }

    /// Wakes every thread waiting on `id`.
    pub(crate) fn notify(&self, id: &str) {
        let s = self.get(id);
        *s.generation.lock() += 1;
        s.cond.notify_all();
    }
}

/// Most rows [`Rows`] holds; past that it starts over.
const ROWS_MAX: usize = 1024;

/// Rows this process read lately, decoded, each valid only under the
/// database [`Stamp`] it was read under.
///
/// A row read after stamp S was taken is the current row for as long as the
/// stamp is still S: equal stamps prove that no connection of any process
/// (this one's included) committed anything since S was taken — no reject,
/// refresh, claim, re-import or delete. So a reader takes the stamp first,
/// and uses a row from here only while the stamp still equals the one it was
/// read under; everything else is read from the database (and kept). The
/// state machine still judges every row with the current clock, so an
/// expired, expiring or rejected token is never served because it was
/// cached. This is what makes `Warden::token` on a valid credential cost a
/// `pread` instead of a query, and a crowd of waiters woken by a refresh
/// read the new row once instead of once each.
#[derive(Default)]
pub(crate) struct Rows {
    state: RwLock<RowsState>,
    /// Set once a warden's first call is done (see [`Rows::arm`]).
    armed: AtomicBool,
}

#[derive(Default)]
struct RowsState {
    /// The stamp every row below was read under.
    stamp: Option<Stamp>,
    rows: HashMap<String, Credential>,
}

impl Rows {
    /// From now on rows are kept: called after a warden's first call, so
    /// that a one-shot process never opens the stamp's reader.
    pub(crate) fn arm(&self) {
        if !self.armed.load(Ordering::Relaxed) {
            self.armed.store(true, Ordering::Relaxed);
        }
    }

    /// The database's stamp now, to be taken before reading a row; `None`
    /// when it cannot be had (then nothing is used or kept).
    pub(crate) fn stamp(&self, store: &Store) -> Option<Stamp> {
        match self.armed.load(Ordering::Relaxed) {
            true => store.stamp(),
            false => None,
        }
    }

    /// `f` of the kept row of `id`, if it is still the row (`stamp` is the
    /// database's stamp now).
    pub(crate) fn with<R>(
        &self,
        stamp: Stamp,
        id: &str,
        f: impl FnOnce(&Credential) -> R,
    ) -> Option<R> {
        let state = self.state.read();
        if state.stamp != Some(stamp) {
            return None;
        }
        state.rows.get(id).map(f)
    }

    /// Keeps `row`, read after `stamp` was taken. Rows kept under another
    /// stamp are dropped: each row is only ever valid under its own.
    fn keep(&self, stamp: Stamp, row: &Credential) {
        let mut state = self.state.write();
        if state.stamp != Some(stamp) {
            state.rows.clear();
            state.stamp = Some(stamp);
        }
        if state.rows.len() >= ROWS_MAX && !state.rows.contains_key(&row.id) {
            state.rows.clear();
        }
        state.rows.insert(row.id.clone(), row.clone());
    }
}

/// How a caller's row came to satisfy it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The stored token was good enough as it was.
    Stored,
    /// This caller refreshed it.
    Refreshed,
    /// Another thread or process refreshed it while this caller waited.
    Adopted,
}

/// What the lease owner's work came to.
enum Owned {
    /// The row after the owner's final write.
    Done(Box<Credential>),
    /// Someone took the lease over; nothing was written.
    LeaseLost,
}

/// The protocol, over one store, one configuration and one HTTP client.
pub(crate) struct Refresher {
    pub(crate) store: Store,
    pub(crate) config: Config,
    pub(crate) upstream: Upstream,
    pub(crate) signals: Signals,
    pub(crate) metrics: Metrics,
    pub(crate) rows: Rows,
}

impl Refresher {
    /// Gets the credential into a state that satisfies `need` and returns
    /// the row to serve from, waiting at most `wait` on someone else's
    /// refresh (DESIGN.md §4).
    pub(crate) fn obtain(&self, id: &str, need: Need, wait: Duration) -> Result<(Credential, Via)> {
        let result = self.obtain_now(id, need, wait);
        self.rows.arm();
        result
    }

    fn obtain_now(&self, id: &str, need: Need, wait: Duration) -> Result<(Credential, Via)> {
        let deadline = Instant::now() + wait;
        let mut poll = POLL_MIN;
        let mut waited = false;
        loop {
            let row = self
                .read(id)?
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let now = clock::now_ms();
            match state::decide(&row.status, need, now, &self.config.policy) {
                Decision::Serve if waited => {
                    self.metrics
                        .refresh(row.provider.kind.as_str(), RefreshOutcome::Adopted);
                    return Ok((row, Via::Adopted));
                }
                Decision::Serve => return Ok((row, Via::Stored)),
                Decision::Dead { reason } => {
                    return Err(Error::Dead {
                        id: id.to_owned(),
                        reason,
                    })
                }
                Decision::Unavailable { retry_at_ms } => {
                    return Err(unavailable(
                        &row,
                        retry_at_ms - now,
                        "backing off after failures",
                    ))
                }
                Decision::Claim => {
                    let signal = self.signals.get(id);
                    let turn = signal.claiming.try_lock();
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if turn.is_none() && !remaining.is_zero() {
                        // Another thread of this process is claiming it:
                        // wait for its outcome (it wakes us), then decide
                        // again on the row.
                        waited = true;
                        let _gauge = self.metrics.waiting();
                        self.wait_for_change(id, row.status.version, remaining, poll)?;
                        continue;
                    }
                    let outcome = self.claim_and_refresh(&row, need, deadline);
                    drop(turn);
                    // Whatever happened, local waiters re-read the row.
                    self.signals.notify(id);
                    if let Some(done) = outcome? {
                        return self
                            .after_own_refresh(done, need)
                            .map(|r| (r, Via::Refreshed));
                    }
                    // Lost the race: re-read and decide again at once.
                }
                Decision::Wait {
                    lease_until_ms,
                    fallback,
                } => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        if fallback {
                            return Ok((row, Via::Stored));
                        }
                        return Err(unavailable(
                            &row,
                            lease_until_ms - now,
                            "another refresh of it is still in flight",
                        ));
                    }
                    // Wake up by the lease's end at the latest, to take it over.
                    let until_lease =
                        Duration::from_millis((lease_until_ms - now + 1).max(0) as u64);
                    waited = true;
                    let _gauge = self.metrics.waiting();
                    self.wait_for_change(id, row.status.version, remaining.min(until_lease), poll)?;
                    poll = (poll * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// The current row of `id`: kept in `rows` if the stamp proves it still
    /// is, else read from the database (and kept).
    pub(crate) fn read(&self, id: &str) -> Result<Option<Credential>> {
        let stamp = self.rows.stamp(&self.store);
        if let Some(stamp) = stamp {
            if let Some(row) = self.rows.with(stamp, id, Credential::clone) {
                return Ok(Some(row));
            }
        }
        let row = self.store.get(id)?;
        if let (Some(stamp), Some(row)) = (stamp, &row) {
            self.rows.keep(stamp, row);
        }
        Ok(row)
    }

    /// What a caller gets after running the refresh itself: no second
    /// round, so a forced refresh that failed is not retried in a loop.
    fn after_own_refresh(&self, row: Credential, need: Need) -> Result<Credential> {
        let now = clock::now_ms();
        if row.status.state == state::State::Dead {
            // Also after a forced refresh, which decide() would let claim again.
            return Err(Error::Dead {
                id: row.id.clone(),
                reason: row
                    .status
                    .dead_reason
                    .clone()
                    .unwrap_or_else(|| "dead".into()),
            });
        }
        // `row` is what this caller's own commit wrote: after a success it is
        // valid with no failures, and its brand-new token is served — even
        // if committed within the millisecond the caller asked (which
        // decide() could not tell from "before"), or shorter-lived than
        // min_ttl (it is the best there is).
        if row.status.state == state::State::Valid
            && row.status.failures == 0
            && row.status.has_access_token
        {
            return Ok(row);
        }
        match state::decide(&row.status, need, now, &self.config.policy) {
            Decision::Serve => Ok(row),
            Decision::Dead { reason } => Err(Error::Dead {
                id: row.id.clone(),
                reason,
            }),
            _ => {
                // The refresh failed transiently: stale-while-revalidate.
                let min_ttl = match need {
                    Need::Token { min_ttl_ms } => Some(min_ttl_ms),
                    Need::Refresh { .. } => None,
                };
                if min_ttl.is_some_and(|t| row.status.usable(now, t)) {
                    return Ok(row);
                }
                let retry = row.status.next_attempt_at_ms.map_or(1000, |t| t - now);
                Err(unavailable(&row, retry, "the refresh failed"))
            }
        }
    }

    /// Sleeps until the row's version moves past `version`, an in-process
    /// wake-up, or `max` — whichever comes first.
    fn wait_for_change(&self, id: &str, version: i64, max: Duration, poll: Duration) -> Result<()> {
        let signal = self.signals.get(id);
        let start = Instant::now();
        let end = start + max;
        let mut poll = poll;
        let mut generation = signal.generation.lock();
        let seen = *generation;
        // One waiter per credential in this process polls the row on the
        // short schedule; the others nap POLL_MAX at a time and are woken by
        // it (or by a refresher of this process), so that a crowd of waiters
        // does not keep the CPU the refresher needs busy with polls.
        let mut poller = None;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if poller.is_none() {
                poller = signal.poller.try_lock();
            }
            let nap = if poller.is_some() { poll } else { POLL_MAX };
            signal.cond.wait_for(&mut generation, nap.min(left));
            if *generation != seen {
                return Ok(());
            }
            // Another process may have committed: the row is the truth. A
            // napper uses the poller's look if it is newer than its own start.
            let looked = match *signal.polled.lock() {
                Some((at, v)) if poller.is_none() && at > start => Some(v),
                _ => None,
            };
            let current = match looked {
                Some(v) => v,
                None => {
                    let at = Instant::now();
                    let v = parking_lot::MutexGuard::unlocked(&mut generation, || {
                        self.store.version(id)
                    })?;
                    *signal.polled.lock() = Some((at, v));
                    v
                }
            };
            if current != Some(version) {
                // Changed: the other waiters of this process re-read too.
                *generation += 1;
                signal.cond.notify_all();
                return Ok(());
            }
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// Tries to win the lease; on success runs the refresh and returns the
    /// final row, `None` when another caller won.
    fn claim_and_refresh(
        &self,
        row: &Credential,
        need: Need,
        deadline: Instant,
    ) -> Result<Option<Credential>> {
        let now = clock::now_ms();
        let actor = clock::actor(&self.config.actor);
        let lease = Lease {
            owner: actor.clone(),
            id: format!("{:016x}", clock::unique_u64()),
            until_ms: now + clock::millis(self.config.lease_ttl),
        };
        let event = Event::Claim {
            lease: lease.clone(),
            need,
        };
        let t = match state::apply(&row.status, &event, now, &self.config.policy) {
            Ok(t) => t,
            // decide() said Claim on this very row, so apply() agrees;
            // should it ever not, re-reading is the safe answer.
            Err(_) => return Ok(None),
        };
        let takeover = row.status.state == state::State::Refreshing;
        // Counted from before the claim until the outcome is committed (or
        // the lease lost): a shutting-down process waits for it, and starts
        // no new one.
        let Some(_held) = self.metrics.lease() else {
            return Err(unavailable(row, 1000, "this process is shutting down"));
        };
        let Some(claimed) = self
            .store
            .apply(&row.id, &t, Write::STATE_ONLY, &actor, now)?
        else {
            return Ok(None);
        };
        if takeover {
            self.metrics
                .refresh(row.provider.kind.as_str(), RefreshOutcome::Takeover);
            log::warn!(
                "{}: took over an expired refresh lease ({})",
                row.id,
                t.reason
            );
        }
        let result = self.run_lease(claimed, &lease, &actor, deadline);
        // Wake local waiters whatever happened: the row is the truth.
        self.signals.notify(&row.id);
        match result? {
            Owned::Done(row) => Ok(Some(*row)),
            Owned::LeaseLost => Ok(None),
        }
    }

    /// The lease owner's work: call the token endpoint (several attempts,
    /// each started only if it can finish within the lease) and commit the
    /// outcome, fenced by the lease.
    fn run_lease(
        &self,
        row: Credential,
        lease: &Lease,
        actor: &str,
        deadline: Instant,
    ) -> Result<Owned> {
        let cfg = &self.config;
        let timeout = cfg.request_timeout;
        let request =
            match provider::refresh_request(&row.provider, &row.refresh_token, &cfg.endpoints) {
                Ok(r) => r,
                Err(why) => {
                    let failure = Failure {
                        permanence: Permanence::Permanent,
                        ..Failure::transient("invalid_config", why)
                    };
                    return self.commit_failure(&row, lease, actor, &failure);
                }
            };
        let mut last: Option<Failure> = None;
        for attempt in 1..=cfg.attempts {
            let now = clock::now_ms();
            if now + clock::millis(timeout) >= lease.until_ms {
                log::warn!(
                    "{}: no time left in the lease for attempt {attempt}",
                    row.id
                );
                break;
            }
            if attempt > 1 && Instant::now() + timeout > deadline {
                break;
            }
            log::debug!("{}: refresh attempt {attempt} to {}", row.id, request.url);
            let started = Instant::now();
            let outcome = match self.upstream.send(&request, timeout) {
                Ok(resp) => provider::parse_refresh(
                    row.provider.kind,
                    &resp,
                    &row.refresh_token,
                    clock::now_ms(),
                ),
                Err(f) => Outcome::Failure(f),
            };
            self.metrics
                .upstream_latency(row.provider.kind.as_str(), started.elapsed());
            match outcome {
                Outcome::Success(tokens) => {
                    // Commit before anything else touches the new tokens.
                    let tokens = provider::Tokens {
                        claims: tokens.claims.clone().or(&row.claims),
                        ..tokens
                    };
                    return self.commit(
                        &row,
                        lease,
                        actor,
                        Event::Succeed {
                            lease_id: lease.id.clone(),
                        },
                        Write {
                            tokens: Some(&tokens),
                            error: ErrorUpdate::Clear,
                        },
                    );
                }
                Outcome::Failure(f) if f.permanence == Permanence::Permanent => {
                    return self.commit_failure(&row, lease, actor, &f);
                }
                Outcome::Failure(f) => {
                    let elapsed = started.elapsed().as_millis();
                    if upstream::is_ambiguous(&f) {
                        log::warn!(
                            "{}: attempt {attempt} ended ambiguously after {elapsed} ms ({}): \
                             the token may have rotated upstream",
                            row.id,
                            f.code
                        );
                    } else {
                        log::warn!(
                            "{}: attempt {attempt} failed after {elapsed} ms: {}",
                            row.id,
                            f.code
                        );
                    }
                    let honour_retry_after = f.retry_after_ms.is_some();
                    last = Some(f);
                    if honour_retry_after || attempt == cfg.attempts {
                        break;
                    }
                    // Linear backoff within the lease: 1 s, 2 s, …
                    let pause = Duration::from_secs(u64::from(attempt));
                    let lease_left =
                        Duration::from_millis((lease.until_ms - clock::now_ms()).max(0) as u64);
                    if pause + timeout >= lease_left || Instant::now() + pause + timeout > deadline
                    {
                        break;
                    }
                    std::thread::sleep(pause);
                }
            }
        }
        let failure = last.unwrap_or_else(|| {
            Failure::transient("no_attempt", "the lease left no time for a request")
        });
        self.commit_failure(&row, lease, actor, &failure)
    }

    fn commit_failure(
        &self,
        row: &Credential,
        lease: &Lease,
        actor: &str,
        f: &Failure,
    ) -> Result<Owned> {
        let lease_id = lease.id.clone();
        let event = match f.permanence {
            Permanence::Permanent => {
                log::error!(
                    "{}: refresh token refused for good: {} — the credential is dead",
                    row.id,
                    f.code
                );
                Event::FailPermanent {
                    lease_id,
                    code: f.code.clone(),
                }
            }
            Permanence::Transient => Event::FailTransient {
                lease_id,
                retry_after_ms: f.retry_after_ms,
            },
        };
        let error = LastError {
            code: f.code.clone(),
            message: f.message.clone(),
            at_ms: clock::now_ms(),
        };
        self.commit(
            row,
            lease,
            actor,
            event,
            Write {
                tokens: None,
                error: ErrorUpdate::Set(&error),
            },
        )
    }

    /// Writes the owner's outcome, fenced by the lease.
    fn commit(
        &self,
        row: &Credential,
        lease: &Lease,
        actor: &str,
        event: Event,
        write: Write<'_>,
    ) -> Result<Owned> {
        // Re-read under the lease: a rejection may have been recorded
        // meanwhile (it changes the state a failure returns to), or the lease
        // may have been taken over (then nothing may be written). A failure's
        // write pins the version it was computed from, so a rejection that
        // lands in between makes it recompute; rejections change a row once,
        // so this settles in a round or two.
        loop {
            let now = clock::now_ms();
            // The state machine needs the status only: no secrets decoded.
            let current = self
                .store
                .get_without_secrets(&row.id)?
                .ok_or_else(|| Error::NotFound(row.id.clone()))?;
            let t = match state::apply(&current.status, &event, now, &self.config.policy) {
                Ok(t) => t,
                Err(Refusal::LeaseLost) => return Ok(self.lease_lost(row, write)),
                Err(other) => {
                    unreachable!("owner events are refused only as LeaseLost, not {other:?}")
                }
            };
            match self.store.apply(&row.id, &t, write, actor, now) {
                Ok(Some(done)) => {
                    let outcome = match t.to {
                        state::State::Valid if write.tokens.is_some() => RefreshOutcome::Success,
                        state::State::Dead => RefreshOutcome::Permanent,
                        _ => RefreshOutcome::Transient,
                    };
                    self.metrics.refresh(row.provider.kind.as_str(), outcome);
                    log::info!(
                        "{}: {} -> {} (v{}): {}",
                        row.id,
                        t.from,
                        t.to,
                        done.status.version,
                        t.reason
                    );
                    return Ok(Owned::Done(Box::new(done)));
                }
                Ok(None) => continue,
                // Rotated tokens exist nowhere else. On a full disk, give
                // up the space reserve for this commit.
                Err(Error::DiskFull(e))
                    if write.tokens.is_some() && self.store.release_reserve() =>
                {
                    log::warn!(
                        "{}: disk full while committing rotated tokens ({e}); \
                         released the space reserve to commit them",
                        row.id
                    );
                }
                // Keep trying while the lease lasts (a busy database may clear).
                Err(e) if write.tokens.is_some() && clock::now_ms() + 250 < lease.until_ms => {
                    log::warn!(
                        "{}: commit of rotated tokens failed ({e}); retrying",
                        row.id
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    if write.tokens.is_some() {
                        log::error!(
                            "{}: could not commit the rotated tokens of lease {} ({e}); \
                             upstream has moved on, so the credential needs a re-import \
                             if nobody can commit them",
                            row.id,
                            lease.id
                        );
                    }
                    return Err(e);
                }
            }
        }
    }

    fn lease_lost(&self, row: &Credential, write: Write<'_>) -> Owned {
        self.metrics
            .refresh(row.provider.kind.as_str(), RefreshOutcome::LeaseLost);
        if write.tokens.is_some() {
            log::error!(
                "{}: lease was taken over before the rotated tokens could be committed; \
                 they are discarded (the new owner's refresh decides the outcome)",
                row.id
            );
        } else {
            log::warn!("{}: lease was taken over; outcome not recorded", row.id);
        }
        Owned::LeaseLost
    }
}

/// A "try again later" error for `row`, with a whole number of seconds.
fn unavailable(row: &Credential, retry_ms: i64, what: &str) -> Error {
    let detail = row
        .last_error
        .as_ref()
        .map(|e| format!("{what} (last error: {}: {})", e.code, e.message))
        .unwrap_or_else(|| what.to_owned());
    Error::Unavailable {
        id: row.id.clone(),
        message: detail,
        retry_after_s: (retry_ms.max(1) as u64).div_ceil(1000),
    }
}

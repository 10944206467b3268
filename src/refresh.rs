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

use crate::clock::{self, Clock};
use crate::config::Config;
use crate::credential::{Credential, LastError};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, RefreshOutcome};
use crate::provider::{self, Failure, HttpRequest, HttpResponse, Outcome, Permanence};
use crate::state::{self, Decision, Event, Lease, Need, Refusal};
use crate::store::{ErrorUpdate, Stamp, Store, Write};
use crate::upstream::{self, RequestSlots, Upstream};

/// First and longest pause between two polls of a row another process is
/// refreshing.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(25);

/// How long a caller waits on another thread's read of a row before it
/// reads alone: far above a read's usual time, so a crowd still shares; a
/// read hung on a silently dead connection (a NAT that dropped its
/// mapping) holds up no caller longer than this — each then reads on
/// another pooled connection, as it would have without sharing.
const SHARED_READ_PATIENCE: Duration = Duration::from_millis(250);

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
    /// Reads of the row shared by this process's threads, where the store
    /// has no stamp (PostgreSQL): see [`Refresher::shared_read`].
    reads: Mutex<Reads>,
    /// How many shared reads have ended: changed only under `reads`, and
    /// under a lock of its own so that waiters wait on it through the
    /// refresher's clock.
    reads_ended: Mutex<u64>,
    /// Signalled when a shared read ends.
    read_done: Condvar,
}

/// The state of one row's shared reads.
#[derive(Default)]
struct Reads {
    /// When the read running now began (`None`: none runs).
    running: Option<Instant>,
    /// The row the last successful read found, and its number in
    /// `reads_ended`.
    last: Option<(u64, Option<Credential>)>,
}

/// A thread's hold on the [`Signal`] of one credential. The map keeps a
/// credential's signal only while some thread holds it: the last holder
/// removes it on the way out, so a process that has refreshed every one of
/// 100,000 credentials does not keep 100,000 signals. (Nobody can take a
/// hold meanwhile: holds are taken and counted under the map's lock.)
struct SignalRef<'a> {
    signals: &'a Signals,
    id: &'a str,
    /// `Some` until the hold is dropped (taken there, under the map's lock).
    signal: Option<Arc<Signal>>,
}

impl std::ops::Deref for SignalRef<'_> {
    type Target = Signal;

    fn deref(&self) -> &Signal {
        // Cannot fail: `signal` is taken only by `drop`.
        self.signal.as_ref().expect("a live hold has its signal")
    }
}

impl Drop for SignalRef<'_> {
    fn drop(&mut self) {
        let mut map = self.signals.map.lock();
        if let Some(signal) = self.signal.take() {
            // The map's reference and this one: no other thread holds it.
            if Arc::strong_count(&signal) == 2 {
                map.remove(self.id);
            }
            // Let go under the lock, so that a holder leaving next counts
            // this hold gone.
            drop(signal);
        }
    }
}

impl Signals {
    fn get<'a>(&'a self, id: &'a str) -> SignalRef<'a> {
        let mut map = self.map.lock();
        let signal = match map.get(id) {
            Some(s) => s.clone(),
            None => map.entry(id.to_owned()).or_default().clone(),
        };
        SignalRef {
            signals: self,
            id,
            signal: Some(signal),
        }
    }

    /// Wakes every thread waiting on `id`. With no signal kept for `id`,
    /// no thread holds one, so none is waiting.
    pub(crate) fn notify(&self, id: &str) {
        let held = {
            let map = self.map.lock();
            map.get(id).cloned().map(|signal| SignalRef {
                signals: self,
                id,
                signal: Some(signal),
            })
        };
        if let Some(s) = held {
            *s.generation.lock() += 1;
            s.cond.notify_all();
        }
    }

    /// How many credentials have a signal kept (for tests).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.map.lock().len()
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

/// Arms [`Rows`] when dropped: at the end of a call, whatever its outcome.
struct ArmOnDrop<'a>(&'a Rows);

impl Drop for ArmOnDrop<'_> {
    fn drop(&mut self) {
        self.0.arm();
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

/// Sends a request upstream and hands back the answer or a classified
/// transport failure: the refresher's (and the quota fetch's) one way out.
/// The real one is [`Upstream`]; the refresher's tests answer from a script,
/// on simulated time.
pub(crate) trait Transport: Send + Sync {
    /// Sends `req`, giving up after `timeout` in all.
    fn send(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse, Failure>;
}

impl Transport for Upstream {
    fn send(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse, Failure> {
        Upstream::send(self, req, timeout)
    }
}

/// The protocol, over one store, one configuration, one HTTP client and one
/// clock.
///
/// Every time the protocol reads (its deadlines, the lease left, the `now`
/// it hands the state machine, the time it writes) and every pause it makes
/// go through `clock`: in production [`clock::SystemClock`], in the tests a
/// simulated clock that moves only when the refresher sleeps or waits.
pub(crate) struct Refresher {
    pub(crate) store: Store,
    pub(crate) config: Config,
    pub(crate) upstream: Box<dyn Transport>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) metrics: Metrics,
    pub(crate) rows: Rows,
    /// Kept while the refresher lives: the store holds it weakly.
    _wake: Arc<crate::store::Wake>,
}

impl Refresher {
    /// A refresher over `store`, sending through `upstream`, on `clock`.
    pub(crate) fn new(
        store: Store,
        config: Config,
        upstream: Box<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Refresher {
        // Commits of other processes (other boxes, on PostgreSQL) wake this
        // process's waiters, where the store can tell of them.
        let signals = Arc::new(Signals::default());
        let weak = Arc::downgrade(&signals);
        let wake: Arc<crate::store::Wake> = Arc::new(move |id: &str| {
            if let Some(s) = weak.upgrade() {
                s.notify(id);
            }
        });
        store.on_commit(&wake);
        Refresher {
            store,
            config,
            upstream,
            clock,
            _wake: wake,
            signals,
            metrics: Metrics::default(),
            rows: Rows::default(),
        }
    }

    /// Gets the credential into a state that satisfies `need` and returns
    /// the row to serve from, waiting at most `wait` on someone else's
    /// refresh (DESIGN.md §4).
    pub(crate) fn obtain(&self, id: &str, need: Need, wait: Duration) -> Result<(Credential, Via)> {
        self.obtain_with(id, need, wait, None)
    }

    /// [`Refresher::obtain`], sending a refresh request only with one of
    /// `slots` taken, if given (see [`RequestSlots`]).
    pub(crate) fn obtain_with(
        &self,
        id: &str,
        need: Need,
        wait: Duration,
        slots: Option<&RequestSlots>,
    ) -> Result<(Credential, Via)> {
        // Rows are kept from the end of a warden's first call on.
        let _arm = ArmOnDrop(&self.rows);
        let deadline = self.clock.instant() + wait;
        let mut poll = POLL_MIN;
        let mut waited = false;
        loop {
            let row = self
                .read(id)?
                .ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let now = self.clock.now();
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
                        provider: row.provider.kind,
                        reason,
                    })
                }
                Decision::Unavailable { retry_at_ms } => {
                    return Err(unavailable(
                        &row,
                        retry_at_ms - now.wall_ms,
                        "backing off after failures",
                    ))
                }
                Decision::Claim => {
                    let signal = self.signals.get(id);
                    let turn = signal.claiming.try_lock();
                    let remaining = deadline.saturating_duration_since(self.clock.instant());
                    if turn.is_none() && !remaining.is_zero() {
                        // Another thread of this process is claiming it:
                        // wait for its outcome (it wakes us), then decide
                        // again on the row.
                        waited = true;
                        let _gauge = self.metrics.waiting();
                        self.wait_for_change(id, row.status.version, remaining, poll)?;
                        continue;
                    }
                    let outcome = self.claim_and_refresh(&row, need, deadline, slots);
                    drop(turn);
                    // Whatever happened, local waiters re-read the row.
                    self.signals.notify(id);
                    if let Some(done) = outcome? {
                        return self
                            .after_own_refresh(done, need)
                            .map(|r| (r, Via::Refreshed));
                    }
                    // Lost the race: re-read and decide again — at once if
                    // the row changed, else after a poll (a takeover the
                    // store refused on its own clock: PostgreSQL just
                    // restarted, see `postgres::apply`), never in a spin.
                    if row.status.state == state::State::Refreshing {
                        let remaining = deadline.saturating_duration_since(self.clock.instant());
                        if remaining.is_zero() {
                            return Err(unavailable(
                                &row,
                                poll.as_millis() as i64,
                                "another refresh of it holds a lease the database still counts",
                            ));
                        }
                        waited = true;
                        self.wait_for_change(id, row.status.version, remaining.min(poll), poll)?;
                        poll = (poll * 2).min(POLL_MAX);
                    }
                }
                Decision::Wait {
                    lease_left_ms,
                    fallback,
                } => {
                    let remaining = deadline.saturating_duration_since(self.clock.instant());
                    if remaining.is_zero() {
                        if fallback {
                            return Ok((row, Via::Stored));
                        }
                        return Err(unavailable(
                            &row,
                            lease_left_ms,
                            "another refresh of it is still in flight",
                        ));
                    }
                    // Wake up by the lease's end at the latest, to take it over.
                    let until_lease = Duration::from_millis((lease_left_ms + 1).max(0) as u64);
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
        let Some(stamp) = stamp else {
            return self.shared_read(id);
        };
        let row = self.store.get(id)?;
        if let Some(row) = &row {
            self.rows.keep(stamp, row);
        }
        Ok(row)
    }

    /// The row of `id` as a database read begun after this call found it:
    /// this thread's own read, or one another thread of this process began
    /// meanwhile, shared. A crowd of callers (a release at one instant, the
    /// waiters a commit wakes) costs two reads, not one each, so the owner's
    /// claim and commit do not queue behind them for connections. Sharing
    /// a read that began later than the call serves nothing older than the
    /// caller's own read would: a reject or refresh committed before the
    /// call is in it. A shared read that failed is not shared: each of its
    /// waiters reads alone; so does a waiter whose read has not ended within
    /// [`SHARED_READ_PATIENCE`] on the refresher's clock, and a caller that
    /// finds the running read older than that.
    fn shared_read(&self, id: &str) -> Result<Option<Credential>> {
        let signal = self.signals.get(id);
        let arrived = self.clock.instant();
        let mut reads = signal.reads.lock();
        let ended = || *signal.reads_ended.lock();
        // A read running longer than the patience already is hung: no
        // caller waits on it at all.
        if reads
            .running
            .is_some_and(|b| arrived.saturating_duration_since(b) >= SHARED_READ_PATIENCE)
        {
            drop(reads);
            return self.store.get(id);
        }
        // A read running now may have begun before this call: only the one
        // after it (numbered `ended + 2`) surely began later.
        let need = ended() + if reads.running.is_some() { 2 } else { 1 };
        loop {
            if let Some((n, row)) = &reads.last {
                if *n >= need {
                    return Ok(row.clone());
                }
            }
            let seen = ended();
            if seen >= need {
                drop(reads);
                return self.store.get(id);
            }
            let Some(began) = reads.running else {
                reads.running = Some(self.clock.instant());
                // Ends the read whatever happens, unwinding included, so
                // that waiters never wait on a read nobody runs.
                struct Ending<'a>(&'a Signal, Option<Option<Credential>>);
                impl Drop for Ending<'_> {
                    fn drop(&mut self) {
                        let mut reads = self.0.reads.lock();
                        reads.running = None;
                        let mut ended = self.0.reads_ended.lock();
                        *ended += 1;
                        reads.last = self.1.take().map(|row| (*ended, row));
                        self.0.read_done.notify_all();
                    }
                }
                return parking_lot::MutexGuard::unlocked(&mut reads, || {
                    let mut ending = Ending(&signal, None);
                    let got = self.store.get(id);
                    ending.1 = got.as_ref().ok().cloned();
                    got
                });
            };
            // Wait for the running read to end (`reads_ended` moves under
            // `reads`: no end is missed), at most until it has run for the
            // patience, then read alone. Counted from the read's own
            // start, not the caller's arrival: a caller that waits out one
            // slow read and then the next is not pushed into reading alone
            // by the first (a herd, once reads take half the patience).
            let deadline = began + SHARED_READ_PATIENCE;
            drop(reads);
            let mut count = signal.reads_ended.lock();
            while *count == seen {
                let left = deadline.saturating_duration_since(self.clock.instant());
                if left.is_zero() {
                    drop(count);
                    return self.store.get(id);
                }
                self.clock.wait_for(&signal.read_done, &mut count, left);
            }
            drop(count);
            reads = signal.reads.lock();
        }
    }

    /// What a caller gets after running the refresh itself: no second
    /// round, so a forced refresh that failed is not retried in a loop.
    fn after_own_refresh(&self, row: Credential, need: Need) -> Result<Credential> {
        let now = self.clock.now();
        if row.status.state == state::State::Dead {
            // Also after a forced refresh, which decide() would let claim again.
            return Err(Error::Dead {
                id: row.id.clone(),
                provider: row.provider.kind,
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
                provider: row.provider.kind,
                reason,
            }),
            _ => {
                // The refresh failed transiently: stale-while-revalidate.
                let min_ttl = match need {
                    Need::Token { min_ttl_ms } => Some(min_ttl_ms),
                    Need::Refresh { .. } => None,
                };
                if min_ttl.is_some_and(|t| row.status.usable(now.wall_ms, t)) {
                    return Ok(row);
                }
                let retry = row
                    .status
                    .next_attempt_at_ms
                    .map_or(1000, |t| t - now.wall_ms);
                Err(unavailable(&row, retry, "the refresh failed"))
            }
        }
    }

    /// Sleeps until the row's version moves past `version`, an in-process
    /// wake-up, or `max` — whichever comes first.
    pub(crate) fn wait_for_change(
        &self,
        id: &str,
        version: i64,
        max: Duration,
        poll: Duration,
    ) -> Result<()> {
        let signal = self.signals.get(id);
        let start = self.clock.instant();
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
            let left = end.saturating_duration_since(self.clock.instant());
            if left.is_zero() {
                return Ok(());
            }
            if poller.is_none() {
                poller = signal.poller.try_lock();
            }
            let nap = if poller.is_some() { poll } else { POLL_MAX };
            self.clock
                .wait_for(&signal.cond, &mut generation, nap.min(left));
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
                    let at = self.clock.instant();
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
        slots: Option<&RequestSlots>,
    ) -> Result<Option<Credential>> {
        // Build (and so validate) the request before claiming: a setting
        // this process got wrong is this process's error — the row stays as
        // it is, and nothing goes upstream.
        let request =
            provider::refresh_request(&row.provider, &row.refresh_token, &self.config.endpoints)
                .map_err(|why| config_error(row, &self.config.endpoints, &why))?;
        let now = self.clock.now();
        clock::lease_clock_known(now.lease).map_err(Error::Config)?;
        let actor = clock::actor(&self.config.actor);
        let lease = Lease {
            owner: actor.clone(),
            id: format!("{:016x}", clock::unique_u64()),
            until: now.plus(clock::millis(self.config.lease_ttl)).lease,
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
        let Some(claimed) =
            self.store
                .apply(&row.id, &t, Write::STATE_ONLY, &actor, now.wall_ms)?
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
        // The claim's CAS proved the row unchanged since it was read, so the
        // request built from it carries the stored refresh token.
        let result = self.run_lease(claimed, request, &lease, &actor, deadline, slots);
        // Wake local waiters whatever happened: the row is the truth.
        self.signals.notify(&row.id);
        match result? {
            Owned::Done(row) => Ok(Some(*row)),
            Owned::LeaseLost => Ok(None),
        }
    }

    /// The lease owner's work: call the token endpoint (several attempts,
    /// each started only if it can finish, and its answer be committed,
    /// within the lease) and commit the outcome, fenced by the lease.
    ///
    /// With `slots`, each attempt first waits for a request slot, and only
    /// then judges whether it still fits in the lease (the wait uses the
    /// lease up); the slot is given back as soon as the answer is in, before
    /// anything is committed.
    fn run_lease(
        &self,
        row: Credential,
        request: HttpRequest,
        lease: &Lease,
        actor: &str,
        deadline: Instant,
        slots: Option<&RequestSlots>,
    ) -> Result<Owned> {
        let cfg = &self.config;
        let timeout = cfg.request_timeout;
        let budget = timeout + cfg.commit_margin();
        // Judged on the latest the lease clock can be: never more time
        // than the clock that decides takeovers grants.
        let lease_left =
            || Duration::from_millis(lease.left_ms(self.clock.lease_latest()).unwrap_or(0) as u64);
        let mut last: Option<Failure> = None;
        for attempt in 1..=cfg.attempts {
            let slot = slots.map(RequestSlots::take);
            if lease_left() < budget {
                log::warn!(
                    "{}: no time left in the lease for attempt {attempt} ({:?} left, {budget:?} needed)",
                    row.id,
                    lease_left()
                );
                break;
            }
            if attempt > 1 && self.clock.instant() + timeout > deadline {
                break;
            }
            log::debug!("{}: refresh attempt {attempt} to {}", row.id, request.url);
            let started = self.clock.instant();
            let sent = self.upstream.send(&request, timeout);
            let took = self.clock.instant().saturating_duration_since(started);
            // The answer is in: the next request may go while this one is
            // parsed and committed.
            drop(slot);
            self.metrics
                .upstream_latency(row.provider.kind.as_str(), took);
            let outcome = match sent {
                Ok(resp) => provider::parse_answer(
                    row.provider.kind,
                    &resp,
                    &row.refresh_token,
                    // The client secret went too, and upstream knows the
                    // tokens it issued: none is ever quoted back, whole or
                    // in part.
                    &row.provider
                        .client_secret
                        .iter()
                        .chain(&row.access_token)
                        .chain(&row.id_token)
                        .map(crate::secret::Secret::expose)
                        .collect::<Vec<_>>(),
                    self.clock.now().wall_ms,
                ),
                Err(f) => Outcome::Failure(f),
            };
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
                            notify: None,
                        },
                    );
                }
                Outcome::Failure(f) if f.permanence == Permanence::Permanent => {
                    return self.commit_failure(&row, lease, actor, &f);
                }
                Outcome::Failure(f) => {
                    let elapsed = took.as_millis();
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
                    // Upstream's Retry-After if it gave one, else linear
                    // backoff (1 s, 2 s, …); waited out here only if the next
                    // attempt still fits in the lease and the caller's wait.
                    // A longer Retry-After ends the call: it is recorded as
                    // the backoff (next_attempt_at) by the failure's commit.
                    let pause = match f.retry_after_ms {
                        Some(ms) => Duration::from_millis(ms.max(0) as u64),
                        None => Duration::from_secs(u64::from(attempt)),
                    };
                    last = Some(f);
                    if attempt == cfg.attempts
                        || pause + budget > lease_left()
                        || self.clock.instant() + pause + timeout > deadline
                    {
                        break;
                    }
                    if let Some(f) = &mut last {
                        // Waited out: it no longer holds once the next
                        // attempt has been made.
                        f.retry_after_ms = None;
                    }
                    self.clock.sleep(pause);
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
            at_ms: self.clock.now().wall_ms,
        };
        self.commit(
            row,
            lease,
            actor,
            event,
            Write {
                tokens: None,
                error: ErrorUpdate::Set(&error),
                notify: None,
            },
        )
    }

    /// Writes the owner's outcome, fenced by the lease.
    ///
    /// A rotated refresh token exists nowhere else: its commit is retried
    /// until it lands or the lease is seen taken over — also past the
    /// lease's end, which is safe, since the write is fenced by the lease id
    /// and a takeover replaces it. New tokens that kept the refresh token
    /// are retried while the lease lasts; failures are tried once (losing
    /// one only loses a failure count).
    fn commit(
        &self,
        row: &Credential,
        lease: &Lease,
        actor: &str,
        event: Event,
        write: Write<'_>,
    ) -> Result<Owned> {
        let mut pause = COMMIT_RETRY_MIN;
        let mut tries: u32 = 0;
        loop {
            let err = match self.try_commit(row, actor, &event, write) {
                Ok(Some(done)) => return Ok(Owned::Done(Box::new(done))),
                Ok(None) => return Ok(self.lease_lost(row, write)),
                Err(e) => e,
            };
            // A rotated refresh token exists nowhere else: keep at it. An
            // answer that kept the refresh token loses nothing if dropped
            // (the next refresh gets another), so it is tried while the
            // lease lasts; other outcomes only once.
            let rotated = write
                .tokens
                .is_some_and(|t| t.refresh_token.expose() != row.refresh_token.expose());
            let lease_left = lease.left_ms(self.clock.lease_latest()).unwrap_or(0);
            // Only a database that may come back is waited for (busy, full,
            // read-only, an I/O error), or a write that panicked (Internal:
            // rolled back, a retry may land); anything else will not clear.
            let may_clear = matches!(err, Error::DiskFull(_) | Error::Db(_) | Error::Internal(_));
            if write.tokens.is_none() || !may_clear || (!rotated && lease_left < 250) {
                if rotated {
                    log::error!(
                        "{}: the rotated tokens of lease {} cannot be committed ({err}); \
                         they are lost, and the next refresh will be refused",
                        row.id,
                        lease.id
                    );
                }
                return Err(err);
            }
            tries += 1;
            // On a full disk, give up the space reserve for this commit.
            if matches!(err, Error::DiskFull(_)) && self.store.release_reserve() {
                log::warn!(
                    "{}: disk full while committing rotated tokens ({err}); \
                     released the space reserve to commit them",
                    row.id
                );
                continue;
            }
            // Loud at first, then once in a while: the tokens are only in
            // this process's memory until this lands.
            if tries == 1 || tries.is_power_of_two() {
                log::error!(
                    "{}: commit of the rotated tokens of lease {} failed ({err}); retrying \
                     until it lands or the lease is taken over (try {tries})",
                    row.id,
                    lease.id
                );
            }
            self.clock.sleep(pause);
            pause = (pause * 2).min(COMMIT_RETRY_MAX);
        }
    }

    /// One try of [`Refresher::commit`]: `Some(row)` once written, `None`
    /// if the lease was taken over (nothing written).
    fn try_commit(
        &self,
        row: &Credential,
        actor: &str,
        event: &Event,
        write: Write<'_>,
    ) -> Result<Option<Credential>> {
        // Re-read under the lease: a rejection may have been recorded
        // meanwhile (it changes the state a failure returns to), or the lease
        // may have been taken over (then nothing may be written). A failure's
        // write pins the version it was computed from, so a rejection that
        // lands in between makes it recompute; rejections change a row once,
        // so this settles in a round or two.
        loop {
            let now = self.clock.now();
            // The state machine needs the status only: no secrets decoded.
            let Some(current) = self.store.get_without_secrets(&row.id)? else {
                // Deleted under the lease (a delete waits for live leases,
                // so this one had run out): nothing left to write to.
                log::error!("{}: the credential was deleted during its refresh", row.id);
                return Ok(None);
            };
            let t = match state::apply(&current.status, event, now, &self.config.policy) {
                Ok(t) => t,
                Err(Refusal::LeaseLost) => return Ok(None),
                Err(other) => {
                    unreachable!("owner events are refused only as LeaseLost, not {other:?}")
                }
            };
            // The notification this change calls for (a death, a long run
            // of failures, a recovery), in the same transaction.
            let error = match write.error {
                ErrorUpdate::Set(e) => Some(e),
                _ => None,
            };
            let note = crate::notify::on_transition(
                &current,
                event,
                &t,
                error,
                now.wall_ms,
                crate::clock::millis(self.config.notify_failing_after),
            );
            let write = Write {
                notify: note.as_ref(),
                ..write
            };
            if let Some(done) = self.store.apply(&row.id, &t, write, actor, now.wall_ms)? {
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
                return Ok(Some(done));
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

/// First and longest pause between two tries to commit rotated tokens.
const COMMIT_RETRY_MIN: Duration = Duration::from_millis(100);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// The error of a caller whose settings cannot build `row`'s refresh
/// request: it names what to fix, and is this caller's error, not the
/// credential's (other processes, configured right, keep using it).
fn config_error(row: &Credential, endpoints: &provider::Endpoints, why: &str) -> Error {
    let kind = row.provider.kind;
    let env_url = match kind {
        provider::ProviderKind::Codex => Some(&endpoints.codex_token),
        provider::ProviderKind::Claude => Some(&endpoints.claude_token),
        provider::ProviderKind::Google => Some(&endpoints.google_token),
        _ => None,
    };
    let fix = match env_url {
        Some(url) if row.provider.token_url.is_none() && provider::check_url(url).is_err() => {
            format!(
                "fix TOKENWARDEN_{}_TOKEN_URL in this process's environment",
                kind.as_str().to_ascii_uppercase()
            )
        }
        _ => format!(
            "fix the credential's settings and re-import '{}' with --replace",
            row.id
        ),
    };
    Error::Config(format!(
        "cannot refresh '{}': {why}; {fix} (nothing was sent; the credential is unchanged)",
        row.id
    ))
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

#[cfg(test)]
mod tests;

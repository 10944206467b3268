//! Refreshing what is due: the one-shot `sweep` for cron, and the
//! background refresher of `serve`. Both go through the same CAS claim as
//! every other caller ([`Warden::ensure`]), so they never race a CLI
//! process, a server or each other: a credential that someone else has just
//! refreshed is simply found fresh.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;

use crate::clock;
use crate::credential::Credential;
use crate::error::{Error, Result};
use crate::provider::usage;
use crate::quota;
use crate::state::{Need, Now, Policy, State};
use crate::upstream::RequestSlots;
use crate::warden::{Via, Warden};
use crate::Stamp;

/// Why (and how) a credential is due, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Dead: skipped and reported.
    Dead,
    /// Nothing to do now.
    No,
    /// Refresh it to satisfy this need.
    Yes(Need),
}

/// A per-credential spread of the refresh window (`window_ms`, see
/// [`crate::state::Status::window_ms`]), so credentials imported together
/// do not all refresh in the same second: up to half the window, stable for
/// one token (hash of id and expiry).
pub fn jitter_ms(id: &str, expires_at_ms: i64, window_ms: i64) -> i64 {
    let spread = window_ms / 2;
    if spread <= 0 {
        return 0;
    }
    // FNV-1a: tiny, stable across runs and processes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(expires_at_ms.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % spread as u64) as i64
}

/// Whether `c` is due at `now`: inside its (jittered) refresh window,
/// rejected, retrying after a failure whose backoff has passed, or last
/// refreshed more than `max_age_ms` ago.
pub fn due(c: &Credential, now: Now, policy: &Policy, max_age_ms: Option<i64>) -> Due {
    let s = &c.status;
    let now_ms = now.wall_ms;
    if s.lease_left_ms(now.lease).is_some() {
        return Due::No;
    }
    let base = s.base(now.lease);
    if base == State::Dead {
        return Due::Dead;
    }
    if s.next_attempt_at_ms.is_some_and(|t| t > now_ms) {
        return Due::No;
    }
    if base == State::Rejected {
        return Due::Yes(Need::Token { min_ttl_ms: 0 });
    }
    let ahead = match s.expires_at_ms {
        Some(e) if s.has_access_token => {
            let window = s.window_ms(policy);
            window + jitter_ms(&c.id, e, window)
        }
        _ => return Due::Yes(Need::Token { min_ttl_ms: 0 }),
    };
    if !s.usable(now_ms, ahead) {
        return Due::Yes(Need::Token { min_ttl_ms: ahead });
    }
    if s.failures > 0 {
        // A failed refresh (e.g. an operator's) whose backoff has passed.
        return Due::Yes(Need::Refresh {
            since_ms: s.next_attempt_at_ms.unwrap_or(now_ms),
            force: false,
        });
    }
    match (max_age_ms, s.last_refresh_ms) {
        (Some(age), Some(last)) if now_ms - last >= age => Due::Yes(Need::Refresh {
            since_ms: now_ms - age,
            force: false,
        }),
        _ => Due::No,
    }
}

/// When `c` will next be due (unix ms) if nothing is committed meanwhile,
/// for the background scheduler's sleep; `None` when it never will be
/// (dead). Never later than the first instant [`due`] says yes
/// (`next_due_is_never_later_than_due` walks a grid of rows and times):
/// the scheduler does not read the table again before it.
fn next_due_ms(c: &Credential, now: Now, policy: &Policy) -> Option<i64> {
    let s = &c.status;
    if let Some(left) = s.lease_left_ms(now.lease) {
        // A live lease: judged again once it ends, whatever it ends in.
        return Some(now.wall_ms.saturating_add(left).saturating_add(1));
    }
    if s.base(now.lease) == State::Dead {
        return None;
    }
    // The end of a backoff (or now, without one).
    let retry = s
        .next_attempt_at_ms
        .map_or(now.wall_ms, |t| t.max(now.wall_ms));
    match s.expires_at_ms {
        // A healthy token: its refresh window opens ahead of its expiry,
        // and not before a backoff ends.
        Some(e)
            if s.has_access_token && s.failures == 0 && s.base(now.lease) != State::Rejected =>
        {
            let window = s.window_ms(policy);
            Some(retry.max(e - window - jitter_ms(&c.id, e, window)))
        }
        // Rejected, failing, or without a token: due once the backoff ends.
        _ => Some(retry),
    }
}

/// Options of one sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Refresh requests in flight at once. The sweep runs twice as many
    /// threads, which take turns on these many request slots (see
    /// [`RequestSlots`]): one thread's claim and commit overlap another's
    /// request. Quota fetches run on this many threads.
    pub concurrency: usize,
    /// Only these ids (all when empty).
    pub only: Vec<String>,
    /// Refresh credentials last refreshed longer ago than this.
    pub max_age: Option<Duration>,
    /// How long a worker waits on a refresh someone else has in flight.
    pub wait: Duration,
    /// Also fetch quota snapshots.
    pub quota: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            concurrency: 4,
            only: Vec::new(),
            max_age: None,
            wait: Duration::from_secs(30),
            quota: false,
        }
    }
}

/// A credential that could not be refreshed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failed {
    /// Credential id.
    pub id: String,
    /// What went wrong.
    pub error: String,
}

/// The quota fetch of one credential in a sweep.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuotaStatus {
    /// Credential id.
    pub id: String,
    /// `ok`, a failure code, `skipped` (dead or no quota endpoint), or
    /// `error: …` when no token could be had.
    pub status: String,
}

/// Runs `work` over `items` on `concurrency` scoped threads fed by a
/// channel, handing each result to `done` on the calling thread.
fn run_pool<T: Send, R: Send>(
    items: Vec<T>,
    concurrency: usize,
    work: impl Fn(T) -> R + Sync,
    mut done: impl FnMut(R),
) {
    let workers = concurrency.max(1).min(items.len());
    let (job_tx, job_rx) = unbounded::<T>();
    let (done_tx, done_rx) = unbounded::<R>();
    for item in items {
        // The receiver lives until the scope ends: sending cannot fail.
        let _ = job_tx.send(item);
    }
    drop(job_tx);
    let work = &work;
    thread::scope(|scope| {
        for _ in 0..workers {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                for item in rx.iter() {
                    let _ = tx.send(work(item));
                }
            });
        }
        drop(done_tx);
        for r in done_rx.iter() {
            done(r);
        }
    });
}

/// What one sweep did (`sweep --json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    /// Refreshed by this sweep.
    pub refreshed: Vec<String>,
    /// Not due, or refreshed meanwhile by someone else.
    pub skipped: Vec<String>,
    /// Refresh failed transiently (or the database failed).
    pub failed: Vec<Failed>,
    /// Dead, before or because of this sweep.
    pub dead: Vec<String>,
    /// Quota fetches (with `--quota`).
    pub quota: Vec<QuotaStatus>,
}

impl SweepReport {
    /// 0 when all is well, 4 when some credential is dead (a human must log
    /// in again, so it wins), else 5 when some refresh failed transiently.
    pub fn exit_code(&self) -> i32 {
        if !self.dead.is_empty() {
            4
        } else if !self.failed.is_empty() {
            5
        } else {
            0
        }
    }

    fn sort(&mut self) {
        self.refreshed.sort();
        self.skipped.sort();
        self.dead.sort();
        self.failed.sort_by(|a, b| a.id.cmp(&b.id));
        self.quota.sort_by(|a, b| a.id.cmp(&b.id));
    }
}

fn max_age_ms(d: Option<Duration>) -> Option<i64> {
    d.map(clock::millis)
}

/// The outcome of settling one due credential.
enum Settled {
    Refreshed,
    Skipped,
    Dead,
    Failed(String),
}

fn settle(
    warden: &Warden,
    id: &str,
    need: Need,
    wait: Duration,
    slots: Option<&RequestSlots>,
) -> Settled {
    let result = match slots {
        Some(slots) => warden.ensure_with_slots(id, need, wait, slots),
        None => warden.ensure(id, need, wait),
    };
    match result {
        Ok((_, Via::Refreshed)) => Settled::Refreshed,
        Ok(_) => Settled::Skipped,
        Err(Error::Dead { .. }) => Settled::Dead,
        Err(e) => Settled::Failed(e.to_string()),
    }
}

/// One pass over the database: refreshes every due credential with at most
/// `opts.concurrency` requests in flight (on twice as many threads, see
/// [`SweepOptions::concurrency`]); `progress(done, total)` is called as
/// jobs end.
pub fn sweep(
    warden: &Warden,
    opts: &SweepOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SweepReport> {
    // One pass over the rows as they are read, keeping only ids (and, for
    // quota, the provider): a sweep's memory does not grow with the
    // rows' size.
    let only: HashSet<&str> = opts.only.iter().map(String::as_str).collect();
    let mut found: HashSet<String> = HashSet::new();
    let now = warden.now();
    let policy = warden.config().policy;
    let max_age = max_age_ms(opts.max_age);
    let mut report = SweepReport::default();
    let mut jobs = Vec::new();
    let mut quota_rows = Vec::new();
    warden.each_without_secrets(|row| {
        if !only.is_empty() {
            if !only.contains(row.id.as_str()) {
                return;
            }
            found.insert(row.id.clone());
        }
        if opts.quota {
            quota_rows.push((row.id.clone(), row.provider.kind));
        }
        match due(&row, now, &policy, max_age) {
            Due::Dead => report.dead.push(row.id),
            Due::No => report.skipped.push(row.id),
            Due::Yes(need) => jobs.push((row.id, need)),
        }
    })?;
    if let Some(missing) = opts.only.iter().find(|id| !found.contains(*id)) {
        return Err(Error::NotFound(missing.clone()));
    }
    let total = jobs.len();
    let mut n = 0;
    // Each refresh is a claim (a write), a request and a commit (a write
    // with an fsync): a thread that waited for its writes would leave its
    // request slot idle meanwhile, so two threads share each slot.
    let slots = RequestSlots::new(opts.concurrency);
    run_pool(
        jobs,
        opts.concurrency.max(1).saturating_mul(2),
        |(id, need)| {
            let settled = settle(warden, &id, need, opts.wait, Some(&slots));
            (id, settled)
        },
        |(id, settled)| {
            match settled {
                Settled::Refreshed => report.refreshed.push(id),
                Settled::Skipped => report.skipped.push(id),
                Settled::Dead => report.dead.push(id),
                Settled::Failed(error) => report.failed.push(Failed { id, error }),
            }
            n += 1;
            progress(n, total);
        },
    );
    if opts.quota {
        let dead: HashSet<&str> = report.dead.iter().map(String::as_str).collect();
        let mut targets = Vec::new();
        for (id, kind) in quota_rows {
            if dead.contains(id.as_str()) || !usage::supported(kind) {
                report.quota.push(QuotaStatus {
                    id,
                    status: "skipped".into(),
                });
            } else {
                targets.push(id);
            }
        }
        run_pool(
            targets,
            opts.concurrency,
            |id| {
                let status = match quota::fetch(warden, &id) {
                    Ok(q) => q.status,
                    Err(e) => format!("error: {e}"),
                };
                QuotaStatus { id, status }
            },
            |q| report.quota.push(q),
        );
    }
    report.sort();
    Ok(report)
}

/// Shortest and longest pause of the background scheduler.
const TICK_MIN: Duration = Duration::from_millis(200);
const TICK_MAX: Duration = Duration::from_secs(30);

/// A running background refresher; [`Background::stop`] ends it.
pub struct Background {
    stop: Sender<()>,
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the background refresher of `serve`: a scheduler thread finds due
/// credentials and feeds `threads` workers over a channel.
pub fn start_background(warden: Arc<Warden>, threads: usize) -> Background {
    let threads = threads.max(1);
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (job_tx, job_rx) = bounded::<(String, Need)>(threads * 4);
    let (done_tx, done_rx) = unbounded::<()>();
    let queued: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut handles = Vec::with_capacity(threads + 1);
    for n in 0..threads {
        let (w, rx, q, done) = (
            warden.clone(),
            job_rx.clone(),
            queued.clone(),
            done_tx.clone(),
        );
        let spawned = thread::Builder::new()
            .name(format!("refresher-{n}"))
            .spawn(move || {
                for (id, need) in rx.iter() {
                    match settle(&w, &id, need, Duration::ZERO, None) {
                        Settled::Refreshed => log::info!("{id}: refreshed in the background"),
                        Settled::Failed(e) => log::warn!("{id}: background refresh failed: {e}"),
                        Settled::Dead => log::warn!("{id}: dead; background refresh stops"),
                        Settled::Skipped => {}
                    }
                    q.lock().remove(&id);
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => log::error!("cannot start a refresher thread: {e}"),
        }
    }
    let w = warden;
    let scheduler = thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let mut quiet = None;
            loop {
                let pause = match schedule(&w, &job_tx, &queued, &mut quiet, w.now()) {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("background refresher: {e}");
                        Duration::from_secs(5)
                    }
                };
                select! {
                    recv(stop_rx) -> _ => break,
                    default(pause) => {}
                }
            }
            // Dropping job_tx lets the workers drain and exit.
        });
    match scheduler {
        Ok(h) => handles.push(h),
        Err(e) => log::error!("cannot start the refresh scheduler: {e}"),
    }
    Background {
        stop: stop_tx,
        done: done_rx,
        threads: handles,
    }
}

/// What a scheduler round whose scan found nothing due learned: the
/// database's stamp from before the scan, when the scan was made, and how
/// long after it the first credential falls due. While the stamp is
/// unchanged — nothing committed since, by any process, so every row is as
/// scanned — and that time has not passed, the table need not be read
/// again: an idle server at 100k credentials read them all every 30 s.
///
/// Time since the scan is measured on the lease clock, which no one steps;
/// a wall clock that moved more than [`WALL_STEP_MS`] away from it since
/// the scan ends the mark, because every due time is a wall-clock time
/// (expiries, backoffs) and must be judged again on the stepped clock.
#[derive(Debug)]
struct Quiet {
    stamp: Stamp,
    at: Now,
    due_in_ms: i64,
}

/// How far the wall clock may drift from the lease clock between two
/// scheduler rounds before the scheduler takes it for a step.
const WALL_STEP_MS: i64 = 1_000;

impl Quiet {
    /// Milliseconds until the mark's first due time at `now`, if the mark
    /// still holds with the database at `stamp`; `None` when the table must
    /// be read again.
    fn left_ms(&self, stamp: Option<Stamp>, now: Now) -> Option<i64> {
        if stamp? != self.stamp || now.lease.clock != self.at.lease.clock {
            return None;
        }
        let elapsed = now.lease.ms.checked_sub(self.at.lease.ms)?;
        let wall_elapsed = now.wall_ms.checked_sub(self.at.wall_ms)?;
        let stepped = elapsed < 0 || (wall_elapsed - elapsed).abs() > WALL_STEP_MS;
        let left = self.due_in_ms.saturating_sub(elapsed);
        (!stepped && left > 0).then_some(left)
    }
}

/// The scheduler's sleep before its next round, `left_ms` before the first
/// credential falls due.
fn pause(left_ms: i64) -> Duration {
    Duration::from_millis(left_ms.max(0) as u64).clamp(TICK_MIN, TICK_MAX)
}

/// One scheduler round at `now`: queue what is due; return how long to
/// sleep. `quiet` carries what the last round learned (see [`Quiet`]).
fn schedule(
    warden: &Warden,
    jobs: &Sender<(String, Need)>,
    queued: &Mutex<HashSet<String>>,
    quiet: &mut Option<Quiet>,
    now: Now,
) -> Result<Duration> {
    let stamp = warden.stamp();
    if let Some(left) = quiet.as_ref().and_then(|q| q.left_ms(stamp, now)) {
        return Ok(pause(left));
    }
    *quiet = None;
    let policy = warden.config().policy;
    let mut next: Option<i64> = None;
    let mut any_due = false;
    // Row by row as they are read: a round's memory does not grow with the
    // table.
    warden.each_without_secrets(|row| {
        if let Due::Yes(need) = due(&row, now, &policy, None) {
            any_due = true;
            if queued.lock().insert(row.id.clone())
                && jobs.try_send((row.id.clone(), need)).is_err()
            {
                // Workers are busy: try again next round.
                queued.lock().remove(&row.id);
                next = Some(now.wall_ms);
            }
        } else if let Some(at) = next_due_ms(&row, now, &policy) {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    })?;
    let due_in_ms = next.map_or(i64::MAX, |n| n.saturating_sub(now.wall_ms));
    if let (false, Some(stamp)) = (any_due, stamp) {
        *quiet = Some(Quiet {
            stamp,
            at: now,
            due_in_ms,
        });
    }
    Ok(pause(due_in_ms))
}

impl Background {
    /// Stops scheduling, lets refreshes in flight finish (waiting at most
    /// `grace`), and joins the threads that finished.
    pub fn stop(self, grace: Duration) {
        let _ = self.stop.send(());
        let end = Instant::now() + grace;
        let workers = self.threads.len().saturating_sub(1);
        for _ in 0..workers {
            if self
                .done
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .is_err()
            {
                log::warn!("background refresher: a refresh is still running at shutdown");
                return;
            }
        }
        for h in self.threads {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Claims, ProviderConfig};
    use crate::provider::ProviderKind;
    use crate::state::{Lease, LeaseTime, Status};

    const NOW: i64 = 10_000_000_000;
    /// The lease clock reads the wall clock's number in these tests.
    const AT: Now = Now {
        wall_ms: NOW,
        lease: LeaseTime { clock: 7, ms: NOW },
    };
    const P: Policy = Policy {
        refresh_ahead_ms: 300_000,
        backoff_min_ms: 5_000,
        backoff_max_ms: 300_000,
    };

    fn cred(status: Status) -> Credential {
        Credential {
            failing_since_ms: None,
            id: "c".into(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            status,
            access_token: Some("at".into()),
            refresh_token: "rt".into(),
            id_token: None,
            claims: Claims::default(),
            last_error: None,
            api_key: None,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn valid(expires_in_ms: i64) -> Status {
        Status {
            state: State::Valid,
            version: 1,
            expires_at_ms: Some(NOW + expires_in_ms),
            has_access_token: true,
            last_refresh_ms: Some(NOW - 1000),
            ..Status::default()
        }
    }

    #[test]
    fn due_table() {
        let hour = 3_600_000;
        let token = |ms| Due::Yes(Need::Token { min_ttl_ms: ms });
        let table: Vec<(&str, Status, Option<i64>, Due)> = vec![
            ("fresh", valid(hour), None, Due::No),
            (
                "in window",
                Status {
                    last_refresh_ms: Some(NOW - hour),
                    ..valid(60_000)
                },
                None,
                token(300_000 + jitter_ms("c", NOW + 60_000, 300_000)),
            ),
            // A 120 s token (shorter than refresh_ahead): its window is
            // half its lifetime, so it is not due right after its refresh…
            (
                "short-lived, just minted",
                Status {
                    last_refresh_ms: Some(NOW - 1_000),
                    ..valid(119_000)
                },
                None,
                Due::No,
            ),
            // …and due once it is past half of it, with jitter scaled alike.
            (
                "short-lived, past half",
                Status {
                    last_refresh_ms: Some(NOW - 100_000),
                    ..valid(20_000)
                },
                None,
                token(60_000 + jitter_ms("c", NOW + 20_000, 60_000)),
            ),
            (
                "no token",
                Status {
                    has_access_token: false,
                    ..valid(hour)
                },
                None,
                token(0),
            ),
            (
                "rejected",
                Status {
                    state: State::Rejected,
                    ..valid(hour)
                },
                None,
                token(0),
            ),
            (
                "dead",
                Status {
                    state: State::Dead,
                    ..valid(hour)
                },
                None,
                Due::Dead,
            ),
            (
                "backing off",
                Status {
                    next_attempt_at_ms: Some(NOW + 1),
                    failures: 1,
                    ..valid(60_000)
                },
                None,
                Due::No,
            ),
            (
                "backoff over",
                Status {
                    next_attempt_at_ms: Some(NOW - 1),
                    failures: 1,
                    ..valid(hour)
                },
                None,
                Due::Yes(Need::Refresh {
                    since_ms: NOW - 1,
                    force: false,
                }),
            ),
            (
                "refreshing",
                Status {
                    state: State::Refreshing,
                    resume: Some(State::Valid),
                    lease: Some(Lease {
                        owner: "o".into(),
                        id: "l".into(),
                        until: LeaseTime {
                            clock: 7,
                            ms: NOW + 1,
                        },
                    }),
                    ..valid(60_000)
                },
                None,
                Due::No,
            ),
            (
                "abandoned lease",
                Status {
                    state: State::Refreshing,
                    resume: Some(State::Rejected),
                    lease: Some(Lease {
                        owner: "o".into(),
                        id: "l".into(),
                        until: LeaseTime {
                            clock: 7,
                            ms: NOW - 1,
                        },
                    }),
                    ..valid(hour)
                },
                None,
                token(0),
            ),
            (
                "too old",
                Status {
                    last_refresh_ms: Some(NOW - 2 * hour),
                    ..valid(hour)
                },
                Some(hour),
                Due::Yes(Need::Refresh {
                    since_ms: NOW - hour,
                    force: false,
                }),
            ),
            ("young enough", valid(hour), Some(hour), Due::No),
            (
                "age unknown",
                Status {
                    last_refresh_ms: None,
                    ..valid(hour)
                },
                Some(1),
                Due::No,
            ),
        ];
        for (name, status, max_age, want) in table {
            assert_eq!(due(&cred(status), AT, &P, max_age), want, "{name}");
        }
    }

    /// The scheduler sleeps until `next_due_ms`, so it must never be later
    /// than the first instant `due` says yes: every state, with and
    /// without a token, failures, a backoff (ending before or after the
    /// refresh window), a live or ended lease, at times from now to days
    /// ahead. (It once said "the refresh window" for a failed or rejected
    /// credential whose backoff ended hours before it: tests/attack5.rs.)
    #[test]
    fn next_due_is_never_later_than_due() {
        let hour = 3_600_000;
        let lease = |left: i64| {
            Some(Lease {
                owner: "o".into(),
                id: "l".into(),
                until: LeaseTime {
                    clock: 7,
                    ms: NOW + left,
                },
            })
        };
        let mut rows = Vec::new();
        for state in [
            State::Valid,
            State::Expiring,
            State::Refreshing,
            State::Rejected,
            State::Dead,
        ] {
            for has_access_token in [true, false] {
                for (failures, backoff) in [(0, None), (1, Some(20_000)), (2, Some(2 * hour))] {
                    for expires_in in [None, Some(-1_000), Some(60_000), Some(hour), Some(9 * hour)]
                    {
                        for lease_left in [None, Some(-1), Some(30_000)] {
                            for resume in [None, Some(State::Rejected), Some(State::Valid)] {
                                if (state == State::Refreshing) != lease_left.is_some() {
                                    continue;
                                }
                                rows.push(Status {
                                    state,
                                    version: 1,
                                    expires_at_ms: expires_in.map(|e: i64| NOW + e),
                                    has_access_token,
                                    lease: lease_left.and_then(lease),
                                    resume,
                                    failures,
                                    next_attempt_at_ms: backoff.map(|b: i64| NOW + b),
                                    last_refresh_ms: Some(NOW - hour),
                                    dead_reason: None,
                                });
                            }
                        }
                    }
                }
            }
        }
        let offsets: Vec<i64> = (0..=200).map(|i| i * i * 3_000).collect();
        for status in rows {
            let c = cred(status);
            if due(&c, AT, &P, None) != Due::No {
                continue; // Queued at once; no sleep is computed for it.
            }
            let next = next_due_ms(&c, AT, &P);
            for &off in &offsets {
                let at = AT.plus(off);
                if next.is_some_and(|n| at.wall_ms >= n) {
                    break;
                }
                assert!(
                    matches!(due(&c, at, &P, None), Due::No | Due::Dead),
                    "{:?}: due at +{off} ms, but next_due_ms said {:?}",
                    c.status,
                    next.map(|n| n - NOW)
                );
            }
        }
    }

    /// The quiet mark holds while the database's stamp is the scan's, the
    /// first due time has not come on the lease clock, and the wall clock
    /// kept pace with the lease clock; any of them failing reads the table
    /// again.
    #[test]
    fn the_quiet_mark_holds_only_while_nothing_changed() {
        let stamp = Stamp::new([1; Stamp::LEN]);
        let other = Stamp::new([2; Stamp::LEN]);
        let q = Quiet {
            stamp,
            at: AT,
            due_in_ms: 60_000,
        };
        let step = |wall: i64, lease: i64| Now {
            wall_ms: NOW + wall,
            lease: LeaseTime {
                clock: 7,
                ms: NOW + lease,
            },
        };
        let table: Vec<(&str, Option<Stamp>, Now, Option<i64>)> = vec![
            ("just scanned", Some(stamp), AT, Some(60_000)),
            ("10 s on", Some(stamp), AT.plus(10_000), Some(50_000)),
            ("due time come", Some(stamp), AT.plus(60_000), None),
            ("a commit since", Some(other), AT.plus(10_000), None),
            ("no stamp", None, AT.plus(10_000), None),
            (
                "wall stepped back 1 h",
                Some(stamp),
                step(-3_600_000, 10_000),
                None,
            ),
            (
                "wall stepped ahead 1 h",
                Some(stamp),
                step(3_610_000, 10_000),
                None,
            ),
            (
                "wall drifted 0.5 s",
                Some(stamp),
                step(10_500, 10_000),
                Some(50_000),
            ),
            (
                "lease clock behind the scan",
                Some(stamp),
                step(0, -1),
                None,
            ),
            (
                "another lease clock",
                Some(stamp),
                Now {
                    lease: LeaseTime { clock: 8, ms: NOW },
                    ..AT
                },
                None,
            ),
        ];
        for (name, s, now, want) in table {
            assert_eq!(q.left_ms(s, now), want, "{name}");
        }
    }

    #[test]
    fn jitter_spreads_within_half_the_window() {
        let values: HashSet<i64> = (0..1000)
            .map(|i| jitter_ms(&format!("id{i}"), NOW, P.refresh_ahead_ms))
            .collect();
        assert!(values.iter().all(|&v| (0..150_000).contains(&v)));
        assert!(values.len() > 900, "spread out: {}", values.len());
        assert_eq!(
            jitter_ms("a", 1, 300_000),
            jitter_ms("a", 1, 300_000),
            "stable"
        );
    }

    #[test]
    fn exit_code_precedence() {
        let mut r = SweepReport::default();
        assert_eq!(r.exit_code(), 0);
        r.failed.push(Failed {
            id: "a".into(),
            error: "x".into(),
        });
        assert_eq!(r.exit_code(), 5);
        r.dead.push("b".into());
        assert_eq!(r.exit_code(), 4);
    }

    /// The scheduler reads the table again only when something was
    /// committed since its last scan, or a credential falls due: a round
    /// that finds nothing due leaves a quiet mark, the next round keeps it
    /// without a scan, and an import (a commit) ends it.
    #[test]
    fn the_scheduler_skips_the_scan_while_nothing_changed_and_nothing_falls_due() {
        use crate::credential::NewCredential;
        use crate::secret::Secret;
        use crate::Config;

        let dir = tempfile::tempdir().unwrap();
        let warden = Warden::open(dir.path().join("s.db"), Config::default()).unwrap();
        let cred = |id: &str, expires_in_ms: i64| NewCredential {
            id: id.into(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            refresh_token: Secret::new(format!("rt-{id}")),
            access_token: Some(Secret::new(format!("at-{id}"))),
            id_token: None,
            expires_at_ms: Some(clock::now_ms() + expires_in_ms),
            claims: Claims::default(),
            last_refresh_ms: None,
            api_key: None,
        };
        warden
            .import(&[cred("fresh", 6 * 3_600_000)], false)
            .unwrap();
        let (jobs, queue) = bounded(8);
        let queued = Mutex::new(HashSet::new());
        let mut quiet = None;

        let first = clock::now();
        let pause = schedule(&warden, &jobs, &queued, &mut quiet, first).unwrap();
        assert_eq!(pause, TICK_MAX);
        let mark = quiet.as_ref().expect("nothing due: a quiet mark").due_in_ms;
        assert!(mark > 3_600_000, "falls due hours from now");
        let scanned_at = |q: &Option<Quiet>| q.as_ref().map(|q| q.at.lease.ms);
        schedule(&warden, &jobs, &queued, &mut quiet, first.plus(1_000)).unwrap();
        assert_eq!(scanned_at(&quiet), Some(first.lease.ms), "kept, no scan");
        assert!(queue.is_empty());

        // The wall clock stepped back an hour: every due time is judged
        // again, so the table is read again (a new mark).
        let stepped = Now {
            wall_ms: first.wall_ms - 3_600_000,
            ..first.plus(2_000)
        };
        schedule(&warden, &jobs, &queued, &mut quiet, stepped).unwrap();
        assert_eq!(scanned_at(&quiet), Some(stepped.lease.ms), "scanned again");

        // A commit by anyone: the next round scans and finds it due.
        warden.import(&[cred("due", 60_000)], false).unwrap();
        schedule(&warden, &jobs, &queued, &mut quiet, clock::now()).unwrap();
        assert!(quiet.is_none(), "something was due");
        assert_eq!(queue.try_recv().unwrap().0, "due");
    }
}

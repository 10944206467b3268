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
    let lease_live = s.lease_left_ms(now.lease).is_some();
    let base = match s.state {
        State::Refreshing if lease_live => return Due::No,
        State::Refreshing => s.resume.unwrap_or(State::Valid),
        other => other,
    };
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

/// When `c` will next be due (unix ms), for the background scheduler's sleep.
fn next_due_ms(c: &Credential, now: Now, policy: &Policy) -> Option<i64> {
    let s = &c.status;
    let mut next = s.next_attempt_at_ms;
    if let (Some(e), true) = (s.expires_at_ms, s.has_access_token) {
        let window = s.window_ms(policy);
        let at = e - window - jitter_ms(&c.id, e, window);
        next = Some(next.map_or(at, |n| n.max(at)));
    }
    if s.state == State::Refreshing {
        // The lease's end, on the wall clock as this process reads it now
        // (an ended or foreign lease: at once).
        let end = now.wall_ms + s.lease_left_ms(now.lease).map_or(0, |left| left + 1);
        next = Some(next.map_or(end, |n| n.min(end)));
    }
    next
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
                let pause = match schedule(&w, &job_tx, &queued, &mut quiet) {
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

/// One scheduler round: queue what is due; return how long to sleep.
/// What a scheduler round whose scan found nothing due learned: the
/// database's stamp from before the scan, and when the first credential
/// falls due (unix ms). While the stamp is unchanged — nothing committed
/// since, by any process, so every row is as scanned — and that time has
/// not come, the table need not be read again: an idle server at 100k
/// credentials read them all every 30 s.
struct Quiet {
    stamp: Stamp,
    next_due_ms: i64,
}

fn schedule(
    warden: &Warden,
    jobs: &Sender<(String, Need)>,
    queued: &Mutex<HashSet<String>>,
    quiet: &mut Option<Quiet>,
) -> Result<Duration> {
    let now = warden.now();
    let pause = |next: i64| {
        Duration::from_millis((next - now.wall_ms).max(0) as u64).clamp(TICK_MIN, TICK_MAX)
    };
    let stamp = warden.stamp();
    if let (Some(q), Some(s)) = (quiet.as_ref(), stamp) {
        if q.stamp == s && now.wall_ms < q.next_due_ms {
            return Ok(pause(q.next_due_ms));
        }
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
    if let (false, Some(stamp)) = (any_due, stamp) {
        *quiet = Some(Quiet {
            stamp,
            next_due_ms: next.unwrap_or(i64::MAX),
        });
    }
    Ok(pause(next.unwrap_or(now.wall_ms + clock::millis(TICK_MAX))))
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

        let pause = schedule(&warden, &jobs, &queued, &mut quiet).unwrap();
        assert_eq!(pause, TICK_MAX);
        let mark = quiet
            .as_ref()
            .expect("nothing due: a quiet mark")
            .next_due_ms;
        assert!(
            mark > clock::now_ms() + 3_600_000,
            "falls due hours from now"
        );
        let stamp = quiet.as_ref().map(|q| q.stamp);
        schedule(&warden, &jobs, &queued, &mut quiet).unwrap();
        assert_eq!(quiet.as_ref().map(|q| q.stamp), stamp, "kept, no scan");
        assert!(queue.is_empty());

        // A commit by anyone: the next round scans and finds it due.
        warden.import(&[cred("due", 60_000)], false).unwrap();
        schedule(&warden, &jobs, &queued, &mut quiet).unwrap();
        assert!(quiet.is_none(), "something was due");
        assert_eq!(queue.try_recv().unwrap().0, "due");
    }
}

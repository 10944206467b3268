//! Counters for `/metrics`, kept per [`crate::Warden`] and rendered in the
//! Prometheus text format. Updates are a lock-free add or a short local
//! lock; nothing here is shared between processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How a refresh (or a wait for one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefreshOutcome {
    /// New tokens committed.
    Success,
    /// Failed, will retry after a backoff.
    Transient,
    /// Refused for good: the credential is dead.
    Permanent,
    /// A waiter got the result of a refresh done by another thread or process.
    Adopted,
    /// An expired lease was taken over.
    Takeover,
    /// The owner's lease was taken over before it could commit.
    LeaseLost,
}

impl RefreshOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Success => "success",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::Permanent => "permanent",
            RefreshOutcome::Adopted => "adopted",
            RefreshOutcome::Takeover => "takeover",
            RefreshOutcome::LeaseLost => "lease_lost",
        }
    }
}

/// Upper bounds (seconds) of the refresh latency histogram's buckets.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The counters of one process.
#[derive(Default)]
pub struct Metrics {
    refreshes: Mutex<BTreeMap<(&'static str, RefreshOutcome), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    http: Mutex<BTreeMap<(&'static str, u16), u64>>,
    waiters: AtomicI64,
    upstream_requests: AtomicU64,
    leases: Arc<Leases>,
    /// Pool picks by pool and outcome (`served`, `skipped`, `empty`,
    /// `unavailable`).
    pool_picks: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Notification delivery attempts by outcome (`delivered`, `failed`).
    notify_attempts: Mutex<BTreeMap<&'static str, u64>>,
}

/// The gauges of issue 15 read from the database when `/metrics` is asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Cooldowns not yet over.
    pub cooldowns_active: u64,
    /// Notifications waiting to be delivered.
    pub notifications_pending: u64,
    /// Notifications delivered.
    pub notifications_delivered: u64,
    /// Notifications given up on.
    pub notifications_failed: u64,
}

/// The refresh leases this process holds: each from just before its claim
/// until its outcome is committed or the lease is lost. Shutdown waits for
/// them (a refresh cut short after upstream answered burns the login).
#[derive(Default)]
pub(crate) struct Leases {
    book: Mutex<LeaseBook>,
    /// Signalled when a lease ends.
    ended: Condvar,
}

#[derive(Default)]
struct LeaseBook {
    /// When each lease held now was taken, by a serial number.
    held: BTreeMap<u64, Instant>,
    next: u64,
    /// No new lease may be taken: the process is exiting.
    refused: bool,
}

/// A refresh lease of this process (taken by the refresh protocol); ends when
/// dropped.
pub struct LeaseHeld<'a> {
    leases: &'a Arc<Leases>,
    serial: u64,
}

impl Leases {
    /// How many are held now.
    pub(crate) fn held(&self) -> usize {
        self.book.lock().held.len()
    }

    /// No new lease from now on (see [`Metrics::refuse_leases`]).
    pub(crate) fn refuse(&self) {
        self.book.lock().refused = true;
    }

    /// See [`Metrics::wait_for_leases`].
    pub(crate) fn wait(&self, ttl: Duration) -> usize {
        let mut book = self.book.lock();
        loop {
            let Some(newest) = book.held.values().max().copied() else {
                return 0;
            };
            let end = newest + ttl;
            if Instant::now() >= end {
                return book.held.len();
            }
            self.ended.wait_until(&mut book, end);
        }
    }
}

impl Drop for LeaseHeld<'_> {
    fn drop(&mut self) {
        self.leases.book.lock().held.remove(&self.serial);
        self.leases.ended.notify_all();
    }
}

/// Decrements the waiter gauge when dropped.
pub struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a pool pick's outcome.
    pub fn pool_pick(&self, pool: &str, outcome: &'static str) {
        *self
            .pool_picks
            .lock()
            .entry((pool.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Counts a notification delivery attempt's outcome.
    pub fn notification(&self, outcome: &'static str) {
        *self.notify_attempts.lock().entry(outcome).or_default() += 1;
    }

    /// Renders the pool and notification series: this process's counters
    /// and `g`, read from the database.
    pub fn render_pools(&self, g: &PoolGauges) -> String {
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = self.render_pools_into(&mut out, g);
        out
    }

    fn render_pools_into(&self, out: &mut String, g: &PoolGauges) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP tokenwarden_pool_picks_total Pool picks by pool and outcome."
        )?;
        writeln!(out, "# TYPE tokenwarden_pool_picks_total counter")?;
        for ((pool, outcome), n) in self.pool_picks.lock().iter() {
            writeln!(
                out,
                "tokenwarden_pool_picks_total{{pool=\"{pool}\",outcome=\"{outcome}\"}} {n}"
            )?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_cooldowns_active Credentials cooling down now."
        )?;
        writeln!(out, "# TYPE tokenwarden_cooldowns_active gauge")?;
        writeln!(out, "tokenwarden_cooldowns_active {}", g.cooldowns_active)?;
        writeln!(
            out,
            "# HELP tokenwarden_notifications Notifications in the outbox by status."
        )?;
        writeln!(out, "# TYPE tokenwarden_notifications gauge")?;
        for (status, n) in [
            ("pending", g.notifications_pending),
            ("delivered", g.notifications_delivered),
            ("failed", g.notifications_failed),
        ] {
            writeln!(out, "tokenwarden_notifications{{status=\"{status}\"}} {n}")?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_notification_attempts_total Delivery attempts of this process by outcome."
        )?;
        writeln!(
            out,
            "# TYPE tokenwarden_notification_attempts_total counter"
        )?;
        for (outcome, n) in self.notify_attempts.lock().iter() {
            writeln!(
                out,
                "tokenwarden_notification_attempts_total{{outcome=\"{outcome}\"}} {n}"
            )?;
        }
        Ok(())
    }

    /// Counts a refresh outcome for `provider`.
    pub fn refresh(&self, provider: &'static str, outcome: RefreshOutcome) {
        *self
            .refreshes
            .lock()
            .entry((provider, outcome))
            .or_default() += 1;
    }

    /// Records how long one token-endpoint request took.
    pub fn upstream_latency(&self, provider: &'static str, took: Duration) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let mut map = self.latency.lock();
        let h = map.entry(provider).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts an HTTP answer (route is the pattern, not the raw path).
    pub fn http(&self, route: &'static str, status: u16) {
        *self.http.lock().entry((route, status)).or_default() += 1;
    }

    /// Marks a caller as waiting on someone else's refresh until the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiters.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    /// Marks a refresh lease of this process, from just before its claim
    /// until the guard drops (its outcome committed, or the lease lost);
    /// `None` once [`Metrics::refuse_leases`] was called: no refresh may
    /// start in a process that is exiting.
    pub(crate) fn lease(&self) -> Option<LeaseHeld<'_>> {
        let mut book = self.leases.book.lock();
        if book.refused {
            return None;
        }
        let serial = book.next;
        book.next += 1;
        book.held.insert(serial, Instant::now());
        Some(LeaseHeld {
            leases: &self.leases,
            serial,
        })
    }

    /// How many refresh leases this process holds now.
    pub fn leases_held(&self) -> usize {
        self.leases.held()
    }

    /// The lease book itself, for a thread that outlives a borrow of this
    /// (the one-shot commands' signal handler).
    pub(crate) fn lease_book(&self) -> Arc<Leases> {
        self.leases.clone()
    }

    /// When the newest lease this process holds was taken; `None` when it
    /// holds none. A lease taken at T ends by T + the lease TTL.
    pub fn newest_lease(&self) -> Option<Instant> {
        self.leases.book.lock().held.values().max().copied()
    }

    /// From now on no refresh lease is taken in this process (a caller that
    /// would claim one gets "unavailable, retry"): it is exiting. Leases
    /// already held are not affected.
    pub fn refuse_leases(&self) {
        self.leases.refuse();
    }

    /// Waits until this process holds no refresh lease, or until every lease
    /// still held was taken more than `ttl` ago; returns how many are still
    /// held.
    pub fn wait_for_leases(&self, ttl: Duration) -> usize {
        self.leases.wait(ttl)
    }

    /// How many refreshes ended with `outcome` (all providers).
    pub fn refresh_count(&self, outcome: RefreshOutcome) -> u64 {
        self.refreshes
            .lock()
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// Renders everything, plus `states` (credentials by state), in the
    /// Prometheus text format.
    pub fn render(&self, states: &[(&str, u64)]) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out, states);
        out
    }

    fn render_into(&self, out: &mut String, states: &[(&str, u64)]) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP tokenwarden_refreshes_total Refreshes by provider and outcome."
        )?;
        writeln!(out, "# TYPE tokenwarden_refreshes_total counter")?;
        for ((provider, outcome), n) in self.refreshes.lock().iter() {
            writeln!(
                out,
                "tokenwarden_refreshes_total{{provider=\"{provider}\",outcome=\"{}\"}} {n}",
                outcome.as_str()
            )?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_refresh_seconds Token-endpoint request latency."
        )?;
        writeln!(out, "# TYPE tokenwarden_refresh_seconds histogram")?;
        for (provider, h) in self.latency.lock().iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                writeln!(
                    out,
                    "tokenwarden_refresh_seconds_bucket{{provider=\"{provider}\",le=\"{bound}\"}} {n}"
                )?;
            }
            writeln!(
                out,
                "tokenwarden_refresh_seconds_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {}",
                h.count
            )?;
            writeln!(
                out,
                "tokenwarden_refresh_seconds_sum{{provider=\"{provider}\"}} {}",
                h.sum
            )?;
            writeln!(
                out,
                "tokenwarden_refresh_seconds_count{{provider=\"{provider}\"}} {}",
                h.count
            )?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_credentials Credentials by effective state."
        )?;
        writeln!(out, "# TYPE tokenwarden_credentials gauge")?;
        for (state, n) in states {
            writeln!(out, "tokenwarden_credentials{{state=\"{state}\"}} {n}")?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_http_requests_total HTTP answers by route and status."
        )?;
        writeln!(out, "# TYPE tokenwarden_http_requests_total counter")?;
        for ((route, status), n) in self.http.lock().iter() {
            writeln!(
                out,
                "tokenwarden_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            )?;
        }
        writeln!(
            out,
            "# HELP tokenwarden_waiters Callers waiting on a refresh in flight."
        )?;
        writeln!(out, "# TYPE tokenwarden_waiters gauge")?;
        writeln!(
            out,
            "tokenwarden_waiters {}",
            self.waiters.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "# HELP tokenwarden_refreshes_in_flight Refresh leases this process holds."
        )?;
        writeln!(out, "# TYPE tokenwarden_refreshes_in_flight gauge")?;
        writeln!(
            out,
            "tokenwarden_refreshes_in_flight {}",
            self.leases_held()
        )?;
        writeln!(
            out,
            "# HELP tokenwarden_upstream_requests_total Token-endpoint requests sent."
        )?;
        writeln!(out, "# TYPE tokenwarden_upstream_requests_total counter")?;
        writeln!(
            out,
            "tokenwarden_upstream_requests_total {}",
            self.upstream_requests.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.refresh("codex", RefreshOutcome::Success);
        m.refresh("codex", RefreshOutcome::Success);
        m.refresh("claude", RefreshOutcome::Permanent);
        m.upstream_latency("codex", Duration::from_millis(30));
        m.http("/v1/credentials/{id}/token", 200);
        let w = m.waiting();
        let text = m.render(&[("valid", 3), ("dead", 1)]);
        drop(w);
        for line in [
            "tokenwarden_refreshes_total{provider=\"codex\",outcome=\"success\"} 2",
            "tokenwarden_refreshes_total{provider=\"claude\",outcome=\"permanent\"} 1",
            "tokenwarden_refresh_seconds_bucket{provider=\"codex\",le=\"0.025\"} 0",
            "tokenwarden_refresh_seconds_bucket{provider=\"codex\",le=\"0.05\"} 1",
            "tokenwarden_refresh_seconds_count{provider=\"codex\"} 1",
            "tokenwarden_credentials{state=\"dead\"} 1",
            "tokenwarden_http_requests_total{route=\"/v1/credentials/{id}/token\",status=\"200\"} 1",
            "tokenwarden_waiters 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(m.render(&[]).contains("tokenwarden_waiters 0"));
        assert_eq!(m.refresh_count(RefreshOutcome::Success), 2);
    }

    #[test]
    fn leases_are_counted_waited_for_and_refused_once_exiting() {
        let m = Metrics::default();
        assert_eq!(m.wait_for_leases(Duration::from_secs(60)), 0);
        let held = m.lease().expect("a lease");
        assert_eq!(m.leases_held(), 1);
        assert!(m.render(&[]).contains("tokenwarden_refreshes_in_flight 1"));
        // Bounded by the lease: one older than the TTL is not waited for.
        assert_eq!(m.wait_for_leases(Duration::ZERO), 1);
        m.refuse_leases();
        assert!(m.lease().is_none(), "no new lease once exiting");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                drop(held);
            });
            assert_eq!(m.wait_for_leases(Duration::from_secs(60)), 0);
        });
        assert_eq!(m.leases_held(), 0);
        assert_eq!(m.newest_lease(), None);
    }
}

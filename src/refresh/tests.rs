//! The protocol's timing rules on simulated time: a real SQLite store in a
//! temporary directory, a scripted token endpoint, and a [`SimClock`] that
//! moves only when the refresher sleeps or waits, or when the script says an
//! answer took time. Every time asserted here is exact, and nothing sleeps.

use std::collections::VecDeque;

use serde_json::{json, Value};

use super::*;
use crate::clock::SimClock;
use crate::credential::{NewCredential, ProviderConfig};
use crate::provider::ProviderKind;
use crate::secret::Secret;
use crate::state::{LeaseTime, Now, State};

/// Where simulated time starts: 2023-11-14T22:13:20Z on the wall clock (far
/// from the real one, so a time read from the OS would show), and a reading
/// of a lease clock no real boot is named by.
const START: Now = Now {
    wall_ms: 1_700_000_000_000,
    lease: LeaseTime {
        clock: 77,
        ms: 9_000_000,
    },
};

/// The one credential of these tests.
const ID: &str = "c";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Unix ms at `d` after the start.
fn wall_at(d: Duration) -> i64 {
    START.wall_ms + clock::millis(d)
}

/// One answer of the scripted token endpoint.
#[derive(Debug, Clone)]
enum Answer {
    /// 200: a new access token and a rotated refresh token (`at-N`,
    /// `rt-N` for the Nth request), living `expires_in` seconds.
    Tokens { expires_in: i64 },
    /// 200: a new access token that keeps the refresh token.
    KeepsRefreshToken,
    /// This HTTP status (a non-JSON body: transient), with this
    /// `Retry-After` if any.
    Status(u16, Option<&'static str>),
    /// No answer: the request's whole timeout passes (ambiguous).
    Timeout,
    /// The answer comes this long after the request was sent.
    After(Duration, Box<Answer>),
}

use Answer::{After, KeepsRefreshToken, Status, Timeout, Tokens};

fn after(d: Duration, a: Answer) -> Answer {
    After(d, Box::new(a))
}

/// A token endpoint answering from a script, on simulated time; it records
/// when each request was sent and the refresh token it carried.
#[derive(Clone)]
struct Script(Arc<ScriptState>);

struct ScriptState {
    clock: SimClock,
    answers: Mutex<VecDeque<Answer>>,
    sent: Mutex<Vec<(Duration, String)>>,
}

impl Script {
    fn answer(&self, a: Answer, n: usize, timeout: Duration) -> Result<HttpResponse, Failure> {
        let tokens = |body: Value| HttpResponse {
            status: 200,
            retry_after: None,
            body: body.to_string().into_bytes(),
        };
        match a {
            Tokens { expires_in } => Ok(tokens(json!({
                "access_token": format!("at-{n}"),
                "refresh_token": format!("rt-{n}"),
                "expires_in": expires_in,
            }))),
            KeepsRefreshToken => Ok(tokens(json!({
                "access_token": format!("at-{n}"),
                "expires_in": 3600,
            }))),
            Status(status, retry_after) => Ok(HttpResponse {
                status,
                retry_after: retry_after.map(str::to_owned),
                body: b"<html>try later</html>".to_vec(),
            }),
            Timeout => {
                self.0.clock.advance(timeout);
                Err(Failure::transient(
                    "timeout_after_send",
                    "no answer in time",
                ))
            }
            After(d, a) => {
                self.0.clock.advance(d);
                self.answer(*a, n, timeout)
            }
        }
    }
}

impl Transport for Script {
    fn send(&self, req: &HttpRequest, timeout: Duration) -> Result<HttpResponse, Failure> {
        let body: Value = serde_json::from_slice(&req.body).expect("a JSON refresh grant");
        let presented = body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let n = {
            let mut sent = self.0.sent.lock();
            sent.push((self.0.clock.elapsed(), presented));
            sent.len()
        };
        let a = self.0.answers.lock().pop_front();
        let a = a.unwrap_or_else(|| panic!("request {n} is past the script"));
        self.answer(a, n, timeout)
    }
}

/// A refresher over a real store, on simulated time, with a scripted
/// upstream.
struct Rig {
    clock: SimClock,
    script: Script,
    refresher: Refresher,
    dir: Arc<tempfile::TempDir>,
}

impl Rig {
    fn new(config: Config) -> Rig {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Rig::open(config, SimClock::new(START), dir)
    }

    fn open(config: Config, clock: SimClock, dir: Arc<tempfile::TempDir>) -> Rig {
        let store = Store::open(&dir.path().join("tw.db"), secs(5), 2).unwrap();
        let script = Script(Arc::new(ScriptState {
            clock: clock.clone(),
            answers: Mutex::default(),
            sent: Mutex::default(),
        }));
        let refresher = Refresher::new(
            store,
            config,
            Box::new(script.clone()),
            Arc::new(clock.clone()),
        );
        Rig {
            clock,
            script,
            refresher,
            dir,
        }
    }

    /// Another process on the same database and simulated time, whose
    /// clock is `clock` (e.g. with its wall clock stepped) and whose
    /// upstream has a script of its own.
    fn beside(&self, clock: SimClock) -> Rig {
        Rig::open(self.refresher.config.clone(), clock, self.dir.clone())
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.0.answers.lock().extend(answers);
    }

    /// Imports the credential with refresh token `rt-0` and, if
    /// `expires_at_ms`, access token `at-0`; `minted_ms` is its last
    /// refresh (unknown if `None`).
    fn import(&self, expires_at_ms: Option<i64>, minted_ms: Option<i64>) {
        let c = NewCredential {
            id: ID.into(),
            provider: ProviderConfig::new(ProviderKind::Codex),
            refresh_token: Secret::new("rt-0"),
            access_token: expires_at_ms.map(|_| Secret::new("at-0")),
            id_token: None,
            expires_at_ms,
            claims: Default::default(),
            last_refresh_ms: minted_ms,
            api_key: None,
        };
        let now = self.clock.now().wall_ms;
        self.refresher.store.insert(&c, "test", now).unwrap();
    }

    /// A rig whose credential needs a refresh (it has no access token) and
    /// whose upstream will answer `answers`.
    fn due(config: Config, answers: impl IntoIterator<Item = Answer>) -> Rig {
        let rig = Rig::new(config);
        rig.import(None, None);
        rig.script(answers);
        rig
    }

    /// Another process claims the lease for `ttl`.
    fn claim_elsewhere(&self, ttl: Duration) {
        claim_elsewhere(&self.refresher.store, self.clock.now(), ttl);
    }

    /// A caller that needs any usable token, waiting at most `wait`.
    fn token(&self, wait: Duration) -> Result<(Credential, Via)> {
        self.refresher
            .obtain(ID, Need::Token { min_ttl_ms: 0 }, wait)
    }

    fn row(&self) -> Credential {
        self.refresher.store.get(ID).unwrap().unwrap()
    }

    /// When each request was sent, as time since the start.
    fn sent(&self) -> Vec<Duration> {
        self.script.0.sent.lock().iter().map(|s| s.0).collect()
    }

    /// The refresh token each request carried.
    fn presented(&self) -> Vec<String> {
        self.script
            .0
            .sent
            .lock()
            .iter()
            .map(|s| s.1.clone())
            .collect()
    }

    /// From now on every write of new tokens fails, as on a full disk,
    /// until the returned connection drops the trigger `no_commit`.
    fn fail_token_writes(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.dir.path().join("tw.db")).unwrap();
        db.execute_batch(
            "CREATE TRIGGER no_commit BEFORE UPDATE OF access_token ON credentials \
             WHEN NEW.access_token IS NOT OLD.access_token \
             BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
        )
        .unwrap();
        db
    }
}

/// Another process claims the lease at `now` for `ttl` (a takeover if the
/// lease in the row ran out).
fn claim_elsewhere(store: &Store, now: Now, ttl: Duration) {
    let row = store.get(ID).unwrap().unwrap();
    let lease = Lease {
        owner: "other pid:1".into(),
        id: "other".into(),
        until: now.plus(clock::millis(ttl)).lease,
    };
    let need = Need::Refresh {
        since_ms: now.wall_ms,
        force: true,
    };
    let event = Event::Claim { lease, need };
    let t = state::apply(&row.status, &event, now, &state::Policy::default()).unwrap();
    let claimed = store.apply(ID, &t, Write::STATE_ONLY, "other", now.wall_ms);
    assert!(claimed.unwrap().is_some(), "the other process's claim");
}

/// The `Retry-After` of an unavailable answer (whole seconds).
fn retry_after_s(result: Result<(Credential, Via)>) -> u64 {
    match result {
        Err(Error::Unavailable { retry_after_s, .. }) => retry_after_s,
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// Within one lease, attempts are paced 1 s, 2 s, … apart (no
/// `Retry-After`), each presenting the same refresh token; the answer is
/// committed at once, on the injected time.
#[test]
fn attempts_within_a_lease_are_paced_one_then_two_seconds() {
    let rig = Rig::due(
        Config::default(),
        [
            Status(503, None),
            Status(502, None),
            Tokens { expires_in: 3600 },
        ],
    );
    let (row, via) = rig.token(secs(75)).unwrap();
    assert_eq!(via, Via::Refreshed);
    assert_eq!(rig.sent(), [secs(0), secs(1), secs(3)]);
    assert_eq!(rig.clock.pauses(), [secs(1), secs(2)]);
    assert_eq!(rig.presented(), ["rt-0", "rt-0", "rt-0"]);
    assert_eq!(row.refresh_token.expose(), "rt-3");
    assert_eq!(row.status.failures, 0);
    assert_eq!(row.status.last_refresh_ms, Some(wall_at(secs(3))));
    assert_eq!(row.status.expires_at_ms, Some(wall_at(secs(3 + 3600))));
}

/// The cross-refresh backoff: 5 s doubling per consecutive failure up to
/// 5 min, counted from the injected time of the failure's commit. Before
/// the deadline a caller is told to come back (nothing is sent), at it the
/// next refresh goes out.
#[test]
fn the_backoff_doubles_from_the_injected_time_up_to_its_cap() {
    let rig = Rig::due(
        Config {
            attempts: 1,
            ..Config::default()
        },
        [],
    );
    let schedule = [5, 10, 20, 40, 80, 160, 300, 300];
    for (n, backoff) in schedule.into_iter().enumerate() {
        let failed_at = rig.clock.elapsed();
        rig.script([Status(503, None)]);
        assert_eq!(
            retry_after_s(rig.token(secs(75))),
            backoff,
            "failure {}",
            n + 1
        );
        let row = rig.row();
        assert_eq!(row.status.failures, n as u32 + 1);
        let until = wall_at(failed_at + secs(backoff));
        assert_eq!(
            row.status.next_attempt_at_ms,
            Some(until),
            "failure {}",
            n + 1
        );
        assert_eq!(row.last_error.map(|e| e.at_ms), Some(wall_at(failed_at)));
        // A millisecond before the deadline: told to wait, nothing sent.
        rig.clock.advance(secs(backoff) - millis(1));
        assert_eq!(retry_after_s(rig.token(secs(75))), 1);
        assert_eq!(rig.sent().len(), n + 1);
        rig.clock.advance(millis(1));
    }
    // At the deadline the next refresh goes out, and a success resets it.
    rig.script([Tokens { expires_in: 3600 }]);
    let (row, via) = rig.token(secs(75)).unwrap();
    assert_eq!(via, Via::Refreshed);
    assert_eq!(
        (row.status.failures, row.status.next_attempt_at_ms),
        (0, None)
    );
    let total: u64 = schedule.iter().sum();
    assert_eq!(rig.sent().last(), Some(&secs(total)));
}

/// A `Retry-After` is waited out within the call when the next attempt
/// (its timeout plus the commit margin) still fits in the lease and the
/// caller's wait; otherwise the call ends and it becomes the backoff,
/// never shorter than the policy's. One waited out no longer counts once
/// the next attempt has been made.
#[test]
fn a_retry_after_is_waited_out_only_if_the_next_attempt_fits() {
    /// How the call ends: refreshed, or failed with the backoff deadline
    /// at this long after the start.
    #[derive(Debug, PartialEq)]
    enum End {
        Refreshed,
        BackoffUntil(Duration),
    }
    use End::{BackoffUntil, Refreshed};
    let ok = || Tokens { expires_in: 3600 };
    // Defaults: 60 s lease, 15 s timeout, 2 s commit margin: the next
    // attempt needs Retry-After + 17 s of lease, and Retry-After + 15 s of
    // the caller's wait.
    /// (case, attempts, caller's wait s, answers, sent at s, end)
    type Row = (&'static str, u32, u64, Vec<Answer>, Vec<u64>, End);
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("short: waited out",
         3, 75, vec![Status(429, Some("2")), ok()], vec![0, 2], Refreshed),
        ("zero: retried at once",
         3, 75, vec![Status(503, Some("0")), ok()], vec![0, 0], Refreshed),
        ("an HTTP-date, read on the injected wall clock",
         3, 75, vec![Status(503, Some("Tue, 14 Nov 2023 22:13:30 GMT")), ok()], vec![0, 10], Refreshed),
        ("fills the lease to the millisecond: waited out",
         3, 75, vec![Status(429, Some("43")), ok()], vec![0, 43], Refreshed),
        ("one second too long for the lease: the backoff",
         3, 75, vec![Status(429, Some("44"))], vec![0], BackoffUntil(secs(44))),
        ("long: the backoff, past backoff_max",
         3, 75, vec![Status(429, Some("3600"))], vec![0], BackoffUntil(secs(3600))),
        ("fits the caller's wait exactly: waited out",
         3, 20, vec![Status(429, Some("5")), ok()], vec![0, 5], Refreshed),
        ("longer than the caller's wait allows: the backoff",
         3, 20, vec![Status(429, Some("6"))], vec![0], BackoffUntil(secs(6))),
        ("on the last attempt: not waited, the policy's backoff if longer",
         1, 75, vec![Status(429, Some("2"))], vec![0], BackoffUntil(secs(5))),
        ("waited out, then a plain failure: the policy's backoff",
         2, 75, vec![Status(429, Some("30")), Status(503, None)], vec![0, 30], BackoffUntil(secs(35))),
    ];
    for (name, attempts, wait, answers, sent, end) in table {
        let rig = Rig::due(
            Config {
                attempts,
                ..Config::default()
            },
            answers,
        );
        let got = match rig.token(secs(wait)) {
            Ok((_, Via::Refreshed)) => Refreshed,
            Ok(other) => panic!("{name}: {other:?}"),
            Err(Error::Unavailable { .. }) => {
                let until = rig.row().status.next_attempt_at_ms.unwrap();
                BackoffUntil(millis((until - START.wall_ms) as u64))
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(got, end, "{name}");
        let sent: Vec<Duration> = sent.into_iter().map(secs).collect();
        assert_eq!(rig.sent(), sent, "{name}");
    }
}

/// The commit margin is 2 s, or a quarter of the lease's slack over the
/// refresh budget (attempts × timeout + the 1 s, 2 s, … pauses) if less.
#[test]
fn the_commit_margin_is_two_seconds_or_a_quarter_of_the_slack() {
    // (lease ms, timeout ms, attempts) → commit margin ms
    let table = [
        ((60_000, 15_000, 3), 2_000), // the defaults: slack 12 s
        ((50_000, 15_000, 3), 500),   // slack 2 s
        ((49_000, 15_000, 3), 250),   // slack 1 s
        ((48_004, 15_000, 3), 1),     // slack 4 ms: validate takes it
        ((10_000, 1_000, 3), 1_000),  // budget 3 s + 3 s, slack 4 s
        ((2_500, 500, 2), 125),       // the tests' tuning: slack 0.5 s
        ((600_000, 15_000, 3), 2_000),
    ];
    for ((lease, timeout, attempts), margin) in table {
        let c = Config {
            lease_ttl: millis(lease),
            request_timeout: millis(timeout),
            attempts,
            ..Config::default()
        };
        assert_eq!(
            c.commit_margin(),
            millis(margin),
            "{lease} {timeout} {attempts}"
        );
    }
}

/// An attempt starts only if its timeout plus the commit margin fits in
/// what is left of the lease (on the lease clock), so its answer can be
/// committed before anyone may take the lease over; and a second attempt
/// starts only if its timeout ends before the caller's wait does. The first
/// attempt is made whatever the caller's wait.
#[test]
fn an_attempt_starts_only_if_its_timeout_and_the_commit_margin_fit() {
    // 50 s lease, 15 s timeout, 3 attempts: a 0.5 s commit margin, so an
    // attempt needs 15.5 s of lease.
    let tight = Config {
        lease_ttl: secs(50),
        ..Config::default()
    };
    // An answer that comes late: past its timeout, as when the process
    // was stopped meanwhile (the lease clock counts that time too).
    let late = |ms: u64| after(millis(ms), Status(503, None));
    let e503 = || Status(503, None);
    /// (case, config, caller's wait ms, answers, sent at ms, error code or
    /// "" for a refresh)
    type Row = (
        &'static str,
        Config,
        u64,
        Vec<Answer>,
        Vec<u64>,
        &'static str,
    );
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("three timeouts fit a validated lease",
         tight.clone(), 75_000, vec![Timeout, Timeout, Timeout], vec![0, 16_000, 33_000], "timeout_after_send"),
        ("an answer that leaves 1 s + the budget: the next attempt starts",
         tight.clone(), 75_000, vec![late(33_500), Tokens { expires_in: 60 }], vec![0, 34_500], ""),
        ("a millisecond less: it does not",
         tight.clone(), 75_000, vec![late(33_501)], vec![0], "http_503"),
        ("a lease too short for one attempt (a config validate refuses): none",
         Config { lease_ttl: secs(14), ..Config::default() }, 75_000, vec![], vec![], "no_attempt"),
        ("a second attempt that would end after the caller's wait: none",
         Config::default(), 15_999, vec![e503()], vec![0], "http_503"),
        ("one that ends with it starts; a third would end after it",
         Config::default(), 16_000, vec![e503(), e503()], vec![0, 1_000], "http_503"),
        ("three fit in 18 s",
         Config::default(), 18_000, vec![e503(), e503(), e503()], vec![0, 1_000, 3_000], "http_503"),
        ("a caller's wait of zero still gets the first attempt",
         Config::default(), 0, vec![Tokens { expires_in: 60 }], vec![0], ""),
    ];
    for (name, config, wait, answers, sent, error) in table {
        let rig = Rig::due(config, answers);
        let result = rig.token(millis(wait));
        let sent: Vec<Duration> = sent.into_iter().map(millis).collect();
        assert_eq!(rig.sent(), sent, "{name}");
        let row = rig.row();
        match error {
            "" => assert_eq!(result.map(|r| r.1).ok(), Some(Via::Refreshed), "{name}"),
            code => {
                assert!(result.is_err(), "{name}");
                assert_eq!(
                    row.last_error.map(|e| e.code).as_deref(),
                    Some(code),
                    "{name}"
                );
            }
        }
        // Whatever happened, the outcome was committed within the lease.
        assert_eq!(row.status.state, State::Valid, "{name}");
        let lease_end = rig.refresher.config.lease_ttl;
        assert!(rig.clock.elapsed() <= lease_end, "{name}: committed late");
    }
}

/// The failing commit of a rotated refresh token (the only copy of the
/// login) is retried, pausing 100 ms doubling to 2 s, past the lease's end,
/// until it lands.
#[test]
fn a_rotated_token_is_committed_past_the_lease_end_until_it_lands() {
    let rig = Rig::due(Config::default(), [Tokens { expires_in: 3600 }]);
    // The disk is full until 70 s in (the lease ends at 60 s).
    let db = rig.fail_token_writes();
    rig.clock.on_pause(move |elapsed| {
        if elapsed >= secs(70) {
            db.execute_batch("DROP TRIGGER IF EXISTS no_commit")
                .unwrap();
        }
    });
    let (row, via) = rig.token(secs(75)).unwrap();
    assert_eq!(via, Via::Refreshed);
    assert_eq!(row.refresh_token.expose(), "rt-1");
    assert_eq!(rig.sent(), [secs(0)], "one request");
    let pauses = rig.clock.pauses();
    let first: Vec<u64> = pauses[..6].iter().map(|d| d.as_millis() as u64).collect();
    assert_eq!(first, [100, 200, 400, 800, 1600, 2000]);
    assert!(pauses[6..].iter().all(|&p| p == secs(2)), "{pauses:?}");
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2 s × 34 = 71.1 s: the first try
    // after the trigger went at 70 s.
    assert_eq!(rig.clock.elapsed(), millis(71_100));
    assert_eq!(row.status.last_refresh_ms, Some(wall_at(millis(71_100))));
}

/// … or until the lease is seen taken over: then the rotated tokens are
/// dropped (the new owner's refresh decides), and nothing is written.
#[test]
fn a_rotated_token_is_retried_until_the_lease_is_seen_taken_over() {
    let rig = Rig::due(Config::default(), [Tokens { expires_in: 3600 }]);
    let _db = rig.fail_token_writes();
    // Once the lease has ended, another process takes it over.
    let store = rig.refresher.store.clone();
    let mut taken = false;
    rig.clock.on_pause(move |elapsed| {
        if elapsed > secs(60) && !taken {
            claim_elsewhere(&store, START.plus(clock::millis(elapsed)), secs(60));
            taken = true;
        }
    });
    // The caller then waits on the new owner's lease until its own wait
    // (75 s) is over.
    assert!(retry_after_s(rig.token(secs(75))) > 0);
    assert_eq!(rig.sent(), [secs(0)], "one request");
    let row = rig.row();
    assert_eq!(row.refresh_token.expose(), "rt-0", "nothing committed");
    assert_eq!(
        row.status.lease.map(|l| l.owner).as_deref(),
        Some("other pid:1")
    );
    assert_eq!(rig.clock.elapsed(), secs(75));
}

/// New tokens that kept the refresh token lose nothing if dropped: their
/// failing commit is retried only while the lease lasts (the last try may
/// fall just past its end, fenced by the lease id), then given up.
#[test]
fn new_tokens_that_kept_the_refresh_token_are_retried_only_within_the_lease() {
    let rig = Rig::new(Config::default());
    rig.import(Some(START.wall_ms + 60_000), None);
    rig.script([KeepsRefreshToken]);
    let _db = rig.fail_token_writes();
    let result = rig.token(secs(75));
    assert!(matches!(result, Err(Error::Db(_))), "{result:?}");
    // Tries at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 5.1, …, 59.1 s (0.9 s of lease
    // left: one more pause) and 61.1 s, when the lease has ended.
    assert_eq!(rig.clock.elapsed(), millis(61_100));
    assert_eq!(
        rig.row()
            .access_token
            .map(|t| t.expose().to_owned())
            .as_deref(),
        Some("at-0")
    );
}

/// The refresh window is min(refresh_ahead, lifetime / 2), the lifetime
/// measured from the refresh that minted the token: a caller inside it
/// refreshes, one outside is served the stored token.
#[test]
fn the_refresh_window_is_refresh_ahead_or_half_the_lifetime() {
    // (lifetime ms or unknown, refresh_ahead ms, window ms)
    let table = [
        (Some(3_600_000), 300_000, 300_000),
        (Some(600_000), 300_000, 300_000),
        (Some(120_000), 300_000, 60_000),
        (Some(120_000), 30_000, 30_000),
        (Some(1_000), 300_000, 500),
        (None, 300_000, 300_000),
        (None, 30_000, 30_000),
    ];
    for (lifetime, ahead, window) in table {
        // A millisecond before the window: served; at it: refreshed.
        for (before, refreshes) in [(window + 1, false), (window, true)] {
            let mut config = Config::default();
            config.policy.refresh_ahead_ms = ahead as i64;
            let rig = Rig::new(config);
            let life = lifetime.unwrap_or(7_200_000);
            rig.import(Some(wall_at(millis(life))), lifetime.map(|_| START.wall_ms));
            let policy = rig.refresher.config.policy;
            assert_eq!(rig.row().status.window_ms(&policy), window as i64);
            rig.script([Tokens { expires_in: 3600 }]);
            rig.clock.advance(millis(life - before));
            let (_, via) = rig.token(secs(75)).unwrap();
            let case = format!("lifetime {lifetime:?}, ahead {ahead}, {before} ms before expiry");
            let expected = if refreshes {
                Via::Refreshed
            } else {
                Via::Stored
            };
            assert_eq!(via, expected, "{case}");
        }
    }
}

/// A refresh's commit records its time on the injected clock, so the
/// window of a short-lived token it minted (120 s: half of it, 60 s) runs
/// from then.
#[test]
fn a_minted_token_s_window_runs_from_its_refresh() {
    let rig = Rig::due(
        Config::default(),
        [Tokens { expires_in: 120 }, Tokens { expires_in: 120 }],
    );
    rig.clock.advance(secs(7));
    assert_eq!(rig.token(secs(75)).unwrap().1, Via::Refreshed);
    rig.clock.advance(secs(59));
    assert_eq!(rig.token(secs(75)).unwrap().1, Via::Stored);
    rig.clock.advance(secs(1));
    assert_eq!(rig.token(secs(75)).unwrap().1, Via::Refreshed);
    assert_eq!(rig.sent(), [secs(7), secs(67)]);
}

/// A caller that finds another process's live lease waits for the row to
/// change until its own deadline; then it is served the old token if that
/// is still usable, else told to come back when the lease ends — unless the
/// lease ends first, and the caller takes it over and refreshes.
#[test]
fn a_caller_waits_on_another_lease_until_its_deadline_or_the_lease_end() {
    #[derive(Debug, PartialEq)]
    enum Got {
        Served(Via),
        Unavailable(u64),
    }
    use Got::{Served, Unavailable};
    // (token usable, caller's wait s) → what the caller gets, and when (ms)
    let table = [
        (true, 10, Served(Via::Stored), 10_000),
        (false, 10, Unavailable(50), 10_000),
        (true, 0, Served(Via::Stored), 0),
        (false, 0, Unavailable(60), 0),
        // The lease (60 s) runs out first, and is seen to 1 ms after its
        // end: a usable token is served as it is, else the caller takes
        // the lease over and refreshes.
        (true, 75, Served(Via::Adopted), 60_001),
        (false, 75, Served(Via::Refreshed), 60_001),
    ];
    for (usable, wait, expected, at_ms) in table {
        let rig = Rig::new(Config::default());
        rig.import(usable.then(|| wall_at(secs(3600))), None);
        rig.claim_elsewhere(secs(60));
        rig.script([Tokens { expires_in: 3600 }]);
        let got = match rig.token(secs(wait)) {
            Ok((_, via)) => Served(via),
            Err(Error::Unavailable { retry_after_s, .. }) => Unavailable(retry_after_s),
            Err(e) => panic!("{e}"),
        };
        let case = format!("usable {usable}, wait {wait} s");
        assert_eq!(got, expected, "{case}");
        assert_eq!(rig.clock.elapsed(), millis(at_ms), "{case}");
        let sent = match expected {
            Served(Via::Refreshed) => vec![millis(at_ms)],
            _ => vec![],
        };
        assert_eq!(rig.sent(), sent, "{case}");
    }
}

/// Known issue (availability, not safety; RELIABILITY.md, "Found, not
/// fixed"): the backoff deadline is written on the writer's wall clock and
/// read on the reader's, so a process whose wall clock is 60 s ahead that
/// fails a refresh locks every correctly clocked caller out for 60 s plus
/// the backoff. The lease clock would not have this flaw, but the row keeps
/// no lease-clock reading once the lease is over. When this is fixed, the
/// reader below refreshes at 5 s and this test is turned around.
#[test]
fn known_issue_a_writer_whose_wall_clock_is_ahead_locks_a_credential_out() {
    let reader = Rig::due(
        Config {
            attempts: 1,
            ..Config::default()
        },
        [],
    );
    let writer = reader.beside(reader.clock.with_wall_ahead(60_000));
    writer.script([Status(503, None)]);
    assert_eq!(retry_after_s(writer.token(secs(75))), 5);
    // The backoff (5 s) is over, but the reader is told to wait 60 s more.
    reader.clock.advance(secs(5));
    assert_eq!(retry_after_s(reader.token(secs(75))), 60);
    reader.clock.advance(secs(59));
    assert_eq!(retry_after_s(reader.token(secs(75))), 1);
    reader.clock.advance(secs(1));
    reader.script([Tokens { expires_in: 3600 }]);
    assert_eq!(reader.token(secs(75)).unwrap().1, Via::Refreshed);
    assert_eq!(reader.sent(), [secs(65)]);
}

/// Known issue, the same flaw in the access token's expiry: a writer whose
/// wall clock is 60 s ahead records a token's expiry 60 s late, so a token
/// living less than twice that (here 100 s, window 50 s) is served by the
/// other processes after it has expired (upstream then answers 401, and
/// the reject path refreshes it).
#[test]
fn known_issue_a_writer_whose_wall_clock_is_ahead_records_expiries_late() {
    let reader = Rig::due(Config::default(), []);
    let writer = reader.beside(reader.clock.with_wall_ahead(60_000));
    writer.script([Tokens { expires_in: 100 }]);
    assert_eq!(writer.token(secs(75)).unwrap().1, Via::Refreshed);
    // The token expired at 100 s; at 105 s it is still served.
    reader.clock.advance(secs(105));
    let (row, via) = reader.token(secs(75)).unwrap();
    assert_eq!(via, Via::Stored);
    assert_eq!(row.status.expires_at_ms, Some(wall_at(secs(160))));
    assert!(reader.sent().is_empty());
}

/// The seam stays whole: the refresher reads no clock and pauses on none
/// but its [`Clock`] (else the tests above would run partly on real time),
/// and clock.rs stays the one file that reads the wall clock or the lease
/// clock from the system.
#[test]
fn the_refresher_reads_time_only_through_its_clock() {
    let refresher = include_str!("../refresh.rs");
    for read in [
        "Instant::now",
        "thread::sleep",
        "clock::now",
        "clock::lease_now",
        ".elapsed()",
        ".wait_for(&mut",
    ] {
        assert!(!refresher.contains(read), "src/refresh.rs reads `{read}`");
    }
    // Spelled in two halves, so that this file does not match itself.
    let system_reads = [concat!("SystemTime", "::now"), concat!("clock_", "gettime")];
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") && !path.ends_with("src/clock.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for read in system_reads {
                    assert!(!text.contains(read), "{} reads `{read}`", path.display());
                }
            }
        }
    }
}

/// No per-credential signal is kept once no thread holds it — after a
/// refresh, or after waiting on another process's — so a process that has
/// refreshed every credential of a large table does not keep one each.
#[test]
fn no_signal_is_kept_for_a_credential_nobody_waits_on() {
    let rig = Rig::due(Config::default(), [Tokens { expires_in: 3600 }]);
    assert_eq!(rig.token(secs(75)).unwrap().1, Via::Refreshed);
    assert_eq!(rig.refresher.signals.kept(), 0);

    let rig = Rig::due(Config::default(), []);
    rig.claim_elsewhere(secs(60));
    assert!(rig.token(secs(1)).is_err(), "waited on the other lease");
    assert_eq!(rig.refresher.signals.kept(), 0);
}

/// Holders that leave one credential's signal at the same moment still
/// leave the map empty: each judges "am I the last?" and lets go of its
/// reference under one lock, so two leaving together cannot both count the
/// other and keep the signal (the attack on 251fb5a noted that they could).
#[test]
fn holders_leaving_together_keep_no_signal() {
    let signals = Signals::default();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20_000 {
                    let held = signals.get("c");
                    drop(held);
                }
            });
        }
    });
    assert_eq!(signals.kept(), 0);
}

//! One test (or more) per invariant of DESIGN.md §3, against a real
//! database — a SQLite file, and a PostgreSQL database (tests/common/pg.rs)
//! — the real binary in several processes, and the fake OAuth server over
//! loopback. One source for both backends: each test takes the backend,
//! and `on_both_backends!` (tests/common/mod.rs) makes `sqlite::NAME` and
//! `postgres::NAME` of it.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::{Fault, OPENAI_REUSE_BODY};
use crate::common::tw::{code, json, now, text, Backend, Env, Tuning};
use tokenwarden::state::State;
use tokenwarden::Error;

on_both_backends!(
    single_flight_across_threads_and_processes,
    no_refresh_token_is_sent_twice,
    commit_before_use_and_a_failed_commit_is_retried_never_served,
    rejected_tokens_are_never_served_again,
    a_crowd_never_gets_a_token_rejected_before_its_call,
    a_reject_during_a_failing_refresh_is_not_lost,
    a_killed_refresher_is_recovered_after_its_lease,
    a_cli_caller_blocked_behind_a_killed_owner_takes_over,
    killed_after_upstream_rotated_goes_dead_with_the_reason,
    owner_writes_are_fenced_by_the_lease,
    permanent_errors_kill_the_credential_with_the_reason,
    transient_errors_back_off_and_commit_nothing,
    every_change_leaves_an_event_without_secrets,
    no_secret_leaves_through_the_cli,
);

/// The lease clock `warden`'s store judges leases on: the box's boot-time
/// clock, or PostgreSQL's server clock.
fn lease_clock(warden: &tokenwarden::Warden) -> tokenwarden::state::LeaseTime {
    warden
        .store()
        .lease_now()
        .unwrap_or_else(tokenwarden::clock::lease_now)
}

/// Invariant 1: 64 threads and 4 processes on one expiring credential cause
/// exactly one upstream request, and everyone gets the same new token.
fn single_flight_across_threads_and_processes(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let old = env.login("solo", 60);
    env.fake.set_latency(Duration::from_millis(800));
    let warden = Arc::new(env.warden());

    let procs: Vec<_> = (0..4)
        .map(|_| {
            env.cmd()
                .args(["token", "solo"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (w, b) = (warden.clone(), barrier.clone());
            thread::spawn(move || {
                b.wait();
                w.token("solo", Duration::ZERO)
                    .map(|g| g.access_token.expose().to_owned())
            })
        })
        .collect();

    let mut tokens = HashSet::new();
    for t in threads {
        tokens.insert(t.join().unwrap().expect("thread got a token"));
    }
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "process failed: {}", text(&out.stderr));
        tokens.insert(text(&out.stdout).trim().to_owned());
    }
    let family = env.fake.family_state("solo");
    assert_eq!(
        env.fake.stats().token_requests,
        1,
        "exactly one upstream request"
    );
    assert_eq!(tokens.len(), 1, "everyone got the same token: {tokens:?}");
    let served = tokens.into_iter().next().unwrap();
    assert_ne!(served, old.access_token, "the token was refreshed");
    assert_eq!(served, family.current_access_token);
    env.fake.assert_single_flight();
}

/// Invariant 2: a refresh token that got a successful answer is never sent
/// again, through many forced refreshes from threads and processes.
fn no_refresh_token_is_sent_twice(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("rot", 3600);
    let warden = Arc::new(env.warden());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let w = warden.clone();
            thread::spawn(move || {
                for _ in 0..5 {
                    w.refresh("rot", false).expect("refresh");
                }
            })
        })
        .collect();
    for _ in 0..3 {
        let out = env.run(&["refresh", "rot"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    for t in threads {
        t.join().unwrap();
    }
    let stats = env.fake.stats();
    assert_eq!(stats.reuse_detected, 0);
    assert!(stats.successful_refreshes >= 4, "{stats:?}");
    env.fake.assert_no_reuse_after_success();
    env.fake.assert_single_flight();
    let row = warden.get("rot").unwrap();
    assert_eq!(
        row.refresh_token.expose(),
        env.fake.family_state("rot").current_refresh_token,
        "the database holds the refresh token upstream accepts now"
    );
}

/// Invariant 3: the rotated tokens are committed before anyone sees them;
/// a commit that fails is retried (past the lease's end: the write is
/// fenced by the lease id) until it lands, and the new token is never
/// served from memory meanwhile.
fn commit_before_use_and_a_failed_commit_is_retried_never_served(b: Backend) {
    let Some(env) = Env::with_on(
        Tuning {
            lease_ttl: 2.5,
            ..Tuning::default()
        },
        b,
    ) else {
        return;
    };
    env.login("c", 60);
    let warden = env.warden();
    let g = warden.token("c", Duration::ZERO).unwrap();
    let row = warden.get("c").unwrap();
    assert_eq!(row.access_token.as_ref(), Some(&g.access_token));
    let family = env.fake.family_state("c");
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);

    // Make every commit of new tokens fail, as a full disk would.
    let sql = |sqlite: &str, pg: &str| match b {
        Backend::Sqlite => rusqlite::Connection::open(&env.db)
            .unwrap()
            .execute_batch(sqlite)
            .unwrap(),
        #[cfg(feature = "postgres")]
        Backend::Postgres => crate::common::pg::client(env.pg_url())
            .batch_execute(pg)
            .unwrap(),
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => unreachable!("no PostgreSQL env without the feature: {pg}"),
    };
    sql(
        "CREATE TRIGGER no_commit BEFORE UPDATE OF access_token ON credentials \
         WHEN NEW.access_token IS NOT OLD.access_token \
         BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END;",
        "CREATE FUNCTION no_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.access_token IS DISTINCT FROM OLD.access_token THEN \
         RAISE EXCEPTION 'simulated write failure'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER no_commit BEFORE UPDATE ON credentials \
         FOR EACH ROW EXECUTE FUNCTION no_commit();",
    );
    let warden = Arc::new(warden);
    let w = warden.clone();
    let owner = thread::spawn(move || w.refresh("c", false));
    let rotated = Instant::now() + Duration::from_secs(5);
    while env.fake.family_state("c").current_access_token == g.access_token.expose() {
        assert!(Instant::now() < rotated, "upstream never rotated");
        thread::sleep(Duration::from_millis(10));
    }
    // Past the lease's end: the owner still holds the rotated tokens and
    // keeps trying; nothing new is committed or served meanwhile.
    thread::sleep(Duration::from_millis(3000));
    assert!(!owner.is_finished(), "the owner gave up on rotated tokens");
    let after = warden.get("c").unwrap();
    assert_eq!(
        after.access_token.as_ref(),
        Some(&g.access_token),
        "nothing new committed"
    );
    // The write failure clears: the commit lands, and only then is the new
    // token served.
    sql(
        "DROP TRIGGER no_commit",
        "DROP TRIGGER no_commit ON credentials",
    );
    let new = owner.join().unwrap().expect("the commit landed");
    let family = env.fake.family_state("c");
    assert_eq!(new.access_token.expose(), family.current_access_token);
    assert_eq!(
        warden.get("c").unwrap().refresh_token.expose(),
        family.current_refresh_token
    );
}

/// Invariant 4: a token reported rejected is never handed out again;
/// concurrent rejects of one token cause one refresh; a reject of a token
/// already rotated away causes none.
fn rejected_tokens_are_never_served_again(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let g = env.login("r", 3600);
    env.fake.set_latency(Duration::from_millis(300));
    let warden = Arc::new(env.warden());
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (w, b, t) = (warden.clone(), barrier.clone(), g.access_token.clone());
            thread::spawn(move || {
                b.wait();
                w.reject("r", &t).unwrap().access_token.expose().to_owned()
            })
        })
        .collect();
    let tokens: HashSet<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        env.fake.stats().token_requests,
        1,
        "one refresh for 16 rejects"
    );
    assert_eq!(tokens.len(), 1);
    assert!(!tokens.contains(&g.access_token));

    // The old token is already rotated away: no refresh, the current one.
    let current = tokens.into_iter().next().unwrap();
    let again = warden.reject("r", &g.access_token).unwrap();
    assert_eq!(again.access_token.expose(), current);
    assert_eq!(env.fake.stats().token_requests, 1);

    // A rejected token whose refresh fails is not served stale.
    env.fake.push_fault(Fault::status(503, "{}"));
    let err = warden.reject("r", &current).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let row = warden.get("r").unwrap();
    assert_eq!(row.status.state, State::Rejected);
    let err = warden.token("r", Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let out = env.run(&["token", "r"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&current));
}

/// Invariant 4 under a crowd: 12 threads ask for the token in a loop
/// while another rejects the current one 15 times; no call returns a token
/// whose reject had returned before the call began. (On PostgreSQL, where
/// no stamp proves a kept row current, the threads of a process share
/// reads of the row — `Refresher::shared_read` — and a shared read must
/// never be older than the call it serves.)
fn a_crowd_never_gets_a_token_rejected_before_its_call(b: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let Some(env) = Env::on(b) else { return };
    env.login("crowd", 3600);
    let warden = Arc::new(env.warden());
    let retired: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let (w, retired, stop) = (warden.clone(), retired.clone(), stop.clone());
            thread::spawn(move || {
                let mut calls = 0;
                while !stop.load(Ordering::SeqCst) {
                    let before = retired.lock().unwrap().clone();
                    match w.token("crowd", Duration::ZERO) {
                        Ok(g) => assert!(
                            !before.contains(g.access_token.expose()),
                            "a token rejected before the call was served"
                        ),
                        // Rejected and not yet refreshed: busy, never stale.
                        Err(Error::Unavailable { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..15 {
        let current = warden.token("crowd", Duration::ZERO).unwrap();
        let token = current.access_token.expose().to_owned();
        let fresh = warden.reject("crowd", &token).unwrap();
        assert_ne!(fresh.access_token.expose(), token);
        retired.lock().unwrap().insert(token);
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    let calls: usize = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(calls >= 12, "the readers ran ({calls} calls)");
    assert_eq!(
        env.fake.stats().token_requests,
        15,
        "one refresh per reject"
    );
    env.fake.assert_no_reuse_after_success();
}

/// Invariant 4, during a refresh: a reject that lands while the refresh is
/// in flight makes a failed refresh return to `rejected`, not `valid`.
fn a_reject_during_a_failing_refresh_is_not_lost(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let g = env.login("rr", 3600);
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_millis(600)));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let refresher = thread::spawn(move || w.refresh("rr", false));
    // Wait until the refresh holds the lease, then reject the old token.
    let until = Instant::now() + Duration::from_secs(5);
    while warden.get("rr").unwrap().status.state != State::Refreshing {
        assert!(Instant::now() < until, "refresh never started");
        thread::sleep(Duration::from_millis(5));
    }
    let w = warden.clone();
    let t = g.access_token.clone();
    let rejecter = thread::spawn(move || w.reject("rr", &t));
    let refreshed = refresher.join().unwrap();
    assert!(
        matches!(refreshed, Err(Error::Unavailable { .. })),
        "{refreshed:?}"
    );
    let rejected = rejecter.join().unwrap();
    assert!(
        matches!(rejected, Err(Error::Unavailable { .. })),
        "{rejected:?}"
    );
    let row = warden.get("rr").unwrap();
    assert_eq!(row.access_token.unwrap().expose(), g.access_token);
    assert_eq!(
        row.status.state,
        State::Rejected,
        "the old token stays rejected"
    );
    assert_eq!(row.status.failures, 1);
    assert!(warden.token("rr", Duration::ZERO).is_err());
}

/// Invariant 5: a process killed with SIGKILL in the middle of a refresh
/// leaves a lease that expires; the next caller takes over and succeeds.
fn a_killed_refresher_is_recovered_after_its_lease(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("k", 60);
    // The first request hangs upstream without being processed.
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(10)));
    let mut child = env
        .cmd()
        .args(["token", "k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let warden = env.warden();
    let until = Instant::now() + Duration::from_secs(5);
    while env.fake.stats().token_requests == 0 {
        assert!(Instant::now() < until, "child never reached upstream");
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let row = warden.get("k").unwrap();
    assert_eq!(row.status.state, State::Refreshing, "killed mid-refresh");
    let lease = row.status.lease.clone().unwrap();

    let started = Instant::now();
    let g = warden.token("k", Duration::ZERO).expect("recovered");
    assert!(
        lease.left_ms(lease_clock(&warden)).is_none(),
        "takeover happened only after the lease ended"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        g.access_token.expose(),
        env.fake.family_state("k").current_access_token
    );
    let row = warden.get("k").unwrap();
    assert_eq!(row.status.state, State::Valid);
    let events = warden.events("k", None).unwrap();
    assert!(
        events.iter().any(|e| e.reason.contains("taken over")),
        "the takeover is logged: {events:?}"
    );
}

/// Invariant 5, CLI: a second `tokenwarden token` blocked behind a killed
/// owner waits long enough by default to take over.
fn a_cli_caller_blocked_behind_a_killed_owner_takes_over(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("k2", 60);
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(10)));
    let mut owner = env.cmd().args(["token", "k2"]).spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while env.fake.stats().token_requests == 0 {
        assert!(Instant::now() < until);
        thread::sleep(Duration::from_millis(5));
    }
    let waiter = env
        .cmd()
        .args(["token", "k2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    owner.kill().unwrap();
    owner.wait().unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        env.fake.family_state("k2").current_access_token
    );
}

/// The documented loss window: killed after upstream rotated the token but
/// before the commit. The next claimant's refresh is refused as reuse and
/// the credential goes dead with that reason — never stuck, never looping.
fn killed_after_upstream_rotated_goes_dead_with_the_reason(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("w", 60);
    env.fake
        .push_fault(Fault::ProcessThenHang(Duration::from_secs(10)));
    let mut child = env.cmd().args(["token", "w"]).spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while env.fake.family_state("w").issued_refresh_tokens.len() < 2 {
        assert!(Instant::now() < until);
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let warden = env.warden();
    let err = warden.token("w", Duration::ZERO).unwrap_err();
    match err {
        Error::Dead { reason, .. } => assert_eq!(reason, "refresh_token_reused"),
        other => panic!("expected dead, got {other:?}"),
    }
    let out = env.run(&["show", "w", "--json"]);
    let summary = json(&out);
    assert_eq!(summary["state"], "dead");
    assert_eq!(summary["dead_reason"], "refresh_token_reused");
}

/// Invariant 6: the owner's commit is fenced by its lease — a takeover
/// voids a late writer; a rejection recorded meanwhile does not.
fn owner_writes_are_fenced_by_the_lease(b: Backend) {
    use tokenwarden::provider::Tokens;
    use tokenwarden::state::{apply, Event, Lease, Need, Policy};
    use tokenwarden::testing::{ErrorUpdate, Store, Write};

    let Some(env) = Env::on(b) else { return };
    env.login("f", 60);
    let store = Store::open(&env.db, Duration::from_secs(5), 2).unwrap();
    // The store's lease clock (PostgreSQL's server clock), read after a row.
    let now = || tokenwarden::state::Now {
        wall_ms: now_ms(),
        lease: store
            .lease_now()
            .unwrap_or_else(tokenwarden::clock::lease_now),
    };
    let p = Policy::default();
    let need = Need::Token { min_ttl_ms: 0 };
    let claim = |owner: &str, for_ms: i64| {
        let row = store.get("f").unwrap().unwrap();
        let lease = Lease {
            owner: owner.into(),
            id: format!("lease-{owner}"),
            until: now().plus(for_ms).lease,
        };
        let t = apply(&row.status, &Event::Claim { lease, need }, now(), &p).unwrap();
        store
            .apply("f", &t, Write::STATE_ONLY, owner, now_ms())
            .unwrap()
            .unwrap()
    };
    fn now_ms() -> i64 {
        tokenwarden::clock::now_ms()
    }
    let tokens = |n: &str| Tokens {
        access_token: format!("at-{n}").into(),
        refresh_token: format!("rt-{n}").into(),
        id_token: None,
        expires_at_ms: now_ms() + 3_600_000,
        claims: Default::default(),
    };
    let commit = |owner: &str, tok: &Tokens| {
        let row = store.get("f").unwrap().unwrap();
        let ev = Event::Succeed {
            lease_id: format!("lease-{owner}"),
        };
        match apply(&row.status, &ev, now(), &p) {
            Ok(t) => store
                .apply(
                    "f",
                    &t,
                    Write {
                        tokens: Some(tok),
                        error: ErrorUpdate::Clear,
                        notify: None,
                    },
                    owner,
                    now_ms(),
                )
                .unwrap(),
            Err(_) => None,
        }
    };

    // A's lease ends; B takes over; A's late commit must not land.
    claim("A", -1);
    claim("B", 60_000);
    let a = tokens("A");
    // A writes with the guard it computed when it still held the lease.
    let row = store.get("f").unwrap().unwrap();
    let stale = tokenwarden::state::Transition {
        guard: tokenwarden::state::Guard::Lease {
            id: "lease-A".into(),
            version: None,
        },
        from: State::Refreshing,
        to: State::Valid,
        resume: None,
        lease: None,
        failures: 0,
        next_attempt_at_ms: None,
        dead_reason: None,
        reason: "late".into(),
    };
    let late = store
        .apply(
            "f",
            &stale,
            Write {
                tokens: Some(&a),
                error: ErrorUpdate::Clear,
                notify: None,
            },
            "A",
            now_ms(),
        )
        .unwrap();
    assert!(
        late.is_none(),
        "a writer whose lease was taken over cannot write"
    );
    assert_eq!(
        store.get("f").unwrap().unwrap().status.version,
        row.status.version
    );

    // A rejection during B's refresh bumps the version but keeps B's lease.
    let current = store.get("f").unwrap().unwrap();
    let t = apply(
        &current.status,
        &Event::Reject { is_current: true },
        now(),
        &p,
    )
    .unwrap();
    store
        .apply("f", &t, Write::STATE_ONLY, "rejecter", now_ms())
        .unwrap()
        .unwrap();
    let done = commit("B", &tokens("B")).expect("B's commit lands despite the rejection");
    assert_eq!(done.status.state, State::Valid);
    assert_eq!(done.access_token.unwrap().expose(), "at-B");
    assert_eq!(done.refresh_token.expose(), "rt-B");
}

/// Invariant 7, permanent: every permanent code, in each error shape, with
/// 400 and 401, makes the credential dead with that reason, and stops all
/// automatic traffic.
fn permanent_errors_kill_the_credential_with_the_reason(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let warden = env.warden();
    let codes = [
        "invalid_grant",
        "refresh_token_reused",
        "refresh_token_expired",
        "refresh_token_invalidated",
        "refresh_token_revoked",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    ];
    let mut n = 0;
    for code_name in codes {
        for (status, body) in [
            (
                400,
                format!(
                    r#"{{"error":{{"code":"{code_name}","message":"no","type":"invalid_request_error"}}}}"#
                ),
            ),
            (
                401,
                format!(r#"{{"error":"{code_name}","error_description":"no"}}"#),
            ),
            (400, format!(r#"{{"code":"{code_name}"}}"#)),
        ] {
            n += 1;
            let id = format!("p{n}");
            env.login(&id, 60);
            env.fake.push_fault(Fault::status(status, body));
            let before = env.fake.stats().token_requests;
            match warden.token(&id, Duration::ZERO) {
                Err(Error::Dead { reason, .. }) => assert_eq!(reason, code_name, "{id}"),
                other => panic!("{code_name}/{status}: expected dead, got {other:?}"),
            }
            let row = warden.get(&id).unwrap();
            assert_eq!(row.status.state, State::Dead);
            assert_eq!(row.last_error.unwrap().code, code_name);
            // No more upstream traffic for it.
            assert!(warden.token(&id, Duration::ZERO).is_err());
            assert!(warden.refresh(&id, false).is_err());
            assert_eq!(env.fake.stats().token_requests, before + 1, "{id}");
        }
    }
    // The verbatim OpenAI reuse answer, and a bare 401.
    for (status, body, reason) in [
        (401, OPENAI_REUSE_BODY.to_owned(), "refresh_token_reused"),
        (401, "{}".to_owned(), "unauthorized"),
    ] {
        n += 1;
        let id = format!("p{n}");
        env.login(&id, 60);
        env.fake.push_fault(Fault::status(status, body));
        let out = env.run(&["token", &id]);
        assert_eq!(code(&out), 4, "{}", text(&out.stderr));
        let err = text(&out.stderr);
        let last = err.trim_end().lines().last().unwrap();
        assert!(last.contains(reason) && last.contains("import"), "{last}");
    }
    // An operator's forced refresh revives a dead credential when upstream
    // accepts the token again.
    let id = "p1";
    let g = warden.refresh(id, true).expect("forced refresh revives");
    assert_eq!(warden.get(id).unwrap().status.state, State::Valid);
    assert_eq!(
        g.access_token.expose(),
        env.fake.family_state(id).current_access_token
    );
}

/// Invariant 7, transient: each kind backs off with a clear error, commits
/// nothing from the failed answer, and the old token keeps being served
/// while usable (stale-while-revalidate).
fn transient_errors_back_off_and_commit_nothing(b: Backend) {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 0.5,
            lease_ttl: 2.0,
            ..Tuning::default()
        },
        b,
    ) else {
        return;
    };
    let warden = env.warden();
    let faults = [
        ("http_503", Fault::status(503, "{}")),
        ("http_500", Fault::status(500, "oops")),
        ("http_429", Fault::retry_after(429, "{}", "7")),
        ("bad_json", Fault::Garbage),
        ("timeout", Fault::HangBefore(Duration::from_secs(2))),
        ("dropped", Fault::Drop),
        (
            "unknown_400",
            Fault::status(400, r#"{"error":"slow_down_please"}"#),
        ),
        ("no_token", Fault::status(200, r#"{"token_type":"Bearer"}"#)),
    ];
    for (i, (name, fault)) in faults.into_iter().enumerate() {
        // One credential whose token is gone, one still usable.
        let gone = format!("t{i}-gone");
        let usable = format!("t{i}-usable");
        env.login(&gone, -10);
        let kept = env.login(&usable, 60);
        let before_gone = warden.get(&gone).unwrap();

        env.fake.push_fault(fault.clone());
        let t0 = now();
        let err = warden.token(&gone, Duration::ZERO).unwrap_err();
        let Error::Unavailable { retry_after_s, .. } = err else {
            panic!("{name}: expected unavailable, got {err:?}");
        };
        assert!(retry_after_s >= 1, "{name}");
        let row = warden.get(&gone).unwrap();
        assert_eq!(
            row.access_token, before_gone.access_token,
            "{name}: nothing committed"
        );
        assert_eq!(row.refresh_token, before_gone.refresh_token, "{name}");
        assert_eq!(row.status.failures, 1, "{name}");
        assert_ne!(row.status.state, State::Dead, "{name}");
        let next = row.status.next_attempt_at_ms.unwrap() / 1000;
        assert!(next >= t0 + 5, "{name}: backoff of at least 5 s");
        if name == "http_429" {
            assert!(next >= t0 + 7, "{name}: Retry-After honoured");
        }
        assert!(!row.last_error.unwrap().code.is_empty());
        // During the backoff, no upstream traffic.
        let before = env.fake.stats().token_requests;
        let out = env.run(&["token", &gone]);
        assert_eq!(code(&out), 5, "{name}: {}", text(&out.stderr));
        assert_eq!(
            env.fake.stats().token_requests,
            before,
            "{name}: backoff respected"
        );

        env.fake.push_fault(fault);
        let g = warden
            .token(&usable, Duration::ZERO)
            .expect("stale token served");
        assert_eq!(g.access_token.expose(), kept.access_token, "{name}");
    }
}

/// Invariant 8: every state change leaves an event row, with no secret.
fn every_change_leaves_an_event_without_secrets(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let g = env.login("e", 60);
    let warden = env.warden();
    let fresh = warden.token("e", Duration::ZERO).unwrap();
    warden.reject("e", fresh.access_token.expose()).unwrap();
    env.fake
        .push_fault(Fault::status(400, r#"{"error":"invalid_grant"}"#));
    let _ = warden.refresh("e", false);
    warden.delete("e").unwrap();
    let events = warden.events("e", None).unwrap();
    let path: Vec<(Option<&str>, &str)> = events
        .iter()
        .map(|e| (e.from.as_deref(), e.to.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            (None, "valid"),
            (Some("valid"), "refreshing"),
            (Some("refreshing"), "valid"),
            (Some("valid"), "rejected"),
            (Some("rejected"), "refreshing"),
            (Some("refreshing"), "valid"),
            (Some("valid"), "refreshing"),
            (Some("refreshing"), "dead"),
            (Some("dead"), "deleted"),
        ]
    );
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(events
        .iter()
        .all(|e| !e.actor.is_empty() && !e.reason.is_empty()));
    let out = env.run(&["events", "e", "--json"]);
    assert_eq!(code(&out), 0);
    let all = text(&out.stdout);
    assert_eq!(json(&out)["events"].as_array().unwrap().len(), events.len());
    for secret in env.fake.family_state("e").issued_refresh_tokens {
        assert!(!all.contains(&secret));
    }
    assert!(!all.contains(&g.access_token) && !all.contains(&g.id_token));
}

/// Invariant 9: no secret in any CLI output or error, at any log level;
/// the database file is created 0600.
fn no_secret_leaves_through_the_cli(b: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = Env::on(b) else { return };
    let g = env.login("s", 60);
    if b == Backend::Sqlite {
        let mode = std::fs::metadata(&env.db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let mut outputs = vec![];
    let mut run = |args: &[&str]| {
        let out = env
            .cmd()
            .env("TOKENWARDEN_LOG", "trace")
            .args(args)
            .output()
            .unwrap();
        outputs.push((args.join(" "), text(&out.stdout), text(&out.stderr)));
        out
    };
    run(&["list"]);
    run(&["list", "--json"]);
    run(&["show", "s"]);
    run(&["show", "s", "--json"]);
    let fresh = json(&run(&["token", "s", "--json"]));
    let fresh_token = fresh["access_token"].as_str().unwrap().to_owned();
    run(&["events", "s", "--json"]);
    env.fake.push_fault(Fault::status(500, "{}"));
    run(&["refresh", "s"]);
    env.fake.push_fault(Fault::status(401, OPENAI_REUSE_BODY));
    run(&["refresh", "s"]);
    run(&["show", "s"]);
    run(&["token", "s"]);

    let family = env.fake.family_state("s");
    let mut secrets: Vec<String> = family.issued_refresh_tokens.clone();
    secrets.push(g.id_token.clone());
    secrets.push(g.access_token.clone());
    for (args, stdout, stderr) in &outputs {
        for s in &secrets {
            assert!(
                !stdout.contains(s.as_str()),
                "`{args}` printed a secret on stdout"
            );
            assert!(
                !stderr.contains(s.as_str()),
                "`{args}` printed a secret on stderr"
            );
        }
        if !args.starts_with("token") {
            assert!(
                !stdout.contains(&fresh_token),
                "`{args}` printed the access token"
            );
        }
    }
}

//! `Warden::token` answers repeated calls from decoded rows kept in memory,
//! but only while the database's WAL-index stamp proves that nothing was
//! committed since the row was read. These tests warm the cache, check that
//! it is in play, change the credential from another process, another
//! thread or another connection, and check that the stale token is never
//! served — and that the state machine still judges cached rows by the
//! current clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Fault;
use crate::common::tw::{code, now, text, Env};
use serde_json::Value;
use tokenwarden::{Error, Warden};

const ZERO: Duration = Duration::ZERO;

/// Calls give the same token, the last from the cache. (A warden's first
/// call ever reads the row the ordinary way and caches nothing.)
fn warm(w: &Warden, id: &str) -> String {
    let _ = w.token(id, ZERO);
    let first = w.token(id, ZERO).expect("token");
    assert!(w.token_cached(id), "the row is cached after a call");
    let second = w.token(id, ZERO).expect("token");
    assert_eq!(first.access_token, second.access_token);
    assert!(w.token_cached(id), "reads leave the cache in play");
    second.access_token.expose().to_owned()
}

fn stdout_token(out: &std::process::Output) -> String {
    assert_eq!(code(out), 0, "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Another process's reject voids this warden's cached row at once: the new token is served, then cached in turn.
#[test]
fn a_reject_from_another_process_is_seen_at_once() {
    let env = Env::new();
    let g = env.login("r", 3600);
    let w = env.warden();
    let t1 = warm(&w, "r");
    assert_eq!(t1, g.access_token);

    let t2 = stdout_token(&env.run(&["reject", "r", "--token", &t1]));
    assert_ne!(t2, t1);
    assert!(
        !w.token_cached("r"),
        "another process's commit voids the cache"
    );
    let got = w.token("r", ZERO).expect("token");
    assert_eq!(got.access_token.expose(), t2);
    assert_eq!(t2, env.fake.family_state("r").current_access_token);
    // And the new row is cached in turn.
    assert_eq!(warm(&w, "r"), t2);
}

/// A token rejected by another process whose refresh then failed is never served from the cache (unavailable instead).
#[test]
fn a_rejected_token_whose_refresh_failed_is_not_served_from_the_cache() {
    let env = Env::new();
    env.login("rf", 3600);
    let w = env.warden();
    let t1 = warm(&w, "rf");
    // The other process records the rejection; its refresh then fails, so
    // the row stays `rejected` (backing off) and no token is usable.
    env.fake
        .push_fault(Fault::status(503, r#"{"error":"unavailable"}"#));
    let out = env.run(&["reject", "rf", "--token", &t1]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    match w.token("rf", ZERO) {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!w.token_cached("rf"));
}

/// Another process's refresh is seen at once: the cache serves the new token, not the old.
#[test]
fn a_refresh_from_another_process_is_seen_at_once() {
    let env = Env::new();
    env.login("f", 3600);
    let w = env.warden();
    let t1 = warm(&w, "f");
    let t2 = stdout_token(&env.run(&["refresh", "f"]));
    assert_ne!(t2, t1);
    assert_eq!(w.token("f", ZERO).expect("token").access_token.expose(), t2);
}

/// An `import --replace` of a new login by another process is seen at once: its token is served, not the cached one.
#[test]
fn a_re_import_is_seen_at_once() {
    let env = Env::new();
    env.login("i", 3600);
    let w = env.warden();
    let t1 = warm(&w, "i");
    // A new login of the same account, imported over the old one.
    let g2 = env.fake.new_family("i");
    let mut record = g2.import_json("i", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 3600);
    let path = env.dir.path().join("again.json");
    std::fs::write(&path, record.to_string()).unwrap();
    let out = env.run(&["import", path.to_str().unwrap(), "--replace"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = w.token("i", ZERO).expect("token");
    assert_ne!(got.access_token.expose(), t1);
    assert_eq!(got.access_token.expose(), g2.access_token);
}

/// Another process's delete is seen at once: the cached row answers `NotFound`, no stale token.
#[test]
fn a_delete_is_seen_at_once() {
    let env = Env::new();
    env.login("d", 3600);
    let w = env.warden();
    warm(&w, "d");
    let out = env.run(&["delete", "d"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    match w.token("d", ZERO) {
        Err(Error::NotFound(id)) => assert_eq!(id, "d"),
        other => panic!("expected not found, got {other:?}"),
    }
}

/// A reject by another thread of this process voids the shared cache, even when its refresh fails.
#[test]
fn an_in_process_reject_from_another_thread_is_seen_at_once() {
    let env = Env::new();
    env.login("t", 3600);
    let w = Arc::new(env.warden());
    let t1 = warm(&w, "t");
    // The rejecting thread's refresh fails: the row stays rejected.
    env.fake
        .push_fault(Fault::status(503, r#"{"error":"unavailable"}"#));
    let (w2, rejected) = (w.clone(), t1.clone());
    let answer = thread::spawn(move || w2.reject("t", &rejected))
        .join()
        .unwrap();
    assert!(
        matches!(answer, Err(Error::Unavailable { .. })),
        "{answer:?}"
    );
    assert!(!w.token_cached("t"));
    match w.token("t", ZERO) {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// A thread reads tokens in a tight loop while another thread rejects the
/// current one: every read that starts after the reject returned gets the
/// new token, never the rejected one.
#[test]
fn no_read_after_a_reject_returns_the_rejected_token() {
    let env = Env::new();
    env.login("h", 3600);
    let w = Arc::new(env.warden());
    let t1 = warm(&w, "h");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (w, done, t1) = (w.clone(), done.clone(), t1.clone());
        thread::spawn(move || {
            let mut after = 0;
            let end = Instant::now() + Duration::from_secs(20);
            while after < 2000 && Instant::now() < end {
                let rejected_before = done.load(Ordering::SeqCst);
                let got = w.token("h", ZERO).expect("token");
                if rejected_before {
                    assert_ne!(got.access_token.expose(), t1, "stale token served");
                    after += 1;
                }
            }
            after
        })
    };
    thread::sleep(Duration::from_millis(50));
    let fresh = w.reject("h", &t1).expect("reject");
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_ne!(fresh.access_token.expose(), t1);
}

/// A commit by any connection counts, not only tokenwarden's: here a plain
/// SQLite connection rewrites the token.
#[test]
fn a_commit_by_any_sqlite_connection_is_seen_at_once() {
    let env = Env::new();
    env.login("s", 3600);
    let w = env.warden();
    warm(&w, "s");
    let c = rusqlite::Connection::open(&env.db).unwrap();
    c.execute(
        "UPDATE credentials SET access_token = 'written-elsewhere', version = version + 1 \
         WHERE id = 's'",
        [],
    )
    .unwrap();
    assert!(!w.token_cached("s"));
    let got = w.token("s", ZERO).expect("token");
    assert_eq!(got.access_token.expose(), "written-elsewhere");
}

/// The state machine judges a cached row by the current clock: once the
/// token expires (or no longer lives long enough for the caller) it is
/// refreshed, not served from memory.
#[test]
fn cached_rows_are_judged_by_the_current_clock() {
    let env = Env::new();
    env.login("c", 3);
    let mut config = env.config();
    config.policy.refresh_ahead_ms = 0;
    let w = Warden::open(&env.db, config).expect("open");
    let t1 = warm(&w, "c");
    // Asking for more life than the cached token has refreshes it.
    let longer = w.token("c", Duration::from_secs(600)).expect("token");
    assert_ne!(longer.access_token.expose(), t1);
    let t2 = warm(&w, "c");
    assert_eq!(t2, longer.access_token.expose());
    assert_eq!(env.fake.stats().token_requests, 1);
    // Fresh tokens from the fake live an hour; the first one lived 3 s.
    // Re-import a short-lived one and let it expire while cached.
    let g = env.fake.new_family("c2");
    let mut record = g.import_json("c2", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 2);
    let path = env.dir.path().join("short.json");
    std::fs::write(&path, record.to_string()).unwrap();
    assert_eq!(code(&env.run(&["import", path.to_str().unwrap()])), 0);
    let short = warm(&w, "c2");
    assert_eq!(short, g.access_token);
    thread::sleep(Duration::from_millis(2100));
    let after = w.token("c2", ZERO).expect("token");
    assert_ne!(
        after.access_token.expose(),
        short,
        "an expired token is never served"
    );
}

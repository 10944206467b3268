//! Hostile review of ea569c6: `Refresher::shared_read` refactored (the
//! running read's start as an `Option`, the ended-reads count only in
//! `reads_ended`) and the console's reject form taking its fingerprint from
//! the one `Warden::detail` read. Holes are `#[ignore = "HOLE: …"]`.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenwarden::Error;

use crate::common::fake_oauth::{jwt_payload, Fault};
use crate::common::http::Client;
use crate::common::tw::{now, text, Backend, Env};
use crate::ui::{reject_now, Console, ADMIN, READ};

on_both_backends!(
    attack5e_a_replace_during_a_slow_refresh_is_seen_by_every_later_call,
    attack5e_an_old_backup_reimported_after_delete_never_brings_back_a_rejected_token,
    attack5e_a_crowd_waiting_behind_a_killed_refresher_gets_one_takeover,
    attack5e_stale_console_reject_forms_reject_nothing_once_the_token_changed,
);

/// The `sub` claim of a fake access token (its family's user).
fn sub(token: &str) -> String {
    jwt_payload(token).map_or_else(String::new, |p| p["sub"].to_string())
}

/// Writes `record` to a file of the env and imports it with `extra` flags.
fn import(env: &Env, name: &str, record: &Value, extra: &[&str]) -> std::process::Output {
    let path = env.dir.path().join(name);
    std::fs::write(&path, record.to_string()).unwrap();
    let mut args = vec!["import", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.run(&args)
}

/// A crowd of 12 threads of one warden asks for a token in a loop while
/// rejects keep a slow refresh (300 ms upstream, over the shared reads'
/// patience) in flight and `import --replace` puts a new login under the
/// same id, several times: once a replace has returned, no call that began
/// after it is served a token of the login replaced, and no refresh token
/// is presented after it was rotated away.
fn attack5e_a_replace_during_a_slow_refresh_is_seen_by_every_later_call(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let first = env.login("rp", 3600);
    env.fake.set_latency(Duration::from_millis(300));
    let warden = Arc::new(env.warden());
    let gone: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let (w, gone, stop) = (warden.clone(), gone.clone(), stop.clone());
            thread::spawn(move || {
                let mut served = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let before = gone.lock().unwrap().clone();
                    match w.token("rp", Duration::ZERO) {
                        Ok(g) => {
                            let s = sub(g.access_token.expose());
                            assert!(
                                !before.contains(&s),
                                "a token of a login replaced before the call was served"
                            );
                            served += 1;
                        }
                        Err(Error::Unavailable { .. } | Error::NotFound(_)) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                served
            })
        })
        .collect();
    let rejecter = env.warden();
    let mut current = first.access_token.clone();
    for round in 0..4 {
        // A refresh in flight: reject the current token from another
        // thread, which then waits on the slow upstream.
        let r = {
            let (w, t) = (Arc::new(env.warden()), current.clone());
            thread::spawn(move || {
                let _ = w.reject_within("rp", &t, Duration::from_secs(5));
            })
        };
        thread::sleep(Duration::from_millis(100));
        let grant = env.fake.new_family(&format!("rp-{round}"));
        let mut record = grant.import_json("rp", "codex", &env.fake.token_url());
        record["expires_at"] = Value::from(now() + 3600);
        let out = import(&env, &format!("rp-{round}.json"), &record, &["--replace"]);
        if out.status.success() {
            gone.lock().unwrap().insert(sub(&current));
            current = grant.access_token.clone();
        } else {
            // Refused during the lease: wait for it and replace then.
            r.join().unwrap();
            let out = import(&env, &format!("rp-{round}b.json"), &record, &["--replace"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            gone.lock().unwrap().insert(sub(&current));
            current = grant.access_token.clone();
            continue;
        }
        r.join().unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    let served: usize = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 0, "the readers were served");
    let last = rejecter.token("rp", Duration::ZERO).unwrap();
    assert_eq!(sub(last.access_token.expose()), sub(&current));
    env.fake.assert_no_reuse_after_success();
}

/// [`a_rejected_token_held_under_a_second_id_is_not_served_there`] on SQLite.
#[test]
#[ignore = "HOLE: an access token held under two ids (two refresh tokens) and rejected under one is still served under the other"]
fn attack5e_sqlite_a_rejected_token_held_under_a_second_id_is_not_served_there() {
    a_rejected_token_held_under_a_second_id_is_not_served_there(Backend::Sqlite);
}

/// [`a_rejected_token_held_under_a_second_id_is_not_served_there`] on PostgreSQL.
#[test]
#[ignore = "HOLE: an access token held under two ids (two refresh tokens) and rejected under one is still served under the other"]
fn attack5e_postgres_a_rejected_token_held_under_a_second_id_is_not_served_there() {
    a_rejected_token_held_under_a_second_id_is_not_served_there(Backend::Postgres);
}

/// Two logins whose access tokens happen to be one (two ids, two refresh
/// tokens): upstream refuses it and it is reported rejected under the
/// first id. The second id must not serve that very token afterwards.
fn a_rejected_token_held_under_a_second_id_is_not_served_there(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let a = env.fake.new_family("two-a");
    let bb = env.fake.new_family("two-b");
    let mut ra = a.import_json("ida", "codex", &env.fake.token_url());
    ra["expires_at"] = Value::from(now() + 3600);
    let mut rb = bb.import_json("idb", "codex", &env.fake.token_url());
    rb["expires_at"] = Value::from(now() + 3600);
    rb["access_token"] = Value::from(a.access_token.clone());
    let out = import(&env, "ida.json", &ra, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = import(&env, "idb.json", &rb, &[]);
    if !out.status.success() {
        // Refused: one token is never under two ids. The guard holds.
        return;
    }
    let w = env.warden();
    let fresh = w.reject("ida", &a.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), a.access_token);
    let g = w.token("idb", Duration::ZERO).unwrap();
    assert_ne!(
        g.access_token.expose(),
        a.access_token,
        "idb serves the access token reported rejected under ida"
    );
}

/// A token is reported rejected while a crowd reads; the credential is
/// deleted and the backup taken before the reject is imported again: the
/// rejected access token is left out, never served.
fn attack5e_an_old_backup_reimported_after_delete_never_brings_back_a_rejected_token(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let grant = env.fake.new_family("bk");
    // A provider that does not rotate: the backup's refresh token stays
    // good, so only the rejected access token stands in the way.
    env.fake.set_rotation(false);
    let mut record = grant.import_json("bk", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 3600);
    let out = import(&env, "bk.json", &record, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warden = Arc::new(env.warden());
    let rejected: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (w, rejected, stop) = (warden.clone(), rejected.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let before = rejected.lock().unwrap().clone();
                    match w.token("bk", Duration::ZERO) {
                        Ok(g) => assert!(
                            !before.contains(g.access_token.expose()),
                            "a token rejected before the call was served"
                        ),
                        Err(Error::Unavailable { .. } | Error::NotFound(_)) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
            })
        })
        .collect();
    let w = env.warden();
    w.reject("bk", &grant.access_token).unwrap();
    rejected.lock().unwrap().insert(grant.access_token.clone());
    for round in 0..3 {
        let out = env.run(&["delete", "bk"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = import(&env, &format!("bk-{round}.json"), &record, &[]);
        // Refused or imported without its access token: either way the
        // rejected one must not come back.
        let _ = out;
        thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    if let Ok(g) = w.token("bk", Duration::ZERO) {
        assert_ne!(g.access_token.expose(), grant.access_token);
    }
}

/// `tokenwarden token` claims the lease and hangs upstream (the request not
/// processed) and is killed with SIGKILL while 12 threads of this process
/// wait on the row (in shared reads, on PostgreSQL): after the lease one
/// of them takes over, every thread gets the family's current token, one
/// refresh goes upstream besides the killed one, and no refresh token is
/// presented twice.
fn attack5e_a_crowd_waiting_behind_a_killed_refresher_gets_one_takeover(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    past_restart_grace(&env);
    env.login("kc", 60);
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(10)));
    let mut child = env
        .cmd()
        .args(["token", "kc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while env.fake.stats().token_requests == 0 {
        assert!(Instant::now() < until, "child never reached upstream");
        thread::sleep(Duration::from_millis(5));
    }
    let warden = Arc::new(env.warden());
    let crowd: Vec<_> = (0..12)
        .map(|_| {
            let w = warden.clone();
            thread::spawn(move || w.token("kc", Duration::ZERO))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let got: Vec<_> = crowd.into_iter().map(|t| t.join().unwrap()).collect();
    let current = env.fake.family_state("kc").current_access_token;
    for g in got {
        let g = g.expect("served after the takeover");
        assert_eq!(g.access_token.expose(), current);
    }
    assert_eq!(
        env.fake.stats().token_requests,
        2,
        "the killed request and one takeover"
    );
    env.fake.assert_no_reuse_after_success();
}

/// The console's reject form posted after the token changed: a page read
/// before a reject by another warden, and a page read while a slow refresh
/// was in flight, both posted once the refresh committed, reject nothing:
/// the token served stays, nothing more goes upstream.
fn attack5e_stale_console_reject_forms_reject_nothing_once_the_token_changed(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let c = Console::serve_keys(
        env,
        &[
            ("TOKENWARDEN_API_KEY", ADMIN),
            ("TOKENWARDEN_READ_API_KEY", READ),
        ],
    );
    let first = c.env.login("acct", 3600);
    let (s, _) = c.sign_in(ADMIN);
    let served = || {
        Client::new(c.addr, Some(ADMIN))
            .get("/v1/credentials/acct/token")
            .expect(200)
            .json()["access_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    };
    let stale = reject_now(&c, &s, "acct");
    let w = Arc::new(c.env.warden());
    let t1 = w.reject("acct", &first.access_token).unwrap();
    c.env.fake.set_latency(Duration::from_millis(600));
    let r = {
        let (w, t) = (w.clone(), t1.access_token.expose().to_owned());
        thread::spawn(move || w.reject("acct", &t).unwrap())
    };
    thread::sleep(Duration::from_millis(150));
    let in_flight = reject_now(&c, &s, "acct");
    let t2 = r.join().unwrap();
    c.env.fake.set_latency(Duration::ZERO);
    assert_eq!(served(), t2.access_token.expose());
    let upstream = c.env.fake.token_requests().len();
    for field in [&stale, &in_flight] {
        let a = c.post(
            "/ui/credentials/acct/reject",
            Some(&s.cookie),
            &format!("csrf={}{field}", s.csrf),
        );
        assert_eq!(a.status, 303);
    }
    assert_eq!(
        c.env.fake.token_requests().len(),
        upstream,
        "a stale form sent a refresh upstream"
    );
    assert_eq!(
        served(),
        t2.access_token.expose(),
        "a stale form rejected the new token"
    );
    c.env.fake.assert_no_reuse_after_success();
}

/// On PostgreSQL, waits until the server has run for 11 s: no lease is
/// taken over in its first 10 (`RESTART_GRACE_MS`), and the tests' cluster
/// may have just started.
fn past_restart_grace(env: &Env) {
    if env.backend != Backend::Postgres {
        return;
    }
    let mut db = crate::common::pg::client(env.pg_url());
    let age: f64 = db
        .query_one(
            "SELECT extract(epoch from clock_timestamp() - pg_postmaster_start_time())::float8",
            &[],
        )
        .unwrap()
        .get(0);
    if age < 11.0 {
        thread::sleep(Duration::from_secs_f64(11.0 - age));
    }
}

/// `record_reject` commits the reject, then remembers the rejected access
/// token in a second write, "best effort". When that second write fails
/// (a full disk, an I/O error, SIGKILL between the two: simulated by a
/// trigger refusing it), a delete and a re-import of the backup taken
/// before the reject (a provider that does not rotate: its refresh token
/// is still good) serve the very token reported rejected.
///
/// (Mended: `record_reject` remembers the token before it records the
/// rejection, and a reject that cannot remember it fails — so no rejection
/// stands without it. The test now accepts that failure, told to the
/// caller with nothing recorded as rejected, beside the old success path.)
#[test]
fn attack5e_a_failed_remember_lets_an_old_backup_serve_a_rejected_token() {
    let env = Env::new();
    env.fake.set_rotation(false);
    let grant = env.fake.new_family("rj");
    let mut record = grant.import_json("rj", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() + 3600);
    let out = import(&env, "rj.json", &record, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = rusqlite::Connection::open(&env.db).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fault_remember BEFORE INSERT ON spent_tokens \
         WHEN NEW.reason = 'rejected access token' \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();
    let w = env.warden();
    // The reject either fails (told, nothing recorded as rejected), or it
    // succeeded and must then hold after a delete + old backup.
    let rejected = match w.reject("rj", &grant.access_token) {
        Ok(fresh) => {
            assert_ne!(fresh.access_token.expose(), grant.access_token);
            true
        }
        Err(e) => {
            let row = w.get("rj").unwrap();
            assert_ne!(
                row.status.state,
                tokenwarden::state::State::Rejected,
                "a failed reject left the row rejected: {e}"
            );
            false
        }
    };
    db.execute_batch("DROP TRIGGER fault_remember;").unwrap();
    if !rejected {
        return;
    }
    drop(w);
    let out = env.run(&["delete", "rj"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = import(&env, "rj-backup.json", &record, &[]);
    if out.status.success() {
        let g = env.warden().token("rj", Duration::ZERO).unwrap();
        assert_ne!(
            g.access_token.expose(),
            grant.access_token,
            "the access token reported rejected is served again"
        );
    }
}

/// A lying upstream answers the refresh a reject starts with the very
/// access token reported rejected (and a new refresh token): the warden
/// must not serve it again as the fresh token.
fn a_refresh_answering_the_rejected_token_again_is_not_served(b: Backend) {
    use crate::common::scripted::{answer, import_at, Scripted};
    let Some(env) = Env::on(b) else { return };
    let body = serde_json::json!({
        "access_token": "at-ly-0",
        "refresh_token": "rt-ly-1",
        "expires_in": 3600,
        "token_type": "Bearer",
    })
    .to_string();
    let up = Scripted::start(vec![Box::new(move |_, c| answer(c, "200 OK", &body))]);
    import_at(&env, "ly", "rt-ly-0", 3600, &up.url());
    let w = env.warden();
    let after = w.reject("ly", "at-ly-0");
    if let Ok(g) = after {
        assert_ne!(
            g.access_token.expose(),
            "at-ly-0",
            "the reject answered the rejected token as the fresh one"
        );
    }
    if let Ok(g) = w.token("ly", Duration::ZERO) {
        assert_ne!(
            g.access_token.expose(),
            "at-ly-0",
            "the rejected token is served again"
        );
    }
    assert_eq!(up.presented(), vec!["rt-ly-0".to_owned()]);
}

#[test]
#[ignore = "HOLE: a refresh (lying upstream) answering the access token just reported rejected is committed and served as the fresh token"]
fn attack5e_sqlite_a_refresh_answering_the_rejected_token_again_is_not_served() {
    a_refresh_answering_the_rejected_token_again_is_not_served(Backend::Sqlite);
}

#[test]
#[ignore = "HOLE: a refresh (lying upstream) answering the access token just reported rejected is committed and served as the fresh token"]
fn attack5e_postgres_a_refresh_answering_the_rejected_token_again_is_not_served() {
    a_refresh_answering_the_rejected_token_again_is_not_served(Backend::Postgres);
}

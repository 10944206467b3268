//! Hostile review of issue 15 (pools, account-level cooldowns, the
//! notifications outbox; merged at e14fc48). Each test is one attack on a
//! promise of DESIGN.md or of the issue, against the real binary or the
//! library on real SQLite files, the fake OAuth server and real HTTP
//! receivers on loopback. A test marked `#[ignore = "HOLE: …"]` fails on
//! the main it was written against: the source is left as it is and the
//! hole is reported. The others pass and stay as guards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::{free_port, parse_raw, Client, InProcess, Served};
use crate::common::tw::{code, json, text, Env, Tuning};
use tokenwarden::http::{ApiKeys, Server, ServerOptions};
use tokenwarden::Error;

/// Wall-clock milliseconds.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Logs `id` in (token valid `expires_in` s) and puts it in `pool`.
fn member(env: &Env, id: &str, expires_in: i64, pool: &str) {
    env.login(id, expires_in);
    let out = env.run(&["pool", "add", id, pool]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Kills `id`'s login upstream (its family is `account`) and refreshes
/// it: it goes dead, with a `dead` notification in the outbox.
fn kill(env: &Env, id: &str, account: &str) {
    env.fake.revoke_family(account);
    let out = env.run(&["refresh", id]);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
}

/// The outbox as `notifications --json` lists it.
fn outbox(env: &Env) -> Vec<Value> {
    let out = env.run(&["notifications", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    json(&out)["notifications"].as_array().unwrap().clone()
}

/// One POST a [`Hook`] got: its headers (names lower-cased) and body.
type Got = (HashMap<String, String>, String);

/// A webhook receiver on loopback answering 200 to every POST and
/// keeping what it got (headers lower-cased, body).
struct Hook {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let g = g.clone();
                std::thread::spawn(move || hook_one(stream, &g));
            }
        });
        Hook { addr, got, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn hook_one(stream: TcpStream, got: &Mutex<Vec<Got>>) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    got.lock()
        .unwrap()
        .push((headers, String::from_utf8_lossy(&body).into_owned()));
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// An in-process server on `env`'s database with an admin key `admin`
/// and a read-only key `reader` (from a key file, as `--api-key-file`).
fn server_with_reader(env: &Env) -> Server {
    let file = env.dir.path().join("keys");
    std::fs::write(&file, "admin:admin-key-15\nread:reader-key-15\n").unwrap();
    let options = ServerOptions {
        threads: 4,
        keys: ApiKeys::from_file(&file).unwrap(),
        ..ServerOptions::default()
    };
    Server::start(Arc::new(env.warden()), "127.0.0.1:0", options).unwrap()
}

// ---------------------------------------------------------------------
// Cooldowns and who may change them
// ---------------------------------------------------------------------

/// A read-only key may set a cooldown but "not lift one" (README, and
/// the 403 on DELETE). Setting a cooldown replaces the current one,
/// whatever its end: a read-only key that POSTs `{"seconds":0.001}` over
/// an admin's one-hour cooldown has lifted it, and the pool hands the
/// member out again at once.
#[test]
#[ignore = "HOLE: a read-only key lifts an admin's cooldown by setting a 1 ms one over it"]
fn a_read_only_key_cannot_lift_a_cooldown_by_shortening_it() {
    let env = Env::new();
    member(&env, "ro1", 3600, "team");
    let srv = server_with_reader(&env);
    let admin = Client::new(srv.addr(), Some("admin-key-15"));
    let reader = admin.with_key(Some("reader-key-15"));
    admin
        .post(
            "/v1/credentials/ro1/cooldown",
            r#"{"seconds":3600,"reason":"usage_limit_reached"}"#,
        )
        .expect(200);
    assert_eq!(
        reader.get("/v1/pools/team/token").expect(503).code(),
        "pool_unavailable"
    );
    // Lifting is refused to the reader...
    reader.delete("/v1/credentials/ro1/cooldown").expect(403);
    // ...but shortening is not.
    let shortened = reader
        .post("/v1/credentials/ro1/cooldown", r#"{"seconds":0.001}"#)
        .status;
    std::thread::sleep(Duration::from_millis(50));
    let after = reader.get("/v1/pools/team/token");
    assert_eq!(
        after.status, 503,
        "the reader's POST answered {shortened}, and the admin's one-hour cooldown is gone: {}",
        after.body
    );
}

/// A cooldown committed while the pool is refreshing the member it
/// picked is ignored: the pick is made before the refresh, the token
/// handed out after it, and nothing looks at the cooldown in between.
/// The caller receives, a second and more after the cooldown was
/// committed, the token of a member cooling down for an hour.
#[test]
#[ignore = "HOLE: a cooldown committed during the picked member's refresh is not honoured: its token is handed out"]
fn a_cooldown_set_while_the_picked_member_refreshes_is_honoured() {
    let env = Env::with(Tuning {
        request_timeout: 6.0,
        attempts: 1,
        lease_ttl: 9.0,
        backoff_min: 5.0,
    });
    // Expired: the pool's first caller has to refresh it.
    member(&env, "cr1", -60, "team");
    env.fake.set_latency(Duration::from_millis(2500));
    let w = Arc::new(env.warden());
    let asker = {
        let w = w.clone();
        std::thread::spawn(move || {
            let r = w.pool_token_within("team", Duration::ZERO, None, Duration::from_secs(20));
            (r, wall_ms())
        })
    };
    let start = Instant::now();
    while env.fake.token_requests().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no refresh");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The refresh is in flight: the caller (a 429 elsewhere) cools the
    // account down for an hour.
    let out = env.run(&["cooldown", "cr1", "--seconds", "3600", "--reason", "429"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cooled_at = wall_ms();
    let (result, answered_at) = asker.join().unwrap();
    match result {
        Ok(g) => panic!(
            "got {}'s token {} ms after its one-hour cooldown was committed",
            g.credential_id,
            answered_at - cooled_at
        ),
        Err(Error::PoolUnavailable { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}

/// `sweep` (and `serve`'s notifier) delete the cooldowns whose end has
/// passed *by their own wall clock*. A cron `sweep` on a box whose clock
/// is a day fast deletes a cooldown that still has an hour to run, and
/// from then on every correctly clocked process hands the member out.
#[test]
#[ignore = "HOLE: a sweep with its clock stepped forward deletes other processes' live cooldowns"]
fn a_sweep_with_a_fast_clock_leaves_live_cooldowns_alone() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the faketime package"
        );
        eprintln!("skipped: libfaketime not installed");
        return;
    }
    let env = Env::new();
    member(&env, "fc1", 3600, "team");
    let out = env.run(&["cooldown", "fc1", "--seconds", "3600", "--reason", "429"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(code(&env.run(&["token", "--pool", "team"])), 5);
    let out = env
        .cmd()
        .args(["sweep"])
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", "+1d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["token", "--pool", "team", "--json"]);
    assert_eq!(
        code(&out),
        5,
        "a correctly clocked caller got the member still cooling for ~1 h: {}",
        text(&out.stdout)
    );
}

/// The issue asks for *account-level* cooldowns ("cooldowns kept per
/// model while the whole account is exhausted" is the complaint). Two
/// logins of one ChatGPT account (two machines, two token families, one
/// `chatgpt_account_id`, one quota) in one pool: the caller that got 429
/// `usage_limit_reached` cools its member down, and the pool answers with
/// the other login of the same, exhausted account.
#[test]
#[ignore = "HOLE: a cooldown is per credential: the pool serves another login of the account that is cooling down"]
fn a_cooldown_covers_every_login_of_the_account() {
    let env = Env::new();
    for id in ["seat-laptop", "seat-desktop"] {
        // Both families belong to upstream account "acct-1".
        let g = env.fake.new_family("acct-1");
        let record = g.import_json(id, "codex", &env.fake.token_url());
        let file = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&file, record.to_string()).unwrap();
        let out = env.run(&["import", file.to_str().unwrap(), "--pool", "team"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = env.run(&["token", "--pool", "team", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = json(&out);
    assert_eq!(first["account_id"], "acct-1");
    let id = first["credential_id"].as_str().unwrap().to_owned();
    let out = env.run(&[
        "cooldown",
        &id,
        "--seconds",
        "3600",
        "--reason",
        "usage_limit_reached",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["token", "--pool", "team", "--json"]);
    assert_eq!(
        code(&out),
        5,
        "the account acct-1 is cooling down, yet the pool answered {}",
        text(&out.stdout)
    );
}

/// Bad cooldown bodies and flags: 400 / exit 2 with nothing set, never a
/// panic — NaN, 1e309, negative, an `until` in the past or beyond a
/// year, a float `until`, a huge reason, a body over 1 MiB.
#[test]
fn bad_cooldown_bodies_set_nothing() {
    let env = Env::new();
    member(&env, "bc1", 3600, "team");
    let srv = InProcess::start(&env, &["k"], 2);
    let c = &srv.client;
    let now = wall_ms() / 1000;
    let long_reason = "r".repeat(201);
    let bodies = [
        "{\"seconds\": NaN}".to_owned(),
        "{\"seconds\": 1e309}".to_owned(),
        "{\"seconds\": -5}".to_owned(),
        "{\"seconds\": 0}".to_owned(),
        "{\"seconds\": 1e300}".to_owned(),
        "{\"seconds\": \"60\"}".to_owned(),
        "{\"until\": 1e309}".to_owned(),
        format!("{{\"until\": {}}}", now - 10),
        format!("{{\"until\": {}.5}}", now + 100),
        format!("{{\"until\": {}}}", now + 400 * 86_400),
        "{\"until\": 9223372036854775807}".to_owned(),
        "{\"until\": -9223372036854775808}".to_owned(),
        "{\"until\": \"1969-12-31T23:59:59Z\"}".to_owned(),
        "{\"seconds\": 60, \"until\": \"2099-01-01T00:00:00Z\"}".to_owned(),
        format!("{{\"seconds\": 60, \"reason\": \"{long_reason}\"}}"),
        "{\"seconds\": 60, \"reason\": \"   \"}".to_owned(),
        "[60]".to_owned(),
        "".to_owned(),
    ];
    for b in &bodies {
        let a = c.post("/v1/credentials/bc1/cooldown", b);
        assert_eq!(a.status, 400, "{b}: {}", a.body);
    }
    let huge = format!(
        "{{\"seconds\": 60, \"reason\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    let a = c.post("/v1/credentials/bc1/cooldown", &huge);
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(
        c.get("/v1/credentials/bc1").expect(200).json()["cooldown"],
        Value::Null
    );
    // The CLI's flags.
    for args in [
        vec!["cooldown", "bc1", "--seconds", "NaN"],
        vec!["cooldown", "bc1", "--seconds", "-1"],
        vec!["cooldown", "bc1", "--seconds", "1e309"],
        vec!["cooldown", "bc1", "--until", "1"],
        vec!["cooldown", "bc1", "--until", "yesterday"],
        vec!["cooldown", "bc1"],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(code(&env.run(&["token", "--pool", "team"])), 0);
}

/// A lying quota snapshot (`reset_after_seconds` near i64::MAX, an
/// exhausted window) never crashes the quota fetch and never ends the
/// cooldown: the window is used up, whatever its reset says.
#[test]
#[ignore = "HOLE: a usage answer with a huge reset_after_seconds overflows (panic in debug, wraps to the past in release and clears the cooldown)"]
fn a_quota_snapshot_with_a_huge_reset_never_panics_nor_frees_the_member() {
    let env = Env::new();
    member(&env, "q1", 3600, "team");
    env.fake.set_codex_usage(
        200,
        json!({
            "plan_type": "plus",
            "rate_limit": {
                "allowed": false,
                "limit_reached": true,
                "primary_window": {"used_percent": 100, "limit_window_seconds": 18000,
                                   "reset_after_seconds": 1e19},
            }
        }),
    );
    let out = env.run(&["quota", "q1", "--refresh", "--json"]);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert_eq!(
        code(&env.run(&["token", "--pool", "team"])),
        5,
        "an exhausted member is not handed out"
    );
}

// ---------------------------------------------------------------------
// The pool's reject
// ---------------------------------------------------------------------

/// A reject through the pool names the wrong member (the caller mixed up
/// two answers): the token it reports refused belongs to another member.
/// The pool records nothing and answers with that very token — the one
/// the caller just said upstream refused.
#[test]
#[ignore = "HOLE: a pool reject naming another member re-serves the token reported refused"]
fn a_pool_reject_never_answers_with_the_token_reported_refused() {
    let env = Env::new();
    member(&env, "wa", 3600, "team");
    member(&env, "wb", 3600, "team");
    let w = env.warden();
    // Only wb is eligible: the answer can only be wb's.
    w.set_cooldown("wa", wall_ms() + 3_600_000, "429").unwrap();
    let tb = w
        .token("wb", Duration::ZERO)
        .unwrap()
        .access_token
        .expose()
        .to_owned();
    let srv = InProcess::start(&env, &["k"], 2);
    let body = json!({"credential_id": "wa", "access_token": tb}).to_string();
    let a = srv.client.post("/v1/pools/team/reject", &body);
    assert!(
        a.status != 200 || a.json()["access_token"] != tb.as_str(),
        "answered {} with the refused token again: {}",
        a.status,
        a.body
    );
}

/// A one-member pool whose member is rejected through the pool: the
/// single-credential reject answers with a fresh token (the member is
/// refreshed), the pool says 503 "every member needs a human" — and
/// keeps saying it to `token --pool` until a sweep happens to refresh
/// the member, although nothing needs a human: one refresh fixes it.
#[test]
#[ignore = "HOLE: a rejected member is never refreshed by the pool; an all-rejected pool is 503 'needs a human' until a sweep"]
fn a_pool_whose_member_was_rejected_answers_with_its_fresh_token() {
    let env = Env::new();
    member(&env, "rj1", 3600, "solo");
    let srv = InProcess::start(&env, &["k"], 2);
    let c = &srv.client;
    let t = c.get("/v1/pools/solo/token").expect(200).json();
    let token = t["access_token"].as_str().unwrap().to_owned();
    let body = json!({"credential_id": "rj1", "access_token": token}).to_string();
    let answer = c.post("/v1/pools/solo/reject", &body);
    let out = env.run(&["token", "--pool", "solo"]);
    assert!(
        answer.status == 200 && out.status.success(),
        "reject through the pool: {} {}; then token --pool: exit {:?} {}",
        answer.status,
        answer.body,
        out.status.code(),
        text(&out.stderr)
    );
    assert_ne!(answer.json()["access_token"], token.as_str());
}

/// A reject through the pool of the member's current token, then 16
/// threads and 2 processes asking the pool: nobody ever gets the
/// rejected token, and the rejected member is never the answer to the
/// reject itself.
#[test]
fn a_rejected_token_is_never_served_by_the_pool_again() {
    let env = Env::new();
    for id in ["ra", "rb", "rc"] {
        member(&env, id, 3600, "team");
    }
    let w = Arc::new(env.warden());
    let first = w.pool_token("team", Duration::ZERO, None).unwrap();
    let refused = first.access_token.expose().to_owned();
    let answer = w
        .pool_reject_within(
            "team",
            &first.credential_id,
            &refused,
            None,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_ne!(answer.access_token.expose(), refused);
    assert_ne!(answer.credential_id, first.credential_id);
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || {
                let sticky = format!("k{}", i % 4);
                (0..40)
                    .map(|_| {
                        w.pool_token("team", Duration::ZERO, Some(&sticky))
                            .unwrap()
                            .access_token
                            .expose()
                            .to_owned()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        for _ in 0..5 {
            let out = env.run(&["token", "--pool", "team", "--sticky", "k0"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            got.push(text(&out.stdout).trim().to_owned());
        }
    }
    for t in threads {
        got.extend(t.join().unwrap());
    }
    assert!(
        !got.iter().any(|t| t == &refused),
        "the rejected token again"
    );
}

// ---------------------------------------------------------------------
// Exactly once, through the pool
// ---------------------------------------------------------------------

/// What 64 threads and 4 processes asking a one-member pool at once got,
/// the member expired and its token endpoint slow (800 ms): the tokens,
/// and the errors of those turned away.
fn ask_an_expired_pool_at_once(env: &Env) -> (Vec<String>, Vec<String>) {
    member(env, "x1", -60, "one");
    env.fake.set_latency(Duration::from_millis(800));
    let w = Arc::new(env.warden());
    let go = Arc::new(std::sync::Barrier::new(65));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (w, go) = (w.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                let key = format!("s{i}");
                w.pool_token_within("one", Duration::ZERO, Some(&key), Duration::from_secs(20))
                    .map(|g| g.access_token.expose().to_owned())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let procs: Vec<_> = (0..4)
        .map(|_| {
            env.cmd()
                .args(["token", "--pool", "one"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    go.wait();
    let (mut tokens, mut errors) = (Vec::new(), Vec::new());
    for t in threads {
        match t.join().unwrap() {
            Ok(t) => tokens.push(t),
            Err(e) => errors.push(e),
        }
    }
    for p in procs {
        let out = p.wait_with_output().unwrap();
        match out.status.success() {
            true => tokens.push(text(&out.stdout).trim().to_owned()),
            false => {
                assert_eq!(code(&out), 5, "{}", text(&out.stderr));
                errors.push(text(&out.stderr));
            }
        }
    }
    (tokens, errors)
}

/// One expired member, 64 threads and 4 processes asking its pool at
/// once through a slow token endpoint: one refresh for the one need, every
/// caller served gets the same new token, no reuse.
#[test]
fn an_expired_member_is_refreshed_once_for_64_threads_and_4_processes() {
    let env = Env::with(Tuning {
        request_timeout: 6.0,
        attempts: 1,
        lease_ttl: 9.0,
        backoff_min: 5.0,
    });
    let (tokens, _) = ask_an_expired_pool_at_once(&env);
    assert_eq!(
        env.fake.token_requests().len(),
        1,
        "one refresh for one need"
    );
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| t == &tokens[0]), "one new token");
    env.fake.assert_single_flight();
    env.fake.assert_no_reuse_after_success();
}

/// The same crowd: `Warden::token` makes a caller that finds the member
/// refreshing wait for that refresh (DESIGN.md §4, step 6) — the pool
/// turns it away instead, with `pool_unavailable`, "every member needs a
/// human" and no retry time (HTTP: `Retry-After: 60`), for a refresh that
/// ends 800 ms later and needs nobody.
#[test]
#[ignore = "HOLE: callers of a pool whose members are all refreshing are turned away ('needs a human', Retry-After 60) instead of waiting"]
fn callers_of_a_pool_whose_member_is_refreshing_wait_for_it() {
    let env = Env::with(Tuning {
        request_timeout: 6.0,
        attempts: 1,
        lease_ttl: 9.0,
        backoff_min: 5.0,
    });
    let (tokens, errors) = ask_an_expired_pool_at_once(&env);
    assert!(
        errors.is_empty(),
        "{} of 68 callers turned away, {} served; e.g. {:?}",
        errors.len(),
        tokens.len(),
        errors.first()
    );
}

/// The pool's "least recently served" write on every pick must not cost
/// a token: with another process holding the database's write lock,
/// `token --pool` of a valid member still prints the token (the write is
/// given up, with a warning) before the lock is released.
#[test]
fn a_pick_serves_while_the_database_is_write_locked() {
    let env = Env::new();
    member(&env, "bz1", 3600, "team");
    let lock = rusqlite::Connection::open(&env.db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = env
        .cmd()
        .args(["token", "--pool", "team"])
        .env("TOKENWARDEN_BUSY_TIMEOUT", "1")
        .output()
        .unwrap();
    // The lock is still held here.
    assert!(!lock.is_autocommit());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).trim().is_empty());
    lock.execute_batch("ROLLBACK").unwrap();
}

// ---------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------

/// Versions start at 1 again when an id is deleted and imported anew,
/// and a death's event id is `dead:{id}:v{version}`: the second login's
/// death under the same id has the first one's event id, `INSERT OR
/// IGNORE` drops it, and nobody is told that the new login died.
#[test]
#[ignore = "HOLE: a death after delete + re-import under the same id reuses the first death's event id and is dropped"]
fn a_second_death_under_a_reused_id_is_notified() {
    let env = Env::new();
    env.login("dd", 3600);
    kill(&env, "dd", "dd");
    assert_eq!(outbox(&env).len(), 1);
    let out = env.run(&["delete", "dd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A different login, imported under the same id.
    let g = env.fake.new_family("dd-second");
    let record = g.import_json("dd", "codex", &env.fake.token_url());
    let file = env.dir.path().join("second.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    kill(&env, "dd", "dd-second");
    let all = outbox(&env);
    let deaths: Vec<&Value> = all.iter().filter(|n| n["kind"] == "dead").collect();
    assert_eq!(
        deaths.len(),
        2,
        "two logins died, the outbox tells of {}: {all:?}",
        deaths.len()
    );
}

/// `--notify-exec` runs the command with the server's whole environment:
/// the admin and read API keys, the signing secret and the encryption key
/// of the database reach a mail or Slack CLI that only needed the JSON.
#[test]
#[ignore = "HOLE: --notify-exec hands the command TOKENWARDEN_API_KEY, _READ_API_KEY, _NOTIFY_SECRET and _ENCRYPTION_KEY"]
fn the_notify_command_gets_no_secret_in_its_environment() {
    let env = Env::new();
    let key = env.run(&["keygen"]);
    assert!(key.status.success(), "{}", text(&key.stderr));
    let key = text(&key.stdout).trim().to_owned();
    let secrets = [
        ("TOKENWARDEN_API_KEY", "admin-key-0a7f3"),
        ("TOKENWARDEN_READ_API_KEY", "read-key-5c21e"),
        ("TOKENWARDEN_NOTIFY_SECRET", "signing-secret-9d8b"),
        ("TOKENWARDEN_ENCRYPTION_KEY", key.as_str()),
    ];
    let with_secrets = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.args(args);
        for (k, v) in secrets {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = with_secrets(&["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = env.dir.path().join("env.txt");
    let exec = format!("cat >/dev/null; env > {}", file.display());
    let out = with_secrets(&["notify", "test", "--notify-exec", &exec]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen = std::fs::read_to_string(&file).unwrap();
    let leaked: Vec<&str> = secrets
        .iter()
        .filter(|(_, v)| seen.contains(v))
        .map(|(k, _)| *k)
        .collect();
    assert!(
        leaked.is_empty(),
        "the command's environment holds {leaked:?}"
    );
}

/// A signing secret that is set but blank (`TOKENWARDEN_NOTIFY_SECRET="
/// "`, a template left unfilled) is taken as no secret: every POST goes
/// out unsigned, exit 0, not a word said. A receiver that verifies
/// signatures drops them all; one that does not is open to forgeries.
#[test]
#[ignore = "HOLE: a blank TOKENWARDEN_NOTIFY_SECRET silently sends unsigned notifications"]
fn a_blank_signing_secret_is_refused_not_silently_unsigned() {
    let env = Env::new();
    let out = env.run(&["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hook = Hook::start();
    let out = env
        .cmd()
        .args(["notify", "test", "--notify-url", &hook.url()])
        .env("TOKENWARDEN_NOTIFY_SECRET", "   ")
        .output()
        .unwrap();
    let said = text(&out.stderr);
    let signed = hook
        .got()
        .iter()
        .all(|(h, _)| h.contains_key("x-tokenwarden-signature"));
    assert!(
        !out.status.success() || said.contains("NOTIFY_SECRET") || signed,
        "exit {:?}, stderr {said:?}, {} unsigned POST(s)",
        out.status.code(),
        hook.got().len()
    );
}

/// The signature as the README says to check it — `openssl dgst -sha256
/// -hmac SECRET` over the body received — matches; the body and headers
/// carry no token of the dead credential, and the webhook URL's
/// credentials (userinfo, a token in the query) appear in no log line,
/// no listed notification and no error.
#[test]
fn a_notification_is_verifiable_and_carries_no_secret() {
    let env = Env::new();
    let grant = env.login("ns1", 3600);
    kill(&env, "ns1", "ns1");
    let hook = Hook::start();
    let secret = "s3cr3t-for-hmac";
    let out = env
        .cmd()
        .args(["sweep", "--notify-url", &hook.url()])
        .env("TOKENWARDEN_NOTIFY_SECRET", secret)
        .env("TOKENWARDEN_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let got = hook.got();
    assert_eq!(got.len(), 1, "{got:?}");
    let (headers, body) = &got[0];
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let digest = text(&openssl.wait_with_output().unwrap().stdout);
    let hex = digest.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(
        headers.get("x-tokenwarden-signature"),
        Some(&format!("sha256={hex}"))
    );
    let mut tokens = env.fake.issued_refresh_tokens("ns1");
    tokens.push(grant.refresh_token.clone());
    tokens.push(grant.access_token.clone());
    tokens.push(grant.id_token.clone());
    for t in &tokens {
        assert!(!body.contains(t.as_str()), "a token in the body");
        assert!(
            !headers.values().any(|v| v.contains(t.as_str())),
            "a token in a header"
        );
    }
    // A webhook URL with credentials in it, to a receiver that is down.
    env.login("ns2", 3600);
    kill(&env, "ns2", "ns2");
    let port = free_port();
    let url = format!("http://hookuser:hookpass-77@127.0.0.1:{port}/h?token=hooktoken-88");
    let out = env
        .cmd()
        .args(["sweep", "--notify-url", &url])
        .env("TOKENWARDEN_LOG", "trace")
        .output()
        .unwrap();
    let all = format!(
        "{}{}{}",
        text(&out.stdout),
        text(&out.stderr),
        text(&env.run(&["notifications", "--json"]).stdout)
    );
    for s in ["hookpass-77", "hooktoken-88"] {
        assert!(!all.contains(s), "{s} shown: {all}");
    }
}

/// A `--notify-exec` command that never reads its input and never exits
/// holds up no token and no shutdown, and is killed at the timeout —
/// with everything it started: a `sh -c` whose child outlives the kill
/// keeps running after the attempt "timed out", one more per retry.
#[test]
#[ignore = "HOLE: a --notify-exec that times out is killed without its children: they outlive the timeout, one more per retry"]
fn a_notify_command_that_never_exits_is_killed_with_its_children() {
    let env = Env::new();
    env.login("ok", 3600);
    env.login("nx", 3600);
    kill(&env, "nx", "nx");
    let marker = format!("{}.{}", 600 + std::process::id() % 100, std::process::id());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = env.cmd();
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--notify-exec",
        &format!("sleep {marker}; true"),
    ])
    .env("TOKENWARDEN_NOTIFY_TIMEOUT", "1")
    .env("TOKENWARDEN_NOTIFY_RETRY_MIN", "0.2");
    let served = Served::spawn(cmd, addr);
    let client = Client::new(addr, None);
    // Tokens while the command hangs.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        client.get("/v1/credentials/ok/token").expect(200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, err) = served.terminate();
    assert_eq!(status, Some(0), "{err}");
    // Whatever still runs `sleep MARKER` was started by this test's
    // serve: list it, then end it (by pid, ours only).
    let left: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.starts_with("sleep ") && c.contains(&marker))
        })
        .collect();
    for pid in &left {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert!(
        left.is_empty(),
        "{} `sleep {marker}` left running after the attempts timed out and serve exited",
        left.len()
    );
}

/// serve's notifier and three `sweep`s deliver one outbox at once to a
/// receiver that answers at once: each event id arrives exactly once
/// (no hold runs out), each body with its own id.
#[test]
fn concurrent_deliverers_deliver_each_event_once() {
    let env = Env::new();
    for i in 0..8 {
        let id = format!("cd{i}");
        env.login(&id, 3600);
        kill(&env, &id, &id);
    }
    let hook = Hook::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = env.cmd();
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--notify-url",
        &hook.url(),
    ]);
    let sweeps: Vec<_> = (0..3)
        .map(|_| {
            env.cmd()
                .args(["sweep", "--notify-url", &hook.url()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let served = Served::spawn(cmd, addr);
    for mut s in sweeps {
        s.wait().unwrap();
    }
    let start = Instant::now();
    while hook.got().len() < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            hook.got()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (status, err) = served.terminate();
    assert_eq!(status, Some(0), "{err}");
    let got = hook.got();
    let mut ids: Vec<String> = got
        .iter()
        .map(|(h, b)| {
            let v: Value = serde_json::from_str(b).unwrap();
            assert_eq!(
                h.get("x-tokenwarden-event").map(String::as_str),
                v["id"].as_str()
            );
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, 8, "deliveries {ids:?}");
    assert_eq!(ids.len(), 8);
}

// ---------------------------------------------------------------------
// HTTP edges of the new routes
// ---------------------------------------------------------------------

/// Pool names are ids: `..`, `%2f`, `%00`, unicode, 129 characters, an
/// empty name are 400 (or no route), never another route; a sticky key
/// over 256 characters or empty is 400; a foreign Origin or Host on the
/// new POST and DELETE routes is refused before anything is done.
#[test]
fn pool_names_sticky_keys_and_origins_are_checked() {
    let env = Env::new();
    member(&env, "hp1", 3600, "team");
    let srv = InProcess::start(&env, &["k"], 2);
    let c = &srv.client;
    let long = "p".repeat(129);
    for name in [
        "..",
        "%2e%2e",
        "team%2f..",
        "te%00am",
        "%C3%A9quipe",
        long.as_str(),
        "te%20am",
    ] {
        let a = c.get(&format!("/v1/pools/{name}/token"));
        assert!(
            a.status == 400 || a.status == 404,
            "{name}: {} {}",
            a.status,
            a.body
        );
        assert!(a.json()["access_token"].is_null(), "{name}: {}", a.body);
    }
    c.get(&format!("/v1/pools/team/token?sticky={}", "s".repeat(257)))
        .expect(400);
    c.get("/v1/pools/team/token?sticky=").expect(400);
    c.get("/v1/pools/team/token?sticky=%E2%9C%93").expect(200);
    // With a key: a foreign Origin is refused. Without one (loopback
    // only): a foreign Host too (DNS rebinding).
    let keyless = InProcess::start(&env, &[], 2);
    let cd = br#"{"seconds":600}"#;
    let reject = br#"{"credential_id":"hp1","access_token":"x"}"#;
    let evil_origin = "Origin: http://evil.example".to_owned();
    for (addr, key, extra) in [
        (
            srv.addr(),
            Some("k"),
            vec![format!("Host: {}", srv.addr()), evil_origin.clone()],
        ),
        (
            keyless.addr(),
            None,
            vec![format!("Host: {}", keyless.addr()), evil_origin],
        ),
        (keyless.addr(), None, vec!["Host: evil.example".to_owned()]),
    ] {
        let send = |method: &str, path: &str, body: &[u8]| {
            let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
            if let Some(k) = key {
                req.push_str(&format!("Authorization: Bearer {k}\r\n"));
            }
            for h in &extra {
                req.push_str(h);
                req.push_str("\r\n");
            }
            req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(body);
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&bytes).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            parse_raw(&out).unwrap()
        };
        for (method, path, body) in [
            ("POST", "/v1/credentials/hp1/cooldown", &cd[..]),
            ("POST", "/v1/pools/team/reject", &reject[..]),
            ("DELETE", "/v1/credentials/hp1/cooldown", &b""[..]),
            ("GET", "/v1/pools/team/token", &b""[..]),
        ] {
            let a = send(method, path, body);
            assert_eq!(a.status, 403, "{method} {path} {extra:?}: {}", a.body);
        }
    }
    assert_eq!(
        c.get("/v1/credentials/hp1").expect(200).json()["cooldown"],
        Value::Null
    );
    assert_eq!(
        c.get("/v1/credentials/hp1").expect(200).json()["state"],
        "valid"
    );
}

/// Any key (a read-only one too) can ask `/v1/pools/{name}/token` for
/// names that are no pool at all; each name becomes a metrics series of
/// its own, kept for the process's life: 2,000 made-up names are 2,000
/// `tokenwarden_pool_picks_total` lines (and the memory behind them).
#[test]
#[ignore = "HOLE: every unknown pool name asked for adds a metrics series forever (unbounded label cardinality)"]
fn unknown_pool_names_do_not_grow_the_metrics() {
    let env = Env::new();
    member(&env, "mc1", 3600, "team");
    let srv = InProcess::start(&env, &["k"], 4);
    let c = &srv.client;
    for i in 0..2000 {
        c.get(&format!("/v1/pools/nope{i}/token")).expect(404);
    }
    let metrics = c.get("/metrics").expect(200).body;
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("tokenwarden_pool_picks_total{"))
        .count();
    assert!(
        series < 100,
        "{series} pool series after 2000 unknown names"
    );
}

// ---------------------------------------------------------------------
// The schema upgrade
// ---------------------------------------------------------------------

/// A schema-2 database with 20,000 credentials: four processes open it
/// at once (one SIGKILLed mid-way): each survivor succeeds, the file ends
/// at version 3 with every row, and a pool works on it.
#[test]
fn a_large_v2_database_upgrades_once_under_racing_processes_and_a_kill() {
    const MAIN_V2_DB: &[u8] = include_bytes!("fixtures/schema_v2_main_251fb5a.db");
    let env = Env::new();
    std::fs::write(&env.db, MAIN_V2_DB).unwrap();
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('credentials')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let select: Vec<String> = cols
            .iter()
            .map(|c| match c.as_str() {
                "id" => "'bulk-' || n".to_owned(),
                // Unique per row (a UNIQUE fingerprint column may exist).
                "refresh_token" => "'rt-bulk-' || n".to_owned(),
                // Unique, as a real schema-2 file has them all set.
                "refresh_fp" => "'fp-bulk-' || n".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        let sql = format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 20000) \
             INSERT INTO credentials ({}) SELECT {} FROM seq, credentials WHERE id = 'old-a'",
            cols.join(", "),
            select.join(", ")
        );
        conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
            .unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
    }
    let spawn = || {
        env.cmd()
            .args(["list", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn();
    let others: Vec<_> = (0..3).map(|_| spawn()).collect();
    std::thread::sleep(Duration::from_millis(30));
    let _ = victim.kill();
    let _ = victim.wait();
    for p in others {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let n = json(&out)["credentials"].as_array().unwrap().len();
        assert_eq!(n, 20_002);
    }
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 3);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    let out = env.run(&["pool", "add", "old-a", "team"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["token", "--pool", "team"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "at-old-a");
}

/// `?min_ttl=` at the edges of the pool route: larger than any token
/// lives (a week, u64::MAX seconds; capped at half a token's lifetime,
/// as on the credential route) or not a number. Never a 500, and no
/// refresh storm: asking ten times for a lifetime no token has costs at
/// most one refresh.
#[test]
fn a_pool_min_ttl_no_token_can_meet_is_refused_cleanly() {
    let env = Env::new();
    member(&env, "mt1", 3600, "team");
    let srv = InProcess::start(&env, &["k"], 2);
    let c = &srv.client;
    for q in ["min_ttl=-1", "min_ttl=abc", "min_ttl=1e400", "wait=-1"] {
        let a = c.get(&format!("/v1/pools/team/token?{q}"));
        assert_eq!(a.status, 400, "{q}: {}", a.body);
    }
    for q in ["min_ttl=604800", "min_ttl=18446744073709551615"] {
        for _ in 0..5 {
            let a = c.get(&format!("/v1/pools/team/token?{q}&wait=5"));
            assert!(a.status != 500, "{q}: {} {}", a.status, a.body);
        }
    }
    let n = env.fake.token_requests().len();
    assert!(n <= 2, "{n} refreshes for min_ttl no token can meet");
    c.get("/v1/pools/team/token").expect(200);
}

/// One exhausted window whose reset upstream does not give: each snapshot
/// sets the cooldown to "fetched + 15 min" anew, and the notification's
/// event id is keyed by that end — so every `sweep --quota` (cron: every
/// few minutes) writes another `quota_exhausted` for the same, unchanged
/// exhaustion, and the receiver cannot deduplicate them.
#[test]
#[ignore = "HOLE: an exhausted window without a reset time writes a new quota_exhausted notification on every snapshot"]
fn one_exhaustion_is_one_notification() {
    let env = Env::new();
    member(&env, "qx1", 3600, "team");
    env.fake.set_codex_usage(
        200,
        json!({
            "plan_type": "plus",
            "rate_limit": {
                "allowed": false,
                "limit_reached": true,
                "primary_window": {"used_percent": 100, "limit_window_seconds": 18000},
            }
        }),
    );
    for _ in 0..3 {
        let out = env.run(&["quota", "qx1", "--refresh", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let kinds: Vec<String> = outbox(&env)
        .iter()
        .map(|n| format!("{} {}", n["kind"], n["id"]))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.contains("quota_exhausted"))
            .count(),
        1,
        "{kinds:?}"
    );
}

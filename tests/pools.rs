//! Pools and cooldowns (issue 15): the schema upgrade of a database written
//! by an older build, memberships and cooldowns as rows with events, the
//! pool route end to end, and many threads and processes asking one pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::InProcess;
use crate::common::tw::{code, json, text, Backend, Env, Tuning};
use tokenwarden::testing::{CooldownSource, CooldownWrite};
use tokenwarden::{Config, Error, Warden};

// The tests below that take a backend run on SQLite and on PostgreSQL,
// from this one source.
on_both_backends!(
    memberships_and_cooldowns_are_rows_with_events,
    the_pool_spreads_sticks_and_refuses_clearly,
    a_reset_snapshot_clears_the_cooldown_an_exhausted_one_set,
    import_pool_and_a_cooldown_ended_then_collected,
    the_pool_routes_end_to_end,
);

/// Wall-clock milliseconds (the clock event rows are written on).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` fresh logins `{prefix}{i}` whose tokens expire in `expires_in` s,
/// all in pool `pool`.
fn members(env: &Env, prefix: &str, n: usize, expires_in: i64, pool: &str) -> Vec<String> {
    let w = env.warden();
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            env.login(&id, expires_in);
            w.set_pool_member(&id, pool, true).unwrap();
            id
        })
        .collect()
}

/// A Codex usage answer with the primary window at `used` percent,
/// resetting in `reset_after` seconds.
fn usage(used: u32, reset_after: i64, limit_reached: bool) -> Value {
    json!({
        "plan_type": "plus",
        "rate_limit": {
            "allowed": !limit_reached,
            "limit_reached": limit_reached,
            "primary_window": {"used_percent": used, "limit_window_seconds": 18000,
                               "reset_after_seconds": reset_after},
            "secondary_window": {"used_percent": 10, "limit_window_seconds": 604800,
                                 "reset_after_seconds": 302400}
        }
    })
}

/// A database file written by main at 251fb5a (schema version 2: two
/// credentials, `old-a` codex and `old-b` claude, with their import
/// events), as `tokenwarden init` and `import` left it.
const MAIN_V2_DB: &[u8] = include_bytes!("fixtures/schema_v2_main_251fb5a.db");

/// An old database upgrades in place: its rows, tokens and events are all
/// there, and pools and cooldowns work on it at once.
#[test]
fn a_database_written_by_main_upgrades_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    std::fs::write(&db, MAIN_V2_DB).unwrap();
    let version = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 2, "the fixture is a schema-2 file");
    let w = Warden::open(&db, Config::default()).unwrap();
    assert_eq!(version(&db), 3, "migrated at open");
    let grant = w.token("old-a", Duration::ZERO).unwrap();
    assert_eq!(grant.access_token.expose(), "at-old-a");
    assert_eq!(
        w.events("old-b", None).unwrap().len(),
        1,
        "import event kept"
    );
    let store = w.store();
    assert!(store
        .set_pool_member("old-a", "team", true, "t", 1)
        .unwrap());
    assert!(store
        .set_pool_member("old-b", "team", true, "t", 1)
        .unwrap());
    let pool = store.pool("team", None).unwrap();
    let ids: Vec<_> = pool
        .members
        .iter()
        .map(|m| m.credential.id.as_str())
        .collect();
    assert_eq!(ids, ["old-a", "old-b"]);
    assert_eq!(pool.members[0].credential.failing_since_ms, None);
    drop(w);
    // Opening again is a no-op (already at version 3).
    let w = Warden::open(&db, Config::default()).unwrap();
    assert_eq!(w.store().memberships().unwrap().len(), 2);
}

/// Joining and leaving a pool, and setting and clearing a cooldown, each
/// append an event row without bumping the version; repeats write
/// nothing; deleting the credential takes its memberships and cooldown.
fn memberships_and_cooldowns_are_rows_with_events(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("m1", 3600);
    let w = env.warden();
    let store = w.store();
    let version = store.version("m1").unwrap();
    let events = || w.events("m1", None).unwrap();
    let before = events().len();
    assert!(store.set_pool_member("m1", "p", true, "t", 10).unwrap());
    assert!(
        !store.set_pool_member("m1", "p", true, "t", 11).unwrap(),
        "already a member"
    );
    let set = CooldownWrite::Set {
        until_ms: 5_000_000,
        reason: "usage_limit_reached",
        source: CooldownSource::Manual,
    };
    assert!(store.cooldown("m1", set, None, "t", 20).unwrap());
    assert!(
        !store.cooldown("m1", set, None, "t", 21).unwrap(),
        "the same cooldown"
    );
    let clear_old = CooldownWrite::Clear {
        set_before_ms: 19,
        reason: "snapshot",
    };
    assert!(
        !store.cooldown("m1", clear_old, None, "t", 22).unwrap(),
        "set after it"
    );
    assert_eq!(store.cooldowns().unwrap().len(), 1);
    let clear = CooldownWrite::Clear {
        set_before_ms: 20,
        reason: "window reset",
    };
    assert!(store.cooldown("m1", clear, None, "t", 23).unwrap());
    assert!(store.cooldowns().unwrap().is_empty());
    assert!(store.set_pool_member("m1", "p", false, "t", 30).unwrap());
    let reasons: Vec<String> = events()[before..]
        .iter()
        .map(|e| e.reason.clone())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(reasons[0], "joined pool p");
    assert!(
        reasons[1].starts_with("cooldown (manual) until "),
        "{reasons:?}"
    );
    assert!(reasons[1].ends_with(": usage_limit_reached"), "{reasons:?}");
    assert_eq!(reasons[2], "cooldown cleared: window reset");
    assert_eq!(reasons[3], "left pool p");
    assert_eq!(store.version("m1").unwrap(), version, "no version bump");
    // Unknown credential: NotFound, nothing written.
    assert!(matches!(
        store.set_pool_member("nope", "p", true, "t", 40),
        Err(tokenwarden::Error::NotFound(_))
    ));
    store.set_pool_member("m1", "p", true, "t", 50).unwrap();
    store.cooldown("m1", set, None, "t", 51).unwrap();
    store.pool_served("p", "m1", Some("k"), wall_ms()).unwrap();
    assert_eq!(
        store.pool("p", Some("k")).unwrap().sticky.as_deref(),
        Some("m1")
    );
    w.delete("m1").unwrap();
    assert!(store.memberships().unwrap().is_empty());
    assert!(store.cooldowns().unwrap().is_empty());
    let after = store.pool("p", Some("k")).unwrap();
    assert!(after.members.is_empty());
    assert_eq!(after.sticky, None, "the sticky key went with it");
}

/// The pick spreads load (least recently handed out), keeps a sticky key's
/// member, prefers quota left, and says so when the pool is empty or no
/// member is usable; the CLI's `token --pool`, `pool add|rm` and `list
/// --pool` drive the same.
fn the_pool_spreads_sticks_and_refuses_clearly(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let ids = members(&env, "s", 3, 3600, "team");
    let w = env.warden();
    let zero = Duration::ZERO;
    // No quota known for any: least recently handed out, so three calls
    // get three members.
    let got: HashSet<String> = (0..3)
        .map(|_| w.pool_token("team", zero, None).unwrap().credential_id)
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    // Sticky: the same member for the key, however often.
    let first = w.pool_token("team", zero, Some("session-1")).unwrap();
    for _ in 0..5 {
        let again = w.pool_token("team", zero, Some("session-1")).unwrap();
        assert_eq!(again.credential_id, first.credential_id);
        assert_eq!(again.account_id, first.account_id);
    }
    // Its member cools down: the key moves, and stays on the new one.
    w.set_cooldown(
        &first.credential_id,
        wall_ms() + 60_000,
        "429 usage_limit_reached",
    )
    .unwrap();
    let moved = w.pool_token("team", zero, Some("session-1")).unwrap();
    assert_ne!(moved.credential_id, first.credential_id);
    for _ in 0..3 {
        let t = w.pool_token("team", zero, Some("session-1")).unwrap();
        assert_eq!(t.credential_id, moved.credential_id);
    }
    // Everyone cooling: 503-like, with the soonest end.
    for id in &ids {
        w.set_cooldown(id, wall_ms() + 60_000, "test").unwrap();
    }
    match w.pool_token("team", zero, None) {
        Err(Error::PoolUnavailable {
            retry_after_s: Some(s),
            members,
            ..
        }) => {
            assert!((55..=61).contains(&s), "{s}");
            assert!(members.contains("cooling down"), "{members}");
        }
        other => panic!("{other:?}"),
    }
    // The CLI: exit 5 and a line naming the pool; then cleared, it serves.
    let out = env.run(&["token", "--pool", "team"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pool 'team'"));
    for id in &ids {
        let out = env.run(&["cooldown", id, "--clear"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = env.run(&["token", "--pool", "team", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = json(&out);
    assert!(ids.contains(&answer["credential_id"].as_str().unwrap().to_owned()));
    // Membership through the CLI, and the listing filter.
    let out = env.run(&["pool", "rm", &ids[0], "team"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["list", "--pool", "team", "--json"]);
    let listed: Vec<String> = json(&out)["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids[1..]);
    assert_eq!(json(&out)["credentials"][0]["pools"], json!(["team"]));
    // Unknown pool: exit 3.
    let out = env.run(&["token", "--pool", "nobody"]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(matches!(
        w.pool_token("nobody", zero, None),
        Err(Error::EmptyPool(_))
    ));
    // Dead members are passed over; only dead left → no retry time.
    env.fake.revoke_family(&ids[1]);
    env.fake.revoke_family(&ids[2]);
    let _ = w.refresh(&ids[1], false);
    let _ = w.refresh(&ids[2], false);
    match w.pool_token("team", zero, None) {
        Err(Error::PoolUnavailable {
            retry_after_s: None,
            members,
            ..
        }) => {
            assert!(members.contains("dead"), "{members}");
        }
        other => panic!("{other:?}"),
    }
}

/// Quota decides the pick, and a snapshot drives the cooldown: an
/// exhausted window sets one until its reset (with a `quota_exhausted`
/// notification in the outbox), and a snapshot showing the window reset
/// clears it at once (`quota_reset`), before its planned end.
fn a_reset_snapshot_clears_the_cooldown_an_exhausted_one_set(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let ids = members(&env, "q", 2, 3600, "team");
    let w = env.warden();
    env.fake.set_codex_usage(200, usage(30, 3600, false));
    tokenwarden::quota::fetch(&w, &ids[1]).unwrap();
    env.fake.set_codex_usage(200, usage(90, 3600, false));
    tokenwarden::quota::fetch(&w, &ids[0]).unwrap();
    // q1 has 70 % left, q0 10 %: q1, every time (quota before recency).
    for _ in 0..3 {
        assert_eq!(
            w.pool_token("team", Duration::ZERO, None)
                .unwrap()
                .credential_id,
            ids[1]
        );
    }
    // q1 exhausted: cooling until the window's reset.
    env.fake.set_codex_usage(200, usage(100, 3600, true));
    let before = wall_ms();
    tokenwarden::quota::fetch(&w, &ids[1]).unwrap();
    let cooldowns = w.cooldowns().unwrap();
    assert_eq!(cooldowns.len(), 1);
    let until = cooldowns[0].until_ms;
    assert!(
        until >= before + 3_590_000 && until <= wall_ms() + 3_601_000,
        "{until}"
    );
    assert_eq!(cooldowns[0].source, tokenwarden::CooldownSource::Quota);
    for _ in 0..3 {
        assert_eq!(
            w.pool_token("team", Duration::ZERO, None)
                .unwrap()
                .credential_id,
            ids[0]
        );
    }
    // The same snapshot again writes nothing new.
    let events = w.events(&ids[1], None).unwrap().len();
    tokenwarden::quota::fetch(&w, &ids[1]).unwrap();
    assert_eq!(w.events(&ids[1], None).unwrap().len(), events);
    // The window reset early: the next snapshot clears the cooldown.
    env.fake.set_codex_usage(200, usage(0, 18000, false));
    tokenwarden::quota::fetch(&w, &ids[1]).unwrap();
    assert!(w.cooldowns().unwrap().is_empty());
    assert_eq!(
        w.pool_token("team", Duration::ZERO, None)
            .unwrap()
            .credential_id,
        ids[1]
    );
    let kinds: Vec<String> = w
        .notifications(false, 10)
        .unwrap()
        .iter()
        .map(|n| n.notice.kind.clone())
        .collect();
    assert_eq!(kinds, ["quota_exhausted", "quota_reset"]);
    let reasons: Vec<String> = w
        .events(&ids[1], None)
        .unwrap()
        .iter()
        .map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("cooldown (quota) until")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("cooldown cleared")),
        "{reasons:?}"
    );
}

/// Over HTTP: the pool's token names its member; a reject through the pool
/// rejects that member and answers with another in the same call; a
/// cooldown set over the API takes a member out; `?pool=` filters the
/// listing; an empty pool is 404 and a pool with nobody usable 503 with
/// Retry-After.
fn the_pool_routes_end_to_end(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let ids = members(&env, "h", 2, 3600, "team");
    let srv = InProcess::start(&env, &["k"], 4);
    let c = &srv.client;
    let a = c.get("/v1/pools/team/token").expect(200).json();
    let first = a["credential_id"].as_str().unwrap().to_owned();
    assert!(ids.contains(&first));
    assert!(a["account_id"].is_string());
    let token = a["access_token"].as_str().unwrap().to_owned();
    let body = json!({"credential_id": first, "access_token": token}).to_string();
    let b = c.post("/v1/pools/team/reject", &body).expect(200).json();
    let second = b["credential_id"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "the rejected member is not the answer");
    assert_ne!(b["access_token"], token);
    assert_eq!(
        c.get(&format!("/v1/credentials/{first}"))
            .expect(200)
            .json()["state"],
        "rejected"
    );
    // The rejected member is refreshed (a new token) when asked for by
    // id; then cool the other down: only the first is served.
    c.get(&format!("/v1/credentials/{first}/token")).expect(200);
    let cd = c
        .post(
            &format!("/v1/credentials/{second}/cooldown"),
            r#"{"seconds": 120, "reason": "usage_limit_reached"}"#,
        )
        .expect(200)
        .json();
    assert_eq!(cd["reason"], "usage_limit_reached");
    assert_eq!(cd["source"], "manual");
    for _ in 0..3 {
        let t = c.get("/v1/pools/team/token").expect(200).json();
        assert_eq!(t["credential_id"], first.as_str());
    }
    let shown = c
        .get(&format!("/v1/credentials/{second}"))
        .expect(200)
        .json();
    assert_eq!(shown["cooldown"]["reason"], "usage_limit_reached");
    assert_eq!(shown["pools"], json!(["team"]));
    // Bad cooldown bodies: 400, nothing set.
    for bad in [
        r#"{"seconds": -1}"#,
        r#"{}"#,
        r#"{"until": "yesterday"}"#,
        r#"{"seconds": 5, "x": 1}"#,
    ] {
        c.post(&format!("/v1/credentials/{first}/cooldown"), bad)
            .expect(400);
    }
    c.send(
        "DELETE",
        &format!("/v1/credentials/{second}/cooldown"),
        None,
    )
    .expect(204);
    let listed = c.get("/v1/credentials?pool=team").expect(200).json();
    assert_eq!(listed["credentials"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.get("/v1/credentials?pool=other").expect(200).json()["credentials"],
        json!([])
    );
    assert_eq!(
        c.get("/v1/pools/nobody/token").expect(404).code(),
        "pool_empty"
    );
    c.get("/v1/pools/bad%2fname/token").expect(400);
    for id in &ids {
        c.post(
            &format!("/v1/credentials/{id}/cooldown"),
            r#"{"seconds": 30}"#,
        )
        .expect(200);
    }
    let busy = c.get("/v1/pools/team/token").expect(503);
    assert_eq!(busy.code(), "pool_unavailable");
    let retry: u64 = busy.header("Retry-After").unwrap().parse().unwrap();
    assert!((25..=31).contains(&retry), "{retry}");
    // Metrics: picks by pool and outcome, cooldowns active.
    let metrics = c.get("/metrics").expect(200).body;
    assert!(
        metrics.contains("tokenwarden_pool_picks_total{pool=\"team\",outcome=\"served\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenwarden_pool_picks_total{pool=\"team\",outcome=\"unavailable\"} 1")
    );
    assert!(metrics.contains("tokenwarden_cooldowns_active 2"));
    assert!(metrics.contains("tokenwarden_notifications{status=\"pending\"}"));
}

/// What one caller got from the pool.
#[derive(Debug, Clone)]
struct Served {
    started_ms: i64,
    credential_id: String,
    token: String,
}

/// 64 threads and 4 processes ask one pool while its members' tokens
/// expire (4 s lifetimes), a member's tokens get rejected through the pool,
/// a member cools down and a member dies upstream. No caller ever gets a
/// token that was rejected before it asked, nor a member cooling down or
/// dead before it asked; every member's refresh is single-flight with no
/// reuse, and refreshes stay within one per need.
#[test]
fn many_threads_and_processes_ask_one_pool_while_members_change() {
    // SQLite only: its `rejections >= 10` in 5 s is a throughput bound,
    // and on PostgreSQL beside the rest of the suite it reached 9.
    let env = Env::with(Tuning::default());
    env.fake.set_expires_in(4);
    let ids = members(&env, "m", 4, 2, "team");
    let w = Arc::new(env.warden());
    let served: Arc<Mutex<Vec<Served>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    // The processes: each asks 12 times.
    let procs: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = env.cmd();
            cmd.args(["token", "--pool", "team", "--json"]);
            let envs: Vec<(String, String)> = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
                .collect();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..12 {
                    let started_ms = wall_ms();
                    let out = std::process::Command::new(crate::common::tw::BIN)
                        .env_clear()
                        .envs(envs.iter().cloned())
                        .args(["token", "--pool", "team", "--json"])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                        got.push(Served {
                            started_ms,
                            credential_id: v["credential_id"].as_str().unwrap().to_owned(),
                            token: v["access_token"].as_str().unwrap().to_owned(),
                        });
                    } else {
                        assert!(
                            matches!(out.status.code(), Some(5)),
                            "a process failed: {}",
                            text(&out.stderr)
                        );
                    }
                }
                got
            })
        })
        .collect();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (w, served, stop) = (w.clone(), served.clone(), stop.clone());
            std::thread::spawn(move || {
                let sticky = format!("s{}", i % 8);
                while !stop.load(Ordering::Relaxed) {
                    let started_ms = wall_ms();
                    let key = (i % 2 == 0).then_some(sticky.as_str());
                    match w.pool_token("team", Duration::ZERO, key) {
                        Ok(g) => served.lock().unwrap().push(Served {
                            started_ms,
                            credential_id: g.credential_id.clone(),
                            token: g.access_token.expose().to_owned(),
                        }),
                        Err(Error::PoolUnavailable { .. }) => {}
                        Err(e) => panic!("thread {i}: {e}"),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    // The changes, each recorded with the time it was committed.
    let rejected: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let mut cooling_from = i64::MAX;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(250));
        // A caller of m0 reports its token rejected, through the pool.
        if let Ok(g) = w.token(&ids[0], Duration::ZERO) {
            let t = g.access_token.expose().to_owned();
            let answer = w
                .pool_reject_within("team", &ids[0], &t, None, Duration::from_secs(10))
                .unwrap();
            rejected.lock().unwrap().insert(t.clone(), wall_ms());
            assert_ne!(
                answer.access_token.expose(),
                t,
                "the answer to a reject is another token"
            );
        }
        if cooling_from == i64::MAX && started.elapsed() > Duration::from_secs(1) {
            w.set_cooldown(&ids[1], wall_ms() + 3_600_000, "usage_limit_reached")
                .unwrap();
            cooling_from = wall_ms();
        }
        if started.elapsed() > Duration::from_secs(2) {
            // m2's login is revoked upstream: its next refresh kills it.
            env.fake.revoke_family(&ids[2]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut all = served.lock().unwrap().clone();
    for p in procs {
        all.extend(p.join().unwrap());
    }
    assert!(all.len() > 200, "only {} answers", all.len());
    let rejected = rejected.lock().unwrap();
    let dead_from = w
        .events(&ids[2], None)
        .unwrap()
        .iter()
        .find(|e| e.to == "dead")
        .map_or(i64::MAX, |e| e.at_ms);
    for s in &all {
        if let Some(&at) = rejected.get(&s.token) {
            assert!(s.started_ms <= at, "{s:?} got a token rejected at {at}");
        }
        if s.credential_id == ids[1] {
            assert!(
                s.started_ms <= cooling_from,
                "{s:?} got a member cooling since {cooling_from}"
            );
        }
        if s.credential_id == ids[2] {
            assert!(
                s.started_ms <= dead_from,
                "{s:?} got a member dead since {dead_from}"
            );
        }
    }
    assert!(dead_from < i64::MAX, "m2 died during the run");
    assert!(rejected.len() >= 10, "{} rejections", rejected.len());
    let served_ids: HashSet<&str> = all.iter().map(|s| s.credential_id.as_str()).collect();
    assert!(served_ids.contains(ids[3].as_str()), "{served_ids:?}");
    env.fake.assert_single_flight();
    env.fake.assert_no_reuse_after_success();
    assert_eq!(env.fake.stats().reuse_detected, 0);
    // Once per need: each member's successful refreshes are bounded by
    // its 4 s lifetime over the run (refreshed at half of it), plus one
    // per rejection and the first.
    let mut per_account: HashMap<String, usize> = HashMap::new();
    for r in env.fake.token_requests() {
        if let Some(a) = r.account {
            *per_account.entry(a).or_default() += 1;
        }
    }
    let secs = started.elapsed().as_secs() as usize + 2;
    for id in &ids {
        let n = per_account.get(id).copied().unwrap_or(0);
        let bound = secs + 2 + if id == &ids[0] { rejected.len() } else { 0 };
        assert!(n <= bound, "{id}: {n} token requests (bound {bound})");
    }
}

/// `import --pool` joins the pool; a cooldown whose time is over is no
/// longer honoured (nor shown), its row kept by `sweep` until a day past
/// its end (a fast clock elsewhere must not end a live one), then
/// garbage-collected (an event says so); bad cooldown flags are exit 2.
fn import_pool_and_a_cooldown_ended_then_collected(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let g = env.fake.new_family("i1");
    let mut record = g.import_json("i1", "codex", &env.fake.token_url());
    record["expires_at"] = json!(wall_ms() / 1000 + 3600);
    let file = env.dir.path().join("i1.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env.run(&["import", file.to_str().unwrap(), "--pool", "team"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["list", "--pool", "team", "--json"]);
    assert_eq!(json(&out)["credentials"][0]["id"], "i1");
    let out = env.run(&["cooldown", "i1", "--seconds", "0.3", "--reason", "429"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = json(&env.run(&["show", "i1", "--json"]));
    assert_eq!(shown["cooldown"]["reason"], "429");
    assert_eq!(shown["cooldown"]["source"], "manual");
    std::thread::sleep(Duration::from_millis(400));
    // Over, though still a row: the pool serves it already.
    let t = env
        .warden()
        .pool_token("team", Duration::ZERO, None)
        .unwrap();
    assert_eq!(t.credential_id, "i1");
    assert_eq!(env.warden().cooldowns().unwrap().len(), 1);
    let out = env.run(&["sweep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Ended, not shown, but kept a day past its end.
    assert_eq!(env.warden().cooldowns().unwrap().len(), 1);
    let shown = json(&env.run(&["show", "i1", "--json"]));
    assert_eq!(shown["cooldown"], Value::Null);
    let w = env.warden();
    let day = tokenwarden::pool::ENDED_COOLDOWN_KEPT_MS;
    assert_eq!(
        w.clear_ended_cooldowns_at(wall_ms() + day - 60_000)
            .unwrap(),
        0
    );
    assert_eq!(w.clear_ended_cooldowns_at(wall_ms() + day).unwrap(), 1);
    assert!(env.warden().cooldowns().unwrap().is_empty());
    let events = json(&env.run(&["events", "i1", "--json"]));
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"joined pool team"), "{reasons:?}");
    assert!(
        reasons.contains(&"cooldown cleared: its time is over"),
        "{reasons:?}"
    );
    for bad in [
        &["cooldown", "i1"][..],
        &["cooldown", "i1", "--until", "1"],
        &["cooldown", "i1", "--until", "tomorrow"],
        &["cooldown", "i1", "--seconds", "5", "--clear"],
    ] {
        assert_eq!(code(&env.run(bad)), 2, "{bad:?}");
    }
    assert_eq!(code(&env.run(&["cooldown", "nobody", "--seconds", "5"])), 3);
}

//! The PostgreSQL backend (issue 14) on a real server started by the tests
//! (common/pg.rs): several processes and boxes on one database, database
//! faults, and the server's clock deciding leases. The invariant suite runs
//! on it too (tests/invariants.rs, `postgres::` half).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::fake_oauth::Fault;
use crate::common::http::{free_port, Client, Served};
use crate::common::pg;
use crate::common::tw::{code, text, Backend, Env, Tuning};
use crate::hardening::with_wall_clock;
use tokenwarden::state::State;

const KEY: &str = "pg-test-key-0123456789";

/// `tokenwarden serve` on `env`'s database: one "box".
fn serve_box(env: &Env, extra: &[&str]) -> (Served, Client) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = env.cmd();
    cmd.args(["serve", "--listen", &addr.to_string(), "--threads", "16"])
        .args(extra)
        .env("TOKENWARDEN_API_KEY", KEY);
    (Served::spawn(cmd, addr), Client::new(addr, Some(KEY)))
}

fn token_of(c: &Client, id: &str) -> (u16, String) {
    let a = c.get(&format!("/v1/credentials/{id}/token"));
    let t = a.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (a.status, t)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The basics on PostgreSQL: import, token, a forced refresh that rotates,
/// reject, list, events, delete — through the library and the binary.
#[test]
fn the_library_and_the_binary_work_on_postgres() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let old = env.login("a", 3600);
    let w = env.warden();
    let g = w.token("a", Duration::ZERO).unwrap();
    assert_eq!(g.access_token.expose(), old.access_token);
    let out = env.run(&["token", "a"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), old.access_token);
    let fresh = w.reject("a", &old.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), old.access_token);
    let family = env.fake.family_state("a");
    let row = w.get("a").unwrap();
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(row.status.state, State::Valid);
    let out = env.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let events = w.store().events("a", None, None).unwrap();
    let reasons: Vec<_> = events.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(reasons.first(), Some(&"valid"));
    assert!(reasons.contains(&"refreshing"), "{reasons:?}");
    let out = env.run(&["delete", "a"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(w.store().get("a").unwrap().is_none());
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// Several boxes on one database: 3 `serve` processes (each with its
/// background refresher) and 4 CLI processes and 12 threads of a library
/// user, 64 callers in all, on one expiring credential → exactly one
/// upstream request, and every caller gets the same new token.
#[test]
fn three_boxes_and_the_cli_refresh_an_expiring_credential_once() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let old = env.login("solo", 60);
    env.fake.set_latency(Duration::from_millis(800));
    let boxes: Vec<_> = (0..3).map(|_| serve_box(&env, &[])).collect();
    let warden = Arc::new(env.warden());
    let barrier = Arc::new(Barrier::new(3 * 16 + 12));
    let mut threads = Vec::new();
    for (_, client) in &boxes {
        for _ in 0..16 {
            let (c, b) = (client.clone(), barrier.clone());
            threads.push(thread::spawn(move || {
                b.wait();
                let (status, t) = token_of(&c, "solo");
                assert_eq!(status, 200);
                t
            }));
        }
    }
    for _ in 0..12 {
        let (w, b) = (warden.clone(), barrier.clone());
        threads.push(thread::spawn(move || {
            b.wait();
            w.token("solo", Duration::ZERO)
                .unwrap()
                .access_token
                .expose()
                .to_owned()
        }));
    }
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
    let mut tokens = HashSet::new();
    for t in threads {
        tokens.insert(t.join().unwrap());
    }
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        tokens.insert(text(&out.stdout).trim().to_owned());
    }
    assert_eq!(
        env.fake.stats().token_requests,
        1,
        "exactly one upstream request"
    );
    let family = env.fake.family_state("solo");
    assert_eq!(tokens, HashSet::from([family.current_access_token.clone()]));
    assert!(!tokens.contains(&old.access_token));
    assert!(!family.revoked);
}

/// A token rejected through one box is never served by another box, nor
/// by the CLI, afterwards; each reject causes one refresh.
#[test]
fn a_reject_on_one_box_is_never_served_by_another() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("r", 3600);
    let (_a, box_a) = serve_box(&env, &["--no-refresher"]);
    let (_b, box_b) = serve_box(&env, &["--no-refresher"]);
    let mut rejected = Vec::new();
    for round in 0..5 {
        let (s, t) = token_of(&box_a, "r");
        assert_eq!(s, 200);
        assert!(
            !rejected.contains(&t),
            "round {round}: box A served a rejected token"
        );
        let body = serde_json::json!({ "access_token": t }).to_string();
        let a = box_b.post("/v1/credentials/r/reject", &body).expect(200);
        let fresh = a.json()["access_token"].as_str().unwrap().to_owned();
        assert_ne!(fresh, t);
        rejected.push(t);
        let (s, served) = token_of(&box_a, "r");
        assert_eq!(s, 200);
        assert_eq!(served, fresh, "round {round}: box A serves the new token");
        let out = env.run(&["token", "r"]);
        assert_eq!(text(&out.stdout).trim(), fresh);
    }
    assert_eq!(env.fake.stats().token_requests, 5);
}

/// SIGKILL of the box that owns a refresh: another box takes over once the
/// lease (on the server's clock) has ended, and no refresh token upstream
/// processed is ever presented again.
#[test]
fn a_killed_owning_box_is_taken_over_after_its_lease() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("k", 60);
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(10)));
    let (mut owner, owner_client) = serve_box(&env, &["--no-refresher"]);
    let (_other, other_client) = serve_box(&env, &["--no-refresher"]);
    let c = owner_client.clone();
    let pending = thread::spawn(move || token_of(&c, "k"));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().token_requests == 1
    });
    owner.child.kill().unwrap(); // SIGKILL
    owner.child.wait().unwrap();
    let _ = pending.join();
    let w = env.warden();
    let row = w.get("k").unwrap();
    assert_eq!(row.status.state, State::Refreshing, "killed mid-refresh");
    let lease = row.status.lease.clone().unwrap();
    // The lease counts on the server's clock: named by the cluster, in the
    // server's clock_timestamp() milliseconds.
    let mut admin = pg::client(env.pg_url());
    let (system, server_ms): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT system_identifier, (extract(epoch from clock_timestamp()) * 1000)::int8 \
                 FROM pg_control_system()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(lease.until.clock, system, "the lease clock is the server's");
    let ttl_ms = (env.tuning.lease_ttl * 1000.0) as i64;
    assert!(
        lease.until.ms > server_ms - ttl_ms && lease.until.ms <= server_ms + ttl_ms,
        "the lease ends on the server's clock: {} vs now {server_ms}",
        lease.until.ms
    );
    let (status, t) = token_of(&other_client, "k");
    assert_eq!(status, 200);
    let now = w.store().lease_now().expect("the server's clock");
    assert!(
        lease.left_ms(now).is_none(),
        "taken over only after the lease"
    );
    let family = env.fake.family_state("k");
    assert_eq!(t, family.current_access_token);
    assert!(!family.revoked, "no refresh token reused");
    let presented = env.fake.presented_refresh_tokens("k");
    let processed: HashSet<_> = presented.iter().skip(1).collect();
    assert_eq!(processed.len(), presented.len() - 1, "{presented:?}");
    assert_eq!(w.get("k").unwrap().status.state, State::Valid);
}

/// `pg_terminate_backend` of every connection of the owner while it waits
/// for upstream: the owner's commit of the rotated tokens fails, is
/// retried on a new connection, and lands — the credential never dies and
/// the rotated token is the one served.
#[test]
fn terminated_connections_mid_refresh_lose_nothing() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("t", 60);
    env.fake.set_latency(Duration::from_millis(1500));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("t", Duration::ZERO));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let mut admin = pg::client(env.pg_url());
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the owner's connections were terminated");
    let g = owner.join().unwrap().expect("the rotated token landed");
    let family = env.fake.family_state("t");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    let row = warden.get("t").unwrap();
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// The server's clock decides leases: a box whose own wall clock is
/// stepped 60 s ahead or behind neither takes over a live lease nor holds
/// one longer; it waits for the owner and serves the owner's token.
#[test]
fn a_box_whose_wall_clock_is_stepped_changes_nothing() {
    for offset in ["+60s", "-60s"] {
        let Some(env) = Env::with_on(
            Tuning {
                request_timeout: 8.0,
                lease_ttl: 12.0,
                ..Tuning::default()
            },
            Backend::Postgres,
        ) else {
            return;
        };
        env.login("c", 60);
        env.fake.set_latency(Duration::from_millis(2500));
        let warden = Arc::new(env.warden());
        let w = warden.clone();
        let owner = thread::spawn(move || w.token("c", Duration::ZERO));
        wait_until("the owner's request", Duration::from_secs(10), || {
            env.fake.stats().in_flight == 1
        });
        let Some(mut cmd) = with_wall_clock(env.cmd(), offset) else {
            return;
        };
        let out = cmd.args(["token", "c"]).output().unwrap();
        let g = owner.join().unwrap().expect("the owner's refresh");
        assert_eq!(code(&out), 0, "{offset}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            g.access_token.expose(),
            "{offset}"
        );
        assert_eq!(env.fake.stats().token_requests, 1, "{offset}: no takeover");
    }
}

/// A TCP relay to the test server that the test can cut (a network
/// partition between one box and the database) and mend.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (u, o) = (up.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut o = o.lock().unwrap();
                o.push(client.try_clone().unwrap());
                o.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, up, open }
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The database out of reach (a partition, a restart): callers get 503
/// `store_unavailable` from `serve` and exit 5 from the CLI — never
/// `dead` — and `serve` recovers by itself when the database is back.
#[test]
fn an_unreachable_database_is_503_and_exit_5_never_dead() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("u", 3600);
    let url = env.pg_url().to_owned();
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let relay = Relay::to(SocketAddr::from(([127, 0, 0, 1], port)));
    let relayed = url.replace(&format!(":{port}/"), &format!(":{}/", relay.addr.port()));
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = env.cmd();
    cmd.env("TOKENWARDEN_DB", &relayed)
        .env("TOKENWARDEN_API_KEY", KEY)
        .args(["serve", "--listen", &addr.to_string(), "--no-refresher"]);
    let _served = Served::spawn(cmd, addr);
    let client = Client::new(addr, Some(KEY));
    let (s, before) = token_of(&client, "u");
    assert_eq!(s, 200);

    relay.cut();
    let a = client.get("/v1/credentials/u/token");
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "store_unavailable", "{}", a.body);
    let out = env
        .cmd()
        .env("TOKENWARDEN_DB", &relayed)
        .args(["token", "u"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("dead"), "{}", text(&out.stderr));

    relay.mend();
    let mut ok = false;
    for _ in 0..100 {
        let (s, t) = token_of(&client, "u");
        if s == 200 {
            assert_eq!(t, before);
            ok = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "serve recovered by itself");
    assert_eq!(env.warden().get("u").unwrap().status.state, State::Valid);
}

/// `migrate --to` copies a SQLite database into an empty PostgreSQL one
/// and back: credentials with their tokens, events, handles, pools,
/// cooldowns, the notifications outbox, and the spent-token fingerprints
/// with their key (an old, rotated-away refresh
/// token is still refused on the target); a target that is not empty is
/// refused, and what was copied is counted on both sides.
#[test]
fn migrate_copies_everything_both_ways_and_refuses_a_non_empty_target() {
    let Some(env) = Env::on(Backend::Sqlite) else {
        return;
    };
    let Some(url) = pg::database() else { return };
    let old = env.login("a", 3600);
    env.login("b", 3600);
    let w = env.warden();
    let fresh = w.reject("a", &old.access_token).unwrap();
    let out = env.run(&["handle", "create", "a", "--label", "laptop"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let events = w.events("a", None).unwrap();
    // Issue 15's tables come along too: a membership, a cooldown, a notice.
    w.set_pool_member("b", "team", true).unwrap();
    w.set_cooldown("b", 4_000_000_000_000, "usage_limit_reached")
        .unwrap();
    let notice = tokenwarden::testing::Notice {
        event_id: "ev-migrate".into(),
        kind: "dead".into(),
        credential_id: Some("b".into()),
        payload: "{}".into(),
        at_ms: 1,
    };
    w.store().insert_notice(&notice).unwrap();
    let side = |w: &tokenwarden::Warden| {
        (
            w.memberships().unwrap(),
            w.cooldowns().unwrap(),
            w.notifications(false, 10).unwrap(),
            w.events("b", None).unwrap(),
        )
    };
    let before = side(&w);

    let out = env.run(&["migrate", "--to", &url]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // Spent: the rotated refresh token and the rejected access token.
    let said = text(&out.stdout);
    assert!(
        said.contains("credentials: 2") && said.contains("spent_tokens: 2"),
        "{said}"
    );

    let on_pg = tokenwarden::Warden::open(&url, env.config()).unwrap();
    let row = on_pg.get("a").unwrap();
    assert_eq!(
        row.refresh_token.expose(),
        env.fake.family_state("a").current_refresh_token
    );
    assert_eq!(
        on_pg
            .token("a", Duration::ZERO)
            .unwrap()
            .access_token
            .expose(),
        fresh.access_token.expose()
    );
    assert_eq!(on_pg.events("a", None).unwrap(), events);
    assert_eq!(on_pg.store().handles("a").unwrap().len(), 1);
    assert_eq!(side(&on_pg), before);
    // The spent fingerprint and its key came along: the rotated-away token
    // is refused on PostgreSQL too.
    let mut record = old.import_json("a2", "codex", &env.fake.token_url());
    record["expires_at"] = serde_json::Value::from(crate::common::tw::now() + 3600);
    let file = env.dir.path().join("old.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env
        .cmd()
        .env("TOKENWARDEN_DB", &url)
        .args(["import", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(
        code(&out),
        0,
        "a spent token imported: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("spent") || text(&out.stderr).contains("rotated"),
        "{}",
        text(&out.stderr)
    );

    // Not into a database that holds anything.
    let out = env.run(&["migrate", "--to", &url]);
    assert_ne!(code(&out), 0);
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );

    // And back, into a new SQLite file.
    let back = env.dir.path().join("back.db");
    let out = env
        .cmd()
        .env("TOKENWARDEN_DB", &url)
        .args(["migrate", "--to", back.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let on_sqlite = tokenwarden::Warden::open(&back, env.config()).unwrap();
    assert_eq!(on_sqlite.get("a").unwrap().refresh_token, row.refresh_token);
    assert_eq!(on_sqlite.events("a", None).unwrap(), events);
    assert_eq!(side(&on_sqlite), before);
    assert_eq!(
        env.fake.stats().token_requests,
        1,
        "migrating refreshed nothing"
    );
}

/// Cross-box wake-ups: a change committed through one store is announced
/// (LISTEN/NOTIFY, payload id + version) to the subscribers of another
/// store on the same database once that one waits on a row.
#[test]
fn a_commit_on_one_box_is_announced_to_the_others() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("n", 3600);
    let listener = tokenwarden::testing::Store::open(&env.db, Duration::from_secs(5), 2).unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let wake: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |id: &str| {
        s.lock().unwrap().push(id.to_owned());
    });
    listener.on_commit(&wake);
    // A wait (a version poll) starts this store's listener.
    assert_eq!(listener.version("n").unwrap(), Some(1));
    let other = env.warden();
    let end = Instant::now() + Duration::from_secs(20);
    // The listener connects in the background: commit until it hears one.
    while !seen.lock().unwrap().iter().any(|id| id == "n") {
        assert!(
            Instant::now() < end,
            "no notification reached the other store"
        );
        other.refresh("n", true).unwrap();
        for _ in 0..50 {
            if !seen.lock().unwrap().is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(seen.lock().unwrap().iter().all(|id| id == "n"));
}

/// PostgreSQL stopped for 10 s while a refresh is in flight and other
/// callers keep asking, then started again: the owner keeps its rotated
/// tokens and commits them once the server is back (fenced by its lease);
/// callers meanwhile get `store_unavailable` (exit 5 on the CLI), never
/// `dead`; nothing is sent upstream twice; everyone recovers by itself.
#[test]
fn a_restarted_database_loses_nothing() {
    let Some(server) = pg::private_server("restart") else {
        return;
    };
    let env = Env::on_url(Tuning::default(), pg::database_on(&server));
    env.login("x", 60);
    env.login("y", 3600);
    env.fake.set_latency(Duration::from_millis(1500));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("x", Duration::ZERO));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (w, stop) = (warden.clone(), stop.clone());
            thread::spawn(move || {
                let (mut ok, mut unavailable) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    match w.token("y", Duration::ZERO) {
                        Ok(_) => ok += 1,
                        Err(e) if e.exit_code() == 5 => unavailable += 1,
                        Err(e) => panic!("a caller got {e:?}"),
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                (ok, unavailable)
            })
        })
        .collect();
    server.stop();
    let out = env.run(&["token", "y"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    thread::sleep(Duration::from_secs(10));
    assert!(
        !owner.is_finished(),
        "the owner gave up on its rotated tokens"
    );
    server.start().unwrap();
    let g = owner.join().unwrap().expect("the rotated token landed");
    stop.store(true, Ordering::SeqCst);
    let mut unavailable_seen = 0;
    for t in load {
        let (ok, unavailable) = t.join().unwrap();
        assert!(ok > 0, "callers recovered");
        unavailable_seen += unavailable;
    }
    assert!(unavailable_seen > 0, "the outage was seen as unavailable");
    let family = env.fake.family_state("x");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    let row = warden.get("x").unwrap();
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert!(!family.revoked);
    assert_eq!(env.fake.stats().token_requests, 1);
    let out = env.run(&["token", "y"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    server.stop();
}

/// A statement timeout mid-commit: another session holds the row locked
/// past `lock_timeout` (the busy timeout, 1 s here) while the owner
/// commits its rotated tokens. Each try fails as the database's passing
/// trouble and is retried; once the lock is released the commit lands —
/// no death, one upstream request.
#[test]
fn a_statement_timeout_mid_commit_is_retried_until_it_lands() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("st", 60);
    env.fake.set_latency(Duration::from_millis(1000));
    let mut config = env.config();
    config.busy_timeout = Duration::from_secs(1);
    let warden = Arc::new(tokenwarden::Warden::open(&env.db, config).unwrap());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("st", Duration::ZERO));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let mut admin = pg::client(env.pg_url());
    let mut hold = admin.transaction().unwrap();
    hold.execute("SELECT 1 FROM credentials WHERE id = 'st' FOR UPDATE", &[])
        .unwrap();
    wait_until("upstream's answer", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 0
    });
    // Several lock timeouts long: the owner is still trying.
    thread::sleep(Duration::from_secs(4));
    assert!(
        !owner.is_finished(),
        "the owner gave up on its rotated tokens"
    );
    hold.commit().unwrap();
    let g = owner.join().unwrap().expect("the rotated token landed");
    let family = env.fake.family_state("st");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    let row = warden.get("st").unwrap();
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// Every view judges a lease on the clock it was written on: while one box
/// refreshes, another box's `show` says `refreshing` (the lease is live on
/// the server's clock), not the state it would fall back to.
#[test]
fn another_box_sees_a_live_lease_as_refreshing() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("v", 60);
    env.fake.set_latency(Duration::from_millis(1500));
    let warden = Arc::new(env.warden());
    let w = warden.clone();
    let owner = thread::spawn(move || w.token("v", Duration::ZERO));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let out = env.run(&["show", "v", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "refreshing", "{shown}");
    owner.join().unwrap().unwrap();
    let out = env.run(&["show", "v", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "valid", "{shown}");
}

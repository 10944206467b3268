//! Second hostile review of issue 14 (the PostgreSQL backend), after the
//! mend of attack14's two holes (the server clock kept as an interval, one
//! lease clock id per database in `meta`): attempts to break "a rotating
//! refresh token is used exactly once and never lost; a rejected token is
//! never served again" on PostgreSQL. Tests marked `#[ignore = "HOLE: …"]`
//! failed on the code they were written against (how is said on each);
//! the others hold and stay as guards. Skipped loudly without a server
//! (common/pg.rs).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::pg;
use crate::common::tw::{code, text, Backend, Env, Tuning};
use tokenwarden::state::State;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` at most `limit`; kills it (by its own pid) if it is
/// still running then. `None`: it hung.
fn output_within(child: Child, limit: Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("wait for the child")),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv();
            None
        }
    }
}

/// A tiny deterministic PRNG (xorshift) for the relay's jitter.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What a [`Relay`] does to the bytes of one direction.
#[derive(Default)]
struct Path {
    /// Constant delay (ms).
    delay_ms: AtomicU64,
    /// Extra random delay, 0..jitter (ms); order is kept.
    jitter_ms: AtomicU64,
    /// While set, nothing is forwarded (a partition that closes nothing).
    hold: AtomicBool,
}

/// A TCP relay to the test server with its own delay, jitter and hold on
/// each direction (client→server `up`, server→client `down`) — a box's
/// network path to the database, under the test's control. With a
/// trigger, a client→server chunk containing its bytes (a statement's
/// Parse) holds that connection's server→client chunks by the trigger's
/// delay up to the one that completes the statement (its CommandComplete,
/// `SELECT n`), and `executed` records when that one was read from the
/// server: the statement has run, and its answer is still on its way.
struct Relay {
    addr: SocketAddr,
    up: Arc<Path>,
    down: Arc<Path>,
    executed: Arc<Mutex<Option<Instant>>>,
}

/// One connection's trigger state: the delay to apply, whether
/// server→client chunks still get it, and when the statement completed.
#[derive(Default)]
struct Held {
    delay_ms: AtomicU64,
    armed: AtomicBool,
    /// Cut mode: the statement is forwarded, its answer dropped and the
    /// connection closed (an ambiguous commit).
    cut: AtomicBool,
    executed: Arc<Mutex<Option<Instant>>>,
}

impl Relay {
    fn to(target: SocketAddr) -> Relay {
        Relay::with_trigger(target, None)
    }

    fn with_trigger(target: SocketAddr, trigger: Option<(&'static [u8], Duration)>) -> Relay {
        Relay::start(target, trigger, false)
    }

    /// A relay whose first client→server chunk containing `bytes` (on any
    /// connection, once) runs on the server, but whose answer is dropped
    /// and the connection closed: the client cannot know whether it ran.
    fn cutting(target: SocketAddr, bytes: &'static [u8]) -> Relay {
        Relay::start(target, Some((bytes, Duration::ZERO)), true)
    }

    fn start(target: SocketAddr, trigger: Option<(&'static [u8], Duration)>, cut: bool) -> Relay {
        let fired = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(Path::default()), Arc::new(Path::default()));
        let executed = Arc::new(Mutex::new(None));
        let (u, d, t) = (up.clone(), down.clone(), executed.clone());
        thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                seed = seed.wrapping_add(0x1234_5678);
                // This connection's own hold, set by the trigger.
                let held = Arc::new(Held {
                    executed: t.clone(),
                    ..Held::default()
                });
                let watch = trigger.map(|(bytes, delay)| Watch {
                    bytes,
                    delay,
                    held: held.clone(),
                    cut,
                    fired: fired.clone(),
                });
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    u.clone(),
                    None,
                    watch,
                    seed,
                );
                pump(server, client, d.clone(), Some(held), None, seed ^ 0xabcdef);
            }
        });
        Relay {
            addr,
            up,
            down,
            executed,
        }
    }

    /// `url` (a `postgres://user@host:port/db` of the tests' server) through
    /// this relay.
    fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.rsplit_once('@').unwrap();
        let (_, db) = rest.split_once('/').unwrap();
        format!("{scheme_user}@{}/{db}", self.addr)
    }
}

/// The loopback address of the server of `url`.
fn server_addr(url: &str) -> SocketAddr {
    let (_, rest) = url.rsplit_once('@').unwrap();
    let (hostport, _) = rest.split_once('/').unwrap();
    hostport.parse().expect("a loopback address")
}

/// A trigger on one connection's client→server bytes.
struct Watch {
    bytes: &'static [u8],
    delay: Duration,
    held: Arc<Held>,
    /// Cut instead of delaying (see [`Relay::cutting`]), once per relay.
    cut: bool,
    fired: Arc<AtomicBool>,
}

/// Forwards `from` to `to` through `path` (and `held`), in order.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    path: Arc<Path>,
    held: Option<Arc<Held>>,
    watch: Option<Watch>,
    seed: u64,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let p = path.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut seed = seed | 1;
        let mut last = Instant::now();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(w) = &watch {
                if buf[..n].windows(w.bytes.len()).any(|b| b == w.bytes) {
                    if !w.cut {
                        let ms = w.delay.as_millis() as u64;
                        w.held.delay_ms.store(ms, Ordering::SeqCst);
                        w.held.armed.store(true, Ordering::SeqCst);
                    } else if !w.fired.swap(true, Ordering::SeqCst) {
                        w.held.cut.store(true, Ordering::SeqCst);
                    }
                }
            }
            if held.as_ref().is_some_and(|h| h.cut.load(Ordering::SeqCst)) {
                // The cut statement's answer: dropped, both ends closed.
                if let Some(h) = &held {
                    h.executed.lock().unwrap().get_or_insert_with(Instant::now);
                }
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
            let jitter = p.jitter_ms.load(Ordering::SeqCst);
            let extra_ms = match &held {
                Some(h) if h.armed.load(Ordering::SeqCst) => {
                    // The Execute's answer ends with its CommandComplete.
                    if buf[..n].windows(7).any(|w| w == b"SELECT ") {
                        h.executed.lock().unwrap().get_or_insert_with(Instant::now);
                        h.armed.store(false, Ordering::SeqCst);
                    }
                    h.delay_ms.load(Ordering::SeqCst)
                }
                _ => 0,
            };
            let ms = p.delay_ms.load(Ordering::SeqCst)
                + extra_ms
                + if jitter > 0 {
                    next_rand(&mut seed) % jitter
                } else {
                    0
                };
            let due = (Instant::now() + Duration::from_millis(ms)).max(last);
            last = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, bytes) in rx {
            loop {
                let now = Instant::now();
                if path.hold.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                } else if due > now {
                    thread::sleep((due - now).min(Duration::from_millis(5)));
                } else {
                    break;
                }
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A lease written under another lease clock id than the one this
/// database's boxes use (what a box still running the code before the
/// mend wrote — it named the clock by the system identifier while `meta`
/// holds another id — or a row restored from elsewhere): simulated by
/// changing `lease_clock` on the row while its owner's request is in
/// flight. An operator's `tokenwarden token` then must neither take the
/// live lease over (sending the same refresh token again) nor hang: it
/// waits for the owner and serves the owner's token, or says it is busy.
/// (Failed on e5580fa: no hang any more, but the operator's box took the
/// lease over at once — "took over an expired refresh lease" — and sent
/// the refresh token again: 2 requests, family revoked for
/// refresh_token_reused, the credential dead on both boxes. The guarded
/// UPDATE lets any claim through `lease_clock IS DISTINCT FROM $27`, and
/// `Lease::left_ms` counts a foreign clock as ended. Mended: every lease
/// on PostgreSQL is judged on the server's clock whatever id it was
/// written under.)
#[test]
fn a_live_lease_on_a_foreign_clock_id_is_never_taken_over() {
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
    let owner_box = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(4000));
    let w = owner_box.clone();
    let owner = thread::spawn(move || w.token("c", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let mut admin = pg::client(env.pg_url());
    let changed = admin
        .execute(
            "UPDATE credentials SET lease_clock = lease_clock # 12345 \
             WHERE id = 'c' AND state = 'refreshing'",
            &[],
        )
        .unwrap();
    assert_eq!(changed, 1, "the owner holds the lease");
    let started = Instant::now();
    let op = env
        .cmd()
        .args(["token", "c", "--min-ttl", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(op, Duration::from_secs(60));
    let g = owner.join().unwrap();
    let requests = env.fake.stats().token_requests;
    let family = env.fake.family_state("c");
    let Some(out) = out else {
        panic!(
            "the operator's `token` hung (killed after {:?}); upstream saw {requests} \
             requests; owner: {:?}",
            started.elapsed(),
            g.as_ref().map(|_| "ok").map_err(|e| e.to_string())
        );
    };
    assert_eq!(
        requests,
        1,
        "a live lease on a foreign clock id was taken over: the refresh token was sent \
         {requests} times (family revoked: {}, operator: exit {} {}; owner: {:?})",
        family.revoked,
        code(&out),
        text(&out.stderr).trim(),
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    let g = g.expect("the owner's refresh");
    if code(&out) == 0 {
        assert_eq!(text(&out.stdout).trim(), g.access_token.expose());
    }
    assert!(!family.revoked);
}

/// The database restarted between upstream's answer and the owner's
/// commit, while another box keeps asking for the same credential (a
/// service's callers do): PostgreSQL is stopped while the owner's request
/// is in flight and started again 10 s later — longer than the lease. The
/// owner holds the rotated tokens in memory and retries its fenced commit;
/// the other box, finding the lease over on the server's clock once the
/// database is back, must not send the spent refresh token upstream. The
/// issue's promise: the database's trouble is never a login's death.
/// (Failed on e5580fa: the other box took the lease over as soon as the
/// server was back and sent the spent refresh token: 2 requests, family
/// revoked for refresh_token_reused, credential dead; the owner's fenced
/// commit found the lease lost and its rotated tokens were dropped. The
/// existing `postgres::a_restarted_database_loses_nothing` has no second
/// box asking, so it does not see this. Mended: no lease is taken over in
/// the first 10 s after the server started, and a takeover the store
/// refuses is retried after a poll, not in a spin.)
#[test]
fn a_restart_between_the_answer_and_the_commit_with_another_box_asking_loses_nothing() {
    let Some(server) = pg::private_server("attack14b-restart") else {
        return;
    };
    let env = Env::on_url(Tuning::default(), pg::database_on(&server));
    env.login("x", 60);
    let a = Arc::new(env.warden());
    let b = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(1500));
    let w = a.clone();
    let owner = thread::spawn(move || w.token("x", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    server.stop();
    // The other box: in-process callers and CLI processes, asking all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (s, bw) = (stop.clone(), b.clone());
    let asker = thread::spawn(move || {
        let mut seen = Vec::new();
        while !s.load(Ordering::SeqCst) {
            match bw.token("x", Duration::from_secs(600)) {
                Ok(_) => seen.push("ok".to_string()),
                Err(e) if e.exit_code() == 5 => {}
                Err(e) => seen.push(e.to_string()),
            }
            thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    let cli_stop = stop.clone();
    let cli = {
        let mut base = env.cmd();
        base.args(["token", "x", "--min-ttl", "600"]);
        let program = base.get_program().to_owned();
        let args: Vec<_> = base.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = base
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        thread::spawn(move || {
            let mut codes = Vec::new();
            while !cli_stop.load(Ordering::SeqCst) {
                let out = std::process::Command::new(&program)
                    .env_clear()
                    .envs(envs.iter().cloned())
                    .args(&args)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                codes.push(code(&out));
                thread::sleep(Duration::from_millis(50));
            }
            codes
        })
    };
    thread::sleep(Duration::from_secs(10));
    server.start().unwrap();
    let g = owner.join().unwrap();
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let seen = asker.join().unwrap();
    let codes = cli.join().unwrap();
    let requests = env.fake.stats().token_requests;
    let family = env.fake.family_state("x");
    assert_eq!(
        requests,
        1,
        "the refresh token was sent {requests} times (family revoked: {} {:?}); owner: {:?}; \
         other box saw {:?}; CLI exit codes {:?}",
        family.revoked,
        family.revoked_reason,
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
        seen.iter().collect::<std::collections::BTreeSet<_>>(),
        codes.iter().collect::<std::collections::BTreeSet<_>>(),
    );
    let g = g.expect("the rotated token landed");
    assert_eq!(g.access_token.expose(), family.current_access_token);
    let row = a.get("x").unwrap();
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    server.stop();
}

/// `migrate --to` while another box refreshes: the copy reads the source
/// table by table, each in its own statement. The source's answer to the
/// `credentials` dump is held 2 s on its way (a slow path); meanwhile
/// another box rotates the credential. The credentials copied then hold
/// the refresh token that the `spent_tokens` and `events` copied after
/// already record as spent — the counts agree, so `migrate` reports
/// success, and a box started on the target sends the spent token. It
/// must either refuse (the source changed under it) or copy one consistent
/// moment.
/// (Failed on e5580fa, 3 runs of 3: migrate exit 0, counts all equal
/// (credentials 1, events 3, spent_tokens 1), the copy's row at v1 with the
/// first refresh token while its spent_tokens holds that token's
/// fingerprint; a box on the copy sent it: refresh_token_reused, dead.
/// The refusal "while a refresh is in flight" only looks at the
/// credentials dump; the dumps are separate statements, no snapshot.
/// Mended: the source is read in one snapshot and the target commits only
/// if the source has not changed since.)
#[test]
fn migrate_while_another_box_refreshes_never_copies_a_spent_token_as_current() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("m", 60);
    let live = env.warden();
    assert!(live.get("m").is_ok());
    let relay = Relay::with_trigger(
        server_addr(env.pg_url()),
        Some((b"FROM credentials ORDER BY", Duration::from_millis(2000))),
    );
    let target = env.dir.path().join("copy.db");
    let migrating = env
        .cmd()
        .env("TOKENWARDEN_DB", relay.url(env.pg_url()))
        .args(["migrate", "--to", target.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the credentials dump", Duration::from_secs(30), || {
        relay.executed.lock().unwrap().is_some()
    });
    // The dump has run; its answer is on its way: rotate on the live box.
    let fresh = live.refresh("m", true).expect("the live box's refresh");
    let out = output_within(migrating, Duration::from_secs(120)).expect("migrate finished");
    eprintln!(
        "migrate: exit {} {} {}",
        code(&out),
        text(&out.stdout),
        text(&out.stderr)
    );
    let family = env.fake.family_state("m");
    assert_eq!(fresh.access_token.expose(), family.current_access_token);
    if code(&out) != 0 {
        // Refused: fine, as long as it says so.
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
        return;
    }
    let copy = tokenwarden::Warden::open(&target, env.config()).expect("the copy opens");
    let row = copy.get("m").unwrap();
    let stale = row.refresh_token.expose() != family.current_refresh_token;
    eprintln!(
        "copy: v{} {:?} issued index {:?} of {}",
        row.status.version,
        row.status.state,
        family
            .issued_refresh_tokens
            .iter()
            .position(|t| t == row.refresh_token.expose()),
        family.issued_refresh_tokens.len()
    );
    // What a box started on the copy does with it.
    let used = copy.token("m", Duration::from_secs(600));
    let after = env.fake.family_state("m");
    assert!(
        !stale,
        "migrate exited 0 but copied the spent refresh token as current (its own spent_tokens \
         copy says it is spent); a box on the copy then got {:?}, family revoked: {} {:?}; \
         upstream saw {} requests, {} reuses",
        used.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
        after.revoked,
        after.revoked_reason,
        env.fake.stats().token_requests,
        env.fake.stats().reuse_detected,
    );
    assert!(!after.revoked);
}

/// A `refreshing` row whose lease, on this database's own clock id, ends
/// more than `MAX_LEASE_MS` (1 h) ahead of the server's clock — what a
/// live lease becomes when the server's clock is stepped back by hours
/// (NTP correcting a wrong clock) and its owner is then killed. The pure
/// core reads such a lease as over (so nothing is held by a deadline
/// nobody will see) and claims; the guarded UPDATE on the server sees it
/// live and refuses. A caller must not spin on that disagreement: it
/// answers within its wait (busy / unavailable), sends nothing upstream.
/// (Failed on e5580fa: `tokenwarden token` never returned — killed after
/// 30 s, its wait being 5.5 s — while the database counted ~74 000
/// transactions: `obtain` re-reads and claims again at once after a lost
/// claim, without looking at its deadline. Nothing was sent upstream. The
/// same disagreement, core "over" vs server "live", is a likely cause of
/// the operator's hang attack14 saw on a foreign clock id before the mend.
/// Mended: a claim the store refuses on an unchanged row waits a poll and
/// answers busy at its deadline.)
#[test]
fn a_lease_beyond_the_longest_on_the_servers_clock_never_hangs_a_caller() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("far", 60);
    let w = env.warden();
    assert!(w.get("far").is_ok());
    let mut admin = pg::client(env.pg_url());
    let changed = admin
        .execute(
            "UPDATE credentials SET state = 'refreshing', resume_state = 'valid', \
             lease_owner = 'ghost', lease_id = 'ghost', version = version + 1, \
             lease_clock = (SELECT value::int8 FROM meta WHERE key = 'lease_clock'), \
             lease_until_ms = (extract(epoch from clock_timestamp()) * 1000)::int8 + 7200000 \
             WHERE id = 'far'",
            &[],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let commits = |admin: &mut postgres::Client| -> i64 {
        admin
            .query_one(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database                  WHERE datname = current_database()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = commits(&mut admin);
    let started = Instant::now();
    let op = env
        .cmd()
        .args(["token", "far", "--min-ttl", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI's wait is lease + request timeout (5.5 s here): far less.
    let out = output_within(op, Duration::from_secs(30));
    let stats = env.fake.stats();
    let Some(out) = out else {
        // The statistics collector reports with a delay.
        thread::sleep(Duration::from_secs(1));
        panic!(
            "`tokenwarden token` on a lease beyond the longest hung (killed after {:?}); \
             upstream saw {} requests; the database saw ~{} transactions meanwhile",
            started.elapsed(),
            stats.token_requests,
            commits(&mut admin) - before
        );
    };
    assert_eq!(stats.token_requests, 0, "{}", text(&out.stderr));
    assert_ne!(
        code(&out),
        0,
        "served while refreshing? {}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

/// The clock interval under a jittery and lopsided path: box S reaches
/// the database through a relay whose delays change phase by phase —
/// jitter 0..600 ms both ways, then 1.2 s client→server only (claims
/// arrive late; answers fast), then 1.2 s server→client only (readings
/// arrive old) — while box F (direct) and CLI processes through S's path
/// force a refresh of one credential over and over. Whatever S
/// estimates, no lease may be taken over live, no owner may send after
/// its lease ended on the server: one request in flight per family at a
/// time, no refresh token presented after its successful answer, never a
/// reuse.
#[test]
fn jittery_and_lopsided_paths_never_send_a_token_twice() {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 2.0,
            lease_ttl: 10.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    env.login("j", 60);
    let relay = Relay::to(server_addr(env.pg_url()));
    let slow_url = relay.url(env.pg_url());
    let s = Arc::new(tokenwarden::Warden::open(&slow_url, env.config()).unwrap());
    let f = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(700));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for (i, w) in [s.clone(), s.clone(), f.clone(), f.clone()]
        .into_iter()
        .enumerate()
    {
        let stop = stop.clone();
        callers.push(thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = w.refresh("j", true) {
                    if e.to_string().contains("dead") {
                        errors.push(format!("box {i}: {e}"));
                        break;
                    }
                }
                thread::sleep(Duration::from_millis(30));
            }
            errors
        }));
    }
    // CLI processes on both paths.
    let clis: Vec<_> = [slow_url.clone(), env.pg_url().to_owned()]
        .into_iter()
        .map(|db| {
            let mut cli = env.cmd();
            cli.env("TOKENWARDEN_DB", db)
                .args(["refresh", "j", "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let cli_stop = stop.clone();
            thread::spawn(move || {
                let mut runs = 0;
                while !cli_stop.load(Ordering::SeqCst) {
                    let _ = cli.status();
                    runs += 1;
                }
                runs
            })
        })
        .collect();
    let phases: [(u64, u64, u64, u64); 3] = [(0, 600, 0, 600), (1200, 0, 0, 0), (0, 0, 1200, 0)];
    for (up, up_jitter, down, down_jitter) in phases {
        relay.up.delay_ms.store(up, Ordering::SeqCst);
        relay.up.jitter_ms.store(up_jitter, Ordering::SeqCst);
        relay.down.delay_ms.store(down, Ordering::SeqCst);
        relay.down.jitter_ms.store(down_jitter, Ordering::SeqCst);
        thread::sleep(Duration::from_secs(8));
    }
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = callers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let cli_runs: Vec<i32> = clis.into_iter().map(|c| c.join().unwrap()).collect();
    let stats = env.fake.stats();
    eprintln!(
        "jittery paths: {} token requests, CLI runs (slow path, direct) {cli_runs:?}",
        stats.token_requests
    );
    let family = env.fake.family_state("j");
    assert!(
        stats.token_requests >= 5,
        "too few refreshes to mean anything: {} (CLI runs {cli_runs:?})",
        stats.token_requests
    );
    assert_eq!(
        stats.reuse_detected, 0,
        "a refresh token was reused ({} requests, errors {errors:?})",
        stats.token_requests
    );
    assert!(!family.revoked, "{:?} {errors:?}", family.revoked_reason);
    env.fake.assert_single_flight();
    env.fake.assert_no_reuse_after_success();
    assert!(errors.is_empty(), "{errors:?}");
    let row = f.get("j").unwrap();
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
}

/// `url` with its user replaced by `role` (the tests' server trusts
/// loopback, so no password).
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{role}@{host}")
}

/// A rolling upgrade from the code before the mend: a database used only
/// by boxes that could read `pg_control_system()` has no `lease_clock` in
/// `meta` (they named the clock by the system identifier and stored
/// nothing — simulated by deleting the row a new box wrote). A box still
/// running (it named the clock by the system identifier, as the old code
/// did) is mid-refresh when the first upgraded box opens the database as
/// the service's role, which may not call `pg_control_system()`: it picks
/// a random id, stores it, and must still not take the running box's live
/// lease over.
/// (Failed on e5580fa: the upgraded box (random id) and the old box
/// (system id) each judged the other's lease on "another clock", i.e.
/// over, and took it over in turn: 17 token requests in 30 s, the family
/// revoked, the old box's caller got dead (refresh_token_invalidated), and
/// the upgraded box's `token` never returned — killed after 30 s. Nothing
/// reconciles a `meta` without `lease_clock` with the leases already in
/// the rows.)
#[test]
fn an_upgrade_from_a_meta_without_lease_clock_never_takes_a_live_lease_over() {
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
    env.login("u", 60);
    // The old box: opened as the superuser, clock named by the system id.
    let old_box = Arc::new(env.warden());
    let url = env.pg_url().to_owned();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let role = format!("svc_{db}");
    let mut admin = pg::client(&url);
    let system: i64 = admin
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let stored: String = admin
        .query_one("SELECT value FROM meta WHERE key = 'lease_clock'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        system.to_string(),
        "the superuser box named the clock by the system id"
    );
    admin
        .batch_execute(&format!(
            "DELETE FROM meta WHERE key = 'lease_clock'; \
             CREATE ROLE {role} LOGIN; ALTER DATABASE {db} OWNER TO {role}; \
             ALTER SCHEMA tokenwarden OWNER TO {role}; \
             DO $$ DECLARE t text; BEGIN \
               FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'tokenwarden' LOOP \
                 EXECUTE format('ALTER TABLE tokenwarden.%I OWNER TO {role}', t); \
               END LOOP; END $$; \
             REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC"
        ))
        .unwrap();
    env.fake.set_latency(Duration::from_millis(4000));
    let w = old_box.clone();
    let owner = thread::spawn(move || w.token("u", Duration::from_secs(600)));
    wait_until("the old box's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    // The first upgraded box, as the service's role.
    let op = env
        .cmd()
        .env("TOKENWARDEN_DB", as_role(&url, &role))
        .args(["token", "u", "--min-ttl", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (watch_url, watch_role, watch_seen) = (url.clone(), role.clone(), seen.clone());
    thread::spawn(move || {
        let mut c = pg::client(&watch_url);
        for _ in 0..20 {
            thread::sleep(Duration::from_secs(1));
            let rows = c
                .query(
                    "SELECT state, coalesce(wait_event_type, '') || '/' || \
                     coalesce(wait_event, ''), left(query, 60) FROM pg_stat_activity \
                     WHERE usename = $1",
                    &[&watch_role],
                )
                .unwrap_or_default();
            let now: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{:?} {:?} {:?}",
                        r.get::<_, Option<String>>(0),
                        r.get::<_, Option<String>>(1),
                        r.get::<_, Option<String>>(2)
                    )
                })
                .collect();
            watch_seen.lock().unwrap().push(now.join(" | "));
        }
    });
    let out = output_within(op, Duration::from_secs(30));
    let g = owner.join().unwrap();
    let requests = env.fake.stats().token_requests;
    let family = env.fake.family_state("u");
    let Some(out) = out else {
        let seen = seen.lock().unwrap();
        panic!(
            "the upgraded box hung (killed after 30 s); upstream saw {requests} requests; \
             old box: {:?}; its sessions: {:?}",
            g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
            &seen[seen.len().saturating_sub(3)..]
        );
    };
    let now_stored: Option<String> = admin
        .query_opt("SELECT value FROM meta WHERE key = 'lease_clock'", &[])
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        now_stored.is_some(),
        "the upgraded box never opened the database: exit {} {}",
        code(&out),
        text(&out.stderr).trim()
    );
    assert_eq!(
        requests,
        1,
        "the upgraded box took the old box's live lease over: sent {requests} times \
         (family revoked: {}; meta lease_clock now {:?} vs system id {system}; new box: exit {} \
         {}; old box: {:?})",
        family.revoked,
        now_stored,
        code(&out),
        text(&out.stderr).trim(),
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    assert!(!family.revoked);
}

/// LISTEN/NOTIFY is only a hint: a waiter on another box whose LISTEN
/// connection is killed (`pg_terminate_backend`) while it waits still
/// learns of the owner's commit — by its polls — within its wait, and
/// serves the owner's new token, never the old one; and the next wait,
/// after the listener was lost, works as well.
#[test]
fn a_killed_listener_never_leaves_a_waiter_waiting_or_serving_an_old_token() {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 4.0,
            lease_ttl: 8.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    env.login("n", 60);
    let owner_box = Arc::new(env.warden());
    let waiter_box = Arc::new(env.warden());
    let mut admin = pg::client(env.pg_url());
    env.fake.set_latency(Duration::from_millis(2500));
    for round in 0..2 {
        let w = owner_box.clone();
        let owner = thread::spawn(move || w.refresh("n", true));
        wait_until("the owner's request", Duration::from_secs(10), || {
            env.fake.stats().in_flight == 1
        });
        let w = waiter_box.clone();
        let started = Instant::now();
        let waiter = thread::spawn(move || w.token("n", Duration::from_secs(600)));
        // The waiter's LISTEN connection, once it has one: killed.
        let mut killed = 0;
        let end = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < end && killed == 0 {
            killed = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
                    &[],
                )
                .unwrap()
                .len();
            thread::sleep(Duration::from_millis(20));
        }
        let g = owner.join().unwrap().expect("the owner's refresh");
        let got = waiter.join().unwrap();
        let took = started.elapsed();
        let got =
            got.unwrap_or_else(|e| panic!("round {round}: the waiter got {e} (killed {killed})"));
        assert_eq!(
            got.access_token.expose(),
            g.access_token.expose(),
            "round {round}: the waiter served another token than the owner's (killed {killed})"
        );
        assert!(
            took < Duration::from_secs(12),
            "round {round}: the waiter waited {took:?}, beyond its wait"
        );
        assert_eq!(env.fake.stats().token_requests, round + 1);
    }
    assert!(!env.fake.family_state("n").revoked);
}

/// An old backup file migrated onto the PostgreSQL database a live box is
/// using: refused (the target is not empty), and the live row — rotated
/// since the backup — is untouched: the backup's spent refresh token never
/// becomes current.
#[test]
fn migrating_an_old_backup_onto_a_live_database_is_refused_and_changes_nothing() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("b", 60);
    let backup = env.dir.path().join("backup.db");
    let out = env.run(&["migrate", "--to", backup.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let live = env.warden();
    let fresh = live.refresh("b", true).expect("the live box's refresh");
    let out = env
        .cmd()
        .env("TOKENWARDEN_DB", &backup)
        .args(["migrate", "--to", env.pg_url()])
        .output()
        .unwrap();
    assert_ne!(
        code(&out),
        0,
        "the backup was migrated onto the live database"
    );
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    let family = env.fake.family_state("b");
    let row = live.get("b").unwrap();
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    assert_eq!(
        live.token("b", Duration::ZERO)
            .unwrap()
            .access_token
            .expose(),
        fresh.access_token.expose()
    );
    assert_eq!(env.fake.stats().token_requests, 1);
}

/// The owner's commit of its rotated tokens runs on the server, but its
/// answer never comes back (the connection is cut right after: an
/// ambiguous commit), while another box asks for the same credential. The
/// owner must find out from the row that its tokens landed, and both boxes
/// serve them: one upstream request, one success event, the row holding
/// the current refresh token.
#[test]
fn an_ambiguous_commit_of_rotated_tokens_lands_exactly_once() {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 4.0,
            lease_ttl: 10.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    env.login("amb", 60);
    // The commit of new tokens carries the new access token (a JWT whose
    // header starts so); nothing else the owner sends up does.
    let relay = Relay::cutting(server_addr(env.pg_url()), b"eyJhbGciOiJSUzI1NiIs");
    let owner_box =
        Arc::new(tokenwarden::Warden::open(relay.url(env.pg_url()), env.config()).unwrap());
    let other_box = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(1000));
    let w = owner_box.clone();
    let owner = thread::spawn(move || w.token("amb", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let w = other_box.clone();
    let other = thread::spawn(move || w.token("amb", Duration::from_secs(600)));
    let g = owner.join().unwrap();
    let o = other.join().unwrap();
    assert!(
        relay.executed.lock().unwrap().is_some(),
        "the commit was never cut: the test exercised nothing"
    );
    let family = env.fake.family_state("amb");
    let requests = env.fake.stats().token_requests;
    let g = g.unwrap_or_else(|e| panic!("the owner got {e} ({requests} requests)"));
    let o = o.unwrap_or_else(|e| panic!("the other box got {e} ({requests} requests)"));
    assert_eq!(requests, 1);
    assert_eq!(g.access_token.expose(), family.current_access_token);
    assert_eq!(o.access_token.expose(), family.current_access_token);
    let row = other_box.get("amb").unwrap();
    assert_eq!(row.status.state, State::Valid);
    assert_eq!(row.refresh_token.expose(), family.current_refresh_token);
    let mut admin = pg::client(env.pg_url());
    let successes: i64 = admin
        .query_one(
            "SELECT count(*) FROM events WHERE credential_id = 'amb' \
             AND from_state = 'refreshing' AND to_state = 'valid'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        successes, 1,
        "the rotated tokens were committed {successes} times"
    );
    assert!(!family.revoked);
}

/// A reject recorded on one box while upstream fails (503): the rejected
/// access token stays in the row (no new one could be had), and no other
/// box or process may serve it — not the CLI, not another library box —
/// until a refresh replaces it; then the new token is served everywhere.
#[test]
fn a_reject_while_upstream_fails_is_never_served_by_another_box() {
    let Some(env) = Env::with_on(
        Tuning {
            backoff_min: 1.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    env.login("rj", 3600);
    let a = env.warden();
    let b = env.warden();
    let t = a
        .token("rj", Duration::ZERO)
        .unwrap()
        .access_token
        .expose()
        .to_owned();
    env.fake
        .push_fault(crate::common::fake_oauth::Fault::status(
            503,
            r#"{"error":"temporarily_unavailable"}"#,
        ));
    let rejected = b.reject("rj", &t);
    if let Ok(g) = &rejected {
        assert_ne!(
            g.access_token.expose(),
            t,
            "the reject served the rejected token"
        );
    }
    let out = env.run(&["token", "rj"]);
    assert_ne!(
        text(&out.stdout).trim(),
        t,
        "the CLI served the token rejected on another box (exit {})",
        code(&out)
    );
    if let Ok(g) = a.token("rj", Duration::ZERO) {
        assert_ne!(
            g.access_token.expose(),
            t,
            "box A served the token rejected on box B"
        );
    }
    // Upstream back, the backoff (1 s) over: a new token, served by everyone.
    assert_eq!(
        env.fake.pending_faults(),
        0,
        "the reject's refresh met the 503"
    );
    thread::sleep(Duration::from_millis(1500));
    let fresh = a
        .token("rj", Duration::ZERO)
        .expect("a new token once upstream is back");
    assert_ne!(fresh.access_token.expose(), t);
    let out = env.run(&["token", "rj"]);
    assert_eq!(text(&out.stdout).trim(), fresh.access_token.expose());
    assert!(!env.fake.family_state("rj").revoked);
    env.fake.assert_no_reuse_after_success();
}

/// The owner alone cut off from the database (its path holds every byte,
/// no connection closed — a partition) from just before upstream answers
/// until well after its lease ended on the server's clock, while another
/// box with a good path asks for the credential. The same question as the
/// restart above, without any restart: must the other box wait for an
/// owner it cannot hear from, or may it resend the refresh token the owner
/// already spent?
/// (Failed on e5580fa: the other box took the lease over once it ended on
/// the server and sent the spent token — 2 requests, refresh_token_reused,
/// dead on both boxes. Same root as the restart hole: whatever outlasts
/// the commit margin (here 1 s; at most 2 s, or the lease's slack after
/// an early attempt) between upstream's answer and the commit burns the
/// login as soon as any other box asks. No lease alone can avoid it;
/// the docs promise more ("never a login's death").)
/// Not mended: a box cannot tell an owner that is cut off from one that
/// was killed (whose lease must be taken over, `postgres::
/// a_killed_owning_box_is_taken_over_after_its_lease`); README "Several
/// boxes" now says so and what to do (a reliable network, a longer lease).
#[test]
#[ignore = "KNOWN LIMIT (documented): owner partitioned from the DB past its lease after upstream answered: another box resends the spent token, login dead"]
fn an_owner_partitioned_from_the_database_past_its_lease_loses_nothing() {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 4.0,
            lease_ttl: 8.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    env.login("p", 60);
    let relay = Relay::to(server_addr(env.pg_url()));
    let owner_box =
        Arc::new(tokenwarden::Warden::open(relay.url(env.pg_url()), env.config()).unwrap());
    let other_box = Arc::new(env.warden());
    env.fake.set_latency(Duration::from_millis(1500));
    let w = owner_box.clone();
    let owner = thread::spawn(move || w.token("p", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    relay.up.hold.store(true, Ordering::SeqCst);
    relay.down.hold.store(true, Ordering::SeqCst);
    let w = other_box.clone();
    let other = thread::spawn(move || {
        w.token_within("p", Duration::from_secs(600), Duration::from_secs(20))
    });
    thread::sleep(Duration::from_secs(12));
    relay.up.hold.store(false, Ordering::SeqCst);
    relay.down.hold.store(false, Ordering::SeqCst);
    let g = owner.join().unwrap();
    let o = other.join().unwrap();
    let requests = env.fake.stats().token_requests;
    let family = env.fake.family_state("p");
    assert_eq!(
        requests,
        1,
        "the refresh token was sent {requests} times (family revoked: {} {:?}); owner: {:?}; \
         other box: {:?}",
        family.revoked,
        family.revoked_reason,
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
        o.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    assert!(!family.revoked);
}

/// The server's clock steps forward while a lease is live — an NTP step on
/// the database host, or a failover to a standby whose clock runs ahead
/// (it keeps the system identifier, so the lease clock id is the same):
/// here the test's own server is restarted under `faketime +30s` while the
/// owner's request is in flight. The lease the owner took now ends 30 s
/// early on the clock that decides takeovers; another box asking must not
/// take it over while the owner's request is still in flight.
/// (Failed on e5580fa: the server came back 30 s ahead (checked), the
/// owner's request still in flight (checked); the other box's reading
/// restarted its interval on the new clock, the lease read over, the
/// server's own check `lease_until_ms <= clock_timestamp()` agreed, and
/// it sent the same refresh token: 2 requests, refresh_token_reused, dead
/// on both boxes. The interval follows steps of the estimate; nothing
/// protects a lease end written on the old clock.)
/// Holds since no lease is taken over in the first 10 s after the server
/// started (the step here comes with a restart). A step of a running
/// server's clock, or a promoted standby that started long before, is not
/// covered: README "Several boxes" asks for slewed, synchronised clocks.
#[test]
fn a_forward_step_of_the_servers_clock_never_hands_a_live_lease_over() {
    let Some(server) = pg::private_server("attack14b-step") else {
        return;
    };
    let env = Env::on_url(
        Tuning {
            request_timeout: 8.0,
            lease_ttl: 20.0,
            ..Tuning::default()
        },
        pg::database_on(&server),
    );
    env.login("st", 60);
    let a = Arc::new(env.warden());
    let b = env.warden();
    env.fake.set_latency(Duration::from_millis(6000));
    let w = a.clone();
    let owner = thread::spawn(move || w.token("st", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let Some(stepped) = Stepped::restart(&server, "attack14b-step", env.pg_url(), 30) else {
        return;
    };
    assert_eq!(
        env.fake.stats().in_flight,
        1,
        "the owner's request is still in flight"
    );
    // Another box asks while the owner's request is in flight.
    let other = b.token("st", Duration::from_secs(600));
    let g = owner.join().unwrap();
    let requests = env.fake.stats().token_requests;
    let family = env.fake.family_state("st");
    drop(stepped);
    assert_eq!(
        requests,
        1,
        "the live lease was taken over after the server's clock stepped: sent {requests} times \
         (family revoked: {} {:?}); owner: {:?}; other box: {:?}",
        family.revoked,
        family.revoked_reason,
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
        other.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    assert!(!family.revoked);
}

/// A private server restarted with its clock stepped by `offset_s`
/// seconds (libfaketime preloaded in the server only); stopped on drop.
struct Stepped(Child);

impl Stepped {
    /// Stops `server` (private, named `name`) and starts it again from its
    /// data directory with its clock `offset_s` seconds off; checks the
    /// step through `url`. `None` (said loudly) without libfaketime.
    fn restart(server: &pg::Local, name: &str, url: &str, offset_s: i64) -> Option<Stepped> {
        const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
        if !std::path::Path::new(LIBFAKETIME).exists() {
            eprintln!("\n*** SKIPPED: no libfaketime to step the server's clock ***\n");
            return None;
        }
        let port: u16 = server.base().rsplit(':').next()?.parse().ok()?;
        let root = std::env::temp_dir()
            .join(format!("tw-pg-test-{}", std::process::id()))
            .join(name);
        let postgres_bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/postgres"))
            .filter(|p| p.is_file())
            .max()?;
        server.stop();
        let mut cmd = std::process::Command::new("setpriv");
        if runs_as_root() {
            cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        }
        let child = cmd
            .arg("--pdeathsig=INT")
            // Preloaded in the server only (not in setpriv, which runs as root).
            .arg("env")
            .arg(format!("LD_PRELOAD={LIBFAKETIME}"))
            .arg(format!("FAKETIME={offset_s:+}s"))
            .arg("FAKETIME_DONT_FAKE_MONOTONIC=1")
            .arg("FAKETIME_DISABLE_SHM=1")
            .arg(&postgres_bin)
            .arg("-D")
            .arg(root.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(root.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("stepped.log")).ok()?)
            .spawn()
            .expect("start the stepped server");
        let stepped = Stepped(child);
        let end = Instant::now() + Duration::from_secs(30);
        let mut admin = loop {
            if let Ok(c) = postgres::Client::connect(url, postgres::NoTls) {
                break c;
            }
            assert!(
                Instant::now() < end,
                "the stepped server never came up: {}",
                std::fs::read_to_string(root.join("stepped.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        };
        let server_s: f64 = admin
            .query_one("SELECT extract(epoch from clock_timestamp())::float8", &[])
            .unwrap()
            .get(0);
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let off = server_s - real;
        assert!(
            (off - offset_s as f64).abs() < 5.0,
            "the server's clock was not stepped by {offset_s} s: {off} s"
        );
        Some(stepped)
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Whether this process runs as root (the server refuses to: run it as
/// `nobody`). The owner of /proc/self is this process's effective user.
fn runs_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The natural way to the lease "beyond the longest" above: the server's
/// clock steps back two hours (NTP correcting a clock that ran ahead, or a
/// failover to a standby behind) while a lease is live, and its owner — a
/// CLI process — is SIGKILLed. On the new clock the lease ends two hours
/// from now: the core reads it as out of range (over), the server's guard
/// as live. Another caller must answer within its wait, not spin.
/// (Failed on e5580fa: the server back 2 h behind (checked), the owner
/// killed, the next `tokenwarden token` never returned — killed after
/// 30 s; its wait is 5.5 s. It would spin until the server's clock
/// reaches the lease's end, two hours on.)
#[test]
fn a_backward_step_of_the_servers_clock_then_a_killed_owner_never_hangs_a_caller() {
    let Some(server) = pg::private_server("attack14b-back") else {
        return;
    };
    let env = Env::on_url(Tuning::default(), pg::database_on(&server));
    env.login("bk", 60);
    env.fake.set_latency(Duration::from_millis(20_000));
    let mut owner = env
        .cmd()
        .args(["token", "bk", "--min-ttl", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    let stepped = Stepped::restart(&server, "attack14b-back", env.pg_url(), -7200);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &owner.id().to_string()])
        .status();
    let _ = owner.wait();
    let Some(stepped) = stepped else {
        return;
    };
    let started = Instant::now();
    let caller = env
        .cmd()
        .args(["token", "bk", "--min-ttl", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its wait is lease + request timeout (5.5 s here).
    let out = output_within(caller, Duration::from_secs(30));
    drop(stepped);
    let Some(out) = out else {
        panic!(
            "`tokenwarden token` hung after a backward step of the server's clock and a killed \
             owner (killed after {:?}); upstream saw {} requests",
            started.elapsed(),
            env.fake.stats().token_requests
        );
    };
    assert_ne!(
        code(&out),
        0,
        "served while refreshing? {}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

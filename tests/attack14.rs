//! Hostile review of issue 14 (the PostgreSQL backend): attempts to break
//! "a rotating refresh token is used exactly once and never lost, a
//! rejected token never served again" on PostgreSQL. Tests marked
//! `#[ignore = "HOLE: ..."]` fail on the code they were written against;
//! the others hold and stay as guards. Skipped loudly without a server
//! (common/pg.rs).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::tw::{code, text, Backend, Env, Tuning};

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// `url` with its user replaced by `role` (the tests' server trusts
/// loopback, so no password).
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{role}@{host}")
}

/// Two boxes on one database connected as two roles: one may call
/// `pg_control_system()` (a superuser: an operator's `tokenwarden token`),
/// the other may not (the service's own role, in a database hardened with
/// `REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC`). Their lease clock ids then
/// differ (system identifier vs the random fallback in `meta`), each judges
/// the other's live lease "on another clock" = over, and the guarded
/// UPDATE lets it through (`lease_clock IS DISTINCT FROM $27`): the second
/// box takes over a live lease and sends the same refresh token upstream
/// again. (On that code the operator's `token` hung instead of answering;
/// mended: one lease clock id per database, kept in `meta`.)
#[test]
fn boxes_on_roles_with_different_rights_never_take_over_a_live_lease() {
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
    let url = env.pg_url().to_owned();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let role = format!("app_{db}");
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {db} OWNER TO {role}; \
             REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC"
        ))
        .unwrap();
    let app_url = as_role(&url, &role);
    // The service's role creates the schema (it owns the database).
    let service = tokenwarden::Warden::open(&app_url, env.config()).expect("open as the app role");
    let mut app = postgres::Client::connect(&app_url, postgres::NoTls).unwrap();
    if app
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .is_ok()
    {
        panic!("the app role may still call pg_control_system(): the setup failed");
    }
    // The operator's CLI (superuser) imports.
    env.login("c", 60);
    env.fake.set_latency(Duration::from_millis(2500));
    let service = Arc::new(service);
    let s = service.clone();
    let owner = thread::spawn(move || s.token("c", Duration::from_secs(600)));
    wait_until("the owner's request", Duration::from_secs(10), || {
        env.fake.stats().in_flight == 1
    });
    // The operator asks while the service's refresh is in flight.
    let out = env.run(&["token", "c", "--min-ttl", "600"]);
    let g = owner.join().unwrap();
    let requests = env.fake.stats().token_requests;
    assert_eq!(
        requests,
        1,
        "the operator's box took over the service's live lease: the refresh token was sent \
         {requests} times (operator: exit {} {}; owner: {:?})",
        code(&out),
        text(&out.stderr),
        g.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    let g = g.expect("the owner's refresh");
    assert_eq!(text(&out.stdout).trim(), g.access_token.expose());
}

/// `sslmode=require` against the tests' server, which has no TLS: refused
/// (exit non-zero, a clear message), never a silent fall-back to plain
/// text — and nothing is written.
#[test]
fn sslmode_require_against_a_server_without_tls_is_refused() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let url = format!("{}?sslmode=require", env.pg_url());
    let out = env
        .cmd()
        .env("TOKENWARDEN_DB", &url)
        .args(["list"])
        .output()
        .unwrap();
    assert_ne!(
        code(&out),
        0,
        "served over plain text: {}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    assert!(tokenwarden::Warden::open(&url, env.config()).is_err());
}

/// A password in the database URL is never printed: not by `list`, `init`
/// or `migrate` (which name the database), not in the refusal of a bad
/// option, not when the server cannot be reached.
#[test]
fn a_database_password_is_never_printed() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    const PW: &str = "hunter2pw-secret";
    let (scheme, rest) = env.pg_url().split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let with_pw = format!("{scheme}://{user}:{PW}@{host}");
    let dead = {
        let port = crate::common::http::free_port();
        format!("postgres://{user}:{PW}@127.0.0.1:{port}/x")
    };
    let target = tempfile::tempdir().unwrap();
    let target = target.path().join("copy.db");
    let runs: Vec<(String, Vec<&str>)> = vec![
        (with_pw.clone(), vec!["init"]),
        (with_pw.clone(), vec!["list"]),
        (with_pw.clone(), vec!["token", "nope"]),
        (
            with_pw.clone(),
            vec!["migrate", "--to", target.to_str().unwrap()],
        ),
        (format!("{with_pw}?sslmode=prefer"), vec!["list"]),
        (format!("{with_pw}?schema=Bad-Name"), vec!["list"]),
        (format!("{with_pw}?bogus=1"), vec!["list"]),
        (format!("{with_pw}?sslmode=require"), vec!["list"]),
        (dead.clone(), vec!["list"]),
        (dead, vec!["init"]),
    ];
    for (db, args) in runs {
        let out = env
            .cmd()
            .env("TOKENWARDEN_DB", &db)
            .env("RUST_LOG", "trace")
            .args(&args)
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            !all.contains(PW),
            "{args:?} on {db:?} printed the password:\n{all}"
        );
        // --db on the command line too.
        let out = env
            .cmd()
            .env_remove("TOKENWARDEN_DB")
            .arg("--db")
            .arg(&db)
            .args(&args)
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            !all.contains(PW),
            "--db {args:?} printed the password:\n{all}"
        );
    }
    let err = tokenwarden::Warden::open(format!("{with_pw}?sslmode=require"), env.config())
        .err()
        .expect("no TLS on the tests' server");
    assert!(!format!("{err} {err:?}").contains(PW), "{err:?}");
}

/// A hostile schema name (`schema=x;DROP …`) is refused before anything
/// is sent, by the library and the binary; the tables already there are
/// untouched.
#[test]
fn a_hostile_schema_name_is_refused_and_changes_nothing() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    env.login("a", 3600);
    for schema in [
        "x;DROP%20SCHEMA%20tokenwarden%20CASCADE",
        "x%3BDROP%20SCHEMA%20tokenwarden%20CASCADE",
        "tokenwarden%22;DROP%20SCHEMA%20tokenwarden%20CASCADE;--",
        "a%00b",
        "",
        "pg_catalog",
    ] {
        let url = format!("{}?schema={schema}", env.pg_url());
        let out = env
            .cmd()
            .env("TOKENWARDEN_DB", &url)
            .args(["init"])
            .output()
            .unwrap();
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{schema}: {}",
            text(&out.stderr)
        );
        if schema == "pg_catalog" {
            // A plain identifier; whatever happens, not a panic (above).
            continue;
        }
        assert_ne!(code(&out), 0, "{schema}: accepted");
    }
    let w = env.warden();
    assert_eq!(w.list().unwrap().len(), 1, "the real schema is intact");
    w.token("a", Duration::ZERO).unwrap();
}

/// Two schemas in one database (two deployments sharing a server): the
/// same credential id in each stays apart — a rotation in one neither
/// changes nor wakes the other, each serves its own token, and a reject
/// in one is not seen as spent in the other.
#[test]
fn two_schemas_in_one_database_stay_apart() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let a_url = format!("{}?schema=dep_a", env.pg_url());
    let b_url = format!("{}?schema=dep_b", env.pg_url());
    let a_env = Env::on_url(Tuning::default(), a_url.clone());
    let b_env = Env::on_url(Tuning::default(), b_url.clone());
    let ga = a_env.login("x", 3600);
    let gb = b_env.login("x", 3600);
    let wa = a_env.warden();
    let wb = b_env.warden();
    assert_eq!(
        wa.token("x", Duration::ZERO).unwrap().access_token.expose(),
        ga.access_token.as_str()
    );
    let fresh = wa.reject("x", &ga.access_token).unwrap();
    assert_ne!(fresh.access_token.expose(), ga.access_token.as_str());
    assert_eq!(
        wb.token("x", Duration::ZERO).unwrap().access_token.expose(),
        gb.access_token.as_str(),
        "schema b's token changed by a reject in schema a"
    );
    assert_eq!(
        wa.token("x", Duration::ZERO).unwrap().access_token.expose(),
        fresh.access_token.expose()
    );
    assert_eq!(a_env.fake.stats().token_requests, 1);
    assert_eq!(b_env.fake.stats().token_requests, 0);
    // The default schema holds neither.
    assert!(env.warden().list().unwrap().is_empty());
}

/// A TCP relay to the test server whose server-to-client direction has a
/// settable constant latency (a slow network path for one box).
struct SlowRelay {
    addr: std::net::SocketAddr,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SlowRelay {
    fn to(target: std::net::SocketAddr) -> SlowRelay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let d = delay_ms.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // client -> server: as is.
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
                // server -> client: each chunk held until it is `delay` old.
                let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                let (mut from, mut to) = (server, client);
                let d = d.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        let due = Instant::now() + Duration::from_millis(d.load(Ordering::SeqCst));
                        if n == 0 || tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                thread::spawn(move || {
                    for (due, bytes) in rx {
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                        if to.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        SlowRelay { addr, delay_ms }
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The owner's estimate of the server's clock comes from the last row it
/// read, measured when the answer *arrived*: a box whose read of the row
/// comes back 4 s late (a slow path, no timeout anywhere near) believes
/// the server's clock is 4 s behind what it is, and the claim that follows
/// writes its lease's end 4 s too early — on the server's clock, which
/// decides takeovers. With `request_timeout` 8 s, lease 10 s and an
/// upstream that answers in 7.5 s, the owner starts its attempt (it
/// believes ~10 s ≥ 8.5 s are left) with really ~6 s left; a waiting box
/// with a good estimate takes the lease over at its end, while the owner's
/// request is still in flight, and sends the same refresh token again.
/// (Failed on that code: sent twice, the credential dead. Mended: the
/// estimate is the interval the readings prove, and the owner judges its
/// lease on the interval's high end.)
#[test]
fn a_box_with_slow_answers_never_outlives_its_lease_on_the_server() {
    let Some(env) = Env::with_on(
        Tuning {
            request_timeout: 8.0,
            lease_ttl: 10.0,
            ..Tuning::default()
        },
        Backend::Postgres,
    ) else {
        return;
    };
    let url = env.pg_url().to_owned();
    let (scheme_user, rest) = url.rsplit_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let target: std::net::SocketAddr = hostport.parse().expect("a loopback address");
    let relay = SlowRelay::to(target);
    let slow_url = format!("{scheme_user}@{}/{db}", relay.addr);
    env.login("s", 60);
    let slow = Arc::new(tokenwarden::Warden::open(&slow_url, env.config()).unwrap());
    // Connections made and the estimate taken on a fast path.
    assert!(slow.get("s").is_ok());
    let fast = env.warden();
    assert!(fast.get("s").is_ok());
    env.fake.set_latency(Duration::from_millis(7500));
    // The answer to the owner's read of the row comes 4 s late; the
    // claim that follows (sent once that answer is in) is answered at once.
    relay.set_delay(Duration::from_secs(4));
    let s = slow.clone();
    let owner = thread::spawn(move || s.token("s", Duration::from_secs(600)));
    thread::sleep(Duration::from_millis(1500));
    relay.set_delay(Duration::ZERO);
    wait_until("the slow box's request", Duration::from_secs(60), || {
        env.fake.stats().in_flight == 1 || owner.is_finished()
    });
    assert!(
        !owner.is_finished(),
        "the owner sent nothing: {:?}",
        owner
            .join()
            .unwrap()
            .map(|_| "ok")
            .map_err(|e| e.to_string())
    );
    relay.set_delay(Duration::ZERO);
    // Another box asks while the owner's request is in flight: it must
    // wait for the owner, not take its lease over.
    let other = fast.token("s", Duration::from_secs(600));
    let owned = owner.join().unwrap();
    let requests = env.fake.stats().token_requests;
    assert_eq!(
        requests,
        1,
        "the refresh token was sent {requests} times (owner: {:?}; other: {:?})",
        owned.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
        other.as_ref().map(|_| "ok").map_err(|e| e.to_string()),
    );
    let g = owned.expect("the owner's refresh");
    assert_eq!(
        other.expect("the other box's token").access_token.expose(),
        g.access_token.expose()
    );
}

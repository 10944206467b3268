//! Hostile review of b112590 (`Refresher::shared_read`: a process's threads
//! share reads of a row where no stamp proves it current), 82e3413 (the TLS
//! front relays over an internal loopback TCP hop and maps each hop to its
//! client) and f6e0e09 (`provider::scrub` marks whole secrets, pieces and
//! runs on the text as it came). Holes are `#[ignore = "HOLE: …"]`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokenwarden::provider::scrub;
use tokenwarden::Error;

use crate::common::http::free_port;
use crate::common::tw::{text, Backend, Env};

// ---------------------------------------------------------------------
// 1. Shared reads of a row (b112590).
// ---------------------------------------------------------------------

on_both_backends!(
    attack3c_a_crowd_sees_rejects_by_another_warden_and_the_cli_before_its_call,
    attack3c_a_crowd_never_sees_a_deleted_family_after_the_delete_returned,
);

/// The ids of the crowd tests: several, so that shared reads of different
/// rows interleave.
const IDS: [&str; 4] = ["crowd0", "crowd1", "crowd2", "crowd3"];

/// 16 threads of one warden ask for the tokens of four credentials in a
/// loop, while a second warden of the same process and `tokenwarden reject`
/// processes reject the current tokens in turn (each reject refreshes): no
/// call returns a token whose reject had returned before the call began,
/// whoever committed it, and no refresh token is spent twice.
fn attack3c_a_crowd_sees_rejects_by_another_warden_and_the_cli_before_its_call(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    for id in IDS {
        env.login(id, 3600);
    }
    let readers_warden = Arc::new(env.warden());
    let rejecter = env.warden();
    let retired: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|n| {
            let (w, retired, stop) = (readers_warden.clone(), retired.clone(), stop.clone());
            thread::spawn(move || {
                let mut calls = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let id = IDS[(n + calls) % IDS.len()];
                    let before = retired.lock().unwrap().clone();
                    match w.token(id, Duration::ZERO) {
                        Ok(g) => assert!(
                            !before.contains(g.access_token.expose()),
                            "{id}: a token rejected before the call was served"
                        ),
                        Err(Error::Unavailable { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for round in 0..16 {
        let id = IDS[round % IDS.len()];
        let token = rejecter
            .token(id, Duration::ZERO)
            .unwrap()
            .access_token
            .expose()
            .to_owned();
        if round % 2 == 0 {
            let fresh = rejecter.reject(id, &token).unwrap();
            assert_ne!(fresh.access_token.expose(), token);
        } else {
            let out = env.run(&["reject", id, "--token", &token]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        retired.lock().unwrap().insert(token);
    }
    stop.store(true, Ordering::SeqCst);
    let calls: usize = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(calls >= 16, "the readers ran ({calls} calls)");
    env.fake.assert_no_reuse_after_success();
}

/// Threads of one warden ask for a credential's token in a loop while
/// another process deletes it and imports a new login under the same id,
/// six times: once a delete has returned, no call that began after it
/// returns a token of the deleted login.
fn attack3c_a_crowd_never_sees_a_deleted_family_after_the_delete_returned(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let first = env.login("re", 3600);
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
                    match w.token("re", Duration::ZERO) {
                        Ok(g) => {
                            assert!(
                                !before.contains(g.access_token.expose()),
                                "a token of a login deleted before the call was served"
                            );
                            served += 1;
                        }
                        Err(Error::NotFound(_) | Error::Unavailable { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                served
            })
        })
        .collect();
    let mut current = first.access_token.clone();
    for round in 0..6 {
        thread::sleep(Duration::from_millis(20));
        let out = env.run(&["delete", "re"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        gone.lock().unwrap().insert(current.clone());
        let grant = env.fake.new_family(&format!("re-login-{round}"));
        let mut record = grant.import_json("re", "codex", &env.fake.token_url());
        record["expires_at"] = serde_json::Value::from(crate::common::tw::now() + 3600);
        let path = env.dir.path().join(format!("re-{round}.json"));
        std::fs::write(&path, record.to_string()).unwrap();
        let out = env.run(&["import", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        current = grant.access_token.clone();
    }
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    let served: usize = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 0, "the readers were served");
    assert_eq!(
        warden
            .token("re", Duration::ZERO)
            .unwrap()
            .access_token
            .expose(),
        current
    );
}

/// PostgreSQL: 16 threads ask for one token in a loop while every
/// connection of the database but the killer's is terminated
/// (`pg_terminate_backend`) again and again, so shared reads fail under
/// their waiters: every thread comes back (a failed shared read leaves no
/// waiter hanging), and once the killing stops, calls are served again.
#[test]
#[cfg(feature = "postgres")]
fn attack3c_failing_shared_reads_never_leave_their_waiters_hanging() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let grant = env.login("kill", 3600);
    let warden = Arc::new(env.warden());
    warden.token("kill", Duration::ZERO).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (w, stop) = (warden.clone(), stop.clone());
            thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, 0usize);
                while !stop.load(Ordering::SeqCst) {
                    match w.token("kill", Duration::ZERO) {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut killer = crate::common::pg::client(env.pg_url());
    let mut killed = 0i64;
    for _ in 0..40 {
        let rows = killer
            .query(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap();
        killed += rows[0].get::<_, i64>(0);
        thread::sleep(Duration::from_millis(15));
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = readers
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(killed > 0, "connections were killed");
    assert!(ok > 0, "calls were served ({failed} failed)");
    let mut last = None;
    for _ in 0..50 {
        match warden.token("kill", Duration::ZERO) {
            Ok(g) => {
                last = Some(g);
                break;
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    let last = last.expect("served again after the killing stopped");
    assert_eq!(last.access_token.expose(), grant.access_token);
}

/// The name libtest knows [`attack3c_crowd_child_process`] by, for
/// `--exact`.
#[cfg(feature = "postgres")]
fn crowd_child_test() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::attack3c_crowd_child_process")
}

/// The tokens whose reject has returned, one a line in `path`.
#[cfg(feature = "postgres")]
fn retired_in(path: &std::path::Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Appends a token whose reject has returned (one `write` of one line).
#[cfg(feature = "postgres")]
fn retire(path: &std::path::Path, token: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{token}\n").as_bytes()).unwrap();
}

/// One process of the crowd: 8 threads of one warden ask for the four
/// credentials' tokens; every 25th call of a thread rejects the token it
/// got (then notes it retired). Panics (a non-zero exit) if a call returns
/// a token retired before it began.
#[cfg(feature = "postgres")]
fn crowd(warden: Arc<tokenwarden::Warden>, retired: std::path::PathBuf, secs: f64) -> usize {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let (w, retired) = (warden.clone(), retired.clone());
            thread::spawn(move || {
                let mut calls = 0usize;
                while Instant::now() < end {
                    let id = IDS[(n + calls) % IDS.len()];
                    let before = retired_in(&retired);
                    match w.token(id, Duration::ZERO) {
                        Ok(g) => {
                            let token = g.access_token.expose().to_owned();
                            assert!(
                                !before.contains(&token),
                                "{id}: a token rejected before the call was served"
                            );
                            if calls % 25 == 24 {
                                match w.reject(id, &token) {
                                    Ok(_) | Err(Error::Unavailable { .. }) => {}
                                    Err(e) => panic!("{e:?}"),
                                }
                                retire(&retired, &token);
                            }
                        }
                        Err(Error::Unavailable { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// A child process of [`attack3c_a_crowd_of_processes_never_gets_a_token_rejected_before_its_call`].
#[test]
#[cfg(feature = "postgres")]
#[ignore = "run as a child process by the crowd-of-processes test"]
fn attack3c_crowd_child_process() {
    let Ok(args) = std::env::var("ATTACK3C_CROWD") else {
        return;
    };
    let a: serde_json::Value = serde_json::from_str(&args).unwrap();
    let mut config = tokenwarden::Config {
        request_timeout: Duration::from_secs(2),
        attempts: 1,
        lease_ttl: Duration::from_secs_f64(3.5),
        wait: Duration::from_secs_f64(5.5),
        actor: "crowd-child".into(),
        ..tokenwarden::Config::default()
    };
    config.policy.backoff_min_ms = 5000;
    config.endpoints.codex_token = a["token_url"].as_str().unwrap().to_owned();
    let warden = Arc::new(tokenwarden::Warden::open(a["db"].as_str().unwrap(), config).unwrap());
    let calls = crowd(
        warden,
        a["retired"].as_str().unwrap().into(),
        a["secs"].as_f64().unwrap(),
    );
    println!("CALLS {calls}");
}

/// PostgreSQL, several processes of many threads each: this process and
/// three children each run 8 threads asking for four credentials' tokens
/// and now and then rejecting the one they got, for 4 s. No call in any
/// process returns a token whose reject (in any process) had returned
/// before the call began, and no refresh token is spent twice.
#[test]
#[cfg(feature = "postgres")]
fn attack3c_a_crowd_of_processes_never_gets_a_token_rejected_before_its_call() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    for id in IDS {
        env.login(id, 3600);
    }
    let retired = env.dir.path().join("retired.txt");
    std::fs::write(&retired, "").unwrap();
    let secs = 4.0;
    let args = serde_json::json!({
        "db": env.pg_url(), "token_url": env.fake.token_url(),
        "retired": retired.to_str().unwrap(), "secs": secs,
    });
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", &crowd_child_test(), "--nocapture"])
                .env("ATTACK3C_CROWD", args.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mine = crowd(Arc::new(env.warden()), retired.clone(), secs);
    let mut total = mine;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "a child failed: {stdout}\n{}",
            text(&out.stderr)
        );
        let calls: usize = stdout
            .lines()
            .find_map(|l| l.strip_prefix("CALLS "))
            .expect("a tally")
            .trim()
            .parse()
            .unwrap();
        assert!(calls > 0, "the child ran");
        total += calls;
    }
    assert!(mine > 0 && total > mine, "{mine} of {total}");
    let rejects = retired_in(&retired).len();
    println!("{total} calls ({mine} here), {rejects} rejects");
    assert!(rejects >= 4, "rejects happened");
    env.fake.assert_no_reuse_after_success();
}

/// Each relayed connection: its freeze flag and both sockets.
#[cfg(feature = "postgres")]
type Relays = Arc<Mutex<Vec<(Arc<AtomicBool>, TcpStream, TcpStream)>>>;

/// A TCP relay to the tests' PostgreSQL whose connections can be frozen:
/// a frozen one stays open and forwards nothing (a connection a NAT or
/// firewall dropped silently, a half-dead peer), so a statement on it
/// waits for an answer that never comes.
#[cfg(feature = "postgres")]
struct FreezingProxy {
    addr: SocketAddr,
    conns: Relays,
    stop: Arc<AtomicBool>,
}

#[cfg(feature = "postgres")]
impl FreezingProxy {
    fn start(target: SocketAddr) -> FreezingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Relays = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (theirs, their_stop) = (conns.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if their_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                theirs.lock().unwrap().push((
                    frozen.clone(),
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                ));
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (frozen, stop) = (frozen.clone(), their_stop.clone());
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while frozen.load(Ordering::SeqCst) {
                                if stop.load(Ordering::SeqCst) {
                                    return;
                                }
                                thread::sleep(Duration::from_millis(10));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        FreezingProxy { addr, conns, stop }
    }

    /// Freezes every connection made so far.
    fn freeze_all(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .for_each(|(f, _, _)| f.store(true, Ordering::SeqCst));
        conns.len()
    }
}

#[cfg(feature = "postgres")]
impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, a, b) in self.conns.lock().unwrap().iter() {
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr);
    }
}

/// PostgreSQL: one pooled connection goes silent (frozen by a relay: no
/// answer, no reset — a NAT's dropped idle mapping). A thread's read of the
/// row on it hangs, as it always could. But since b112590 every later
/// caller of the same credential in the process waits for that read
/// (`shared_read` takes only a read that began after the call, and waits
/// for the hung one to end before starting its own), whatever its `wait`:
/// a `token_within(.., wait = 0)` that before would have read on a fresh
/// connection and been served is stuck too. Here it is given 20 s.
///
/// (Mended: a caller waits on another thread's read at most 250 ms, and not at all on one already running longer — `SHARED_READ_PATIENCE`.)
#[test]
#[cfg(feature = "postgres")]
fn attack3c_one_hung_read_does_not_stall_every_caller_of_the_credential() {
    let Some(env) = Env::on(Backend::Postgres) else {
        return;
    };
    let grant = env.login("hang", 3600);
    let url = env.pg_url().to_owned();
    let (head, rest) = url.split_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let proxy = FreezingProxy::start(hostport.parse().unwrap());
    let proxied = format!("{head}@{}/{db}", proxy.addr);
    let warden = Arc::new(tokenwarden::Warden::open(&proxied, env.config()).unwrap());
    warden.token("hang", Duration::ZERO).unwrap();
    assert!(proxy.freeze_all() > 0);
    let (tx_a, rx_a) = std::sync::mpsc::channel();
    let w = warden.clone();
    let a = thread::spawn(move || {
        let _ = tx_a.send(w.token("hang", Duration::ZERO).is_ok());
    });
    assert!(
        rx_a.recv_timeout(Duration::from_millis(500)).is_err(),
        "the first read hangs on the frozen connection"
    );
    let (tx_b, rx_b) = std::sync::mpsc::channel();
    let w = warden.clone();
    let b = thread::spawn(move || {
        let got = w.token_within("hang", Duration::ZERO, Duration::ZERO);
        let _ = tx_b.send(got.map(|g| g.access_token.expose().to_owned()));
    });
    let got = rx_b.recv_timeout(Duration::from_secs(20));
    drop(proxy);
    let _ = a.join();
    let _ = b.join();
    match got {
        Ok(Ok(token)) => assert_eq!(token, grant.access_token),
        Ok(Err(e)) => panic!("refused: {e:?}"),
        Err(_) => panic!(
            "a caller with wait = 0 was still waiting after 20 s on another thread's hung read"
        ),
    }
}

// ---------------------------------------------------------------------
// 2. The TLS front's internal hop (82e3413).
// ---------------------------------------------------------------------

/// Everything `stream` sends until it closes or is silent for 3 s.
fn read_all(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Straight to the TLS front's internal port, with the right key: a
/// keep-alive pipeline (token, reject, health), HTTP/1.0, an absolute-form
/// target, `Expect: 100-continue` on the reject: every answer is 421, none
/// holds the token, the reject was never routed (the token is the same
/// over HTTPS afterwards) and nothing but 421 (or tiny_http's 100
/// Continue) comes back.
#[test]
fn attack3c_the_internal_port_refuses_pipelines_keepalive_and_expect_continue() {
    use crate::tls::{agent, get, make_pki, spawn_tls, terminate, wait_up, KEY};
    let env = Env::new();
    let grant = env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = spawn_tls(&env, &pki, port, &[]);
    let trusted = agent(Some(&pki.ca_der));
    let base = format!("https://127.0.0.1:{port}");
    wait_up(&mut child, &trusted, &base);
    let internal: Vec<u16> = crate::tls::listening_ports(child.id())
        .into_iter()
        .filter(|p| *p != port)
        .collect();
    assert_eq!(internal.len(), 1, "{internal:?}");
    let addr: SocketAddr = ([127, 0, 0, 1], internal[0]).into();
    let body = format!(r#"{{"access_token":"{}"}}"#, grant.access_token);
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let pipeline = format!(
        "GET /v1/credentials/tls/token HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         POST /v1/credentials/tls/reject HTTP/1.1\r\nHost: x\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET http://127.0.0.1:{port}/v1/credentials HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         GET /v1/credentials/tls/token HTTP/1.0\r\n{auth}\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(pipeline.as_bytes()).unwrap();
    let got = read_all(&mut s);
    let mut s = TcpStream::connect(addr).unwrap();
    let expect = format!(
        "POST /v1/credentials/tls/reject HTTP/1.1\r\nHost: x\r\n{auth}\
         Content-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(expect.as_bytes()).unwrap();
    thread::sleep(Duration::from_millis(200));
    let _ = s.write_all(body.as_bytes());
    let got = got + &read_all(&mut s);
    let statuses: Vec<&str> = got
        .match_indices("HTTP/1.")
        .map(|(at, _)| &got[at + 9..(at + 12).min(got.len())])
        .collect();
    assert!(!statuses.is_empty(), "{got}");
    assert!(
        statuses.iter().all(|s| *s == "421" || *s == "100"),
        "{statuses:?}\n{got}"
    );
    assert!(!got.contains(&grant.access_token), "{got}");
    assert!(!got.contains(&grant.refresh_token), "{got}");
    let a = get(
        &trusted,
        &format!("{base}/v1/credentials/tls/token"),
        &[("Authorization", &format!("Bearer {KEY}"))],
    )
    .expect("https");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains(&grant.access_token), "the reject never ran");
    terminate(child);
}

/// `serve` over TLS where the process may hold 256 descriptors (systemd's
/// default soft limit is 1024): each relayed TLS connection costs about
/// three of them at once in this process (the client's socket, the hop's
/// two ends, and clones), so 150 idle, unauthenticated connections — far
/// under the front's 1024-connection cap — run it out. When tiny_http's
/// accept on the internal port meets the limit (a failed `try_clone`
/// panics in `RefinedTcpStream::new`; an accept error ends its loop) its
/// accept thread is gone for good: the internal port closes, every relay
/// after it fails, and once the flood is over no new client is ever
/// answered again — while connections opened before keep being served, so
/// a monitor on a kept-alive connection sees a healthy server.
///
/// (Mended: the front takes at most as many connections as the descriptors allow — `tls::connection_cap` — and `serve` raises its soft descriptor limit to the hard one.)
#[test]
fn attack3c_a_connection_flood_under_the_cap_does_not_silence_the_server_for_good() {
    use crate::tls::{agent, get, make_pki, terminate, wait_up, KEY};
    let env = Env::new();
    env.login("tls", 3000);
    let pki = make_pki(env.dir.path());
    let port = free_port();
    let mut child = crate::tls::tls_serve(env.cmd_under_prlimit(256), KEY, &pki, port)
        .spawn()
        .expect("spawn serve under prlimit");
    let trusted = agent(Some(&pki.ca_der));
    let base = format!("https://127.0.0.1:{port}");
    wait_up(&mut child, &trusted, &base);
    // Rounds of 150 connections held for a second: whichever of the
    // front's accept, a relay's hop, or tiny_http's accept meets the limit
    // first varies; a round where it is tiny_http's accept ends it.
    let mut answered = None;
    for round in 0..8 {
        let held: Vec<_> = (0..150)
            .filter_map(|_| crate::tls::tls_connect(port, &pki.ca_der))
            .collect();
        thread::sleep(Duration::from_secs(1));
        println!(
            "round {round}: {} TLS connections held; the server has {} descriptors open",
            held.len(),
            std::fs::read_dir(format!("/proc/{}/fd", child.id())).map_or(0, |d| d.count()),
        );
        drop(held);
        thread::sleep(Duration::from_secs(1));
        answered = None;
        for _ in 0..6 {
            // A new client each time: the one `wait_up` used keeps its
            // connection (and its relay, and tiny_http's reader) alive.
            let fresh = agent(Some(&pki.ca_der));
            if let Ok(a) = get(&fresh, &format!("{base}/healthz"), &[]) {
                answered = Some(a.status);
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        println!(
            "round {round}: answered {answered:?}; listening on {:?}",
            crate::tls::listening_ports(child.id())
        );
        if answered != Some(200) {
            break;
        }
    }
    let (_, log) = terminate(child);
    println!("{log}");
    assert_eq!(
        answered,
        Some(200),
        "the server answers nothing after the flood ended; its log:\n{}",
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("panicked") || l.contains("ERROR"))
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Plain HTTP (tiny_http accepts on the public port itself) under a
/// 64-descriptor limit: 120 idle connections run the process out of
/// descriptors, and tiny_http's accept thread ends for good. The server
/// must not go on as a zombie that answers no new client: after the flood
/// it either answers again, or `serve` has stopped by itself with a
/// non-zero status and an error naming the descriptor limit — for a
/// supervisor to start it again.
#[test]
fn a_descriptor_flood_on_plain_http_never_leaves_a_silent_server() {
    use std::io::Read as _;
    let env = Env::new();
    env.login("plain", 3000);
    let port = free_port();
    let mut child = env
        .cmd_under_prlimit(64)
        .env("TOKENWARDEN_LOG", "info")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--no-refresher", "--threads", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve under prlimit");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let health = || {
        // Not up, or gone: no answer (raw() expects a listener).
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        crate::common::http::raw(addr, request.as_bytes(), Duration::from_secs(3)).map(|a| a.status)
    };
    let started = Instant::now();
    while health() != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not come up"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let held: Vec<_> = (0..120)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    thread::sleep(Duration::from_secs(2));
    drop(held);
    // Answering again, or exited by itself with an error: not silent.
    let mut outcome = None;
    let until = Instant::now() + Duration::from_secs(30);
    while outcome.is_none() && Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            outcome = Some(format!("exited {:?}", status.code()));
        } else if health() == Some(200) {
            outcome = Some("answers".to_owned());
        } else {
            thread::sleep(Duration::from_millis(200));
        }
    }
    let exited = matches!(child.try_wait(), Ok(Some(_)));
    if !exited {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let status = child.wait().expect("wait");
    let mut log = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut log);
    eprintln!("after the flood: {outcome:?}");
    match outcome.as_deref() {
        Some("answers") => {}
        Some(_) => {
            assert_ne!(status.code(), Some(0), "{log}");
            assert!(
                log.contains("descriptor"),
                "the error names the limit: {log}"
            );
        }
        None => panic!("after the flood serve neither answers nor exits; its log:\n{log}"),
    }
}

// ---------------------------------------------------------------------
// 3. scrub (f6e0e09).
// ---------------------------------------------------------------------

/// A known secret quoted in groups shorter than MIN_SECRET_RUN (8): in
/// fours, as keys are often shown, in sevens, or one character at a time,
/// split by spaces. attack17b's hole "a known token quoted in groups under
/// 12 chars is shown whole" was mended for groups of 8 or more only; each
/// of these still shows the whole secret.
#[test]
#[ignore = "KNOWN LIMIT (documented): runs of a secret shorter than 8 characters are not matched (shorter runs would scrub ordinary words); a secret quoted a few characters at a time is shown"]
fn attack3c_a_secret_quoted_in_groups_under_eight_is_still_shown_whole() {
    let secret = "Zq8vLp3TmWx7Rk2NcYb5";
    let groups = |n: usize| -> String {
        secret
            .as_bytes()
            .chunks(n)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let shown: Vec<String> = [1, 4, 7]
        .into_iter()
        .map(|n| {
            scrub(
                &format!("refresh token {} was revoked", groups(n)),
                &[secret],
            )
        })
        .filter(|out| out.split_whitespace().collect::<String>().contains(secret))
        .collect();
    assert!(shown.is_empty(), "the whole secret is shown: {shown:#?}");
}

/// The older token-field pass of `scrub` (`redact_token_fields`) looks for
/// each of `access_token`, `refresh_token` and `id_token` from every match
/// onwards: a text naming one of them thousands of times (an upstream's
/// 256 KiB `error_description`, the body cap) costs time quadratic in its
/// length — 256 KiB: 23 s in a debug build, 3.5 s with -O (the pass
/// alone) — in the refresher's thread, while it holds the lease. Eight times the text should cost about eight
/// times as much, not sixty-four.
///
/// (Mended: `redact_token_fields` finds each name again only once passed.)
#[test]
fn attack3c_scrub_stays_linear_on_a_text_full_of_field_names() {
    let time = |kib: usize| {
        let text = "access_token ".repeat(kib * 1024 / 13);
        let t = Instant::now();
        let out = scrub(&text, &[]);
        assert!(out.len() >= text.len() / 2);
        t.elapsed()
    };
    let small = time(16).max(Duration::from_millis(1));
    let big = time(128);
    assert!(
        big < small * 24,
        "8x the text cost {:.0}x the time ({small:?} -> {big:?})",
        big.as_secs_f64() / small.as_secs_f64()
    );
}

/// The new marks stay linear: 1 MiB of prose, of one token-character run,
/// and of the secrets themselves, each against 100 secrets of 4 KiB, are
/// scrubbed (seconds in a debug build), and the secrets' text is gone.
#[test]
fn attack3c_marks_on_a_mebibyte_against_a_hundred_big_secrets() {
    let secrets: Vec<String> = (0..100u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let abc = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
                    char::from(abc[(x % 64) as usize])
                })
                .collect()
        })
        .collect();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let mib = 1024 * 1024;
    let prose = "The quick brown fox jumps over the lazy dog; ".repeat(mib / 45);
    assert_eq!(scrub(&prose, &refs), prose);
    let _ = scrub(&"a".repeat(mib), &refs);
    let joined: String = secrets.join(" ").chars().take(mib).collect();
    let out = scrub(&joined, &refs);
    assert!(!out.contains(&secrets[7][..12]), "a piece survived");
}

use crate::common::Rng;

/// Short, empty and non-ASCII secrets (0 to 14 characters of ASCII, ß, İ,
/// K (Kelvin), é, 𝄞 and spaces) in texts of the same mix, whole, cut,
/// upper-cased or repeated: scrub never panics, and a secret of 4 bytes or
/// more that the text holds whole is never in the answer.
#[test]
fn attack3c_scrub_never_panics_on_short_or_non_ascii_secrets() {
    let alphabet: Vec<char> = "aZ9-_./+=~ßİ\u{212a}é𝄞 <\"\\".chars().collect();
    let mut rng = Rng(0x3c3c_5eed);
    for case in 0..4000 {
        let word = |rng: &mut Rng, max: usize| -> String {
            (0..rng.below(max + 1))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        let secrets: Vec<String> = (0..1 + rng.below(3)).map(|_| word(&mut rng, 14)).collect();
        let mut text = word(&mut rng, 10);
        for s in &secrets {
            match rng.below(3) {
                0 => text.push_str(s),
                1 => text.push_str(&s.to_uppercase()),
                _ => text.push_str(&s.repeat(3)),
            }
            text.push_str(&word(&mut rng, 6));
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let out = scrub(&text, &refs);
        for s in &secrets {
            if s.len() >= 4 && text.contains(s.as_str()) {
                assert!(
                    !out.contains(s.as_str()),
                    "case {case}: {s:?} survived: {text:?} -> {out:?}"
                );
            }
        }
    }
}

/// Observation (not a hole): a token endpoint that redirects. The error
/// still says what went wrong (HTTP 307, redirects are not followed) and
/// shows no secret — but the target's path is scrubbed of everything the
/// request carried, names and all: the grant type `refresh_token` and the
/// `Content-Type` header's `application` go as `***`, so an operator sees
/// `https://auth.example.com/***/***/v2` for
/// `https://auth.example.com/application/refresh_token/v2`. (Mended:
/// `HttpRequest::secrets` leaves out `provider::PUBLIC_FIELDS`.)
#[test]
fn attack3c_a_redirect_is_named_and_its_target_over_scrubbed() {
    use crate::common::scripted::{import_at, Scripted, Step};
    let env = Env::new();
    let location = "https://auth.example.com/application/refresh_token/v2";
    let step: Step = Box::new(move |_rt, conn| {
        let head = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = conn.write_all(head.as_bytes());
    });
    let upstream = Scripted::start(vec![step]);
    import_at(
        &env,
        "redir",
        "rt-redirect-0123456789abcdef",
        10,
        &upstream.url(),
    );
    let err = env
        .warden()
        .token("redir", Duration::from_secs(60))
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("307"), "{message}");
    assert!(message.contains("redirect"), "{message}");
    assert!(
        !message.contains("rt-redirect-0123456789abcdef"),
        "{message}"
    );
    // Mended: names and public values (grant type, content type, client
    // id, redirect URI) are not scrubbed, so the target reads as sent.
    assert!(message.contains(location), "{message}");
}

//! `tokenwarden serve` stopping on SIGTERM while a refresh is in flight.
//!
//! Upstream rotates the refresh token when it answers. A process that exits
//! after sending a refresh and before committing the answer has lost the
//! only copy of the new refresh token: the next refresh sends the old one
//! and the login is burnt. So SIGTERM must wait for every refresh lease the
//! process holds — however long past the shutdown grace — and only a second
//! signal may cut it short.
//!
//! The grace is set to 0.5 s (`TOKENWARDEN_SHUTDOWN_GRACE`) and upstream
//! answers after 3 s, so a shutdown bounded by the grace loses the rotation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::http::{free_port, Answer, Client, Served};
use crate::common::tw::{code, json, text, Env, Tuning};

/// How long upstream takes to answer a refresh.
const LATENCY: Duration = Duration::from_secs(3);
/// The shutdown grace of the servers under test.
const GRACE: &str = "0.5";

fn tuning() -> Tuning {
    Tuning {
        request_timeout: 6.0,
        attempts: 1,
        lease_ttl: 8.0,
        backoff_min: 5.0,
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `serve` with the short grace and info logs, its stderr lines sent to the
/// returned channel as they come.
fn serve(env: &Env, addr: SocketAddr, extra: &[&str]) -> (Served, mpsc::Receiver<String>) {
    let mut cmd = env.cmd();
    cmd.args(["serve", "--listen", &addr.to_string(), "--threads", "4"])
        .args(extra)
        .env("TOKENWARDEN_SHUTDOWN_GRACE", GRACE)
        .env("TOKENWARDEN_LOG", "info");
    let mut served = Served::spawn(cmd, addr);
    let stderr = served.child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (served, rx)
}

fn signal(served: &Served, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &served.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} failed");
}

/// Waits for the log line containing `what`; returns the lines seen.
fn wait_for_line(lines: &mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>) {
    let end = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l| l.contains(what)) {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no log line with {what:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One `GET /healthz` on a keep-alive connection: the answer's head.
fn healthz(conn: &mut TcpStream) -> String {
    write!(conn, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("read the answer's head");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("Content-Length");
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).expect("read the body");
    head
}

fn token_of(a: &Answer) -> String {
    a.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {} {}", a.status, a.body))
        .to_owned()
}

/// After the server is gone: the database holds the rotation that upstream
/// made, the next `token` is served from it without a request upstream,
/// and the next refresh presents the rotated refresh token.
fn assert_rotation_kept(env: &Env, id: &str, served_token: &str) {
    let show = env.run(&["show", id, "--json"]);
    assert_eq!(code(&show), 0, "{}", text(&show.stderr));
    assert_eq!(json(&show)["state"], "valid", "the refresh was committed");
    let upstream = env.fake.family_state(id);
    assert_eq!(upstream.current_access_token, served_token);

    env.fake.set_latency(Duration::ZERO);
    let before = env.fake.stats().token_requests;
    let out = env.run(&["token", id]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), served_token);
    assert_eq!(
        env.fake.stats().token_requests,
        before,
        "served from the DB"
    );

    let out = env.run(&["refresh", id]);
    assert_eq!(code(&out), 0, "the login survived: {}", text(&out.stderr));
    env.fake.assert_no_reuse_after_success();
    env.fake.assert_single_flight();
    let presented = env.fake.presented_refresh_tokens(id);
    assert_eq!(presented.len(), 2, "{presented:?}");
    assert_ne!(
        presented[0], presented[1],
        "the rotated refresh token was sent"
    );
}

/// On SIGTERM `serve` refuses new work but waits past its grace for a caller's refresh in flight, so the rotated token is committed.
#[test]
fn sigterm_waits_for_a_callers_refresh_in_flight_past_the_grace() {
    let env = Env::with(tuning());
    let old = env.login("slow", 100);
    let addr = loopback();
    let (mut served, lines) = serve(&env, addr, &["--no-refresher"]);
    let mut seen = Vec::new();
    let client = Client::new(addr, None);
    // A keep-alive connection made (and used) before the signal, used
    // again after it.
    let mut keep = TcpStream::connect(addr).expect("connect");
    keep.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(healthz(&mut keep).starts_with("HTTP/1.1 200"));

    env.fake.set_latency(LATENCY);
    let pending = {
        let client = client.clone();
        thread::spawn(move || client.get("/v1/credentials/slow/token"))
    };
    assert!(eventually(Duration::from_secs(10), || {
        env.fake.stats().token_requests >= 1
    }));
    let signalled = Instant::now();
    signal(&served, "-TERM");
    wait_for_line(&lines, "shutting down", &mut seen);

    // New connections are refused at once; a request on a connection made
    // earlier is refused with 503.
    assert!(
        eventually(Duration::from_secs(2), || TcpStream::connect(addr).is_err()),
        "still accepting connections after SIGTERM"
    );
    write!(keep, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    thread::sleep(Duration::from_secs(1));
    assert!(
        served.child.try_wait().expect("try_wait").is_none(),
        "exited {:?} after SIGTERM with a refresh in flight",
        signalled.elapsed()
    );

    let status = served.child.wait().expect("wait serve");
    let took = signalled.elapsed();
    seen.extend(lines.iter());
    let log = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}, before upstream answered: {log}"
    );
    assert!(log.contains("waiting for 1 refresh(es) in flight"), "{log}");

    let answer = pending.join().expect("caller").expect(200);
    let token = token_of(&answer);
    assert_ne!(token, old.access_token);
    let mut raw = String::new();
    let _ = keep.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");

    assert_rotation_kept(&env, "slow", &token);
}

/// On SIGTERM `serve` waits for the background refresher's refresh in flight, exits 0, and the rotated token is committed.
#[test]
fn sigterm_waits_for_the_background_refreshers_refresh_in_flight() {
    let env = Env::with(tuning());
    let old = env.login("bg", 100);
    env.fake.set_latency(LATENCY);
    let addr = loopback();
    let (mut served, lines) = serve(&env, addr, &[]);
    // The refresher claims the credential (due: inside the refresh window).
    assert!(eventually(Duration::from_secs(10), || {
        env.fake.stats().token_requests >= 1
    }));
    let signalled = Instant::now();
    signal(&served, "-TERM");
    let status = served.child.wait().expect("wait serve");
    let took = signalled.elapsed();
    let log = lines.iter().collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: {log}"
    );

    let token = env.fake.family_state("bg").current_access_token;
    assert_ne!(token, old.access_token, "upstream rotated");
    assert_rotation_kept(&env, "bg", &token);
}

/// A second signal during the drain exits `serve` at once with status 1.
#[test]
fn a_second_signal_exits_at_once_with_status_1() {
    let env = Env::with(tuning());
    env.login("slow", 100);
    let addr = loopback();
    let (mut served, lines) = serve(&env, addr, &["--no-refresher"]);
    let mut seen = Vec::new();
    env.fake.set_latency(LATENCY);
    // Cut off by the exit: whatever it gets is not checked.
    let mut pending = TcpStream::connect(addr).expect("connect");
    write!(
        pending,
        "GET /v1/credentials/slow/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .expect("send");
    assert!(eventually(Duration::from_secs(10), || {
        env.fake.stats().token_requests >= 1
    }));
    signal(&served, "-TERM");
    wait_for_line(&lines, "shutting down", &mut seen);
    let second = Instant::now();
    signal(&served, "-INT");
    let status = served.child.wait().expect("wait serve");
    assert!(
        second.elapsed() < Duration::from_millis(1500),
        "the second signal took {:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{}", seen.join("\n"));
}

//! The notifications outbox (issue 15) against real HTTP receivers on
//! loopback: one that fails the first attempts, one that hangs; a
//! `serve` SIGKILLed between the state change and its delivery; the
//! `failing` and `recovered` kinds; `notify test` to a command.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::fake_oauth::Fault;
use crate::common::http::{free_port, Client, Served};
use crate::common::tw::{code, json, text, Backend, Env};

// The tests below that take a backend run on SQLite and on PostgreSQL,
// from this one source.
on_both_backends!(
    a_death_is_delivered_signed_after_failed_attempts,
    the_failing_run_starts_at_its_first_failure,
    a_reimport_that_revives_a_dead_credential_is_recovered,
    failing_and_recovered_reach_a_command,
    deliverers_on_several_boxes_never_take_one_row_at_once,
);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on loopback: answers 500 to the first `fail_first`
/// requests, then 200 — or, with `hang`, reads each request and never
/// answers until the test ends.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    /// Connections held open right now (hanging mode).
    holding: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(fail_first: usize, hang: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let holding = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, h, s) = (got.clone(), holding.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let (g, h, s) = (g.clone(), h.clone(), s.clone());
                std::thread::spawn(move || serve_one(stream, &g, &h, &s, fail_first, hang));
            }
        });
        Receiver {
            addr,
            got,
            holding,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `f` holds of the requests got, up to `secs`.
    fn wait_for(&self, secs: u64, f: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got = self.got();
            if f(&got) {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "receiver got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Receiver {
    /// Waits until a hanging receiver holds a deliverer's connection (a
    /// delivery is under way), up to 20 s.
    fn wait_for_hold(&self) {
        let start = Instant::now();
        while self.holding.load(Ordering::SeqCst) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no delivery attempt"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one(
    stream: TcpStream,
    got: &Mutex<Vec<Got>>,
    holding: &AtomicUsize,
    stop: &AtomicBool,
    fail_first: usize,
    hang: bool,
) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = Vec::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let n = {
        let mut g = got.lock().unwrap();
        g.push(Got {
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        g.len()
    };
    if hang {
        holding.fetch_add(1, Ordering::SeqCst);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        holding.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let status = if n <= fail_first {
        "500 Internal Server Error"
    } else {
        "200 OK"
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// HMAC-SHA-256, written here from RFC 2104 so the signature is checked
/// against something other than tokenwarden's own code.
fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kills `id`'s login upstream and refreshes it: it goes dead, and the
/// outbox holds its `dead` notification.
fn kill(env: &Env, id: &str) {
    env.fake.revoke_family(id);
    let out = env.run(&["refresh", id]);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
}

/// The outbox as `notifications --json` lists it.
fn outbox(env: &Env, pending: bool) -> Vec<Value> {
    let mut args = vec!["notifications", "--json"];
    if pending {
        args.push("--pending");
    }
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    json(&out)["notifications"].as_array().unwrap().clone()
}

/// A death is written to the outbox in its transaction and delivered by
/// `sweep` to a receiver that fails the first two attempts: retried with
/// backoff, the same event id and body each time, signed with
/// HMAC-SHA-256 over the body, no secret in it, and the fixing command.
fn a_death_is_delivered_signed_after_failed_attempts(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let grant = env.login("d1", 3600);
    kill(&env, "d1");
    let pending = outbox(&env, true);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["kind"], "dead");
    let rx = Receiver::start(2, false);
    let sweep = || {
        env.cmd()
            .args(["sweep", "--notify-url", &rx.url()])
            .env("TOKENWARDEN_NOTIFY_SECRET", "s3cret")
            .env("TOKENWARDEN_NOTIFY_RETRY_MIN", "0.2")
            .output()
            .unwrap()
    };
    let start = Instant::now();
    while rx.got().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "{:?}", rx.got());
        let out = sweep();
        assert_eq!(code(&out), 4, "dead credential: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(250));
    }
    // Delivered: no more attempts.
    sweep();
    let got = rx.got();
    assert_eq!(got.len(), 3, "{got:?}");
    let id = got[0].header("X-Tokenwarden-Event").unwrap().to_owned();
    for g in &got {
        assert_eq!(g.header("X-Tokenwarden-Event"), Some(id.as_str()));
        assert_eq!(g.body, got[0].body, "the same body each attempt");
        let want = format!("sha256={}", hmac_hex(b"s3cret", g.body.as_bytes()));
        assert_eq!(g.header("X-Tokenwarden-Signature"), Some(want.as_str()));
    }
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["kind"], "dead");
    assert_eq!(body["credential_id"], "d1");
    assert_eq!(body["state"], "dead");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("refresh_token"),
        "{body}"
    );
    // The same command the credential's error and summary name.
    assert_eq!(body["fix"], "tokenwarden login codex --id d1", "{body}");
    for secret in env
        .fake
        .issued_refresh_tokens("d1")
        .iter()
        .chain([&grant.refresh_token])
    {
        assert!(
            !got[0].body.contains(secret.as_str()),
            "a refresh token in the body"
        );
    }
    let all = outbox(&env, false);
    assert_eq!(all[0]["status"], "delivered");
    assert_eq!(all[0]["attempts"], 3);
    assert!(outbox(&env, true).is_empty());
}

/// `serve` delivering to a receiver that hangs still answers tokens at
/// once (the notifier is a thread of its own); the attempt times out and
/// the notification stays pending with the error, to be retried.
#[test]
fn a_receiver_that_hangs_never_blocks_token_serving() {
    let env = Env::new();
    env.login("ok", 3600);
    env.login("d2", 3600);
    kill(&env, "d2");
    let rx = Receiver::start(0, true);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = env.cmd();
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--notify-url",
        &rx.url(),
    ])
    .env("TOKENWARDEN_NOTIFY_TIMEOUT", "3")
    .env("TOKENWARDEN_NOTIFY_RETRY_MIN", "60");
    let served = Served::spawn(cmd, addr);
    rx.wait_for_hold();
    // The receiver holds the notifier's connection: tokens are served.
    let client = Client::new(addr, None);
    for _ in 0..5 {
        let t = client.get("/v1/credentials/ok/token").expect(200).json();
        assert_eq!(t["credential_id"], "ok");
        assert!(rx.holding.load(Ordering::SeqCst) > 0, "still hanging");
    }
    // The attempt times out; the row waits for its retry.
    let start = Instant::now();
    loop {
        let n = client.get("/v1/notifications?pending=1").expect(200).json();
        let row = &n["notifications"][0];
        if row["last_error"].is_string() {
            assert_eq!(row["status"], "pending");
            assert_eq!(row["attempts"], 1);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{n}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: serve stops cleanly, its notifier thread with it, while
    // the receiver still holds the timed-out connection.
    let (status, err) = served.terminate();
    assert_eq!(status, Some(0), "{err}");
}

/// A `serve` SIGKILLed after the death was committed (its notification
/// in the outbox) while delivering it: the next `serve` delivers it once
/// the dead deliverer's hold runs out — at least once, same event id.
#[test]
fn sigkill_between_the_change_and_delivery_then_delivered_after_restart() {
    let env = Env::new();
    env.login("d3", 3600);
    env.fake.revoke_family("d3");
    let hang = Receiver::start(0, true);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let serve = |url: &str| {
        let mut cmd = env.cmd();
        cmd.args(["serve", "--listen", &addr.to_string(), "--notify-url", url])
            .env("TOKENWARDEN_NOTIFY_TIMEOUT", "1")
            .env("TOKENWARDEN_NOTIFY_RETRY_MIN", "0.5");
        Served::spawn(cmd, addr)
    };
    let mut first = serve(&hang.url());
    // The state change, through the server: the refresh is refused for
    // good, the credential dies, and the outbox row is in that commit.
    let client = Client::new(addr, None);
    assert_eq!(
        client
            .post("/v1/credentials/d3/refresh", "")
            .expect(410)
            .code(),
        "credential_dead"
    );
    hang.wait_for_hold();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let pending = outbox(&env, true);
    assert_eq!(
        pending.len(),
        1,
        "still in the outbox after the kill: {pending:?}"
    );
    let event_id = pending[0]["id"].as_str().unwrap().to_owned();
    let good = Receiver::start(0, false);
    let _second = serve(&good.url());
    let got = good.wait_for(60, |g| !g.is_empty());
    assert_eq!(
        got[0].header("X-Tokenwarden-Event"),
        Some(event_id.as_str())
    );
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["kind"], "dead");
    assert_eq!(body["credential_id"], "d3");
    let start = Instant::now();
    while !outbox(&env, true).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Refreshes failing past TOKENWARDEN_NOTIFY_FAILING_AFTER write one
/// `failing` notification per run of failures; the success after it
/// writes `recovered`. Both are delivered to a command by `sweep
/// --notify-exec`, and `notify test` sends a sample to it.
fn failing_and_recovered_reach_a_command(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("f1", 3600);
    // Any failure at all is "failing long" with the threshold at 0.
    let refresh = || {
        env.cmd()
            .args(["refresh", "f1", "--force"])
            .env("TOKENWARDEN_NOTIFY_FAILING_AFTER", "0")
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        env.fake.push_fault(Fault::status(503, "{}"));
        let out = refresh();
        assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    }
    let out = refresh();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kinds: Vec<String> = outbox(&env, false)
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["failing", "recovered"], "one per run of failures");
    let file = env.dir.path().join("got.jsonl");
    let exec = format!("cat >> {} && echo >> {}", file.display(), file.display());
    let out = env.run(&["sweep", "--notify-exec", &exec]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.run(&["notify", "test", "--notify-exec", &exec]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["failing", "recovered", "test"]);
    assert!(outbox(&env, true).is_empty());
    // No target: `notify test` says how to configure one (exit 2).
    let out = env.run(&["notify", "test"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
}

/// The run of failures a `failing` notification measures starts at the
/// first failure after a success, is kept while failures go on, and ends
/// with the next success.
fn the_failing_run_starts_at_its_first_failure(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("r1", 3600);
    let w = env.warden();
    let since = || w.get("r1").unwrap().failing_since_ms;
    assert_eq!(since(), None);
    env.fake.push_fault(Fault::status(503, "{}"));
    assert!(w.refresh("r1", true).is_err());
    let first = since().expect("set at the first failure");
    std::thread::sleep(Duration::from_millis(20));
    env.fake.push_fault(Fault::status(503, "{}"));
    assert!(w.refresh("r1", true).is_err());
    assert_eq!(since(), Some(first), "kept while failures go on");
    w.refresh("r1", true).unwrap();
    assert_eq!(since(), None, "ended by a success");
    env.fake.push_fault(Fault::status(503, "{}"));
    assert!(w.refresh("r1", true).is_err());
    assert!(since().unwrap() > first, "a new run");
}

/// A dead credential revived by `import --replace` (the fix its `dead`
/// notification names) writes `recovered`.
fn a_reimport_that_revives_a_dead_credential_is_recovered(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    env.login("v1", 3600);
    kill(&env, "v1");
    let g = env.fake.new_family("v1-relogin");
    let record = g.import_json("v1", "codex", &env.fake.token_url());
    let file = env.dir.path().join("relogin.json");
    std::fs::write(&file, record.to_string()).unwrap();
    let out = env.run(&["import", file.to_str().unwrap(), "--replace"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kinds: Vec<String> = outbox(&env, false)
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["dead", "recovered"]);
    // The same file again changes nothing and says nothing.
    let out = env.run(&["import", file.to_str().unwrap(), "--replace"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(outbox(&env, false).len(), 2);
}

/// Eight deliverers, each with a warden (a connection pool) of its own as
/// on eight boxes, take the outbox's 200 rows at once: every row is taken
/// by exactly one of them (a taken row is held, not handed out again), and
/// the counts say all are pending until marked delivered.
fn deliverers_on_several_boxes_never_take_one_row_at_once(b: Backend) {
    let Some(env) = Env::on(b) else { return };
    let w = env.warden();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..200 {
        let n = tokenwarden::testing::Notice {
            event_id: format!("ev-{i}"),
            kind: "dead".into(),
            credential_id: None,
            payload: "{}".into(),
            at_ms: now,
        };
        w.store().insert_notice(&n).unwrap();
        // The same event twice: ignored.
        w.store().insert_notice(&n).unwrap();
    }
    assert_eq!(w.store().notification_counts().unwrap().pending, 200);
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let (w, barrier) = (env.warden(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                loop {
                    let rows = w.store().take_notifications(now, now + 600_000, 7).unwrap();
                    if rows.is_empty() {
                        return mine;
                    }
                    mine.extend(rows.into_iter().map(|r| r.notice.event_id));
                }
            })
        })
        .collect();
    let mut all: Vec<String> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all.len(), 200, "a row taken twice, or one left");
    assert_eq!(unique.len(), 200);
    for id in &all {
        w.store()
            .notification_delivery(id, tokenwarden::Delivery::Delivered, now)
            .unwrap();
    }
    let counts = w.store().notification_counts().unwrap();
    assert_eq!(
        (counts.pending, counts.delivered, counts.failed),
        (0, 200, 0)
    );
}

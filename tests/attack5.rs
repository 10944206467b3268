//! Attacks on 251fb5a "Merge wt-perf": the `token ID [--json]` shortcut
//! now wired into the binary (`Cli::parse_args`), per-credential wake-up
//! signals kept only while a thread holds one (`SignalRef`), and the
//! `serve` scheduler's quiet mark (no scan while the database's commit
//! stamp is unchanged and nothing falls due). The promise under attack: a
//! rotating refresh token is used exactly once and never lost, a rejected
//! token is never served again — and, for the scheduler, that nothing due
//! goes un-refreshed by `serve` longer than it did before the change.
//!
//! HELD tests pass and stay as guards; HOLE tests fail on the commit that
//! added them and are kept `#[ignore]`d until the source is mended.
//!
//! `ATTACK5_SERVE_BIN=/path/to/tokenwarden` runs the `serve` of these tests
//! from another build (e.g. f956693, before the change) to compare.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::fake_oauth::Fault;
use crate::common::http::{free_port, Client};
use crate::common::scripted::wait_for_lease;
use crate::common::tw::{code, json, now, text, Env, Tuning, BIN};

/// Debian's libfaketime (package `faketime`, installed by `.ci/run`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Polls `done` every 50 ms until it holds or `limit` has passed.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether upstream has refreshed `id`'s login and the outcome is committed
/// (the row shows `valid` again).
fn refreshed(env: &Env, id: &str) -> bool {
    env.fake.family_state(id).refreshes > 0 && show(env, id)["state"] == "valid"
}

/// `show ID --json` of `env`'s database.
fn show(env: &Env, id: &str) -> Value {
    let out = env.run(&["show", id, "--json"]);
    assert_eq!(code(&out), 0, "show {id}: {}", text(&out.stderr));
    json(&out)
}

// ---------------------------------------------------------------------------
// 3. The scheduler's quiet mark
// ---------------------------------------------------------------------------

/// True (with a note) when libfaketime is not installed, outside CI only.
fn faketime_missing() -> bool {
    if Path::new(LIBFAKETIME).exists() {
        return false;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install faketime");
    eprintln!("skipped: {LIBFAKETIME} not installed");
    true
}

/// `tokenwarden serve` (background refresher on) as our child, its stderr
/// in a file; killed (SIGKILL, by its pid) when dropped.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    /// Starts `serve` on a free loopback port with `env`'s environment plus
    /// `extra_env`, and waits until `/healthz` answers. The binary is
    /// `ATTACK5_SERVE_BIN` if set, else this build's.
    fn start(env: &Env, extra_env: &[(&str, &OsStr)]) -> Serve {
        let base = env.cmd();
        let bin = std::env::var_os("ATTACK5_SERVE_BIN").unwrap_or_else(|| BIN.into());
        let mut cmd = Command::new(bin);
        cmd.env_clear();
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = env.dir.path().join(format!("serve-{}.log", addr.port()));
        cmd.args(["serve", "--listen", &addr.to_string(), "--threads", "2"])
            .env("TOKENWARDEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawn serve");
        let mut serve = Serve { child, log };
        let client = Client::new(addr, None);
        let up = eventually(Duration::from_secs(20), || {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("serve exited early ({status}): {}", serve.log());
            }
            std::net::TcpStream::connect(addr).is_ok() && client.get("/healthz").status == 200
        });
        assert!(up, "serve did not come up: {}", serve.log());
        serve
    }

    /// [`Serve::start`] under libfaketime: the wall clock is offset by the
    /// seconds written in the returned file (`+0` at first), the monotonic
    /// and boot clocks are not.
    fn start_faked(env: &Env) -> (Serve, PathBuf) {
        let offset = env.dir.path().join("faketime");
        std::fs::write(&offset, "+0\n").unwrap();
        let serve = Serve::start(
            env,
            &[
                ("LD_PRELOAD", OsStr::new(LIBFAKETIME)),
                ("FAKETIME_TIMESTAMP_FILE", offset.as_os_str()),
                ("FAKETIME_NO_CACHE", OsStr::new("1")),
                ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
                ("FAKETIME_DONT_RESET", OsStr::new("1")),
            ],
        );
        (serve, offset)
    }

    /// What it wrote on stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a round of the scheduler may sleep (`TICK_MAX` in src/sweep.rs)
/// plus room for a loaded machine: before the quiet mark, a credential that
/// fell due without any commit was found by the next round at the latest.
const ROUND: Duration = Duration::from_secs(45);

/// HOLE: an operator's `refresh ID` that failed transiently leaves a valid
/// credential with `failures = 1` and a backoff; `due()` makes it due again
/// once the backoff ends ("a failed refresh (e.g. an operator's) whose
/// backoff has passed"), and before 251fb5a `serve` retried it at the next
/// round (≤ 30 s) after that. The quiet mark's `next_due_ms` is
/// `max(next_attempt_at, start of the refresh window)`: the scan that saw
/// the backoff marks the table quiet until the token's window (hours away),
/// and no round reads it again — the retry `due()` asks for never happens.
#[test]
fn mended_serve_retries_a_failed_operator_refresh_once_its_backoff_ends() {
    let env = Env::with(Tuning {
        backoff_min: 20.0,
        ..Tuning::default()
    });
    env.login("op", 2 * 3600);
    env.fake
        .push_fault(Fault::status(500, r#"{"error":"server_error"}"#));
    let out = env.run(&["refresh", "op"]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let row = show(&env, "op");
    assert_eq!(row["failures"], 1, "{row}");
    assert!(row["next_attempt_at"].as_i64().unwrap() > now(), "{row}");
    let version = row["version"].as_i64().unwrap();

    // The first round runs inside the 20 s backoff: nothing due yet.
    let serve = Serve::start(&env, &[]);
    let retried = eventually(ROUND, || refreshed(&env, "op"));
    let row = show(&env, "op");
    assert!(
        retried,
        "serve never retried the failed refresh after its backoff ended: {row}\n{}",
        serve.log()
    );
    assert_eq!(row["failures"], 0, "{row}");
    assert!(row["version"].as_i64().unwrap() > version);
    env.fake.assert_no_reuse_after_success();
}

/// HOLE: a rejected credential whose refresh failed transiently (the
/// `reject` got a 500) stays `rejected` with a backoff; it is due again
/// when the backoff ends, and before 251fb5a `serve` refreshed it at the
/// next round after that. Its stored (rejected) token's window start
/// enters `next_due_ms` through `max(...)`, so the quiet mark lasts until
/// hours after the backoff: `serve` leaves the credential rejected, and
/// the next caller pays the refresh.
#[test]
fn mended_serve_refreshes_a_rejected_credential_once_its_backoff_ends() {
    let env = Env::with(Tuning {
        backoff_min: 20.0,
        ..Tuning::default()
    });
    let g = env.login("rj", 2 * 3600);
    env.fake
        .push_fault(Fault::status(500, r#"{"error":"server_error"}"#));
    let out = env.run(&["reject", "rj", "--token", g.access_token.as_str()]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let row = show(&env, "rj");
    assert_eq!(row["state"], "rejected", "{row}");
    assert_eq!(row["failures"], 1, "{row}");

    let serve = Serve::start(&env, &[]);
    let done = eventually(ROUND, || refreshed(&env, "rj"));
    let row = show(&env, "rj");
    assert!(
        done,
        "serve left the rejected credential un-refreshed after its backoff: {row}\n{}",
        serve.log()
    );
    assert_eq!(row["state"], "valid", "{row}");
    assert_not_served(&env, "rj", &g.access_token);
}

/// A credential with a good two-hour token, rejected by a `reject`
/// process that is SIGKILLed while its refresh request hangs upstream: the
/// row is left `refreshing` (returning to `rejected`) under a live lease of
/// `lease_ttl` seconds. Nothing but that lease's end makes it due: its
/// token's refresh window is hours away.
fn killed_mid_reject(env: &Env, id: &str) -> String {
    let g = env.login(id, 2 * 3600);
    env.fake
        .push_fault(Fault::HangBefore(Duration::from_secs(60)));
    let mut child = env
        .cmd()
        .args(["reject", id, "--token", g.access_token.as_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let arrived = eventually(Duration::from_secs(10), || {
        !env.fake.token_requests().is_empty()
    });
    assert!(arrived, "the reject's refresh never reached upstream");
    // SIGKILL, to our own child.
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(env.fake.pending_faults(), 0);
    assert_eq!(show(env, id)["state"], "refreshing");
    g.access_token
}

/// The token `token ID` prints now, which must not be `rejected`.
fn assert_not_served(env: &Env, id: &str, rejected: &str) {
    let out = env.run(&["token", id]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_ne!(
        text(&out.stdout).trim(),
        rejected,
        "the rejected token was served"
    );
}

/// Tuning with a lease long enough to start `serve` inside it.
fn long_lease() -> Tuning {
    Tuning {
        request_timeout: 4.0,
        attempts: 1,
        lease_ttl: 12.0,
        backoff_min: 5.0,
    }
}

/// HELD: a `reject` process SIGKILLed mid-refresh leaves a live lease on a
/// rejected credential; the quiet mark's next due time is that lease's
/// end, so `serve` takes the credential over once the lease runs out,
/// although nothing is committed meanwhile.
#[test]
fn held_serve_takes_over_a_killed_processs_lease_when_it_ends() {
    let env = Env::with(long_lease());
    let rejected = killed_mid_reject(&env, "ko");
    let serve = Serve::start(&env, &[]);
    let taken = eventually(ROUND, || refreshed(&env, "ko"));
    assert!(taken, "no takeover: {}\n{}", show(&env, "ko"), serve.log());
    assert_not_served(&env, "ko", &rejected);
    env.fake.assert_no_reuse_after_success();
}

/// HOLE: the same killed lease (`killed_mid_reject`), with `serve`'s wall clock stepped back one
/// hour (libfaketime; its lease clock, CLOCK_BOOTTIME through the vDSO, is
/// not) after its first round. Leases never follow a process's wall clock
/// (DESIGN.md §3.6), and before 251fb5a every round judged the lease on
/// the lease clock, so the takeover came when the lease ended. The quiet
/// mark stores the lease's end converted to the wall clock at scan time
/// and is kept while `now.wall_ms` is below it: after the step the table
/// is not read for an hour, and the credential stays `refreshing`.
#[test]
fn mended_serve_takes_over_a_killed_lease_after_its_wall_clock_steps_back() {
    if faketime_missing() {
        return;
    }
    let env = Env::with(long_lease());
    let rejected = killed_mid_reject(&env, "kb");
    let (serve, offset) = Serve::start_faked(&env);
    // Its first round has seen the live lease; then the step.
    thread::sleep(Duration::from_secs(2));
    std::fs::write(&offset, "-3600\n").unwrap();
    // On its stepped-back clock `serve` stores the new token's expiry an
    // hour early: committed is enough here, `valid` is not required.
    let taken = eventually(ROUND, || {
        env.fake.family_state("kb").refreshes > 0 && show(&env, "kb")["state"] != "refreshing"
    });
    assert!(
        taken,
        "serve did not take over the ended lease after its wall clock stepped back: {}\n{}",
        show(&env, "kb"),
        serve.log()
    );
    assert_not_served(&env, "kb", &rejected);
    env.fake.assert_no_reuse_after_success();
}

/// HELD: `serve`'s wall clock stepped two hours forward (libfaketime)
/// while it is quiet puts a two-hour token inside its refresh window on
/// that clock: the quiet mark ends with the step, and the next round
/// refreshes it.
#[test]
fn held_serve_refreshes_when_its_wall_clock_steps_into_the_window() {
    if faketime_missing() {
        return;
    }
    let env = Env::new();
    env.login("fw", 2 * 3600);
    let (serve, offset) = Serve::start_faked(&env);
    thread::sleep(Duration::from_secs(2));
    std::fs::write(&offset, "+7200\n").unwrap();
    let done = eventually(ROUND, || refreshed(&env, "fw"));
    assert!(done, "{}\n{}", show(&env, "fw"), serve.log());
}

/// HELD: while `serve` is quiet, other processes commit — an import of a
/// credential with no access token (due at once), a `reject` of another
/// one whose refresh gets a 500 and no backoff (`TOKENWARDEN_BACKOFF_MIN=0`),
/// an `import --replace` of a third with a new login whose token has
/// expired, and a WAL checkpoint (TRUNCATE) after them: each commit moves
/// the stamp, and the next round refreshes all three.
#[test]
fn held_serve_sees_commits_and_a_wal_truncate_by_other_processes_while_quiet() {
    let env = Env::with(Tuning {
        backoff_min: 0.0,
        ..Tuning::default()
    });
    let quiet = env.login("quiet", 2 * 3600);
    env.login("repl", 2 * 3600);
    let serve = Serve::start(&env, &[]);
    thread::sleep(Duration::from_secs(1));

    let fresh = env.fake.new_family("noat");
    let mut record = fresh.import_json("noat", "codex", &env.fake.token_url());
    record.as_object_mut().unwrap().remove("access_token");
    record.as_object_mut().unwrap().remove("expires_at");
    let file = crate::common::scripted::write(&env, "noat.json", &record);
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    env.fake
        .push_fault(Fault::status(500, r#"{"error":"server_error"}"#));
    let out = env.run(&["reject", "quiet", "--token", quiet.access_token.as_str()]);
    assert_ne!(code(&out), 0, "the refresh got a 500");
    assert_eq!(show(&env, "quiet")["state"], "rejected");
    let relogin = env.fake.new_family("repl-relogin");
    let mut record = relogin.import_json("repl", "codex", &env.fake.token_url());
    record["expires_at"] = Value::from(now() - 60);
    let file = crate::common::scripted::write(&env, "repl.json", &record);
    let out = env.run(&["import", "--replace", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let all = eventually(ROUND, || {
        env.fake.family_state("repl-relogin").refreshes == 1
            && ["noat", "quiet"]
                .iter()
                .all(|id| show(&env, id)["state"] == "valid")
    });
    assert!(
        all,
        "{} / {} / {}\n{}",
        show(&env, "noat"),
        show(&env, "quiet"),
        show(&env, "repl"),
        serve.log()
    );
    assert_eq!(env.fake.stats().successful_refreshes, 3);
    assert_not_served(&env, "quiet", &quiet.access_token);
    env.fake.assert_no_reuse_after_success();
}

/// HELD: rows of an old backup restored into the live database (one
/// transaction through SQLite, as a restore must be made under a running
/// server) while `serve` is quiet: the backup's row has no access token,
/// so it is due at once, and the next round refreshes it. (Upstream does
/// not rotate here, so the backup's refresh token is still good.)
#[test]
fn held_serve_refreshes_what_a_restored_backup_makes_due() {
    let env = Env::new();
    env.fake.set_rotation(false);
    let g = env.fake.new_family("bk");
    let mut record = g.import_json("bk", "codex", &env.fake.token_url());
    record.as_object_mut().unwrap().remove("access_token");
    record.as_object_mut().unwrap().remove("expires_at");
    let file = crate::common::scripted::write(&env, "bk.json", &record);
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let backup = env.dir.path().join("backup.db");
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    let out = env.run(&["token", "bk"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(env.fake.family_state("bk").refreshes, 1);

    let serve = Serve::start(&env, &[]);
    thread::sleep(Duration::from_secs(1));
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.execute("ATTACH DATABASE ?1 AS old", [backup.to_str().unwrap()])
            .unwrap();
        conn.execute_batch(
            "BEGIN IMMEDIATE; \
             INSERT OR REPLACE INTO credentials SELECT * FROM old.credentials; \
             COMMIT; DETACH DATABASE old;",
        )
        .unwrap();
    }
    let again = eventually(ROUND, || {
        env.fake.family_state("bk").refreshes == 2 && show(&env, "bk")["state"] == "valid"
    });
    assert!(again, "{}\n{}", show(&env, "bk"), serve.log());
}

// ---------------------------------------------------------------------------
// 2. Signals kept only while held
// ---------------------------------------------------------------------------

/// HELD: for each of 12 credentials with an expired token, 16 threads on
/// two wardens of this process plus 3 `token` processes ask for a token at
/// staggered instants around a 120 ms refresh (before the claim, during
/// the request, during and after the commit), so signals are made, shared
/// and dropped under every interleaving. Every caller gets the one new
/// token; each credential is refreshed exactly once; no refresh token is
/// sent twice.
#[test]
fn held_every_waiter_of_every_process_gets_the_one_refresh() {
    let env = Env::new();
    let ids: Vec<String> = (0..12).map(|i| format!("sig{i}")).collect();
    for id in &ids {
        env.login(id, -60);
    }
    env.fake.set_latency(Duration::from_millis(120));
    let wardens = [Arc::new(env.warden()), Arc::new(env.warden())];
    for (round, id) in ids.iter().enumerate() {
        let start = Arc::new(Barrier::new(17));
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let w = wardens[n % 2].clone();
                let (id, start) = (id.clone(), start.clone());
                // 0, 15, 30 … 225 ms: before, during and after the refresh.
                let delay = Duration::from_millis(15 * (n as u64 + round as u64 % 3));
                thread::spawn(move || {
                    start.wait();
                    thread::sleep(delay);
                    w.token(&id, Duration::ZERO)
                        .map(|g| g.access_token.expose().to_owned())
                })
            })
            .collect();
        let procs: Vec<Child> = (0..3)
            .map(|_| {
                env.cmd()
                    .args(["token", id])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        start.wait();
        let mut tokens: Vec<String> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap_or_else(|e| panic!("{id}: {e}")))
            .collect();
        for p in procs {
            let out = p.wait_with_output().unwrap();
            assert_eq!(code(&out), 0, "{id}: {}", text(&out.stderr));
            tokens.push(text(&out.stdout).trim().to_owned());
        }
        let current = env.fake.family_state(id).current_access_token;
        assert!(
            tokens.iter().all(|t| *t == current),
            "{id}: a caller got another token than the one refresh's"
        );
        assert_eq!(env.fake.family_state(id).refreshes, 1, "{id}");
    }
    env.fake.assert_single_flight();
    env.fake.assert_no_reuse_after_success();
    assert_eq!(env.fake.stats().successful_refreshes, ids.len() as u64);
}

/// HELD: a rejected token is never served again, also to callers waiting
/// on the rejecting refresh through signals of two wardens: while one
/// thread's `reject` refreshes (slowly), 12 threads on both wardens ask for
/// tokens; every one that starts after the reject's row is committed gets
/// the new token, none gets the rejected one after the reject returned,
/// and the refresh happens once.
#[test]
fn held_waiters_never_get_the_rejected_token_after_the_reject() {
    let env = Env::new();
    let g = env.login("rej", 3600);
    env.fake.set_latency(Duration::from_millis(150));
    let wardens = [Arc::new(env.warden()), Arc::new(env.warden())];
    let rejecter = {
        let w = wardens[0].clone();
        let token = g.access_token.clone();
        thread::spawn(move || w.reject("rej", &token))
    };
    wait_for_lease(&wardens[1], "rej");
    let threads: Vec<_> = (0..12)
        .map(|n| {
            let w = wardens[n % 2].clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(10 * n as u64));
                w.token("rej", Duration::ZERO)
                    .map(|g| g.access_token.expose().to_owned())
            })
        })
        .collect();
    let fresh = rejecter.join().unwrap().expect("reject");
    for t in threads {
        let got = t.join().unwrap().expect("token");
        assert_ne!(got, g.access_token, "the rejected token was served");
        assert_eq!(got, fresh.access_token.expose());
    }
    assert_eq!(env.fake.family_state("rej").refreshes, 1);
    env.fake.assert_no_reuse_after_success();
}

// ---------------------------------------------------------------------------
// 1. The token shortcut against clap, on the real binary
// ---------------------------------------------------------------------------

/// Everything a run left behind that tells which database it used: the
/// files of `dir` (recursively, names only).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(files(&e.path()).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// A process's stderr without the log lines' `HH:MM:SS ` time prefix.
fn untimed(stderr: &[u8]) -> String {
    text(stderr)
        .lines()
        .map(|l| {
            let b = l.as_bytes();
            let timed = b.len() > 9
                && b[2] == b':'
                && b[5] == b':'
                && b[8] == b' '
                && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit());
            format!("{}\n", if timed { &l[9..] } else { l })
        })
        .collect()
}

/// A process's stdout without what moves with the clock: `expires_in` of
/// a JSON token response (the same `expires_at` read a second later).
fn stable(stdout: &[u8]) -> String {
    match serde_json::from_slice::<Value>(stdout) {
        Ok(Value::Object(mut o)) => {
            o.remove("expires_in");
            Value::Object(o).to_string()
        }
        _ => text(stdout),
    }
}

/// One run of the binary in `cwd` with `env`'s environment changed by
/// `set` (None removes the variable).
fn run_in(env: &Env, cwd: &Path, args: &[&OsStr], set: &[(&str, Option<&OsStr>)]) -> Output {
    let mut c = env.cmd();
    c.current_dir(cwd);
    for (k, v) in set {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.args(args).output().unwrap()
}

/// HELD: the shortcut (`token ID`, `token ID --json`) and clap (the same
/// request spelled so the shortcut declines it: `--min-ttl 0`, `--`, the
/// flag first) answer alike on the real binary — exit code, stdout, the
/// whole of stderr, and which database files they create — for
/// `TOKENWARDEN_DB` unset (the working directory's `tokenwarden.db`),
/// relative, in a missing directory, non-UTF-8 and empty; for garbage,
/// typo'd and out-of-range tuning variables, a bad log level, a wrong or
/// malformed encryption key and a key-file variable that does not exist;
/// and for odd ids.
#[test]
fn held_the_shortcut_and_clap_agree_on_every_environment() {
    use std::os::unix::ffi::OsStrExt;
    use tokenwarden::seal::generate_key;

    let env = Env::new();
    env.login("ok", 3600);
    let dead = env.login("dead", 60);
    env.fake.revoke_family(&dead.account);
    let _ = env.run(&["token", "dead"]);
    // A checkpointed copy of the database to put where each case needs it.
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let master = std::fs::read(&env.db).unwrap();
    let non_utf8 = OsStr::from_bytes(b"db-\xff.db");
    let key = generate_key();
    let os = OsStr::new;

    type Set<'a> = Vec<(&'a str, Option<&'a OsStr>)>;
    // (label, where the database copy goes under the cwd, env changes)
    let cases: Vec<(&str, Option<&OsStr>, Set)> = vec![
        (
            "db unset",
            Some(os("tokenwarden.db")),
            vec![("TOKENWARDEN_DB", None)],
        ),
        ("db unset, none there", None, vec![("TOKENWARDEN_DB", None)]),
        (
            "db relative",
            Some(os("sub/x.db")),
            vec![("TOKENWARDEN_DB", Some(os("sub/x.db")))],
        ),
        (
            "db dot-relative",
            Some(os("sub/x.db")),
            vec![("TOKENWARDEN_DB", Some(os("./sub/../sub/x.db")))],
        ),
        (
            "db in a missing dir",
            None,
            vec![("TOKENWARDEN_DB", Some(os("nowhere/x.db")))],
        ),
        (
            "db non-utf8",
            Some(non_utf8),
            vec![("TOKENWARDEN_DB", Some(non_utf8))],
        ),
        (
            "db empty",
            Some(os("tokenwarden.db")),
            vec![("TOKENWARDEN_DB", Some(os("")))],
        ),
        (
            "db is a directory",
            None,
            vec![("TOKENWARDEN_DB", Some(os(".")))],
        ),
        (
            "db named like a flag",
            Some(os("--json")),
            vec![("TOKENWARDEN_DB", Some(os("--json")))],
        ),
        (
            "lease garbage",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_LEASE_TTL", Some(os("abc"))),
            ],
        ),
        (
            "lease typo",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_LEASE_TLL", Some(os("abc"))),
            ],
        ),
        (
            "lease too short",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_LEASE_TTL", Some(os("1"))),
            ],
        ),
        (
            "timeout inf",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_REQUEST_TIMEOUT", Some(os("1e999"))),
            ],
        ),
        (
            "wait negative",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_WAIT", Some(os("-1"))),
            ],
        ),
        (
            "attempts zero",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_ATTEMPTS", Some(os("0"))),
            ],
        ),
        (
            "ahead non-utf8",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_REFRESH_AHEAD", Some(non_utf8)),
            ],
        ),
        (
            "log bogus",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_LOG", Some(os("loud"))),
            ],
        ),
        (
            "log debug",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_LOG", Some(os("debug"))),
            ],
        ),
        (
            "key wrong",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_ENCRYPTION_KEY", Some(os(&key))),
            ],
        ),
        (
            "key garbage",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_ENCRYPTION_KEY", Some(os("not base64!"))),
            ],
        ),
        (
            "key blank",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_ENCRYPTION_KEY", Some(os("  "))),
            ],
        ),
        (
            "key-file var",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                ("TOKENWARDEN_ENCRYPTION_KEY_FILE", Some(os("/nonexistent"))),
            ],
        ),
        (
            "token url bad",
            Some(os("t.db")),
            vec![
                ("TOKENWARDEN_DB", Some(os("t.db"))),
                (
                    "TOKENWARDEN_CODEX_TOKEN_URL",
                    Some(os("http://example.com/x")),
                ),
            ],
        ),
    ];
    // (shortcut form, clap forms of the same request)
    let forms = |id: &'static str| -> Vec<(Vec<&'static str>, Vec<Vec<&'static str>>)> {
        vec![
            (
                vec!["token", id],
                vec![vec!["token", id, "--min-ttl", "0"], vec!["token", "--", id]],
            ),
            (
                vec!["token", id, "--json"],
                vec![
                    vec!["token", "--json", id],
                    vec!["token", "--json", "--", id],
                ],
            ),
        ]
    };
    let mut checked = 0;
    let mut codes = std::collections::HashMap::new();
    for (label, place, set) in &cases {
        for id in ["ok", "dead", "nobody"] {
            for (fast, slows) in forms(id) {
                let fresh_cwd = || {
                    let dir = tempfile::tempdir_in(env.dir.path()).unwrap();
                    if let Some(p) = place {
                        let path = dir.path().join(p);
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(&path, &master).unwrap();
                    }
                    dir
                };
                let osv = |v: &[&'static str]| v.iter().map(|s| OsStr::new(*s)).collect::<Vec<_>>();
                let cwd = fresh_cwd();
                let a = run_in(&env, cwd.path(), &osv(&fast), set);
                let a_files = files(cwd.path());
                codes.insert((*label, id, fast.len()), code(&a));
                for slow in slows {
                    let cwd = fresh_cwd();
                    let b = run_in(&env, cwd.path(), &osv(&slow), set);
                    let what = format!("{label}: {fast:?} vs {slow:?}");
                    assert_eq!(
                        code(&a),
                        code(&b),
                        "{what}\n{}\n{}",
                        text(&a.stderr),
                        text(&b.stderr)
                    );
                    assert_eq!(stable(&a.stdout), stable(&b.stdout), "{what}");
                    assert_eq!(untimed(&a.stderr), untimed(&b.stderr), "{what}");
                    assert_eq!(a_files, files(cwd.path()), "{what}: other database files");
                    checked += 1;
                }
            }
        }
    }
    // The cases do reach what they mean to.
    for (label, id, want) in [
        ("db unset", "ok", 0),
        ("db unset", "dead", 4),
        ("db unset", "nobody", 3),
        ("db unset, none there", "ok", 3),
        ("db relative", "ok", 0),
        ("db non-utf8", "ok", 0),
        ("db named like a flag", "ok", 0),
        ("lease typo", "ok", 0),
        ("log bogus", "ok", 2),
        ("lease garbage", "ok", 2),
    ] {
        assert_eq!(codes[&(label, id, 2)], want, "{label} {id}");
    }
    // The ids the shortcut takes as they are, including ones clap could
    // misread if it were asked.
    let cwd = tempfile::tempdir_in(env.dir.path()).unwrap();
    let long = "x".repeat(200);
    for id in [
        "help", "token", "a=b", "a b", "..", "a/b", "%2f", "é", "ok\n", "=", "+x", "@", &long,
    ] {
        let a = run_in(&env, cwd.path(), &[os("token"), os(id)], &[]);
        let b = run_in(&env, cwd.path(), &[os("token"), os("--"), os(id)], &[]);
        assert_eq!(code(&a), code(&b), "{id:?}: {}", text(&a.stderr));
        assert_eq!(a.stdout, b.stdout, "{id:?}");
        assert_eq!(untimed(&a.stderr), untimed(&b.stderr), "{id:?}");
        assert!(matches!(code(&a), 2 | 3), "{id:?}: {}", code(&a));
    }
    assert!(checked > 100);
}
